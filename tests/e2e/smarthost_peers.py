"""What the Exim and Sendmail smarthost tests share: a relay with a certificate from a
test CA (so a peer can verify it), bounded waits on its spool, and the AUTH user the
relay recorded for a message."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smtprelay.config import Config
from tests.peers.testca import TestCA
from tests.peers.unpacked import RELAY_NAME
from tests.support import RunningRelay, running, spooled, tls

WAIT_SECONDS = 30.0


@dataclass
class VerifiedRelay:
    relay: RunningRelay
    ca: TestCA           # signed the relay's certificate
    other_ca: TestCA     # signed nothing the relay has


@contextlib.contextmanager
def relay_with_ca(tmp_path: Path) -> Iterator[VerifiedRelay]:
    ca = TestCA.create(tmp_path / "ca")
    other = TestCA.create(tmp_path / "other-ca", name="some other CA")
    cert, key = ca.issue(tmp_path / "relay-tls", RELAY_NAME)
    with running(tmp_path, tls=tls(cert, key)) as relay:
        yield VerifiedRelay(relay, ca, other)


def wait_for_spool(relay: RunningRelay, diagnostics: Callable[[], str],
                   count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        entries = spooled(relay.config)
        if len(entries) >= count:
            return entries
        time.sleep(0.1)
    pytest.fail(f"nothing reached the relay's spool in {WAIT_SECONDS:.0f}s\n{diagnostics()}")


def auth_user(config: Config, message_id: str) -> str | None:
    """The AUTH identity the relay recorded with a spooled message."""
    conn = sqlite3.connect(config.spool_path)
    try:
        row = conn.execute("SELECT auth_user FROM messages WHERE id = ?",
                           (message_id,)).fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


def assert_relayed(relay: RunningRelay, username: str, diagnostics: Callable[[], str],
                   subject: str, body: str) -> dict[str, Any]:
    """The one message a peer relayed, as the relay spooled it: envelope, account, the
    AUTH user, subject and body byte for byte. Returns the spooled entry."""
    from email import message_from_bytes
    (entry,) = wait_for_spool(relay, diagnostics)
    assert entry["mail_from"] == "app@example.com"
    assert sorted(entry["recipients"]) == ["other@example.net", "someone@example.net"]
    assert entry["account"] == "acme"
    assert auth_user(relay.config, entry["id"]) == username
    assert message_from_bytes(entry["data"])["Subject"] == subject
    assert entry["data"].endswith(b"\r\n\r\n" + body.encode())
    return entry
