"""When the shared state cannot be asked (the supervisor's state service or, later,
Redis is gone), the relay answers every client temporarily and sends nothing over a
limit it could not check; it works again as soon as the state answers."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from smtprelay.state.api import StateUnavailable
from tests.support import Credential, RunningRelay, client_context, message, spooled


def unavailable(*_: Any, **__: Any) -> Any:
    raise StateUnavailable("the state service went away (test)")


def test_submission_gets_451_and_nothing_is_queued(
        relay: RunningRelay, cred: Credential, monkeypatch: pytest.MonkeyPatch) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        with monkeypatch.context() as patch:
            patch.setattr(relay.relay.shared, "reserve_send", unavailable)
            smtp.mail("app@example.com")
            smtp.rcpt("someone@example.net")
            assert smtp.data(message(subject="no state")) == (
                451, b"4.3.0 Temporary service failure")
        assert spooled(relay.config) == []
        # The same session sends as soon as the state answers again.
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.net")
        assert smtp.data(message(subject="state back"))[0] == 250
    assert len(spooled(relay.config)) == 1


def test_auth_gets_454_and_a_new_connection_421(
        relay: RunningRelay, cred: Credential, monkeypatch: pytest.MonkeyPatch) -> None:
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        monkeypatch.setattr(relay.relay.shared, "auth_locked_for", unavailable)
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            smtp.login(cred.username, cred.password)
        assert refused.value.smtp_code == 454
    monkeypatch.setattr(relay.relay.shared, "open_connection", unavailable)
    with pytest.raises(smtplib.SMTPConnectError) as closed:
        smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10)
    assert closed.value.smtp_code == 421
    assert b"4.3.0 Service temporarily unavailable" in closed.value.smtp_error
