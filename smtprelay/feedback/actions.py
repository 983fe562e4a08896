"""What one stored report leads to: events, suppression entries, counters, or the unmatched store.

Pure functions, no I/O: the processor (``smtprelay.feedback.processor``) parses a
batch of reports in a thread (``examine``), looks up the messages they name, asks
``plan`` what each one means and then records the plans. What a report leads to:

* a DSN (``DeliveryReport``), for each status about a recipient the message was sent
  to: failed -> a Bounce event, classified into SES's type and subtype; a Permanent
  one also puts the address on the account's suppression list (reason BOUNCE, as
  SES's account-level list); delayed -> a DeliveryDelay event. Each is counted in the
  set's statistics (``bounce``, ``bounce_transient``, ``bounce_undetermined``,
  ``delivery_delay``), so the reputation's bounce rate includes asynchronous bounces.
  Statuses about addresses the message was never sent to are logged and ignored: a
  confused or forged report must not suppress a stranger. A report naming only such
  addresses (a recipient's forwarding that failed, say) is kept as unmatched;
* a complaint (``ComplaintReport``): a Complaint event for the recipient of the VERP
  tag, or (without a per-recipient tag) for the message's recipients the report
  names; the address goes on the suppression list (reason COMPLAINT) and counts as a
  ``complaint``. ``Feedback-Type: not-spam`` (the provider taking a spam verdict
  back) makes the event only;
* an automatic reply (RFC 3834): nothing but a log line and the metric;
* anything else is unmatched: kept with the reason, never dropped.

Which message: the VERP tag of the report's envelope recipient, else a tag found in
the report (ARF's Original-Mail-From, the returned original's Return-Path), else, for
complaints only, our message id in the returned original (our Received field). That
id is not signed and anyone who got the message can read it (and the other
recipients' addresses in its To), so it only counts with a recipient the complaint
itself names; a bounce without a valid tag is not acted on at all (a recipient could
otherwise have the others suppressed), it is kept as unmatched.

Events only go to configuration sets that publish, and only while the message's
mail record (the ``mail`` object of the event) is kept. Event ids and bounce and
complaint feedback ids are derived from the report (its random token and id) and
their order in it, so processing the same report again after a crash makes the same
ids: a consumer sees a duplicate it can recognise, never a different event.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from smtprelay.bounces import verp
from smtprelay.bounces.classification import DEFAULT_RULES, Rule
from smtprelay.events import ses
from smtprelay.events.model import Detail, type_of
from smtprelay.feedback.arf import ComplaintReport
from smtprelay.feedback.autoreply import AutoReply
from smtprelay.feedback.classify import (
    Feedback,
    Unparseable,
    analyse,
    attribute,
    bounce_details,
    complaint_detail,
    delay_details,
    recover_tag,
    relay_message_ids,
)
from smtprelay.feedback.dsn_parse import DeliveryReport, RecipientStatus
from smtprelay.feedback.fields import normalise_address
from smtprelay.feedback.inbox import Report, Verdict
from smtprelay.mail.address import local_of
from smtprelay.policy.suppression import Suppress
from smtprelay.spool import set_stats
from smtprelay.spool.model import EventRecord
from smtprelay.spool.sent import SentMessage
from smtprelay.transform.tokens import KeyRing

MATCHED = "matched"  # events, suppression entries or counters made
IGNORED = "ignored"  # nothing to do (an auto-reply, a "delivered" status)
UNMATCHED = "unmatched"  # kept in the unmatched store

_MAX_LISTED = 5  # addresses named in a reason or log line


@dataclass(frozen=True, slots=True)
class Examined:
    """A report parsed, with what it says about which of our messages it is about."""

    feedback: Feedback
    tags: tuple[verp.VerpTag, ...]  # verified VERP tags, most trusted first
    tag_source: str  # "envelope", "report" or "" (none)
    relay_ids: tuple[str, ...]  # our message ids the report names (no tag only)
    notes: tuple[str, ...] = ()  # envelope tags that no longer verify, and why


def examine(report: Report, keyring: KeyRing | None,
            rules: Sequence[Rule] = DEFAULT_RULES, now: float | None = None) -> Examined:
    """Parse ``report`` and find its tags (CPU work: the processor runs it in a thread).

    The envelope's VERP tags were verified when the listener accepted them; they are
    verified again, as the keys may have changed since (a retired key's tags expire).
    """
    feedback = analyse(report.raw or b"", rules)
    now = time.time() if now is None else now
    tags: list[verp.VerpTag] = []
    notes: list[str] = []
    if keyring is not None:
        for address in report.recipients:
            local = local_of(address)
            if not local.lower().startswith(verp.PREFIX):
                continue  # a feedback address
            try:
                tags.append(verp.decode(local, keyring, now))
            except verp.InvalidVerpTag as exc:
                notes.append(f"envelope recipient {address}: {exc}")
    source = "envelope" if tags else ""
    if not tags and keyring is not None and not isinstance(feedback, Unparseable):
        found = recover_tag(feedback, keyring, now)
        if found is not None:
            tags.append(found)
            source = "report"
    relay_ids = () if tags else relay_message_ids(feedback)
    return Examined(feedback, tuple(dict.fromkeys(tags)), source, relay_ids, tuple(notes))


@dataclass(slots=True)
class Plan:
    verdict: Verdict
    result: str  # MATCHED, IGNORED or UNMATCHED
    summary: str  # for the log line
    events: list[EventRecord] = field(default_factory=list)
    counts: list[set_stats.Bump] = field(default_factory=list)
    suppressions: list[Suppress] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # logged, not kept
    # (message id, address, kind, time): counted now, so a repeat is not (spool.sent).
    counted: list[tuple[str, str, str, float]] = field(default_factory=list)


class EventIds:
    """Ids for one report's events and feedback ids, the same every time it is planned:
    the report's arrival millisecond (ids sort by time, like new_event_id's) and a hash
    of its token, id and the count so far."""

    def __init__(self, report: Report) -> None:
        self._prefix = f"{int(report.received_at * 1000):012x}-"
        self._seed = f"{report.token}:{report.id}:"
        self._count = 0

    def next(self, _at: float | None = None) -> str:
        self._count += 1
        digest = hashlib.sha256(f"{self._seed}{self._count}".encode()).hexdigest()
        return self._prefix + digest[:16]


@dataclass(frozen=True, slots=True)
class _Target:
    message: SentMessage
    index: int
    address: str


def plan(report: Report, examined: Examined, messages: Mapping[str, SentMessage],
         publishes: Callable[[str | None], bool],
         counted: set[tuple[str, str, str]] | None = None) -> Plan:
    """What ``report`` leads to, given the messages it may name (``messages``, from
    ``Spool.sent_messages``) and which configuration sets publish events.

    ``counted``: the (message id, lower-cased address, "bounce" | "complaint") already
    counted (``Spool.counted_feedback``), updated with what this plan counts: a repeat
    report about the same recipient of the same message makes no second event,
    statistic or reputation count (a provider's repeated complaint, a DSN after the
    bounce at delivery)."""
    if counted is None:
        counted = set()
    feedback = examined.feedback
    kind = feedback.kind
    notes = list(examined.notes)
    if isinstance(feedback, Unparseable):
        reason = feedback.reason + (f" ({feedback.detail})" if feedback.detail else "")
        return _unmatched(report, kind, reason, notes)
    if isinstance(feedback, AutoReply):
        return Plan(Verdict(report.id, kind), IGNORED,
                    f"automatic reply ({feedback.reason}), not a bounce", notes=notes)
    targets: list[_Target] = []
    whole: list[SentMessage] = []  # messages named without a recipient index
    unknown: list[str] = []
    if examined.tags:
        for tag in examined.tags:
            message = messages.get(tag.message_id)
            if message is None:
                unknown.append(tag.message_id)
            elif tag.recipient_index is None:
                whole.append(message)
            elif 0 <= tag.recipient_index < len(message.recipients):
                targets.append(_Target(message, tag.recipient_index,
                                       message.recipients[tag.recipient_index]))
            else:
                notes.append(f"VERP tag names recipient {tag.recipient_index} of "
                             f"{tag.message_id}, which has {len(message.recipients)}")
    elif isinstance(feedback, DeliveryReport):
        named = f" (it names message {', '.join(examined.relay_ids[:_MAX_LISTED])})" \
            if examined.relay_ids else ""
        return _unmatched(report, kind, "a bounce without a valid VERP tag: not acted on"
                          + named, notes)
    elif examined.relay_ids:
        for message_id in examined.relay_ids:
            message = messages.get(message_id)
            if message is None:
                unknown.append(message_id)
            else:
                whole.append(message)
    else:
        return _unmatched(report, kind, "no VERP tag or relay message id: cannot tell "
                          "which message it is about", notes)
    if not targets and not whole:
        if not unknown:
            return _unmatched(report, kind, "the VERP tag names a recipient the message "
                              "does not have", notes)
        return _unmatched(report, kind, f"message {', '.join(unknown[:_MAX_LISTED])} is not "
                          "known here (older than the feedback window, or not sent by this "
                          "relay)", notes)
    for message in whole:
        targets.extend(_Target(message, i, address)
                       for i, address in enumerate(message.recipients))
    if isinstance(feedback, DeliveryReport):
        return _delivery(report, feedback, targets, publishes, notes, counted)
    assert isinstance(feedback, ComplaintReport)
    precise = bool(examined.tags) and not whole
    return _complaint(report, feedback, targets, precise, publishes, notes, counted)


def _first_time(counted: set[tuple[str, str, str]], message_id: str, address: str,
                kind: str) -> bool:
    """Whether this is the first report of `kind` for this recipient of this message
    (and remember it)."""
    key = (message_id, address.lower(), kind)
    if key in counted:
        return False
    counted.add(key)
    return True


def _unmatched(report: Report, kind: str, reason: str, notes: list[str]) -> Plan:
    return Plan(Verdict(report.id, kind, unmatched=reason), UNMATCHED, reason, notes=notes)


def _listed(addresses: Sequence[str]) -> str:
    shown = ", ".join(addresses[:_MAX_LISTED])
    return shown + (f" and {len(addresses) - _MAX_LISTED} more"
                    if len(addresses) > _MAX_LISTED else "")


def _delivery(report: Report, feedback: DeliveryReport, targets: list[_Target],
              publishes: Callable[[str | None], bool], notes: list[str],
              counted: set[tuple[str, str, str]]) -> Plan:
    kind = feedback.kind
    by_address = {normalise_address(t.address): t for t in targets}
    attribution = attribute(feedback, [t.address for t in targets])
    for status in attribution.unrelated:
        notes.append(f"status {status.action} for {status.final_recipient} ignored: not a "
                     "recipient of the message")
    if not attribution.matched:
        if not attribution.unrelated:
            return Plan(Verdict(report.id, kind), IGNORED, "no recipient in the report",
                        notes=notes)
        reason = ("names only addresses the message was not sent to: "
                  + _listed([s.final_recipient for s in attribution.unrelated]))
        if attribution.probably_forwarded is not None:
            reason += " (probably the recipient's forwarding failed)"
        return _unmatched(report, kind, reason, notes)
    # Per message, each status under the address as we sent it (SES's emailAddress is
    # the recipient's, even when the remote names where it forwarded to).
    grouped: dict[str, tuple[SentMessage, list[RecipientStatus]]] = {}
    repeats: list[str] = []
    for status in attribution.matched:
        if status.outcome == "ignored":
            continue
        names = [normalise_address(status.final_recipient)]
        if status.original_recipient:
            names.insert(0, normalise_address(status.original_recipient))
        target = next(by_address[name] for name in names if name in by_address)
        if status.outcome == "bounce" and not _first_time(
                counted, target.message.message_id, target.address, "bounce"):
            repeats.append(target.address)
            continue
        entry = grouped.setdefault(target.message.message_id, (target.message, []))
        entry[1].append(dataclasses.replace(status, final_recipient=target.address))
    if not grouped:
        if repeats:
            return Plan(Verdict(report.id, kind), IGNORED,
                        f"a bounce already counted for {_listed(repeats)}: not again",
                        notes=notes)
        return Plan(Verdict(report.id, kind), IGNORED,
                    "only delivered, relayed or expanded recipients", notes=notes)
    result = Plan(Verdict(report.id, kind), MATCHED, "", notes=notes)
    ids = EventIds(report)
    at = report.received_at
    said: list[str] = []
    for message, statuses in grouped.values():
        details: list[Detail] = [
            *bounce_details(feedback, statuses, received_at=at, new_id=ids.next),
            *delay_details(feedback, statuses, received_at=at)]
        increments: dict[set_stats.Kind, int] = {}
        for status in statuses:
            stat = set_stats.outcome_kind(status.outcome, status.bounce_type)
            if stat is not None:
                increments[stat] = increments.get(stat, 0) + 1
            if status.outcome == "bounce":
                result.counted.append((message.message_id, status.final_recipient,
                                       "bounce", at))
            if status.outcome == "bounce" and status.permanent:
                result.suppressions.append(Suppress(
                    message.account, status.final_recipient, "BOUNCE", message.message_id,
                    at, message.configuration_set, status.diagnostic_code))
            said.append(f"{status.final_recipient} {_outcome_text(status)}")
        result.counts.append(set_stats.Bump(message.account, message.configuration_set, at,
                                           increments))
        _add_events(result, ids, message, details, at, publishes)
    result.summary = f"msg={','.join(grouped)} " + "; ".join(said)
    return result


def _outcome_text(status: RecipientStatus) -> str:
    if status.outcome == "delay":
        return f"delayed ({status.delay_type}, {status.effective_status or '4.0.0'})"
    text = (f"bounced {status.bounce_type}/{status.bounce_subtype} "
            f"({status.effective_status or '?'})")
    return text + (", suppressed" if status.permanent else "")


def _complaint(report: Report, feedback: ComplaintReport, targets: list[_Target],
               precise: bool, publishes: Callable[[str | None], bool],
               notes: list[str], counted: set[tuple[str, str, str]]) -> Plan:
    kind = feedback.kind
    if not precise:
        # No per-recipient tag: only the recipients the report itself names count.
        named = {normalise_address(address) for address, _ in feedback.recipient_candidates}
        targets = [t for t in targets if normalise_address(t.address) in named]
        if not targets:
            return _unmatched(report, kind, "the complaint names no recipient of the message "
                              "(redacted, and no per-recipient VERP tag)", notes)
    # not-spam: the provider takes a spam verdict back; SES passes it on as a
    # Complaint, but it is no reason to stop mailing the person.
    counts = feedback.feedback_type != "not-spam"
    grouped: dict[str, tuple[SentMessage, list[str]]] = {}
    repeats: list[str] = []
    for target in targets:
        if counts and not _first_time(counted, target.message.message_id, target.address,
                                      "complaint"):
            if target.address not in repeats:
                repeats.append(target.address)
            continue
        entry = grouped.setdefault(target.message.message_id, (target.message, []))
        if target.address not in entry[1]:
            entry[1].append(target.address)
    if not grouped:
        return Plan(Verdict(report.id, kind), IGNORED,
                    f"a complaint already counted for {_listed(repeats)}: not again",
                    notes=notes)
    result = Plan(Verdict(report.id, kind), MATCHED, "", notes=notes)
    ids = EventIds(report)
    at = report.received_at
    for message, addresses in grouped.values():
        detail = complaint_detail(feedback, addresses, received_at=at, new_id=ids.next)
        if counts:
            result.suppressions.extend(Suppress(message.account, address, "COMPLAINT",
                                                message.message_id, at,
                                                message.configuration_set)
                                       for address in addresses)
            result.counts.append(set_stats.Bump(message.account, message.configuration_set,
                                               at, {set_stats.Kind.COMPLAINT: len(addresses)}))
            result.counted.extend((message.message_id, address, "complaint", at)
                                  for address in addresses)
        _add_events(result, ids, message, [detail], at, publishes)
    result.summary = (f"msg={','.join(grouped)} complaint "
                      f"({feedback.feedback_type or 'abuse'}) from "
                      f"{_listed([a for _, found in grouped.values() for a in found])}"
                      + (", suppressed" if counts else ", not-spam: not suppressed"))
    return result


def _add_events(result: Plan, ids: EventIds, message: SentMessage, details: Sequence[Detail],
                at: float, publishes: Callable[[str | None], bool]) -> None:
    if not details or not message.mail_record or not publishes(message.configuration_set):
        return
    for detail in details:
        result.events.append(EventRecord(
            event_id=ids.next(), message_id=message.message_id, type=str(type_of(detail)),
            configuration_set=message.configuration_set, at=at,
            detail=ses.detail_object(detail)))
