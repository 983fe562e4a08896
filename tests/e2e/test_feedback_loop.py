"""The feedback loop end to end, over real sockets: VERP senders on delivery, reports back.

The relay delivers to an aiosmtpd sink found through the test DNS server; the sink's
MAIL FROM is a VERP address per recipient. The test then plays the remote side: a
Postfix DSN to one recipient's VERP address and an ARF complaint to a feedback
address go to the relay's feedback listener, and come out as SES events (an NDJSON
file destination), suppression entries and set statistics; the next message to those
addresses is suppressed.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from smtprelay.bounces import verp
from smtprelay.infra import metrics
from smtprelay.policy.suppression import SQLiteSuppressionStore, SuppressionEntry
from smtprelay.spool import set_stats
from smtprelay.spool.model import new_message_id
from smtprelay.transform.tokens import KeyRing
from tests.e2e.delivery_world import World, wait_for
from tests.e2e.feedback_mail import (
    arf_report,
    auto_reply,
    postfix_dsn,
    report_without_status_part,
)
from tests.support import RunningRelay, client_context, events, message

MAIL_FROM_DOMAIN = "bounce.example.com"
FBL = "fbl@example.com"
ROOT = Path(__file__).parents[2]


def settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "listeners": [
            {"name": "submission", "address": "127.0.0.1", "port": 0, "tls": "starttls"},
            {"name": "submissions", "address": "127.0.0.1", "port": 0, "tls": "implicit"},
            {"name": "feedback", "address": "127.0.0.1", "port": 0, "tls": "starttls",
             "role": "feedback"},
        ],
        "identities": {"example.com": {"mail_from_domain": MAIL_FROM_DOMAIN}},
        "feedback": {"addresses": [FBL], **extra.pop("feedback", {})},
        "configuration_sets": {"transactional": {"event_destinations": [
            {"name": "archive", "type": "file", "path": str(tmp_path / "events.ndjson")}]}},
        **extra,
    }


def start_with_mx(net: World, top: dict[str, Any]) -> RunningRelay:
    """The relay, once the MAIL FROM domain publishes the MX record that makes the
    relay use it (smtprelay.delivery.mail_from): the feedback listener's host."""
    net.mx(MAIL_FROM_DOMAIN, (10, "feedback.relay.test", "127.0.0.1"))
    return net.start(top=top)


def of(records: list[dict[str, Any]], message_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["mail"]["messageId"] == message_id and r["eventType"] == kind]


def verp_senders(net: World, message_id: str, rcpts: list[str]) -> dict[str, str]:
    """The VERP envelope sender each recipient's copy reached the sink with, checked."""
    assert net.relay is not None
    keyring = KeyRing.load(net.relay.config.tracking_keys_path)
    found: dict[str, str] = {}
    for txn in _received(net):
        [rcpt] = txn.rcpt_tos
        if rcpt in rcpts:
            local, _, domain = txn.mail_from.partition("@")
            assert domain == MAIL_FROM_DOMAIN
            tag = verp.decode(local, keyring)
            if tag.message_id == message_id:
                assert tag.recipient_index == rcpts.index(rcpt)
                found[rcpt] = txn.mail_from
    assert set(found) == set(rcpts)
    return found


_SINKS: dict[int, Any] = {}


def _received(net: World) -> list[Any]:
    return [txn for sink in _SINKS.get(id(net), []) for txn in sink.received]


def mx(net: World) -> Any:
    sink = net.smtp_host("dest.test")
    _SINKS.setdefault(id(net), []).append(sink)
    return sink


def send_report(relay: RunningRelay, rcpt: str, data: bytes, sender: str = "") -> str:
    with smtplib.SMTP("127.0.0.1", relay.port("feedback"), timeout=10) as smtp:
        smtp.ehlo("mx.dest.test")
        smtp.mail(sender)
        code, text = smtp.rcpt(rcpt)
        assert code == 250, (rcpt, code, text)
        code, text = smtp.data(data)
        assert code == 250, text
    return text.decode()


def suppressed(relay: RunningRelay, address: str) -> SuppressionEntry | None:
    store = SQLiteSuppressionStore(relay.config.state_path)
    try:
        return store.get("acme", address)
    finally:
        store.close()


def drained(relay: RunningRelay) -> bool:
    inbox = relay.relay.feedback_inbox
    assert inbox is not None
    return inbox.count() == 0


def set_counts(relay: RunningRelay) -> set_stats.Counts:
    totals = relay.relay.spool.set_totals(set_stats.Window.ending(time.time()),
                                          configuration_set="transactional")
    return totals.get("transactional", set_stats.Counts())


def reports_total(kind: str, result: str) -> float:
    return metrics.FEEDBACK_REPORTS.labels(kind=kind, result=result)._value.get()


def cli(relay: RunningRelay, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "smtprelay", *args, "-c",
                           str(tmp_path / "smtprelay.yaml")],
                          capture_output=True, timeout=60, cwd=ROOT)


# ---------------------------------------------------------------------------- the loop

def test_a_bounce_and_a_complaint_become_events_suppression_and_statistics(
        net: World, tmp_path: Path) -> None:
    mx(net)
    relay = start_with_mx(net, settings(tmp_path))
    rcpts = ["alice@dest.test", "bob@dest.test"]
    message_id = net.submit(rcpts)
    assert net.wait_final(message_id) == {r: "delivered" for r in rcpts}
    senders = verp_senders(net, message_id, rcpts)
    assert senders["alice@dest.test"] != senders["bob@dest.test"]
    before = reports_total("delivery-report", "matched")

    # The remote's DSN for alice, to her VERP address, from the null sender.
    send_report(relay, senders["alice@dest.test"], postfix_dsn(
        senders["alice@dest.test"],
        [("alice@dest.test", "failed", "5.1.1",
          "550 5.1.1 <alice@dest.test>: Recipient address rejected: User unknown in "
          "virtual mailbox table")]))
    # A provider's complaint about bob's copy, to the feedback address; the recipient
    # is redacted, the returned original's Return-Path (the VERP address) tells.
    original = (f"Return-Path: <{senders['bob@dest.test']}>\nFrom: app@example.com\n"
                "To: redacted@dest.test\nSubject: delivery test\n\nHello.\n")
    send_report(relay, FBL, arf_report(FBL, original_mail_from=None, original=original),
                sender="feedback@arf.provider.test")

    found = wait_for(lambda: (lambda r: r if of(r, message_id, "Bounce")
                              and of(r, message_id, "Complaint") else None)(
                                  events(tmp_path / "events.ndjson")))
    assert found, "no Bounce and Complaint events"
    [bounce] = of(found, message_id, "Bounce")
    assert bounce["bounce"]["bounceType"] == "Permanent"
    assert bounce["bounce"]["bounceSubType"] in ("General", "NoEmail")
    assert bounce["bounce"]["reportingMTA"] == "dns; mx.dest.test"
    [bounced] = bounce["bounce"]["bouncedRecipients"]
    assert bounced["emailAddress"] == "alice@dest.test"
    assert bounced["action"] == "failed"
    assert bounced["status"] == "5.1.1"
    assert "User unknown" in bounced["diagnosticCode"]
    assert bounce["mail"]["destination"] == rcpts
    [complaint] = of(found, message_id, "Complaint")
    detail = complaint["complaint"]
    assert detail["complainedRecipients"] == [{"emailAddress": "bob@dest.test"}]
    assert detail["complaintFeedbackType"] == "abuse"
    assert detail["userAgent"] == "Yahoo!-Mail-Feedback/2.0"
    assert "arrivalDate" in detail and detail["feedbackId"]

    alice = suppressed(relay, "alice@dest.test")
    bob = suppressed(relay, "bob@dest.test")
    assert alice is not None and (alice.reason, alice.source_message_id) == ("BOUNCE",
                                                                             message_id)
    assert bob is not None and (bob.reason, bob.source_message_id) == ("COMPLAINT", message_id)
    # The DSN's Diagnostic-Code stays on the entry; a complaint has none.
    assert alice.diagnostic is not None and "User unknown" in alice.diagnostic
    assert bob.diagnostic is None
    counts = wait_for(lambda: (lambda c: c if c[set_stats.Kind.COMPLAINT] else None)(
        set_counts(relay)))
    assert counts[set_stats.Kind.BOUNCE] == 1 and counts[set_stats.Kind.COMPLAINT] == 1
    assert counts.bounce_rate == pytest.approx(1 / 3)  # 2 deliveries, 1 hard bounce
    assert reports_total("delivery-report", "matched") == before + 1

    # The next message to them is accepted but never leaves: suppressed.
    again = net.submit(rcpts)
    assert net.wait_final(again) == {r: "suppressed" for r in rcpts}
    assert drained(relay)


# ----------------------------------------------------------------------- the listener

def test_the_listener_takes_only_verp_and_feedback_addresses_and_no_auth(
        net: World, tmp_path: Path) -> None:
    relay = start_with_mx(net, settings(tmp_path, feedback={"max_message_size": "64k"}))
    keyring = KeyRing.load(relay.config.tracking_keys_path)
    genuine = verp.address(new_message_id(), 0, MAIL_FROM_DOMAIN, keyring)
    local = genuine.partition("@")[0]
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    other_key = verp.address(new_message_id(), 0, MAIL_FROM_DOMAIN, KeyRing.generate())
    with smtplib.SMTP("127.0.0.1", relay.port("feedback"), timeout=10) as smtp:
        code, text = smtp.ehlo("mx.dest.test")
        assert code == 250 and b"STARTTLS" in text and b"AUTH" not in text
        assert b"SIZE 65536" in text
        smtp.starttls(context=client_context())
        code, text = smtp.ehlo("mx.dest.test")
        assert code == 250 and b"AUTH" not in text
        code, text = smtp.docmd("AUTH", "PLAIN AHVzZXIAcGFzcw==")
        assert code == 503, text
        assert smtp.mail("")[0] == 250
        for address in ("random-person@example.com", f"nobody@{MAIL_FROM_DOMAIN}",
                        f"{flipped}@{MAIL_FROM_DOMAIN}", other_key,
                        f"{local}@elsewhere.test"):
            code, text = smtp.rcpt(address)
            assert (code, text[:5]) == (550, b"5.1.1"), address
        assert smtp.rcpt(genuine.upper())[0] == 250  # MTAs may change the case
        assert smtp.rcpt("FBL@Example.COM")[0] == 250
        code, text = smtp.data(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 70)
        assert code == 552, text
        assert smtp.mail("", ["SIZE=100000"])[0] == 552
    assert drained(relay)


# -------------------------------------------------------------------------- bad input

def test_bad_and_odd_reports_are_kept_ignored_or_attributed_carefully(
        net: World, tmp_path: Path) -> None:
    mx(net)
    relay = start_with_mx(net, settings(tmp_path))
    rcpts = ["carol@dest.test", "dave@dest.test"]
    message_id = net.submit(rcpts)
    net.wait_final(message_id)
    senders = verp_senders(net, message_id, rcpts)
    carol, dave = senders["carol@dest.test"], senders["dave@dest.test"]
    keyring = KeyRing.load(relay.config.tracking_keys_path)
    never_sent = verp.address(new_message_id(), 0, MAIL_FROM_DOMAIN, keyring)

    sent: dict[str, bytes] = {
        # A multipart/report that lost its delivery-status part: nothing to act on.
        "no-status": report_without_status_part(carol),
        # Only a status for an address the message never went to (a forward, say).
        "stranger": postfix_dsn(carol, [("stranger@elsewhere.test", "failed", "5.1.1",
                                         "550 5.1.1 User unknown")]),
        # A tag for a message this relay does not know.
        "unknown": postfix_dsn(never_sent, [("x@dest.test", "failed", "5.1.1",
                                             "550 5.1.1 User unknown")]),
        # A complaint with neither a tag nor our message id.
        "untraceable": arf_report(FBL, original_mail_from=None,
                                  original="From: a@b.test\nSubject: hi\n\nhi\n"),
    }
    ids = {name: send_report(relay, carol if name != "unknown" and name != "untraceable"
                             else (never_sent if name == "unknown" else FBL), data)
           for name, data in sent.items()}
    # dave: a delay for him and a failure for a stranger in one DSN; then his
    # out-of-office reply.
    send_report(relay, dave, postfix_dsn(dave, [
        ("dave@dest.test", "delayed", "4.4.1", "421 4.4.1 connection timed out"),
        ("stranger2@elsewhere.test", "failed", "5.1.1", "550 5.1.1 User unknown")]))
    send_report(relay, dave, auto_reply(dave), sender="bob@dest.test")
    # carol complains; the provider sends no original, only Original-Mail-From.
    send_report(relay, FBL, arf_report(FBL, original_mail_from=carol, original=None,
                                       feedback_type="abuse"))
    wait_for(lambda: drained(relay)
             and of(events(tmp_path / "events.ndjson"), message_id, "Complaint"))
    assert drained(relay)

    records = events(tmp_path / "events.ndjson")
    assert not of(records, message_id, "Bounce")
    [delay] = of(records, message_id, "DeliveryDelay")
    assert [r["emailAddress"] for r in delay["deliveryDelay"]["delayedRecipients"]] == [
        "dave@dest.test"]
    [complaint] = of(records, message_id, "Complaint")
    assert complaint["complaint"]["complainedRecipients"] == [
        {"emailAddress": "carol@dest.test"}]
    entry = suppressed(relay, "carol@dest.test")
    assert entry is not None and entry.reason == "COMPLAINT"
    for address in ("dave@dest.test", "stranger@elsewhere.test", "stranger2@elsewhere.test"):
        assert suppressed(relay, address) is None, address

    listed = cli(relay, tmp_path, "feedback", "unmatched", "--json")
    assert listed.returncode == 0, listed.stderr
    reasons = {item["id"]: item["reason"] for item in json.loads(listed.stdout)}
    number = {name: int(reply.split()[-2]) for name, reply in ids.items()}
    assert set(reasons) == set(number.values())
    assert "without a delivery-status part" in reasons[number["no-status"]]
    assert "not sent to: stranger@elsewhere.test" in reasons[number["stranger"]]
    assert "not known here" in reasons[number["unknown"]]
    assert "no VERP tag or relay message id" in reasons[number["untraceable"]]
    shown = cli(relay, tmp_path, "feedback", "show", str(number["stranger"]))
    assert shown.returncode == 0 and shown.stdout == sent["stranger"]
    table = cli(relay, tmp_path, "feedback", "unmatched")
    assert b"4 unmatched reports; 0 waiting" in table.stdout
    missing = cli(relay, tmp_path, "feedback", "show", "999999")
    assert missing.returncode == 1 and b"no report 999999" in missing.stderr


# ------------------------------------------------------------------- volume and restarts

BOMB = 10_000
BOMB_CONNECTIONS = 4
SUBMISSION_BOUND = 2.0  # seconds: the slowest submission while the reports pour in


def test_ten_thousand_reports_are_all_processed_while_submissions_keep_flowing(
        net: World, tmp_path: Path) -> None:
    mx(net)
    # All from 127.0.0.1 within seconds: far past the per-client message limit, which
    # is not what this test is about (tests/e2e/test_feedback_abuse.py is).
    relay = start_with_mx(net, settings(tmp_path, feedback={
        "max_messages_per_ip": 100_000}))
    message_id = net.submit(["erin@dest.test"])
    net.wait_final(message_id)
    sender = verp_senders(net, message_id, ["erin@dest.test"])["erin@dest.test"]
    report = tmp_path / "dsn.eml"
    report.write_bytes(postfix_dsn(sender, [("erin@dest.test", "failed", "5.1.1",
                                             "550 5.1.1 User unknown")]))
    before = reports_total("delivery-report", "matched")
    ignored_before = reports_total("delivery-report", "ignored")
    cred = relay.credential("acme")
    latencies: list[float] = []
    stop = threading.Event()
    failures: list[str] = []

    def submit_meanwhile() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=30) as smtp:
                smtp.starttls(context=client_context())
                smtp.login(cred.username, cred.password)
                while not stop.is_set():
                    started = time.monotonic()
                    smtp.sendmail("app@example.com", ["someone@dest.test"],
                                  message(subject="during the flood"))
                    latencies.append(time.monotonic() - started)
                    time.sleep(0.02)
        except Exception as exc:  # reported by the main thread
            failures.append(repr(exc))

    started = time.monotonic()
    submitter = threading.Thread(target=submit_meanwhile, daemon=True)
    submitter.start()
    # The reports come from another process, so its SMTP client does not share the
    # relay's interpreter lock: what is measured is the relay.
    blast = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.feedback_mail", str(relay.port("feedback")),
         sender, str(report), str(BOMB), str(BOMB_CONNECTIONS)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = blast.communicate(timeout=120)
    finally:
        if blast.poll() is None:
            blast.kill()
    assert blast.returncode == 0, err.decode()
    sent_in = time.monotonic() - started
    wait_for(lambda: drained(relay), timeout=120, interval=0.2)
    processed_in = time.monotonic() - started
    stop.set()
    submitter.join(30)
    assert not failures, failures
    # All processed; the same bounce of the same recipient is counted once (issue 16:
    # a repeated report must not inflate the bounce rate), the rest ignored as repeats.
    assert reports_total("delivery-report", "matched") - before == 1
    assert reports_total("delivery-report", "ignored") - ignored_before == BOMB - 1
    assert len(latencies) > 20
    assert max(latencies) < SUBMISSION_BOUND, sorted(latencies)[-5:]
    counts = set_counts(relay)
    assert counts[set_stats.Kind.BOUNCE] == 1
    entry = suppressed(relay, "erin@dest.test")
    assert entry is not None and entry.reason == "BOUNCE"
    print(f"\n{BOMB} reports: sent in {sent_in:.1f}s ({out.decode().strip()}), all processed "
          f"after {processed_in:.1f}s; {len(latencies)} submissions meanwhile, median "
          f"{sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms, max "
          f"{max(latencies) * 1000:.0f} ms")


def test_reports_waiting_in_the_inbox_are_processed_after_a_restart(
        net: World, tmp_path: Path) -> None:
    mx(net)
    relay = start_with_mx(net, settings(tmp_path))
    message_id = net.submit(["frank@dest.test"])
    net.wait_final(message_id)
    sender = verp_senders(net, message_id, ["frank@dest.test"])["frank@dest.test"]
    processor = relay.relay.feedback_processor
    assert processor is not None
    relay.call(processor.stop())  # as if the process died before processing them
    for _ in range(3):
        send_report(relay, sender, postfix_dsn(sender, [
            ("frank@dest.test", "failed", "5.2.1", "550 5.2.1 mailbox disabled")]))
    inbox = relay.relay.feedback_inbox
    assert inbox is not None and inbox.count() == 3
    assert suppressed(relay, "frank@dest.test") is None
    net.stop()

    relay = start_with_mx(net, settings(tmp_path))
    # Three reports of one bounce of one recipient: all processed, one Bounce event.
    assert wait_for(lambda: drained(relay)
                    and len(of(events(tmp_path / "events.ndjson"), message_id, "Bounce")) == 1)
    assert set_counts(relay)[set_stats.Kind.BOUNCE] == 1
    entry = suppressed(relay, "frank@dest.test")
    assert entry is not None and entry.reason == "BOUNCE"


def test_a_repeated_complaint_and_a_dsn_after_a_bounce_at_delivery_count_once(
        net: World, tmp_path: Path) -> None:
    """Issue 16: two complaints from one recipient about one message counted twice (two
    over 250 messages crossed 0.5 % and paused the account); a DSN for a recipient the
    MX had already refused at RCPT counted a second bounce."""
    sink = net.smtp_host("dest.test", rcpt_replies={"gone@dest.test": "550 5.1.1 no such user"})
    _SINKS.setdefault(id(net), []).append(sink)
    relay = start_with_mx(net, settings(tmp_path))
    rcpts = ["bob@dest.test", "gone@dest.test"]
    message_id = net.submit(rcpts)
    assert net.wait_final(message_id) == {"bob@dest.test": "delivered",
                                          "gone@dest.test": "bounced"}
    [bob_sender] = [t.mail_from for t in _received(net) if t.rcpt_tos == ("bob@dest.test",)]
    keyring = KeyRing.load(relay.config.tracking_keys_path)
    gone_sender = verp.address(message_id, 1, MAIL_FROM_DOMAIN, keyring)
    original = (f"Return-Path: <{bob_sender}>\nFrom: app@example.com\n"
                "To: redacted@dest.test\nSubject: delivery test\n\nHello.\n")
    for _ in range(2):
        send_report(relay, FBL, arf_report(FBL, original_mail_from=None, original=original),
                    sender="feedback@arf.provider.test")
    send_report(relay, gone_sender, postfix_dsn(gone_sender, [
        ("gone@dest.test", "failed", "5.1.1", "550 5.1.1 no such user")]))
    assert wait_for(lambda: drained(relay) and of(events(tmp_path / "events.ndjson"),
                                                   message_id, "Complaint"))
    counts = set_counts(relay)
    assert counts[set_stats.Kind.COMPLAINT] == 1 and counts[set_stats.Kind.BOUNCE] == 1
    published = events(tmp_path / "events.ndjson")
    assert len(of(published, message_id, "Complaint")) == 1
    assert len(of(published, message_id, "Bounce")) == 1  # the one at delivery


def test_junk_to_the_feedback_address_is_cut_and_kept_under_its_quota(
        net: World, tmp_path: Path) -> None:
    """Issue 16: 20 unauthenticated 9.5 MB junk reports were kept whole for 30 days
    (190 MB). Now each unmatched report keeps its first unmatched_max_size bytes and
    all of them stay under unmatched_quota, the oldest dropped first."""
    mx(net)
    relay = start_with_mx(net, settings(tmp_path, feedback={
        "unmatched_max_size": "1k", "unmatched_quota": "4k"}))
    dropped = metrics.FEEDBACK_UNMATCHED_DROPPED._value.get()
    junk = b"From: someone@else.test\r\nSubject: junk\r\n\r\n" + b"x" * 70 + b"\r\n"
    for n in range(8):
        send_report(relay, FBL, junk * 50 + f"number {n}\r\n".encode(),
                    sender="spammer@else.test")
    assert wait_for(lambda: drained(relay))
    inbox = relay.relay.feedback_inbox
    assert inbox is not None
    conn = sqlite3.connect(inbox.path)
    try:
        rows = conn.execute("SELECT id, length(raw), size FROM reports"
                            " WHERE state = 'unmatched' ORDER BY id").fetchall()
    finally:
        conn.close()
    assert rows and all(length <= 1024 and size > 3000 for _, length, size in rows)
    assert sum(length for _, length, _ in rows) <= 4096
    assert len(rows) == 4  # the newest four; the oldest went first
    assert metrics.FEEDBACK_UNMATCHED_DROPPED._value.get() - dropped == 4
