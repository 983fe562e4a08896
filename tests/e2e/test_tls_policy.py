"""Outbound TLS policy through the whole relay: a message submitted over SMTP, delivered
(or held) under MTA-STS, DANE and require_verified as the configuration file says.

The transport-level cases are in tests/unit/delivery/test_tls_policy.py; these check
the wiring: the configuration keys reach the daemon's transport, and what the policy
decided shows in the spool (state and last reply).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from smtprelay.config import load_config
from smtprelay.delivery.mta_sts_store import StoredPolicy, StsPolicyStore
from tests.e2e.delivery_world import World, wait_for
from tests.sinks import SmtpSink
from tests.support import base_config, free_port, write_config
from tests.tlspeers import Issued, Issuer, PolicyServer, policy
from tests.unbound import Unbound

POLICY_HOST = "127.0.0.200"


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("e2e-tls-ca"))


@pytest.fixture
def policies(net: World, issuer: Issuer) -> Iterator[PolicyServer]:
    # Served from the sinks' event loop thread: the relay runs in a thread of its own.
    cert = issuer.issue("mta-sts.enforce.test", "mta-sts.held.test")
    server = PolicyServer(POLICY_HOST, free_port(), cert.context)
    net.sinks.hosting.call(server.start())
    try:
        yield server
    finally:
        net.sinks.hosting.call(server.stop())


def mx_host(net: World, domain: str, name: str, cert: Issued | None) -> SmtpSink:
    address = net.address()
    sink = net.sinks.smtp(host=address, port=net.port, starttls=True,
                          tls_context=cert.context if cert else None)
    net.mx(domain, (10, name, address))
    return sink


def state(net: World, message_id: str) -> tuple[str, str | None]:
    [recipient] = net.message(message_id).recipients
    return recipient.state.value, recipient.last_reply


def test_mta_sts_enforce_skips_and_holds_mx_hosts_outside_the_policy(
        net: World, issuer: Issuer, policies: PolicyServer) -> None:
    for domain in ("enforce.test", "held.test"):
        net.dns.add(f"_mta-sts.{domain}", "TXT", '"v=STSv1; id=1;"')
        net.dns.add(f"mta-sts.{domain}", "A", POLICY_HOST)
        policies.policies[domain] = policy("enforce", f"*.{domain}")
    rogue = issuer.issue("mx.rogue.test")
    # enforce.test: the preferred MX is not in the policy, the second one is.
    skipped = mx_host(net, "enforce.test", "mx.rogue.test", rogue)
    good = mx_host(net, "enforce.test", "mx1.enforce.test", issuer.issue("mx1.enforce.test"))
    net.dns.remove("enforce.test", "MX")
    net.dns.add("enforce.test", "MX", "10 mx.rogue.test.")
    net.dns.add("enforce.test", "MX", "20 mx1.enforce.test.")
    # held.test: its only MX is not in the policy.
    held_host = mx_host(net, "held.test", "mx.elsewhere.test", issuer.issue("mx.elsewhere.test"))
    net.start(tls_ca_file=str(issuer.ca_file),
              mta_sts={"port": policies.port, "fetch_timeout": "5s"})
    sent = net.submit(["a@enforce.test"])
    held = net.submit(["a@held.test"])
    assert net.wait_final(sent) == {"a@enforce.test": "delivered"}
    assert good.received and good.received[0].tls and not skipped.sessions
    wait_for(lambda: state(net, held)[0] == "deferred")
    assert "MTA-STS" in (state(net, held)[1] or "") and not held_host.sessions
    assert policies.fetches == {"enforce.test": 1, "held.test": 1}


def rogue_under_enforce(net: World, issuer: Issuer, policies: PolicyServer,
                        max_age: int = 86400) -> tuple[SmtpSink, dict[str, Any]]:
    """held.test: an enforce policy naming *.held.test, and one MX outside it (a sink
    with a valid certificate for its own name); the relay settings that apply it."""
    net.dns.add("_mta-sts.held.test", "TXT", '"v=STSv1; id=1;"')
    net.dns.add("mta-sts.held.test", "A", POLICY_HOST)
    policies.policies["held.test"] = policy("enforce", "*.held.test", max_age=max_age)
    rogue = mx_host(net, "held.test", "mx.rogue.test", issuer.issue("mx.rogue.test"))
    return rogue, {"tls_ca_file": str(issuer.ca_file),
                   "mta_sts": {"port": policies.port, "fetch_timeout": "5s"}}


def test_mta_sts_policy_holds_across_a_restart_of_the_relay(
        net: World, issuer: Issuer, policies: PolicyServer) -> None:
    rogue, settings = rogue_under_enforce(net, issuer, policies)
    net.start(**settings)
    before = net.submit(["a@held.test"])
    wait_for(lambda: state(net, before)[0] == "deferred")
    net.stop()
    # While the relay is down, the record and the policy file go (an attacker on the
    # path); the policy fetched before the restart still holds the mail back.
    net.dns.remove("_mta-sts.held.test", "TXT")
    del policies.policies["held.test"]
    net.start(**settings)
    after = net.submit(["b@held.test"])
    wait_for(lambda: state(net, after)[0] == "deferred")
    assert "MTA-STS" in (state(net, after)[1] or "")
    assert not rogue.sessions and policies.fetches == {"held.test": 1}


def cli(net: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtprelay", *args, "-c",
                           str(net.tmp_path / "smtprelay.yaml")],
                          capture_output=True, text=True, timeout=60, check=False)


def test_mta_sts_list_and_forget_with_the_relay_running_and_stopped(
        net: World, issuer: Issuer, policies: PolicyServer) -> None:
    rogue, settings = rogue_under_enforce(net, issuer, policies, max_age=604800)
    net.start(**settings)
    first = net.submit(["a@held.test"])
    wait_for(lambda: state(net, first)[0] == "deferred")
    net.stop()
    listed = cli(net, "mta-sts", "list", "--json")  # the relay stopped: the store
    assert listed.returncode == 0, listed.stderr
    [kept] = json.loads(listed.stdout)
    assert (kept["domain"], kept["id"], kept["mode"], kept["mx"], kept["max_age"]) == (
        "held.test", "1", "enforce", ["*.held.test"], 604800)
    assert kept["expires_at"] - kept["fetched_at"] == 604800
    text = cli(net, "mta-sts", "list").stdout
    assert "held.test" in text and "enforce" in text and "*.held.test" in text

    net.start(**settings)
    second = net.submit(["b@held.test"])  # the policy read back and in memory again
    wait_for(lambda: state(net, second)[0] == "deferred")
    # The domain takes its record down: the kept policy would hold for a week more.
    # Forgotten through the running relay, memory and store, the next message goes.
    net.dns.remove("_mta-sts.held.test", "TXT")
    forgot = cli(net, "mta-sts", "forget", "HELD.test.")
    assert forgot.returncode == 0, forgot.stderr
    assert "MTA-STS policy of held.test forgotten" in forgot.stdout
    third = net.submit(["c@held.test"])
    assert net.wait_final(third) == {"c@held.test": "delivered"}
    assert len(rogue.received) == 1
    assert json.loads(cli(net, "mta-sts", "list", "--json").stdout) == []
    again = cli(net, "mta-sts", "forget", "held.test", "--json")
    assert json.loads(again.stdout) == {"domain": "held.test", "forgotten": False}
    net.stop()
    stopped = cli(net, "mta-sts", "forget", "held.test")
    assert stopped.returncode == 0 and "no MTA-STS policy of held.test was kept" in (
        stopped.stdout)


def test_mta_sts_list_shows_a_hostile_policy_s_control_characters_escaped(
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "smtprelay.yaml", base_config(tmp_path / "var"))
    store = StsPolicyStore(load_config(config).config.state_path)
    text = "version: STSv1\r\nmode: enforce\r\nmx: mx.\x1b[2Jevil.test\r\nmax_age: 600\r\n"
    now = time.time()
    store.put("evil.test", StoredPolicy("1", text, now, now + 600))
    store.close()
    shown = subprocess.run([sys.executable, "-m", "smtprelay", "mta-sts", "list", "-c",
                            str(config)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "mx.\\x1b[2Jevil.test" in shown.stdout


def test_require_verified_from_the_configuration_file(net: World) -> None:
    sink = mx_host(net, "strict.test", "mx.strict.test", None)  # self-signed
    net.start(tls="require_verified")
    message_id = net.submit(["a@strict.test"])
    wait_for(lambda: state(net, message_id)[0] == "deferred")
    assert "certificate verify failed" in (state(net, message_id)[1] or "")
    assert not sink.received


def test_a_destination_domain_tightens_tls_for_itself_only(net: World) -> None:
    strict = mx_host(net, "bank.test", "mx.bank.test", None)  # self-signed
    other = mx_host(net, "shop.test", "mx.shop.test", None)
    net.start(destinations={"bank.test": {"tls": "require_verified"}})
    held = net.submit(["a@bank.test"])
    sent = net.submit(["a@shop.test"])
    assert net.wait_final(sent) == {"a@shop.test": "delivered"}
    assert other.received and other.received[0].tls
    wait_for(lambda: state(net, held)[0] == "deferred")
    assert "certificate verify failed" in (state(net, held)[1] or "")
    assert not strict.received


def test_dane_through_the_relay(net: World, issuer: Issuer, unbound: Unbound) -> None:
    good = issuer.issue("mx.good.dane.test", self_signed=True)
    spki = good.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).hexdigest()
    sinks = {}
    zone: list[str] = []
    for label, record in (("good", digest), ("bad", "00" * 32)):
        address = net.address()
        sinks[label] = net.sinks.smtp(host=address, port=net.port, starttls=True,
                                      tls_context=good.context)
        zone += [f"{label} MX 10 mx.{label}", f"mx.{label} A {address}",
                 f"_{net.port}._tcp.mx.{label} TLSA 3 1 1 {record}"]
    unbound.zone("dane.test", zone, signed=True)
    unbound.start()
    net.start(dns={"nameservers": [unbound.nameserver], "timeout": "2s"}, dane=True,
              dane_probe_name="dane.test")
    delivered = net.submit(["a@good.dane.test"])
    held = net.submit(["a@bad.dane.test"])
    assert net.wait_final(delivered) == {"a@good.dane.test": "delivered"}
    wait_for(lambda: state(net, held)[0] == "deferred")
    assert "TLSA" in (state(net, held)[1] or "") and not sinks["bad"].received
    assert sinks["good"].received[0].tls
