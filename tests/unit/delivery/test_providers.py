"""The bundled provider table classifies real providers' MX host names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtprelay.delivery.providers import (
    ProviderTableError,
    bundled,
    load_table,
    parse_providers,
)


@pytest.mark.parametrize(("host", "provider"), [
    ("gmail-smtp-in.l.google.com.", "google"),
    ("ASPMX.L.GOOGLE.COM", "google"),
    ("alt1.aspmx.l.google.com", "google"),
    ("smtp.google.com", "google"),
    ("hotmail-com.olc.protection.outlook.com", "microsoft-consumer"),
    ("contoso-com.mail.protection.outlook.com", "microsoft-365"),
    ("mta5.am0.yahoodns.net", "yahoo"),
    ("mx-aol.mail.gm0.yahoodns.net", "yahoo"),
    ("mx01.mail.icloud.com", "apple"),
    ("mx2h1.comcast.net", "comcast"),
    ("mx00.emig.gmx.net", "gmx"),
    ("mx-ha03.web.de", "gmx"),
    ("smtp-in.orange.fr", "orange"),
    ("mx.yandex.ru", "yandex"),
    ("mxs.mail.ru", "mailru"),
    ("mx1.qq.com", "qq"),
    ("mx.example.net", None),
    ("google.com.evil.example", None),
    ("notgoogle.com", None),
])
def test_bundled_table_classifies_mx_hosts(host: str, provider: str | None) -> None:
    assert bundled().provider_of(host) == provider


def test_operator_table_overrides_and_extends() -> None:
    mine = parse_providers({"providers": {
        "google": {"mx": ["*.gmail.test"]},
        "sink": {"mx": ["*.sink.test"]},
    }}, "rules.yaml")
    table = bundled().merged(mine)
    assert table.provider_of("mx.gmail.test") == "google"
    assert table.provider_of("aspmx.l.google.com") is None  # replaced, not extended
    assert table.provider_of("a.sink.test") == "sink"
    assert table.provider_of("mx.yandex.ru") == "yandex"


@pytest.mark.parametrize("data", [
    None, {"providers": []}, {"providers": {"x": "*.x"}}, {"providers": {"x": {"mx": [""]}}},
])
def test_malformed_tables_name_the_file(data: object) -> None:
    with pytest.raises(ProviderTableError, match=r"rules\.yaml"):
        parse_providers(data, "rules.yaml")


# ------------------------------------------------------------------ limits and rules

def test_bundled_rules_match_the_providers_published_replies() -> None:
    from tests.unit.provider_replies import GMAIL_RATE, OUTLOOK_BLOCK_LIST, YAHOO_DEFERRED

    def first_rule(provider: str, code: int, status: str, text: str) -> str | None:
        found = bundled().get(provider)
        assert found is not None
        return next((r.name for r in found.rules if r.matches(code, status, text)), None)

    gmail = "smtp; 421 " + " ".join(line[4:] for line in GMAIL_RATE.split("\r\n"))
    assert first_rule("google", 421, "4.7.0", gmail) == "gmail-rate-limited"
    assert first_rule("google", 421, "4.7.28", "smtp; 421 4.7.28 something new") == (
        "gmail-4.7.28")
    assert first_rule("google", 550, "5.1.1", "smtp; 550 5.1.1 no such user") is None
    assert first_rule("yahoo", 421, "4.7.0", f"smtp; {YAHOO_DEFERRED}") == "yahoo-deferred"
    assert first_rule("microsoft-365", 550, "5.7.1", f"smtp; {OUTLOOK_BLOCK_LIST}") == (
        "microsoft-block-list")
    assert first_rule("microsoft-consumer", 451, "4.7.650",
                      "smtp; 451 4.7.650 The mail server [192.0.2.1] has been temporarily "
                      "rate limited due to IP reputation.") == "microsoft-ip-reputation"


def test_an_override_replaces_what_it_gives_and_its_rules_come_first(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "providers:\n"
        "  google:\n"
        "    limits: {connections: 2, per_hour: 500}\n"
        "    rules:\n"
        "      - {match: 'quota', action: throttle, factor: 0.25, duration: 10m}\n"
        "      - {match: 'unusual rate of', action: ignore}\n"
        "  yahoo: {limits: {messages_per_connection: null}}\n"
        "  lab: {mx: ['*.lab.test'], limits: {per_minute: 10}}\n")
    table = load_table(path)
    google = table.get("google")
    assert google is not None
    assert google.mx == bundled().get("google").mx  # type: ignore[union-attr]
    assert (google.limits.connections, google.limits.messages_per_connection,
            google.limits.per_hour) == (2, 100, 500)
    names = [r.name for r in google.rules]
    assert names[:3] == ["google.rules[0]", "google.rules[1]", "gmail-rate-limited"]
    assert google.rules[0].factor == 0.25 and google.rules[0].duration == 600
    assert google.rules[0].origin == str(path)
    yahoo = table.get("yahoo")
    assert yahoo is not None and yahoo.limits.messages_per_connection is None
    assert yahoo.limits.connections == 10
    assert table.provider_of("mx.lab.test") == "lab"
    assert load_table(None) is bundled()


@pytest.mark.parametrize(("text", "where"), [
    ("providers: {x: {mx: ['*.x'], rules: [{match: '(', action: suspend, duration: 1h}]}}",
     r"providers\.x\.rules\[0\]\.match: not a regular expression"),
    ("providers: {x: {mx: ['*.x'], rules: [{match: 'a', action: pause, duration: 1h}]}}",
     r"providers\.x\.rules\[0\]\.action:"),
    ("providers: {x: {mx: ['*.x'], rules: [{match: 'a', action: suspend}]}}",
     r"providers\.x\.rules\[0\]: action suspend needs a duration"),
    ("providers: {x: {mx: ['*.x'], rules: [{match: 'a', action: suspend, duration: soon}]}}",
     r"providers\.x\.rules\[0\]\.duration: .*duration such as"),
    ("providers: {x: {mx: ['*.x'], limits: {connections: 0}}}",
     r"providers\.x\.limits\.connections:"),
    ("providers: {x: {mx: ['*.x'], limits: {per_day: 5}}}",
     r"providers\.x\.limits\.per_day: Extra inputs"),
    ("providers: {x: {mx: ['*.x'], rules: [{match: 'a', action: throttle, duration: 1h}]}}",
     r"providers\.x rule x\.rules\[0\]: action throttle .* has none"),
    ("providers: {x: {mx: ['*.x']}}\nprovider: {}\n", r"unknown top-level key 'provider'"),
    ("providers: {x: [", r"not valid YAML \(line 1\)"),
])
def test_bad_rules_files_name_the_file_and_the_entry(tmp_path: Path, text: str,
                                                     where: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ProviderTableError, match=re.escape(str(path)) + ".*" + where):
        load_table(path)


def test_check_config_refuses_a_bad_rules_file(tmp_path: Path) -> None:
    from smtprelay.app.preflight import problems
    from tests.unit.delivery.kit import make_config

    path = tmp_path / "rules.yaml"
    path.write_text("providers: {google: {rules: [{match: 'a', action: suspend}]}}\n")
    config = make_config(tmp_path, shaping={"rules_file": str(path)})
    assert problems(config) == [
        f"delivery.shaping.rules_file: {path}: providers.google.rules[0]: action suspend "
        "needs a duration such as 30m or 1h"]
    missing = make_config(tmp_path, shaping={"rules_file": str(tmp_path / "nope.yaml")})
    assert "cannot read it" in problems(missing)[0]
    assert problems(make_config(tmp_path, shaping={"enabled": False,
                                                   "rules_file": str(path)})) == []
