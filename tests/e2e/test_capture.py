"""The delivery pipeline with delivery.mode: capture: spool -> scheduler -> .eml files."""

from __future__ import annotations

import functools
import json
import signal
import sqlite3
from pathlib import Path

from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool.store import get_body, get_message, get_outcomes, open_for_cli
from tests.e2e import delivery_world
from tests.support import DaemonProcess, submit_to_daemon

# These tests wait 10 s at most for what they expect (the delivery tests 15 s).
wait_for = functools.partial(delivery_world.wait_for, timeout=10.0)


def send(daemon: DaemonProcess, rcpts: list[str]) -> str:
    return submit_to_daemon(daemon, rcpts, subject="captured")


def states(daemon: DaemonProcess, message_id: str) -> dict[str, str]:
    conn = open_for_cli(daemon.config.spool_path)
    try:
        stored = get_message(conn, message_id)
        assert stored is not None
        return {r.address: r.state.value for r in stored.recipients}
    finally:
        conn.close()


def test_messages_are_captured_per_domain_with_the_spooled_bytes(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}).start()
    try:
        store = SQLiteSuppressionStore(daemon.config.state_path)
        store.open()
        store.add("acme", "gone@x.net", "BOUNCE")
        store.close()
        message_id = send(daemon, ["a@x.net", "b@X.net", "c@y.org", "gone@x.net"])
        final = wait_for(lambda: (s := states(daemon, message_id)) and
                         "queued" not in s.values() and "sending" not in s.values() and s)
        assert final == {"a@x.net": "delivered", "b@x.net": "delivered",
                         "c@y.org": "delivered", "gone@x.net": "suppressed"}
        # The suppressed recipient makes a DSN to the sender, captured like any mail.
        everything = wait_for(lambda: len(entries := json.loads(
            daemon.cli("captured", "list", "--json").stdout)) == 3 and entries)
        assert sorted((c["domain"], tuple(c["recipients"]), c["mail_from"])
                      for c in everything) == [
            ("example.com", ("app@example.com",), ""),
            ("x.net", ("a@x.net", "b@x.net"), "app@example.com"),
            ("y.org", ("c@y.org",), "app@example.com")]
        listed = [c for c in everything if c["message_id"] == message_id]
        conn = open_for_cli(daemon.config.spool_path)
        # Finished: the spool keeps only the header section (the body filled disks).
        headers = get_body(conn, message_id) or b""
        outcomes = get_outcomes(conn, message_id)
        conn.close()
        for entry in listed:
            captured = Path(entry["file"]).read_bytes()
            assert captured.startswith(headers) and headers.endswith(b"\r\n\r\n")
            assert captured[len(headers):] == b"Hello.\r\n"
            assert entry["mail_from"] == "app@example.com"
        shown = daemon.cli("captured", "show", f"{message_id}.y.org").stdout
        assert "Subject: captured" in shown
        kinds = sorted((o.index, o.kind) for o in outcomes)
        assert kinds == [(0, "delivery"), (1, "delivery"), (2, "delivery"), (3, "bounce")]
    finally:
        daemon.stop()


def test_failed_capture_is_deferred_then_flushed(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"})
    blocker = daemon.config.capture_dir
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the capture directory should be\n")
    daemon.start()
    try:
        message_id = send(daemon, ["a@x.net"])
        assert wait_for(lambda: states(daemon, message_id) == {"a@x.net": "deferred"})
        listing = daemon.cli("queue", "list").stdout
        assert "deferred   a@x.net" in listing and "capture failed" in listing
        blocker.unlink()
        assert daemon.cli("queue", "flush").stdout.startswith("1 recipient(s) due now")
        assert wait_for(lambda: states(daemon, message_id) == {"a@x.net": "delivered"})
        assert len(json.loads(daemon.cli("captured", "list", "--json").stdout)) == 1
    finally:
        daemon.stop()


def test_recipients_held_by_a_killed_daemon_are_delivered_after_restart(
        tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()  # hold mode: nothing is delivered
    message_id = send(daemon, ["a@x.net", "b@y.org"])
    daemon.stop(signal.SIGKILL)
    # As if the daemon died in the middle of a delivery attempt.
    conn = sqlite3.connect(daemon.config.spool_path)
    conn.execute("UPDATE recipients SET state = 'sending'")
    conn.commit()
    conn.close()
    config = daemon.config_path.read_text().replace("mode: hold", "mode: capture")
    assert "mode: capture" in config
    daemon.config_path.write_text(config)
    daemon.start()
    try:
        assert wait_for(lambda: states(daemon, message_id) == {
            "a@x.net": "delivered", "b@y.org": "delivered"})
        assert "recovered_in_flight=2" in daemon.log()
    finally:
        daemon.stop()
