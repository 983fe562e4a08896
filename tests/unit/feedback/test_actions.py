"""What a stored report leads to (smtprelay.feedback.actions): the samples of
tests/data/feedback, traced to a message by their VERP tags, planned into events,
suppression entries and counters, or kept as unmatched with the reason."""

from __future__ import annotations

import dataclasses

from smtprelay.feedback import actions
from smtprelay.feedback.arf import ComplaintReport
from smtprelay.feedback.inbox import Report
from smtprelay.spool import set_stats
from smtprelay.spool.sent import SentMessage
from smtprelay.transform.tokens import Key, KeyRing
from tests.unit.feedback.kit import DATA

RING = KeyRing([Key(1, b"feedback-samples-secret-0123456789", 1.69e9)])
NOW = 1.7e9
TAG0 = "b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy@bounce.example.com"
TAG1 = "b-aeayxt7fnaaf6ku4hzy5as4gaipid6aulayopgx4nm@bounce.example.com"
MSG_A = "018bcfe56800-5f2a9c3e71d04b86"
SENT_A = SentMessage(MSG_A, "acme", "tx", ("user@example.net", "second@example.org"), True)


SEED = "seed"


def report(name: str, *recipients: str, token: str = SEED, report_id: int = 7) -> Report:
    raw = (DATA / name).read_bytes()
    return Report(id=report_id, token=token, received_at=NOW, listener="feedback",
                  peer_ip="192.0.2.1", helo="mx.example.net", tls=None, mail_from="",
                  recipients=recipients, size=len(raw), state="pending", kind=None,
                  reason=None, processed_at=None, raw=raw)


def planned(stored: Report, messages: dict[str, SentMessage] | None = None,
            publishes: bool = True) -> actions.Plan:
    examined = actions.examine(stored, RING, now=NOW)
    return actions.plan(stored, examined, {MSG_A: SENT_A} if messages is None else messages,
                        lambda name: publishes)


def test_a_permanent_bounce_makes_an_event_a_suppression_entry_and_a_count() -> None:
    plan = planned(report("postfix_bounce.eml", TAG0))
    assert plan.result == actions.MATCHED and plan.verdict.unmatched is None
    assert [(s.account, s.address, s.reason, s.message_id) for s in plan.suppressions] == [
        ("acme", "user@example.net", "BOUNCE", MSG_A)]
    assert [(c.account, c.configuration_set, dict(c.increments)) for c in plan.counts] == [
        ("acme", "tx", {set_stats.Kind.BOUNCE: 1})]
    [event] = plan.events
    assert (event.type, event.message_id, event.configuration_set) == ("Bounce", MSG_A, "tx")
    assert event.detail["bounceType"] == "Permanent"
    assert event.detail["bouncedRecipients"][0]["emailAddress"] == "user@example.net"
    assert event.detail["reportingMTA"] == "dns; mail.example.net"


def test_event_ids_are_the_same_when_a_report_is_processed_again() -> None:
    first = planned(report("postfix_bounce.eml", TAG0))
    again = planned(report("postfix_bounce.eml", TAG0))
    other = planned(report("postfix_bounce.eml", TAG0, token="another"))
    ids = [(e.event_id, e.detail["feedbackId"]) for e in first.events]
    assert ids == [(e.event_id, e.detail["feedbackId"]) for e in again.events]
    assert ids != [(e.event_id, e.detail["feedbackId"]) for e in other.events]
    assert ids[0][0] != ids[0][1]
    assert ids[0][0].startswith(f"{int(NOW * 1000):012x}-")


def test_no_event_without_a_publishing_set_or_a_mail_record_but_still_suppressed() -> None:
    for plan in (planned(report("postfix_bounce.eml", TAG0), publishes=False),
                 planned(report("postfix_bounce.eml", TAG0),
                         {MSG_A: dataclasses.replace(SENT_A, mail_record=False)})):
        assert plan.events == [] and len(plan.suppressions) == 1 and len(plan.counts) == 1


def test_a_delay_makes_a_delivery_delay_and_no_suppression() -> None:
    plan = planned(report("postfix_delay.eml", TAG1))
    assert plan.suppressions == []
    assert [dict(c.increments) for c in plan.counts] == [{set_stats.Kind.DELIVERY_DELAY: 1}]
    [event] = plan.events
    assert event.type == "DeliveryDelay"
    assert event.detail["delayedRecipients"][0]["emailAddress"] == "second@example.org"


def test_a_report_naming_only_someone_else_is_kept_not_acted_on() -> None:
    plan = planned(report("gmail_bounce.eml", TAG0))
    assert plan.result == actions.UNMATCHED
    assert plan.verdict.unmatched is not None
    assert "nobody.here@gmail.com" in plan.verdict.unmatched
    assert "forwarding" in plan.verdict.unmatched
    assert plan.suppressions == [] and plan.events == [] and plan.counts == []


def test_a_complaint_to_a_feedback_address_is_traced_by_its_original_mail_from() -> None:
    plan = planned(report("yahoo_arf.eml", "fbl@example.com"))
    assert plan.result == actions.MATCHED
    # The tag names recipient 0: the address as we sent it, not the redacted To.
    assert [(s.address, s.reason) for s in plan.suppressions] == [
        ("user@example.net", "COMPLAINT")]
    assert [dict(c.increments) for c in plan.counts] == [{set_stats.Kind.COMPLAINT: 1}]
    [event] = plan.events
    assert event.type == "Complaint"
    assert event.detail["complainedRecipients"] == [{"emailAddress": "user@example.net"}]
    assert event.detail["complaintFeedbackType"] == "abuse"


def test_without_a_tag_a_complaint_counts_only_for_a_recipient_it_names() -> None:
    stored = report("yahoo_arf.eml", "fbl@example.com")
    examined = dataclasses.replace(actions.examine(stored, RING, now=NOW), tags=(),
                                   tag_source="", relay_ids=(MSG_A,))
    named = SentMessage(MSG_A, "acme", None, ("a@example.net", "happy.reader@yahoo.com"),
                        False)
    plan = actions.plan(stored, examined, {MSG_A: named}, lambda name: True)
    assert [s.address for s in plan.suppressions] == ["happy.reader@yahoo.com"]
    unnamed = dataclasses.replace(named, recipients=("a@example.net", "b@example.net"))
    plan = actions.plan(stored, examined, {MSG_A: unnamed}, lambda name: True)
    assert plan.result == actions.UNMATCHED and plan.suppressions == []


def test_not_spam_is_an_event_only() -> None:
    stored = report("yahoo_arf.eml", "fbl@example.com")
    examined = actions.examine(stored, RING, now=NOW)
    assert isinstance(examined.feedback, ComplaintReport)
    examined = dataclasses.replace(
        examined, feedback=dataclasses.replace(examined.feedback, feedback_type="not-spam"))
    plan = actions.plan(stored, examined, {MSG_A: SENT_A}, lambda name: True)
    assert [e.type for e in plan.events] == ["Complaint"]
    assert plan.suppressions == [] and plan.counts == []


def test_auto_replies_are_ignored_and_the_untraceable_kept() -> None:
    plan = planned(report("ooo_outlook.eml", TAG0))
    assert plan.result == actions.IGNORED and plan.verdict.unmatched is None
    assert plan.suppressions == [] and plan.events == []
    plan = planned(report("postfix_bounce.eml", TAG0), messages={})
    assert plan.verdict.unmatched is not None and "not known here" in plan.verdict.unmatched
    no_keys = report("spamcop_report.eml", "fbl@example.com")
    plan = actions.plan(no_keys, actions.examine(no_keys, None, now=NOW), {}, lambda n: True)
    assert plan.verdict.unmatched is not None
    empty = dataclasses.replace(report("postfix_bounce.eml", TAG0), raw=b"")
    plan = planned(empty)
    assert plan.verdict.unmatched == "empty message"


def test_a_bounce_whose_tag_no_longer_verifies_is_kept_not_traced_by_message_id() -> None:
    other = KeyRing.generate()
    stored = report("postfix_bounce.eml", TAG0)
    examined = actions.examine(stored, other, now=NOW)
    assert examined.tags == () and examined.relay_ids == (MSG_A,)
    assert any("invalid VERP tag" in note for note in examined.notes)
    plan = actions.plan(stored, examined, {MSG_A: SENT_A}, lambda name: True)
    # Our Received field names the message, but an unsigned id proves nothing: anyone
    # who got it could have the other recipients suppressed.
    assert plan.result == actions.UNMATCHED and plan.suppressions == []
    assert plan.verdict.unmatched == ("a bounce without a valid VERP tag: not acted on "
                                      f"(it names message {MSG_A})")
