"""The mailbox simulator end to end: a relay in mx mode with a real DNS server that logs
every question, the sender's own MX host as a sink, and events in a file.

Nothing for the simulator domain may reach DNS or a socket; the DSN of bounce@ and the
auto-reply of ooto@ travel the normal way to the sender's MX; no suppression entry,
no set statistics, no 24-hour quota, but the sending rate applies.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import time
from pathlib import Path
from typing import Any

from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool import set_stats
from tests.e2e.delivery_world import World, wait_for
from tests.support import client_context, events, message, send_raw

SIM = "simulator.smtprelay.invalid"


def _with_events(path: Path, **accounts: Any) -> dict[str, Any]:
    top: dict[str, Any] = {"configuration_sets": {"transactional": {"event_destinations": [
        {"name": "archive", "type": "file", "path": str(path)}]}}}
    if accounts:
        top["accounts"] = accounts
    return top


def test_every_simulator_address_answers_here_and_nothing_leaves(net: World) -> None:
    sender_mx = net.smtp_host("example.com")
    path = net.tmp_path / "events.ndjson"
    net.start(top=_with_events(path))
    net.dns.clear_log()
    rcpts = [f"success@{SIM}", f"bounce@{SIM}", f"ooto@{SIM}", f"complaint@{SIM}",
             f"suppressionlist@{SIM}", f"Success+label1@{SIM.upper()}", f"nobody@{SIM}"]
    message_id = net.submit(rcpts)
    states = net.wait_final(message_id)
    assert states == {
        f"success@{SIM}": "delivered", f"bounce@{SIM}": "bounced",
        f"ooto@{SIM}": "delivered", f"complaint@{SIM}": "delivered",
        f"suppressionlist@{SIM}": "bounced", f"Success+label1@{SIM}": "delivered",
        f"nobody@{SIM}": "bounced"}
    bounces = {o.index: (o.bounce_type, o.bounce_subtype, o.status)
               for o in net.outcomes(message_id) if o.kind == "bounce"}
    assert bounces == {1: ("Permanent", "General", "5.1.1"),
                       4: ("Permanent", "OnAccountSuppressionList", "5.1.1"),
                       6: ("Permanent", "General", "5.1.1")}

    # The DSN and the auto-reply reach the sender's MX, each from the null sender.
    received = wait_for(lambda: sender_mx.received if len(sender_mx.received) >= 2 else None)
    assert received, "the DSN and the auto-reply did not arrive"
    assert [(t.mail_from, t.rcpt_tos) for t in received] == [("<>", ("app@example.com",))] * 2
    parsed = [email.message_from_bytes(t.data, policy=email.policy.default) for t in received]
    [dsn] = [m for m in parsed if m.get_content_type() == "multipart/report"]
    assert f"bounce@{SIM}" in dsn.as_string() and f"suppressionlist@{SIM}" in dsn.as_string()
    [reply] = [m for m in parsed if m.get_content_type() == "text/plain"]
    assert reply["From"] == f"ooto@{SIM}" and reply["Auto-Submitted"] == "auto-replied"
    assert reply["Subject"] == "Auto: delivery test"
    assert reply["In-Reply-To"] and reply["In-Reply-To"] == reply["References"]

    # Nothing was asked about the simulator domain; the sender's domain was (DSN, reply).
    names = [name.lower() for name, _ in net.dns.queries]
    assert not [n for n in names if n.endswith(SIM)], names
    assert "example.com" in names

    # The events: Delivery, both Bounces, the Complaint.
    found = wait_for(lambda: [e for e in events(path, validate=False)
                              if e["eventType"] == "Complaint"] and events(path, validate=False))
    mine = [e for e in found if e["mail"]["messageId"] == message_id]
    kinds = sorted(e["eventType"] for e in mine)
    assert kinds.count("Complaint") == 1 and "Delivery" in kinds and "Send" in kinds
    [complaint] = [e["complaint"] for e in mine if e["eventType"] == "Complaint"]
    assert complaint["complaintFeedbackType"] == "abuse"
    assert complaint["complainedRecipients"] == [{"emailAddress": f"complaint@{SIM}"}]
    assert "userAgent" in complaint and "arrivalDate" in complaint
    subtypes = sorted((e["bounce"]["bounceType"], e["bounce"]["bounceSubType"])
                      for e in mine if e["eventType"] == "Bounce")
    assert subtypes == [("Permanent", "General"), ("Permanent", "OnAccountSuppressionList")]
    complaint_at = next(i for i, e in enumerate(mine) if e["eventType"] == "Complaint")
    delivery_at = next(i for i, e in enumerate(mine) if e["eventType"] == "Delivery")
    assert delivery_at < complaint_at

    # No suppression entries, no set statistics, no 24-hour quota used.
    assert net.relay is not None
    store = SQLiteSuppressionStore(net.relay.config.state_path)
    store.open()
    try:
        assert store.list() == []
    finally:
        store.close()
    totals = net.relay.relay.spool.set_totals(set_stats.Window.ending(time.time()))
    assert all(c[set_stats.Kind.SEND] == 0 and c[set_stats.Kind.BOUNCE] == 0
               and c[set_stats.Kind.DELIVERY] == 0 for c in totals.values()), totals
    assert net.relay.relay.shared.sent_now("acme") == 0


def test_simulator_recipients_use_the_rate_but_not_the_daily_quota(net: World) -> None:
    quota = {"max_send_rate": 1, "burst": 3, "max_24h_send": 1}
    net.start(top={"accounts": {"acme": {"identities": ["example.com"], "quota": quota}}})
    net.smtp_host("example.net")
    assert net.relay is not None
    cred = net.relay.credential("acme")
    with smtplib.SMTP("127.0.0.1", net.relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        # Four simulator recipients against a burst of three: the rate applies, and
        # refuses the message whole.
        four = [f"success+{label}@{SIM}" for label in "abcd"]
        code, text = send_raw(smtp, four, message(subject="rate"))
        assert code == 454 and b"rate" in text.lower()
        # Three, with a 24-hour quota of one: the burst allows them, the 24 h do not count.
        assert send_raw(smtp, four[:3], message(subject="rate"))[0] == 250
    assert net.relay.relay.shared.sent_now("acme") == 0
    time.sleep(1.2)  # a token back
    with smtplib.SMTP("127.0.0.1", net.relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        smtp.mail("app@example.com")
        # The one real recipient of the 24 hours is still there.
        assert smtp.rcpt("someone@example.net")[0] == 250
        assert smtp.data(message(subject="real"))[0] == 250
    assert net.relay.relay.shared.sent_now("acme") == 1
