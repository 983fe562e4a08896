"""MTA-STS's pure parts: the policy file, the TXT record, MX patterns (RFC 8461); and the
store that keeps policies over a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.delivery.mta_sts import (
    StsMode,
    StsPolicyError,
    mx_matches,
    parse_policy,
    parse_txt,
)
from smtprelay.delivery.mta_sts_store import StoredPolicy, StsPolicyStore


def test_a_policy_parses_with_crlf_or_lf_and_ignores_unknown_keys() -> None:
    text = ("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
            "mx: *.example.net\nmax_age: 604800\nfuture_key: whatever\n")
    policy = parse_policy(text)
    assert policy.mode is StsMode.ENFORCE and policy.max_age == 604800
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.policy_strings[0] == "version: STSv1"
    assert policy.matches("MAIL.example.com.") and policy.matches("mx1.example.net")
    assert not policy.matches("example.net") and not policy.matches("a.b.example.net")


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mode is StsMode.NONE


@pytest.mark.parametrize("text", [
    "",
    "mode: enforce\nversion: STSv1\nmx: a.test\nmax_age: 1\n",  # version not first
    "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
    "version: STSv1\nmode: enforce\nmax_age: 86400\n",  # no mx
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
    "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n",
    "version: STSv1\nmode: enforce\nmx: a.test\n",  # no max_age
    "version: STSv1\nthis line has no colon\n",
])
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(StsPolicyError):
        parse_policy(text)


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("mx.example.com", "mx.example.com", True),
    ("mx.example.com", "MX.Example.COM.", True),
    ("*.example.com", "mx1.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.mx.example.com", False),  # one label only
    ("mx.example.com", "mx.example.com.evil.test", False),
])
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_txt_records() -> None:
    assert parse_txt(["v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt(["v=STSv1; ", "id=abc"]) == "abc"  # strings are joined
    assert parse_txt(["v=spf1 -all"]) is None
    for bad in (["v=STSv1;"], ["v=STSv1; id=has-dash"], ["v=STSv1; id=" + "a" * 33]):
        with pytest.raises(StsPolicyError):
            parse_txt(bad)


def test_the_store_keeps_each_domain_s_latest_policy_until_it_expires(tmp_path: Path) -> None:
    store = StsPolicyStore(tmp_path / "state.db")
    try:
        store.put("a.test", StoredPolicy("1", "version: STSv1\n", 1000.0, 1600.0))
        store.put("b.test", StoredPolicy("7", "version: STSv1\n", 1000.0, 5000.0))
        store.put("a.test", StoredPolicy("2", "mode: x\n", 1200.0, 1800.0))  # replaces
        assert store.get("a.test", 1799.0) == StoredPolicy("2", "mode: x\n", 1200.0, 1800.0)
        assert store.get("a.test", 1800.0) is None  # max_age over
        assert store.get("c.test", 0.0) is None
        assert [d for d, _ in store.listing(1700.0)] == ["a.test", "b.test"]
        assert [d for d, _ in store.listing(1800.0)] == ["b.test"]
        assert store.purge(1800.0) == 1
        # Another process (a restart) reads what this one wrote.
        again = StsPolicyStore(tmp_path / "state.db")
        assert again.get("b.test", 1900.0) == StoredPolicy("7", "version: STSv1\n",
                                                           1000.0, 5000.0)
        assert again.forget("b.test") and not again.forget("b.test")
        assert store.listing(0.0) == []
        again.close()
    finally:
        store.close()
