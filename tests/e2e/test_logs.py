"""What a client can make the relay log (issue 16, logs): one line per event whatever
it sends, and no password typed into the user name field. Against `smtprelay serve`
as an operator runs it, reading its text log."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from tests.e2e.delivery_world import wait_for
from tests.support import DaemonProcess, client_context

pytestmark = pytest.mark.peer

FORGED = "2026-12-05T00:00:00.000Z INFO smtprelay.smtp session=forged auth ok user=admin"


def try_login(daemon: DaemonProcess, username: str) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(username, "not-the-password")


def test_a_user_name_cannot_forge_a_log_line_nor_leak_a_password(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        try_login(daemon, f"admin\r\n{FORGED}")
        try_login(daemon, "Tr0ub4dor&3-typed-as-user")  # a password in the wrong field
        # smtplib's login tries PLAIN, then LOGIN: two failures each.
        assert wait_for(lambda: daemon.log().count("auth failed") == 4, 10)
    finally:
        daemon.stop()
    lines = daemon.log().splitlines()
    assert not any(line.startswith(FORGED[:24]) for line in lines)  # no forged record
    failed = [line for line in lines if "auth failed" in line]
    assert len(failed) == 4 and all("user=unknown:" in line for line in failed)
    assert "Tr0ub4dor" not in daemon.log() and "forged" not in daemon.log()


def test_a_malformed_request_for_a_tracking_url_logs_no_token(tmp_path: Path) -> None:
    import socket
    daemon = DaemonProcess(tmp_path).start()
    requests = [b"GET /c/SECRETTOKEN456 HTTP/9.9\r\nHost: a\r\n\r\n",
                b"GET /u/SECRET\x01TOKEN789 HTTP/1.1\r\nHost: a\r\n\r\n",
                b"GET /o/SECRETTOKEN?x=SECRETQUERY HTTP/1.1\r\nHost: a\r\n"
                b"Content-Length: x\r\n\r\n"]
    try:
        for request in requests:
            with socket.create_connection(("127.0.0.1", daemon.ports["http"]), 5) as sock:
                sock.sendall(request)
                assert sock.recv(64).startswith(b"HTTP/1.0 400 Bad Request")
        assert wait_for(lambda: daemon.log().count("smtprelay.http.protocol") >= 2, 10)
    finally:
        daemon.stop()
    log = daemon.log()
    assert "SECRET" not in log
    assert "b'GET /c/… HTTP/9.9'" in log  # which route, not which token
