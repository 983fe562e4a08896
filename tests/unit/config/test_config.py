"""Configuration loading: every problem reported with its key path, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smtprelay.app.preflight import load_checked
from smtprelay.config import ConfigError, load_config
from smtprelay.infra.tls import MOZILLA_INTERMEDIATE_CIPHERS
from tests.support import base_config, write_config


def problems_for(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_checked(path)
    return info.value.problems


def test_dev_config_is_valid() -> None:
    loaded = load_config(Path(__file__).parents[3] / "config" / "dev.yaml")
    assert loaded.config.tls.generate_self_signed
    assert loaded.config.server.data_dir.name == "var"


def test_unknown_key_is_named_with_its_path(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none, colour: blue}]
limits: {max_mesage_size: 10}
""")
    assert "listeners[0].colour: unknown key" in problems[0] + problems[1]
    assert any(p.startswith("limits.max_mesage_size: unknown key") for p in problems)


def test_wrong_types_are_all_reported_at_once(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: many, tls: sometimes}]
limits: {max_recipients: -1, idle_timeout: soon, max_message_size: huge}
""")
    text = "\n".join(problems)
    assert "listeners[0].port:" in text
    assert "listeners[0].tls:" in text and "'sometimes'" in text
    assert "limits.max_recipients:" in text
    assert "limits.idle_timeout: expected a duration" in text
    assert "limits.max_message_size: expected a size" in text
    assert len(problems) == 5


def test_missing_certificate_names_the_key_and_the_fix(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, f"""
tls: {{cert_file: {tmp_path}/nope.pem, key_file: {tmp_path}/nope.key}}
listeners: [{{name: s, port: 2587}}]
""")
    assert problems[0].startswith(f"tls.cert_file: {tmp_path}/nope.pem does not exist")
    assert "generate_self_signed" in problems[0]
    assert problems[1].startswith("tls.key_file:")


def test_yaml_syntax_error_and_duplicate_key(tmp_path: Path) -> None:
    assert "line 2" in problems_for(tmp_path, "listeners:\n  - {name: s, port: [}\n")[0]
    dup = problems_for(tmp_path, "limits: {}\nlimits: {}\nlisteners: []\n")[0]
    assert "'limits' appears twice" in dup


def test_cross_references(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, """
listeners: [{name: a, port: 1, tls: none}, {name: a, port: 2, tls: none}]
accounts:
  one: {default_configuration_set: nope, trusted_networks: [10.0.0.0/8]}
  two: {trusted_networks: [10.1.0.0/16, "not-a-net"]}
""")
    text = "\n".join(problems)
    assert "accounts.two.trusted_networks: 'not-a-net' is not a network in CIDR form" in text
    problems = problems_for(tmp_path, """
listeners: [{name: a, port: 1, tls: none}, {name: a, port: 2, tls: none}]
accounts:
  one: {default_configuration_set: nope, trusted_networks: [10.0.0.0/8]}
  two: {trusted_networks: [10.1.0.0/16]}
""")
    text = "\n".join(problems)
    assert "listeners: the name 'a' is used twice" in text
    assert "accounts.one.default_configuration_set: 'nope' is not defined" in text
    assert "accounts.two.trusted_networks: 10.1.0.0/16 overlaps 10.0.0.0/8" in text


def test_durations_sizes_and_relative_paths(tmp_path: Path) -> None:
    cfg = base_config(tmp_path / "var", limits={"idle_timeout": "5m", "data_timeout": 90,
                                               "max_message_size": "25M"})
    cfg["server"]["data_dir"] = "state"
    loaded = load_config(write_config(tmp_path / "c.yaml", cfg)).config
    assert loaded.limits.idle_timeout == 300
    assert loaded.limits.data_timeout == 90
    assert loaded.limits.max_message_size == 25 * 1024 * 1024
    assert loaded.server.data_dir == tmp_path / "state"
    assert loaded.spool_path == tmp_path / "state" / "spool.db"


def test_identities_are_normalised_and_checked(tmp_path: Path) -> None:
    cfg = base_config(tmp_path / "var")
    cfg["accounts"]["acme"]["identities"] = ["Example.COM.", "News@Example.org"]
    loaded = load_config(write_config(tmp_path / "c.yaml", cfg)).config
    assert loaded.accounts["acme"].identities == ["example.com", "News@example.org"]
    cfg["accounts"]["acme"]["identities"] = ["not a domain"]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", cfg))
    assert info.value.problems == [
        "accounts.acme.identities: 'not a domain' is neither a domain nor an address"]


def test_static_credential_hash_must_be_ours(tmp_path: Path) -> None:
    cfg = base_config(tmp_path / "var")
    cfg["accounts"]["acme"]["credentials"] = [{"username": "u", "password_hash": "md5$x"}]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", cfg))
    assert "accounts.acme.credentials[0].password_hash: not a password hash" in \
        info.value.problems[0]


def test_check_config_command_prints_every_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners: [{name: s, port: 25, tls: none, bogus: 1}]\n"
                    "limits: {max_recipients: lots}\n")
    run = subprocess.run([sys.executable, "-m", "smtprelay", "check-config", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"configuration {path} has 2 problem(s)" in run.stderr
    assert "listeners[0].bogus: unknown key" in run.stderr
    assert "limits.max_recipients:" in run.stderr
    good = write_config(tmp_path / "good.yaml", base_config(tmp_path / "var"))
    run = subprocess.run([sys.executable, "-m", "smtprelay", "check-config", "-c", str(good)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "ok (2 listeners, 2 accounts)" in run.stdout


def test_missing_config_file_and_env_variable(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "smtprelay", "check-config"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "SMTPRELAY_CONFIG": str(tmp_path / "x")})
    assert run.returncode == 2
    assert f"{tmp_path / 'x'} has 1 problem(s)" in run.stderr
    assert "the file does not exist" in run.stderr


def test_tracking_settings_are_checked_against_tracking_domains(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
tracking_domains:
  Links.Example.COM: {}
  cdn.example.com: {cert_file: /x.pem}
configuration_sets:
  nodomain: {tracking: {click: true}}
  unlisted: {tracking: {open: true, domain: other.example.com}}
  unsub: {unsubscribe: {one_click: true, mailto: "not an address"}}
  nohost: {unsubscribe: {one_click: true}}
  fine: {tracking: {open: true, domain: links.example.com}, unsubscribe: {one_click: true}}
""")
    text = "\n".join(problems)
    assert "tracking_domains.cdn.example.com: cert_file and key_file go together" in text
    assert "configuration_sets.nodomain.tracking: open or click tracking is on " \
           "but tracking.domain is not set" in text
    assert "configuration_sets.unsub.unsubscribe.mailto:" in text
    assert "is neither true/false, a domain" in text
    assert problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
tracking_domains: {"t.example.com:99999": {}}
""") == ["tracking_domains: 't.example.com:99999': the port after ':' must be 1-65535"]


def test_tracking_domains_must_list_every_host_a_set_uses(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
tracking_domains: {"links.example.com": {}, "127.0.0.1.nip.test:8080": {}}
configuration_sets:
  unlisted: {tracking: {open: true, domain: other.example.com}}
  nohost: {unsubscribe: {one_click: true}}
  fine: {tracking: {open: true, domain: LINKS.example.com}, unsubscribe: {one_click: true}}
  port: {tracking: {click: true, domain: "127.0.0.1.nip.test:8080"}}
""")
    assert problems == [
        "configuration_sets.unlisted.tracking.domain: other.example.com is not listed under "
        "tracking_domains; add it there (with its certificate for https)",
        "configuration_sets.nohost.unsubscribe: one_click needs a host for the unsubscribe "
        "URL: set unsubscribe.domain or tracking.domain",
    ]


def test_tls_defaults_to_mozillas_intermediate_profile(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listeners: [{name: s, port: 2587, tls: none}]\n")
    config = load_config(path).config
    assert config.tls.min_version == "1.2"
    assert config.tls.ciphers == MOZILLA_INTERMEDIATE_CIPHERS
    assert config.tls.groups == "X25519:prime256v1:secp384r1"
    path.write_text("listeners: [{name: s, port: 2587, tls: none}]\ntls: {groups: null}\n")
    assert load_config(path).config.tls.groups is None


def test_unknown_tls_groups_are_named(tmp_path: Path) -> None:
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
tls: {groups: "X25519:X488:prime256v1"}
""")
    assert len(problems) == 1
    assert problems[0].startswith("tls.groups: OpenSSL "), problems
    assert "knows no group 'X488'; give OpenSSL's names separated by colons" in problems[0]
    assert "remove the key for the default, 'X25519:prime256v1:secp384r1'" in problems[0]


@pytest.mark.parametrize(("network", "says"), [
    ("127.0.0.57/31", "'127.0.0.57/31' has host bits set: write the network it means, "
                      "127.0.0.56/31, or the single address 127.0.0.57/32"),
    ("2001:db8::1/64", "'2001:db8::1/64' has host bits set"),
    ("::ffff:127.0.0.58/128", "'::ffff:127.0.0.58/128' is an IPv4-mapped IPv6 network, "
                              "which no client address matches; write 127.0.0.58/32 "
                              "instead"),
])
def test_trusted_networks_that_would_not_mean_what_they_say_are_refused(
        tmp_path: Path, network: str, says: str) -> None:
    # Before: the first was widened silently to 127.0.0.56/31, the last never matched.
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "var", accounts={
        "acme": {"identities": ["example.com"], "trusted_networks": [network]}}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    problems = "\n".join(raised.value.problems)
    assert "accounts.acme.trusted_networks" in problems and says in problems


def test_proxy_protocol_without_trusted_proxies_and_redis_without_url_are_named(
        tmp_path: Path) -> None:
    cfg = base_config(tmp_path / "var", store={"backend": "redis"})
    cfg["listeners"][0]["proxy_protocol"] = True
    cfg["http"]["proxy_protocol"] = True
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", cfg))
    text = "\n".join(info.value.problems)
    assert "listeners[0]" in text and "proxy_protocol needs trusted_proxies" in text
    assert "http: proxy_protocol needs trusted_proxies" in text
    assert "store" in text and "backend redis needs url" in text


def test_api_section_defaults_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("listeners: [{name: s, port: 2587, tls: none}]\n")
    api = load_config(path).config
    assert (api.api.sesv2, api.api.sesv1, api.api.max_clock_skew,
            api.api.max_request_size) == (False, False, 300.0, 10 * 1024 * 1024)
    assert api.api_key_path == tmp_path / "var" / "api-keys.key"
    path.write_text("listeners: [{name: s, port: 2587, tls: none}]\n"
                    "api: {sesv2: true, key_file: secrets/api.key, max_clock_skew: 15m,"
                    " max_request_size: 40MB}\n")
    config = load_config(path).config
    assert config.api_key_path == tmp_path / "secrets" / "api.key"
    assert (config.api.max_clock_skew, config.api.max_request_size) == (900.0, 40_000_000)
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
http: {listen: []}
api: {sesv1: true, max_clock_skew: 2h, max_request_size: 1k, sesv3: true}
""")
    assert [p.split(":", 1)[0] for p in problems] == [
        "api.max_clock_skew", "api.max_request_size", "api.sesv3"]
    assert "at most 1h" in problems[0] and "at least 64k" in problems[1]
    problems = problems_for(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
http: {listen: []}
api: {sesv1: true}
""")
    assert problems == ["api.sesv1: the API is served on the HTTP listeners, and http.listen "
                        "and http.tls_listen are both empty; give one an address or turn "
                        "the API off"]
