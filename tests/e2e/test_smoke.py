"""The happy path over both listeners with Python's smtplib."""

from __future__ import annotations

import smtplib

from tests.support import Credential, RunningRelay, client_context, message, spooled


def test_starttls_auth_send_lands_in_spool(relay: RunningRelay, cred: Credential) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        refused = smtp.sendmail("app@example.com", ["a@example.net", "b@example.net"],
                                message())
        assert refused == {}
        assert smtp.noop()[0] == 250
    (entry,) = spooled(relay.config)
    assert entry["recipients"] == ["a@example.net", "b@example.net"]
    assert entry["account"] == "acme"
    assert entry["data"].startswith(b"Received: from [127.0.0.1] ([127.0.0.1])\r\n")
    assert b"\r\nFrom: app@example.com\r\n" in entry["data"]


def test_implicit_tls_offers_and_accepts_auth(relay: RunningRelay, cred: Credential) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", relay.submissions_port, timeout=10,
                          context=client_context()) as smtp:
        code, features = smtp.ehlo()
        assert code == 250
        assert b"AUTH PLAIN LOGIN" in features
        assert b"STARTTLS" not in features
        assert smtp.login(cred.username, cred.password)[0] == 235
        smtp.sendmail("app@example.com", ["a@example.net"], message())
    assert len(spooled(relay.config)) == 1
