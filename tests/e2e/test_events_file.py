"""SES events end to end: messages through the real daemon, events in an NDJSON file.

The relay runs as `smtprelay serve` (capture delivery, so deliveries really happen);
each line of the file is checked against the JSON Schema in docs/ written from the SES
guide, and against what happened to the message.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import os
import re
import signal
import smtplib
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.delivery_world import wait_for
from tests.support import (
    DaemonProcess,
    base_config,
    client_context,
    events,
    fill,
    metric,
    small_disk,
    submit_to_daemon,
    write_config,
)


def destinations(path: Path, **options: Any) -> dict[str, Any]:
    return {"transactional": {"event_destinations": [
        {"name": "archive", "type": "file", "path": str(path), **options}]}}


def by_type(records: list[dict[str, Any]], message_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["mail"]["messageId"] == message_id:
            found.setdefault(record["eventType"], []).append(record)
    return found


def test_send_suppression_bounce_and_delivery_events(tmp_path: Path) -> None:
    path = tmp_path / "events" / "ses.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"},
                           configuration_sets=destinations(path)).start()
    try:
        daemon.cli("suppression", "add", "gone@example.net", "--account", "acme",
                   "--reason", "BOUNCE")
        message_id = submit_to_daemon(daemon, ["ok@example.net", "gone@example.net"],
                                      subject="events please")
        assert wait_for(lambda: "Delivery" in by_type(events(path), message_id), 20)
    finally:
        assert daemon.stop() == 0
    found = by_type(events(path), message_id)
    assert sorted(found) == ["Bounce", "Delivery", "Send"]
    [send], [bounce], [delivery] = found["Send"], found["Bounce"], found["Delivery"]
    mail = send["mail"]
    assert mail["source"] == "app@example.com" and mail["sendingAccountId"] == "acme"
    assert mail["destination"] == ["ok@example.net", "gone@example.net"]
    assert mail["commonHeaders"]["subject"] == "events please"
    assert mail["tags"]["ses:configuration-set"] == ["transactional"]
    assert send["send"] == {}
    assert bounce["bounce"]["bounceType"] == "Permanent"
    assert bounce["bounce"]["bounceSubType"] == "OnAccountSuppressionList"
    assert [r["emailAddress"] for r in bounce["bounce"]["bouncedRecipients"]] == [
        "gone@example.net"]
    assert delivery["delivery"]["recipients"] == ["ok@example.net"]
    assert delivery["delivery"]["reportingMTA"] == "relay.test"
    assert delivery["delivery"]["processingTimeMillis"] >= 0
    # In order: the Send was written first.
    order = [r["eventType"] for r in events(path) if r["mail"]["messageId"] == message_id]
    assert order[0] == "Send"
    # Everything published: the outbox is empty again.
    conn = sqlite3.connect(daemon.config.spool_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM mail_records").fetchone()[0] == 1
    finally:
        conn.close()


def test_sets_without_destinations_record_nothing(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}).start()
    try:
        submit_to_daemon(daemon, ["ok@example.net"])
    finally:
        assert daemon.stop() == 0
    conn = sqlite3.connect(daemon.config.spool_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM mail_records").fetchone()[0] == 0
    finally:
        conn.close()


def test_unwritable_destination_keeps_events_until_fixed_even_across_a_restart(
        tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    bad = blocked / "ses.ndjson"
    bad.mkdir()  # a directory where the file should be: every write fails
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"},
                           configuration_sets=destinations(bad)).start()
    try:
        first = submit_to_daemon(daemon, ["a@example.net"], subject="first")
        daemon.wait_log("configuration_sets.transactional.event_destinations[archive] "
                        f"({bad}) failed, retrying in")
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.log()
    # Restart with the path fixed (same destination name: same position).
    os.rmdir(bad)
    daemon.start()
    try:
        second = submit_to_daemon(daemon, ["b@example.net"], subject="second")
        assert wait_for(lambda: "Delivery" in by_type(events(bad), second), 20)
    finally:
        assert daemon.stop() == 0
    records = events(bad)
    assert sorted(by_type(records, first)) == ["Delivery", "Send"]
    ids = [r["mail"]["messageId"] for r in records]
    assert ids.index(first) < ids.index(second)


def test_reload_adds_a_destination_that_starts_with_new_events(tmp_path: Path) -> None:
    old = tmp_path / "old.ndjson"
    new = tmp_path / "new.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"},
                           configuration_sets=destinations(old)).start()
    try:
        before = submit_to_daemon(daemon, ["a@example.net"], subject="before")
        assert wait_for(lambda: "Delivery" in by_type(events(old), before), 20)
        config = yaml.safe_load(daemon.config_path.read_text())
        config["configuration_sets"]["transactional"]["event_destinations"].append(
            {"name": "opens", "type": "file", "path": str(new), "event_types": ["Send"]})
        write_config(daemon.config_path, config)
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded")
        # The publisher places the new destination (its position in the outbox) within
        # a pass; mail submitted before that would be behind its starting point.
        assert wait_for(lambda: "transactional/opens" in cursors(daemon), 20)
        after = submit_to_daemon(daemon, ["b@example.net"], subject="after")
        assert wait_for(lambda: "Delivery" in by_type(events(old), after), 20)
        assert wait_for(lambda: by_type(events(new), after), 20)
    finally:
        assert daemon.stop() == 0
    assert sorted(by_type(events(new), after)) == ["Send"]
    assert by_type(events(new), before) == {}


def cursors(daemon: DaemonProcess) -> set[str]:
    """The destinations that have a position in the outbox."""
    conn = sqlite3.connect(daemon.config.spool_path)
    try:
        return {row[0] for row in conn.execute("SELECT destination FROM event_cursors")}
    finally:
        conn.close()


def test_file_rotates_by_size(tmp_path: Path) -> None:
    path = tmp_path / "ses.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"},
                           configuration_sets=destinations(path, max_size=2000, keep=2)).start()
    try:
        for i in range(4):
            # One at a time: each message's two events (~2.4 KB) pass max_size.
            message_id = submit_to_daemon(daemon, ["a@example.net"], subject=f"n{i}")
            assert wait_for(lambda mid=message_id: any(  # type: ignore[misc]
                by_type(events(p), mid).get("Delivery") for p in tmp_path.glob("ses.ndjson*")),
                20)
    finally:
        assert daemon.stop() == 0
    assert (tmp_path / "ses.ndjson.1").exists() and (tmp_path / "ses.ndjson.2").exists()
    assert not (tmp_path / "ses.ndjson.3").exists()
    # A file is rotated once a batch takes it to max_size, never before.
    for rotated in (tmp_path / "ses.ndjson.1", tmp_path / "ses.ndjson.2"):
        assert rotated.stat().st_size >= 2000
    assert not path.exists() or path.stat().st_size < 2000


@pytest.mark.parametrize("bad", [
    {"name": "x", "type": "file"},
    {"name": "x", "type": "webhook", "path": "/tmp/x"},
    {"name": "bad name", "type": "file", "path": "/tmp/x"},
    {"name": "x", "type": "file", "path": "/tmp/x", "event_types": ["Opened"]},
])
def test_bad_destinations_are_refused_by_check_config(tmp_path: Path, bad: dict[str, Any]
                                                     ) -> None:
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "var", configuration_sets={
        "transactional": {"event_destinations": [bad]}}))
    run = subprocess.run([sys.executable, "-m", "smtprelay", "check-config", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "configuration_sets.transactional.event_destinations[0]" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_full_disk_holds_events_and_nothing_else_until_space_is_back(tmp_path: Path
                                                                       ) -> None:
    host = "links.test"
    with small_disk(tmp_path / "disk") as mounted:
        if mounted:
            path = tmp_path / "disk" / "ses.ndjson"
            filler = fill(tmp_path / "disk")
        else:  # no tmpfs here: every write to /dev/full fails with ENOSPC
            path = Path("/dev/full")
        daemon = DaemonProcess(
            tmp_path, delivery={"mode": "capture"}, tracking_domains={host: {}},
            configuration_sets={"transactional": {
                "tracking": {"click": True, "domain": host, "https": False},
                **destinations(path, retry_max_interval="1s")["transactional"]}}).start()
        written = path
        try:
            cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)

            def submit(subject: str) -> str:
                html = '<html><body><a href="https://shop.example/p">Buy</a></body></html>'
                with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as smtp:
                    smtp.starttls(context=client_context())
                    smtp.login(cred["username"], cred["password"])
                    smtp.mail("app@example.com")
                    smtp.rcpt("reader@example.net")
                    code, reply = smtp.data((
                        f"From: app@example.com\r\nTo: reader@example.net\r\n"
                        f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
                        f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n").encode())
                assert code == 250, reply  # acceptance goes on: the spool is elsewhere
                return reply.decode().split()[-1]

            first = submit("while full")
            daemon.wait_log("configuration_sets.transactional.event_destinations[archive] "
                            f"({path}) failed, retrying in 1s: No space left on device")
            assert metric(daemon, "smtprelay_event_publish_failures_total",
                          destination="transactional/archive") >= 1
            second = submit("still full")
            # The tracking server answers too (and its Click event waits with the rest).
            captured = wait_for(lambda: [c for c in json.loads(
                daemon.cli("captured", "list", "--json").stdout) if c["message_id"] == first])
            delivered = email.message_from_bytes(Path(captured[0]["file"]).read_bytes(),
                                                 policy=email.policy.default)
            [click] = re.findall(rf"http://{host}(/c/[A-Za-z0-9_-]+)", delivered.get_content())
            conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["http"], timeout=10)
            conn.request("GET", click, headers={"Host": host, "User-Agent": "Mozilla/5.0"})
            answer = conn.getresponse()
            conn.close()
            assert answer.status == 302
            assert answer.getheader("Location") == "https://shop.example/p"
            if mounted:
                filler.unlink()
            else:  # the space is "back" where the operator points the destination now
                written = tmp_path / "ses.ndjson"
                config = yaml.safe_load(daemon.config_path.read_text())
                config["configuration_sets"]["transactional"]["event_destinations"][0][
                    "path"] = str(written)
                write_config(daemon.config_path, config)
                daemon.proc.send_signal(signal.SIGHUP)

            def all_written() -> bool:
                found = {mid: sorted(by_type(events(written), mid)) for mid in (first, second)}
                return found == {first: ["Click", "Delivery", "Send"],
                                 second: ["Delivery", "Send"]}

            assert wait_for(all_written, 20), events(written)
        finally:
            assert daemon.stop() == 0
        # Every line whole (events() parses each), none twice.
        records = written.read_bytes().splitlines()
        assert len(records) == len(set(records)) == 5
    assert "Traceback" not in daemon.log()


def test_a_record_that_cannot_be_rendered_is_kept_aside_and_the_stream_goes_on(
        tmp_path: Path) -> None:
    """Issue 16: one record no destination could serialise blocked its set's events for
    ever, across restarts. Here a record of a type this relay does not know (as a newer
    version might write), then a message: its events arrive, the record is kept aside."""
    path = tmp_path / "events" / "ses.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"},
                           configuration_sets=destinations(path)).start()
    try:
        conn = sqlite3.connect(daemon.config.spool_path)
        try:
            with conn:
                conn.execute(
                    "INSERT INTO events (event_id, message_id, type, configuration_set, at,"
                    " detail) VALUES ('poison-1', 'nosuchmessage', 'FromTheFuture',"
                    " 'transactional', 1700000000.0, '{}')")
        finally:
            conn.close()
        message_id = submit_to_daemon(daemon, ["ok@example.net"], subject="after poison")
        assert wait_for(lambda: "Delivery" in by_type(events(path), message_id), 20)
    finally:
        assert daemon.stop() == 0
    aside = (daemon.config.server.data_dir / "events-undelivered"
             / "transactional.archive.unrenderable")
    [kept] = [json.loads(line) for line in aside.read_text().splitlines()]
    assert kept["eventId"] == "poison-1" and "FromTheFuture" in kept["reason"]
    assert daemon.log().count("poison-1") == 1  # logged once
