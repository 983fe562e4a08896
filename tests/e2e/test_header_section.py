"""Header sections a receiver could read differently from us are refused, never guessed."""

from __future__ import annotations

import base64
import smtplib

import pytest

from tests.support import Credential, RunningRelay, client_context, message, spooled


def send(relay: RunningRelay, cred: Credential, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        smtp.mail("app@example.com")
        smtp.rcpt("a@example.net")
        return smtp.data(data)


@pytest.mark.parametrize(("data", "reply"), [
    (b"From: app@example.com\r\nnot a header line\r\nFrom: boss@evil.test\r\n\r\nhi\r\n",
     b"5.6.0 Message rejected: malformed header section (header line 2: not a header field "
     b"(name: value))"),
    (b" folded first\r\nFrom: app@example.com\r\n\r\nhi\r\n",
     b"5.6.0 Message rejected: malformed header section (header line 1: continuation line "
     b"before any header field)"),
    (b"From: <app@example.com>boss@evil.test\r\n\r\nhi\r\n",
     b"5.7.1 Message rejected: Email address is not verified. The following identities "
     b"failed the check: boss@evil.test"),
    (b"From: undisclosed:;\r\n\r\nhi\r\n",
     b"5.7.1 Message rejected: Email address is not verified. The following identities "
     b"failed the check: (unparseable)"),
    (b"From: app@example.com\r\nReturn-Path: <bounce@evil.test>\r\n\r\nhi\r\n",
     b"5.7.1 Message rejected: Email address is not verified. The following identities "
     b"failed the check: bounce@evil.test"),
])
def test_ambiguous_or_unverified_headers_are_refused(relay: RunningRelay, cred: Credential,
                                                     data: bytes, reply: bytes) -> None:
    assert send(relay, cred, data) == (554, reply)
    assert send(relay, cred, message())[0] == 250
    assert len(spooled(relay.config)) == 1


def test_folded_and_obsolete_but_verified_headers_pass(relay: RunningRelay,
                                                       cred: Credential) -> None:
    data = (b"From :\r\n \"App\" <app@example.com>\r\nSender: news+may@example.org\r\n"
            b"Return-Path: <>\r\nSubject: ok\r\n\r\nhi\r\n")
    assert send(relay, cred, data)[0] == 250
    (entry,) = spooled(relay.config)
    # Kept byte for byte behind the relay's Received header; Message-ID and Date added;
    # the client's Return-Path taken out (issue 15: the final delivery adds it).
    assert entry["data"].startswith(b"Received: from ")
    kept = data.replace(b"\r\n\r\nhi", b"").replace(b"Return-Path: <>\r\n", b"")
    assert kept in entry["data"] and b"Return-Path" not in entry["data"]
    assert entry["data"].endswith(b"\r\n\r\nhi\r\n")


def test_policy_refusals_do_not_end_a_batch(relay: RunningRelay, cred: Credential) -> None:
    """max_errors (10) counts protocol errors only: 12 refused senders, then mail flows."""
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        for n in range(12):
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                smtp.sendmail(f"x{n}@elsewhere.test", ["a@example.net"], message())
            assert info.value.smtp_code == 554
        assert smtp.sendmail("app@example.com", ["a@example.net"], message()) == {}
    assert len(spooled(relay.config)) == 1


def test_auth_after_helo(relay: RunningRelay, cred: Credential) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.helo("old.client.test")
        token = base64.b64encode(f"\0{cred.username}\0{cred.password}".encode()).decode()
        assert smtp.docmd("AUTH", f"PLAIN {token}") == (235, b"2.7.0 Authentication successful")
