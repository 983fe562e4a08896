"""Sending authorization (SES's cross-account sending, issue 15): an identity's policy
lets another account send as it; the message names the identity with SES's
X-SES-SOURCE-ARN / X-SES-FROM-ARN / X-SES-RETURN-PATH-ARN headers; anything else gets
SES's 554 Access denied or "not verified". Through a real relay over SMTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import RunningRelay, message, relay_fixture, send_raw, session, spooled

ARN = "arn:aws:ses:us-west-2:123456789012:identity/example.com"
NOT_VERIFIED = (b"5.7.1 Message rejected: Email address is not verified. The following "
                b"identities failed the check: ")

relay = relay_fixture(
    accounts={
        "acme": {"identities": ["example.com"]},
        "other": {"identities": ["other.test"]},
        "stranger": {"identities": ["stranger.test"]},
    },
    identities={"example.com": {"sending_authorization": {
        "accounts": ["other"], "from_addresses": ["app@example.com", "news.example.com"]}}},
    configuration_sets={})


def denied(user: str, arn: str) -> tuple[int, bytes]:
    return (554, f"5.7.1 Access denied: User {user} is not authorized to perform "
                 f"ses:SendRawEmail on resource {arn}".encode())


def with_arns(sender: str = "app@example.com", **arns: str) -> bytes:
    head = "".join(f"X-SES-{name.upper().replace('_', '-')}-ARN: {value}\r\n"
                   for name, value in arns.items())
    return head.encode() + message(sender=sender)


def test_a_delegate_sends_as_the_identity_naming_it_with_the_source_arn(
        relay: RunningRelay) -> None:
    cred = relay.credential("other")
    with session(relay, cred) as smtp:
        code, text = send_raw(smtp, ["someone@example.net"], with_arns(source=ARN),
                              sender="app@example.com")
        assert code == 250, text
        # From, Sender and Return-Path may use what the ARNs grant, and no more.
        code, _ = send_raw(smtp, ["someone@example.net"],
                           with_arns("news@news.example.com", source=ARN, from_=ARN),
                           sender="app@example.com")
        assert code == 250
    entries = spooled(relay.config)
    assert [e["account"] for e in entries] == ["other", "other"]
    assert all(b"X-SES-" not in e["data"].upper() for e in entries)  # never sent on


def test_without_the_header_the_delegates_mail_is_not_verified(relay: RunningRelay) -> None:
    cred = relay.credential("other")
    with session(relay, cred) as smtp:
        # MAIL FROM is taken (a policy covers it), the message without its ARN is not.
        assert send_raw(smtp, ["someone@example.net"], message(), sender="app@example.com") \
            == (554, NOT_VERIFIED + b"app@example.com")
    assert spooled(relay.config) == []


def test_an_identity_whose_policy_leaves_the_account_out_is_access_denied(
        relay: RunningRelay) -> None:
    other = relay.credential("other")
    with session(relay, other) as smtp:
        foreign = "arn:aws:ses:us-east-1:000000000000:identity/stranger.test"
        assert send_raw(smtp, ["someone@example.net"], with_arns(source=foreign),
                        sender="app@example.com") == denied(other.username, foreign)
        assert send_raw(smtp, ["someone@example.net"], with_arns(source="not an arn"),
                        sender="app@example.com") == denied(other.username, "not an arn")
        # The policy's From condition: app@example.com and news.example.com only.
        assert send_raw(smtp, ["someone@example.net"],
                        with_arns("boss@example.com", source=ARN),
                        sender="app@example.com") == denied(other.username, ARN)
    stranger = relay.credential("stranger")
    with session(relay, stranger) as smtp:
        code, text = smtp.mail("app@example.com")
        assert (code, text) == (554, NOT_VERIFIED + b"app@example.com")
        smtp.rset()
        assert send_raw(smtp, ["someone@example.net"], with_arns(source=ARN),
                        sender="stranger@stranger.test") == denied(stranger.username, ARN)
    assert spooled(relay.config) == []


def test_the_owner_may_name_its_own_identity(relay: RunningRelay) -> None:
    cred = relay.credential("acme")
    with session(relay, cred) as smtp:
        assert send_raw(smtp, ["someone@example.net"], with_arns(source=ARN),
                        sender="app@example.com")[0] == 250


def test_a_policy_naming_an_unknown_account_is_a_config_error(tmp_path: Path) -> None:
    from smtprelay.config import ConfigError, load_config
    from tests.support import base_config, write_config
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "var", identities={
        "example.com": {"sending_authorization": {"accounts": ["nobody"]}}}))
    with pytest.raises(ConfigError, match=r"identities\.example\.com\.sending_authorization"
                                          r"\.accounts: 'nobody' is not an account"):
        load_config(path)
