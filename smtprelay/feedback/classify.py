"""One entry point for whatever reaches the feedback listener: ``analyse(raw)``.

The answer is one of four kinds (``Feedback``), told apart by class or ``kind``:

* ``DeliveryReport``: a DSN (RFC 3464), or a text bounce read by heuristics
  (``heuristic`` is set then): recipients that failed (-> Bounce events; Permanent
  ones -> suppression, reason BOUNCE), were delayed (-> DeliveryDelay), or were
  delivered/relayed/expanded (nothing to do).
* ``ComplaintReport``: an ARF report (RFC 5965), or a forwarded spam report
  (``heuristic`` set) -> a Complaint event.
* ``AutoReply``: out-of-office and other automatic replies (RFC 3834): not a bounce.
* ``Unparseable``: anything else, with the reason. Never silently dropped: the caller
  keeps the message with the reason.

``analyse`` never raises, whatever the bytes, and its work is bounded: input is cut at
``mime.MAX_INPUT``, at most ``mime.MAX_PARTS`` MIME parts and ``dsn_parse.MAX_RECIPIENTS``
recipients are read, and every regex runs on capped text.

What the parser cannot know is which addresses the message went to. The VERP
envelope recipient of the report (``verp.decode_address``) names message and
recipient; ``attribute`` then keeps the statuses about addresses the message was
actually sent to, and ``find_verp_tags`` / ``recover_tag`` dig the VERP tag out of a
complaint, which ISPs send to a fixed address rather than to the envelope sender. The
``*_details`` functions make the SES event records from what was kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from smtprelay.bounces import verp
from smtprelay.bounces.classification import DEFAULT_RULES, Rule
from smtprelay.events.model import (
    Bounce,
    BounceSubType,
    BounceType,
    Complaint,
    DelayType,
    DeliveryDelay,
    new_event_id,
)
from smtprelay.feedback import arf, autoreply, dsn_parse, mime, textbounce
from smtprelay.feedback.arf import ComplaintReport
from smtprelay.feedback.autoreply import AutoReply
from smtprelay.feedback.dsn_parse import DeliveryReport, Notes, RecipientStatus
from smtprelay.feedback.fields import normalise_address
from smtprelay.transform.tokens import KeyRing

# A remote DSN's delay without Will-Retry-Until: RFC 5321 4.5.4.1 asks MTAs to keep
# trying for 4-5 days, and Postfix, Exim and we give up after 5.
_ASSUMED_REMOTE_LIFETIME = 5 * 86400.0


@dataclass(frozen=True, slots=True)
class Unparseable:
    """Not a report we can act on; kept by the caller with ``reason``."""

    kind: ClassVar[str] = "unparseable"

    reason: str
    subject: str | None = None
    report_from: str | None = None
    detail: str | None = None  # e.g. the exception text of an internal error


Feedback = DeliveryReport | ComplaintReport | AutoReply | Unparseable


def analyse(raw: bytes, rules: Sequence[Rule] = DEFAULT_RULES) -> Feedback:
    """What ``raw`` (a whole message as received) is. Never raises.

    ``rules``: the bounce classification table, the operator's rules in front of
    ``DEFAULT_RULES`` (``bounce.rules_from_config``), as for synchronous failures.
    """
    try:
        return _analyse(raw, rules)
    except Exception as exc:
        # A parser bug must not lose the message: the caller keeps it with this reason.
        return Unparseable("internal error while parsing", detail=repr(exc)[:500])


def _analyse(raw: bytes, rules: Sequence[Rule]) -> Feedback:
    if not raw.strip():
        return Unparseable("empty message")
    try:
        message = mime.parse(raw)
    except mime.NotAReport as exc:
        return Unparseable(exc.reason)
    summary = {"subject": message.subject, "report_from": message.header("from")}

    complaint = arf.read(message)
    if complaint is not None:
        return complaint
    report = dsn_parse.read(message, rules)
    if report is not None:
        if report.recipients:
            return report
        notes = Notes()
        notes.add("the delivery-status part names no recipient")
        return (textbounce.read(message, rules, notes)
                or Unparseable("the delivery-status part names no recipient", **summary))
    report_type = message.report_type
    if report_type in ("delivery-status", "global-delivery-status"):
        notes = Notes()
        notes.add("multipart/report without a delivery-status part")
        return (textbounce.read(message, rules, notes)
                or Unparseable("multipart/report without a delivery-status part", **summary))
    if report_type == "feedback-report":
        return Unparseable("multipart/report without a feedback-report part", **summary)

    reply = autoreply.read(message)
    text = textbounce.read(message, rules)
    # A text bounce in a known form wins over auto-reply headers (Exim puts
    # Auto-Submitted on its bounces); a "generic" one only when a mail daemon sent it,
    # so a vacation notice that mentions an address is not read as a bounce.
    if text is not None and (reply is None or text.heuristic != "generic"
                             or textbounce.from_mail_daemon(message)):
        return text
    if reply is not None:
        return reply
    forwarded = arf.read_forwarded(message)
    if forwarded is not None:
        return forwarded
    if textbounce.looks_like_bounce(message):
        return Unparseable("looks like a bounce, but names no recipient that could be read",
                           **summary)
    return Unparseable("not a delivery report, complaint or auto-reply", **summary)


# --- tracing a report back to our message ------------------------------------------

@dataclass(frozen=True, slots=True)
class Attribution:
    matched: tuple[RecipientStatus, ...]  # about an address the message was sent to
    # About addresses it was never sent to: log them, never act on them (a forged or
    # confused report must not suppress a stranger's address).
    unrelated: tuple[RecipientStatus, ...]
    # The one status of a report about a one-recipient envelope that names someone
    # else, with nothing matched: most likely the recipient forwarded to an address
    # that failed (Gmail's DSNs for forwarded mail look like this). Also listed in
    # ``unrelated``; whether it counts against the VERP recipient is the caller's call.
    probably_forwarded: RecipientStatus | None = None


def attribute(report: DeliveryReport, sent_to: Sequence[str]) -> Attribution:
    """Split the report's recipients by whether they are among ``sent_to``: the VERP
    tag's recipient, or every envelope recipient of a whole-envelope tag. Matched on
    Final-Recipient or Original-Recipient, ignoring case."""
    wanted = {normalise_address(address) for address in sent_to}
    matched: list[RecipientStatus] = []
    unrelated: list[RecipientStatus] = []
    for status in report.recipients:
        names = {normalise_address(status.final_recipient)}
        if status.original_recipient:
            names.add(normalise_address(status.original_recipient))
        (matched if names & wanted else unrelated).append(status)
    forwarded = (unrelated[0] if len(wanted) == 1 and not matched and len(unrelated) == 1
                 else None)
    return Attribution(tuple(matched), tuple(unrelated), forwarded)


def find_verp_tags(feedback: Feedback) -> tuple[str, ...]:
    """Strings shaped like our VERP local parts that the report carries, most reliable
    first: ARF's Original-Mail-From, Postfix's X-Postfix-Sender, the original's
    Return-Path, then any other field of the original. Each still needs ``verp.decode``."""
    texts: list[str] = []
    if isinstance(feedback, ComplaintReport) and feedback.original_mail_from:
        texts.append(feedback.original_mail_from)
    if isinstance(feedback, DeliveryReport) and feedback.envelope_sender:
        texts.append(feedback.envelope_sender)
    original = getattr(feedback, "original", None)
    if isinstance(original, mime.OriginalMessage):
        texts.extend(original.get_all("return-path"))
        texts.extend(f"{item.name}: {item.value}" for item in original.headers)
    found: list[str] = []
    for text in texts:
        found.extend(verp.find_tags(text))
    return tuple(dict.fromkeys(found))


def recover_tag(feedback: Feedback, keyring: KeyRing,
                now: float | None = None) -> verp.VerpTag | None:
    """The first tag in the report that verifies (forged and expired ones are skipped)."""
    for candidate in find_verp_tags(feedback):
        try:
            return verp.decode(candidate, keyring, now)
        except verp.InvalidVerpTag:
            continue
    return None


def relay_message_ids(feedback: Feedback) -> tuple[str, ...]:
    """smtprelay message ids the report names without a VERP tag: our own DSN's
    X-SMTPRelay-Message-ID, our Received field and Message-ID in the original. Unsigned:
    good for logs and for a tag's message cross-check, not as proof."""
    found: list[str] = []
    if isinstance(feedback, DeliveryReport) and feedback.relay_message_id:
        found.append(feedback.relay_message_id)
    original = getattr(feedback, "original", None)
    if isinstance(original, mime.OriginalMessage):
        found.extend(original.relay_message_ids)
    return tuple(dict.fromkeys(found))


# --- SES event records -------------------------------------------------------------

def bounce_details(report: DeliveryReport, statuses: Sequence[RecipientStatus], *,
                   received_at: float | None = None,
                   new_id: Callable[[float], str] = new_event_id) -> tuple[Bounce, ...]:
    """One Bounce per (type, subtype) among the failed ``statuses`` (as the delivery
    side groups them). Timestamp: the report's Date (SES: when the ISP sent it), else
    ``received_at``."""
    at = report.date if report.date is not None else _now(received_at)
    groups: dict[tuple[str, str], list[RecipientStatus]] = {}
    for status in statuses:
        if status.outcome == "bounce":
            key = (status.bounce_type or "Undetermined", status.bounce_subtype or "Undetermined")
            groups.setdefault(key, []).append(status)
    return tuple(
        Bounce(bounce_type=BounceType(kind), bounce_sub_type=BounceSubType(subtype),
               bounced_recipients=tuple(s.bounced_recipient() for s in group),
               timestamp=at, feedback_id=new_id(at), reporting_mta=report.reporting_mta,
               remote_mta_ip=next((s.remote_mta_ip for s in group if s.remote_mta_ip), None))
        for (kind, subtype), group in groups.items())


def delay_details(report: DeliveryReport, statuses: Sequence[RecipientStatus], *,
                  received_at: float | None = None) -> tuple[DeliveryDelay, ...]:
    """One DeliveryDelay per delayType among the delayed ``statuses``.

    expirationTime: the remote's Will-Retry-Until; without one, five days after it
    got the message (what RFC 5321 asks and what MTAs do).
    """
    at = report.date if report.date is not None else _now(received_at)
    groups: dict[str, list[RecipientStatus]] = {}
    for status in statuses:
        if status.outcome == "delay":
            groups.setdefault(status.delay_type or "Undetermined", []).append(status)
    details = []
    for kind, group in groups.items():
        retry_until = [s.will_retry_until for s in group if s.will_retry_until is not None]
        expires = (max(retry_until) if retry_until
                   else (report.arrival_date or at) + _ASSUMED_REMOTE_LIFETIME)
        details.append(DeliveryDelay(
            delay_type=DelayType(kind),
            delayed_recipients=tuple(s.delayed_recipient() for s in group),
            expiration_time=expires, reporting_mta=report.reporting_mta or "",
            timestamp=at,
            remote_mta_ip=next((s.remote_mta_ip for s in group if s.remote_mta_ip), None)))
    return tuple(details)


def complaint_detail(report: ComplaintReport, recipients: Sequence[str], *,
                     received_at: float | None = None,
                     new_id: Callable[[float], str] = new_event_id) -> Complaint:
    """The Complaint for ``recipients`` (the caller's choice: the VERP recipient, or
    ``report.recipient_candidates``)."""
    at = report.date if report.date is not None else _now(received_at)
    return Complaint(
        complained_recipients=tuple(recipients), timestamp=at, feedback_id=new_id(at),
        user_agent=report.user_agent, complaint_feedback_type=report.feedback_type,
        arrival_date=report.arrival_date)


def _now(received_at: float | None) -> float:
    return time.time() if received_at is None else received_at
