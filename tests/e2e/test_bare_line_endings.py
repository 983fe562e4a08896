"""limits.bare_line_endings: normalize (the default, as Postfix 3.9): a bare CR or LF
is a line end and is stored as CRLF, and only <CRLF>.<CRLF> ends DATA, so each SMTP
smuggling ending stays inside the one message it was sent in. The refusal of
`reject` is checked by test_dialogs.py's table with the same endings.

limits.nul_bytes: reject (the default) refuses a message with a NUL whole, so the
"<CRLF><NUL>.<CRLF>" ending takes the smuggled text down with it; with accept it stays
inside the one message, as the other endings do."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.e2e.dialog import EVIL_MARKER, Accepted, Dialog, Expect, Send, tls_login
from tests.support import Credential, RunningRelay, client_context, running, spooled

SMUGGLED = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
            b"From: evil@example.com\r\n\r\n" + EVIL_MARKER + b" smuggled\r\n")


def smuggle(relay: RunningRelay, cred: Credential, ending: bytes,
            reply: Accepted | Expect) -> None:
    body = (b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: smuggling\r\n\r\n"
            b"hi" + ending + SMUGGLED)
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([*tls_login(cred),
                    Send(b"MAIL FROM:<app@example.com>\r\n"), Expect(250, "2.1.0 Ok"),
                    Send(b"RCPT TO:<someone@example.net>\r\n"), Expect(250, "2.1.5 Ok"),
                    Send(b"DATA\r\n"), Expect(354, "End data with <CR><LF>.<CR><LF>"),
                    Send(body + b".\r\n"), reply,
                    # Exactly one reply: the smuggled MAIL FROM was never a command.
                    Send(b"NOOP\r\n"), Expect(250, "2.0.0 Ok")])


def assert_one_message_with_the_smuggled_text(relay: RunningRelay) -> None:
    [entry] = spooled(relay.config)
    assert entry["mail_from"] == "app@example.com"
    assert entry["recipients"] == ["someone@example.net"]
    data = entry["data"]
    assert EVIL_MARKER + b" smuggled" in data and b"MAIL FROM:<evil@example.com>" in data
    # Every line ends in CRLF now: nothing downstream can read another line end.
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")


@pytest.mark.parametrize("ending", [
    b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r\n.\r", b"\r.\r\n", b"\n.\r",
    b"\r.\n", b"\n",
], ids=repr)
def test_a_smuggling_ending_stays_inside_one_message(relay: RunningRelay, cred: Credential,
                                                     ending: bytes) -> None:
    smuggle(relay, cred, ending, Accepted())
    assert_one_message_with_the_smuggled_text(relay)


def test_a_nul_ending_refuses_the_message_whole_by_default(
        relay: RunningRelay, cred: Credential) -> None:
    smuggle(relay, cred, b"\r\n\x00.\r\n", Expect(
        554, "5.6.0 Message rejected: NUL character in message data; encode binary "
        "content (base64)"))
    assert spooled(relay.config) == []


def test_with_nul_bytes_accepted_a_nul_ending_stays_inside_one_message(
        tmp_path: Path) -> None:
    with running(tmp_path, limits={"nul_bytes": "accept"}) as relay:
        smuggle(relay, relay.credential(), b"\r\n\x00.\r\n", Accepted())
        assert_one_message_with_the_smuggled_text(relay)
        [entry] = spooled(relay.config)
        assert b"hi\r\n\x00.\r\nMAIL FROM:" in entry["data"]


def test_smtplib_sending_a_files_lf_bytes_is_accepted_and_stored_with_crlf(
        relay: RunningRelay, cred: Credential) -> None:
    # SMTP.data(bytes) sends the bytes as they are, only dot-stuffing lines after LF.
    data = (b"From: app@example.com\nTo: someone@example.net\nSubject: lf\n\n"
            b"line one\n.starts with a dot\n.\nlast\n")
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        assert smtp.sendmail("app@example.com", ["someone@example.net"], data) == {}
    [entry] = spooled(relay.config)
    # smtplib stuffed ".starts" and "." after their LF; unstuffed after normalising,
    # they come back as written. (smtplib ends LF data with one more CRLF.)
    assert entry["data"].endswith(
        b"\r\n\r\nline one\r\n.starts with a dot\r\n.\r\nlast\r\n\r\n")
    assert b"\nTo: someone@example.net\r\nSubject: lf\r\n" in entry["data"]
