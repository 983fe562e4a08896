"""Postfix as a smarthost client of smtprelay: the setup most company mail servers use.

A private Postfix relays through the relay with SASL over mandatory TLS, on the
STARTTLS port and on the implicit-TLS port (smtp_tls_wrappermode). With a wrong
password the relay's 535 keeps the message deferred in Postfix and out of the spool.
"""

from __future__ import annotations

import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from smtprelay.mail.headers import header_end
from tests.dnsserver import TestDNSServer
from tests.e2e.delivery_world import world
from tests.peers.postfix import SmarthostClient, smarthost_client
from tests.sinks import SinkFactory
from tests.support import RunningRelay, message, need_program, running, spooled

pytestmark = pytest.mark.peer

_WAIT_SECONDS = 30.0


def _wait_for_spool(relay: RunningRelay, postfix: SmarthostClient,
                    count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + _WAIT_SECONDS
    while time.monotonic() < deadline:
        entries = spooled(relay.config)
        if len(entries) >= count:
            return entries
        time.sleep(0.2)
    pytest.fail(f"nothing reached the relay's spool in {_WAIT_SECONDS:.0f}s\n"
                f"{postfix.diagnostics()}")


def _relay_through(tmp_path: Path, implicit: bool) -> None:
    need_program("postfix")
    with running(tmp_path) as relay:
        cred = relay.credential("acme")
        port = relay.submissions_port if implicit else relay.submission_port
        with smarthost_client(port, cred.username, cred.password,
                              wrappermode=implicit) as postfix:
            subject = f"via postfix {'465' if implicit else '587'} {time.time_ns()}"
            postfix.send("app@example.com", ["someone@example.net"],
                         message(subject=subject, to="someone@example.net"))
            (entry,) = _wait_for_spool(relay, postfix)
            assert entry["recipients"] == ["someone@example.net"]
            assert entry["mail_from"] == "app@example.com"
            assert entry["account"] == "acme"
            assert message_from_bytes(entry["data"])["Subject"] == subject
            # Postfix logs the relay's reply: its own queue is empty and the
            # relay's message id is in the log.
            deadline = time.monotonic() + 10
            while postfix.queue() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert postfix.queue() == [], postfix.diagnostics()
            assert entry["id"] in postfix.log()


def test_postfix_relays_over_starttls(tmp_path: Path) -> None:
    _relay_through(tmp_path, implicit=False)


def test_postfix_relays_over_implicit_tls(tmp_path: Path) -> None:
    _relay_through(tmp_path, implicit=True)


def test_wrong_password_defers_in_postfix(tmp_path: Path) -> None:
    need_program("postfix")
    with running(tmp_path) as relay:
        cred = relay.credential("acme")
        with smarthost_client(relay.submission_port, cred.username,
                              "wrong-password") as postfix:
            postfix.send("app@example.com", ["someone@example.net"],
                         message(subject="must not pass", to="someone@example.net"))
            reason = ""
            deadline = time.monotonic() + _WAIT_SECONDS
            while time.monotonic() < deadline:
                queued = postfix.queue()
                reasons = [r.get("delay_reason", "") for m in queued for r in m["recipients"]]
                if any(reasons):
                    reason = reasons[0]
                    break
                time.sleep(0.2)
            assert "535" in reason, postfix.diagnostics()
            assert "Authentication Credentials Invalid" in reason
            (held,) = postfix.queue()
            assert held["queue_name"] == "deferred"
            assert held["sender"] == "app@example.com"
            assert "535 5.7.8" in postfix.log()
            assert spooled(relay.config) == []


def test_postfix_to_relay_to_mx_found_in_dns_to_sink(
        tmp_path: Path, dns_server: TestDNSServer, sinks: SinkFactory) -> None:
    """The whole chain: Postfix (smarthost client) -> smtprelay -> MX via DNS -> sink."""
    need_program("postfix")
    with world(tmp_path, dns_server, sinks) as net:
        mx = net.smtp_host("example.net", starttls=True)
        relay = net.start()
        cred = relay.credential("acme")
        with smarthost_client(relay.submission_port, cred.username, cred.password) as postfix:
            subject = f"end to end {time.time_ns()}"
            data = message(subject=subject, to="someone@example.net",
                           body="Line one.\r\n.leading dot survives\r\n\r\nBye.\r\n")
            postfix.send("app@example.com", ["someone@example.net", "other@example.net"], data)
            (entry,) = _wait_for_spool(relay, postfix)
            assert net.wait_final(entry["id"], timeout=20) == {
                "someone@example.net": "delivered", "other@example.net": "delivered"}
        [txn] = mx.received
        assert txn.mail_from == "app@example.com"
        assert sorted(txn.rcpt_tos) == ["other@example.net", "someone@example.net"]
        assert txn.tls is True
        delivered = message_from_bytes(txn.data)
        assert delivered["Subject"] == subject
        # The relay sends the spooled bytes exactly: Postfix's own headers and the body.
        # (Once delivered, the spool keeps only the header section, so compare that.)
        spooled_headers = entry["data"][:header_end(entry["data"])]
        assert txn.data.startswith(spooled_headers)
        assert txn.data[len(spooled_headers):] == (
            b"Line one.\r\n.leading dot survives\r\n\r\nBye.\r\n")
        assert b"\r\n.leading dot survives\r\n" in txn.data
