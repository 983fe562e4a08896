"""Reading delivery status notifications (RFC 3464) that come back to a VERP address.

A DSN is a multipart/report (RFC 6522) whose message/delivery-status part holds one
block of per-message fields (Reporting-MTA, Arrival-Date, ...) and then one block per
recipient (Final-Recipient, Action, Status, Diagnostic-Code, ...), separated by blank
lines. ``read`` turns it into a ``DeliveryReport``: every recipient with its fields,
what it means (``failed`` -> a Bounce, classified into SES's type and subtype by the
same rule table as synchronous failures, ``smtprelay.bounces.classification``; ``delayed`` ->
a DeliveryDelay, typed by ``smtprelay.delivery.retry.delay_type``; ``delivered``,
``relayed`` and ``expanded`` -> nothing to do), and the returned original's header
section for tracing the report back to our message.

What real MTAs get wrong and is forgiven (each noted in ``DeliveryReport.notes``, so a
report that needed forgiving can be told from a clean one): a Final-Recipient without
its "rfc822;" type; Action or Status missing (inferred from each other and from the
Diagnostic-Code); Action in capitals or as a synonym ("failure"); recipient groups
without the blank line between them; several delivery-status parts. Reports with no
delivery-status part at all are left to ``smtprelay.feedback.textbounce``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from smtprelay.bounces.classification import (
    DEFAULT_RULES,
    Rule,
    classify,
    effective_code_and_status,
)
from smtprelay.delivery.model import RecipientResult, Verdict
from smtprelay.delivery.retry import delay_type
from smtprelay.events.model import BouncedRecipient, DelayedRecipient
from smtprelay.feedback import mime
from smtprelay.feedback.fields import (
    Field,
    decode_bytes,
    first,
    first_values,
    parse_address_field,
    parse_date,
    read_blocks,
    unescape_xtext,
)

DELIVERY_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
# Far more than any real DSN (a message has at most a few hundred recipients); the
# 4 MiB input cap bounds it anyway, this bounds the objects built.
MAX_RECIPIENTS = 50000

_PER_MESSAGE = frozenset({
    "reporting-mta", "dsn-gateway", "received-from-mta", "arrival-date",
    "original-envelope-id",
    # Extensions seen per message: Postfix, Gmail, and our own DSNs.
    "x-postfix-queue-id", "x-postfix-sender", "x-original-message-id",
    "x-smtprelay-message-id",
})
_PER_RECIPIENT = frozenset({
    "original-recipient", "final-recipient", "action", "status", "remote-mta",
    "diagnostic-code", "last-attempt-date", "final-log-id", "will-retry-until",
    # Extensions seen per recipient: Exchange, Sendmail.
    "x-display-name", "x-actual-recipient", "x-supplementary-info",
})
# A second one of these in a group means a new recipient whose blank line is missing.
_STARTS_NEW_GROUP = frozenset({"original-recipient", "final-recipient", "action", "status"})
_ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_ACTION_SYNONYMS = {
    "failure": "failed", "fail": "failed", "bounced": "failed", "bounce": "failed",
    "undeliverable": "failed", "rejected": "failed",
    "delay": "delayed", "deferred": "delayed", "retrying": "delayed",
    "delivery": "delivered", "success": "delivered", "relay": "relayed",
}
_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_RELAY_MESSAGE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_BRACKETED = re.compile(r"[\[(]\s*(?:ipv6:)?([0-9A-Fa-f:.]{3,45})\s*[\]),]")
_IP_SHAPED = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+")
_MAX_NOTES = 30

Outcome = Literal["bounce", "delay", "ignored"]


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient group of a DSN, read and classified."""

    final_recipient: str  # the address, without its "rfc822;" type
    address_type: str | None  # "rfc822", "utf-8"; None when the MTA left it out
    original_recipient: str | None
    action: str  # lower case: failed, delayed, delivered, relayed, expanded
    action_inferred: bool  # Action was missing or not one of those (see notes)
    status: str | None  # the Status field's code as written ("5.0.0"); None when absent
    # What classification went by: the Status, or the remote's own more specific code
    # from the Diagnostic-Code (Exim writes 5.0.0 above "550 5.1.1 ..."), or the class
    # of the reply code; "" when nothing says.
    effective_status: str
    diagnostic_code: str | None  # unfolded: "smtp; 550-5.1.1 The email account ..."
    remote_mta: str | None  # as written: "dns; mx.example.net"
    remote_mta_ip: str | None  # when Remote-MTA names one ("... (192.0.2.1)")
    last_attempt_date: float | None
    will_retry_until: float | None
    # For action "failed": SES's bounceType and bounceSubType.
    bounce_type: str | None
    bounce_subtype: str | None
    # For action "delayed": SES's delayType.
    delay_type: str | None
    fields: tuple[Field, ...] = field(repr=False, default=())  # the group as read

    @property
    def outcome(self) -> Outcome:
        if self.action == "failed":
            return "bounce"
        if self.action == "delayed":
            return "delay"
        return "ignored"

    @property
    def permanent(self) -> bool:
        """A Permanent bounce: the one kind that makes a suppression entry (reason BOUNCE)."""
        return self.bounce_type == "Permanent"

    def bounced_recipient(self) -> BouncedRecipient:
        """SES's bouncedRecipients entry. Status: as written, else what was derived."""
        return BouncedRecipient(
            email_address=self.final_recipient, action=self.action,
            status=self.status or self.effective_status or None,
            diagnostic_code=self.diagnostic_code)

    def delayed_recipient(self) -> DelayedRecipient:
        """SES's delayedRecipients entry."""
        return DelayedRecipient(
            email_address=self.final_recipient,
            status=self.status or self.effective_status or "4.0.0",
            diagnostic_code=self.diagnostic_code or "")


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A bounce or delay report (RFC 3464, or a text one read by heuristics)."""

    kind: ClassVar[str] = "delivery-report"

    reporting_mta: str | None  # as written, type kept as SES does: "dns; mx.example.net"
    received_from_mta: str | None
    arrival_date: float | None  # when the reporting MTA got the message
    original_envelope_id: str | None
    recipients: tuple[RecipientStatus, ...]
    original: mime.OriginalMessage | None  # the returned original's header section
    date: float | None  # the report's own Date: SES's bounce "timestamp"
    subject: str | None
    report_from: str | None  # the report's From field, as written
    # None: the fields came from a message/delivery-status part. Otherwise which text
    # form was recognised ("qmail", "exim", "exchange", "generic"): the recipients and
    # their codes were read from wording meant for people, and may be wrong.
    heuristic: str | None
    notes: tuple[str, ...]  # what was odd or had to be guessed, for logs
    message_fields: tuple[Field, ...] = field(repr=False, default=())  # per-message block
    truncated: bool = False  # the input was cut at mime.MAX_INPUT

    @property
    def bounces(self) -> tuple[RecipientStatus, ...]:
        return tuple(r for r in self.recipients if r.outcome == "bounce")

    @property
    def delays(self) -> tuple[RecipientStatus, ...]:
        return tuple(r for r in self.recipients if r.outcome == "delay")

    @property
    def ignored(self) -> tuple[RecipientStatus, ...]:
        """Delivered, relayed or expanded: reported, nothing to do."""
        return tuple(r for r in self.recipients if r.outcome == "ignored")

    @property
    def relay_message_id(self) -> str | None:
        """Our message id, when this is a DSN smtprelay itself wrote."""
        value = first(self.message_fields, "x-smtprelay-message-id")
        return value if value and _RELAY_MESSAGE_ID.fullmatch(value) else None

    @property
    def envelope_sender(self) -> str | None:
        """The original envelope sender when the MTA says (Postfix's X-Postfix-Sender):
        our VERP address."""
        value = first(self.message_fields, "x-postfix-sender")
        return parse_address_field(value)[1] or None if value else None


class Notes:
    """Anomalies seen while reading, each counted once per kind (a 10,000-recipient
    report missing every Status gives one note, not 10,000)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, note: str) -> None:
        if note in self._counts or len(self._counts) < _MAX_NOTES:
            self._counts[note] = self._counts.get(note, 0) + 1

    def result(self) -> tuple[str, ...]:
        return tuple(note if count == 1 else f"{note} (x{count})"
                     for note, count in self._counts.items())


def parse(raw: bytes, rules: Sequence[Rule] = DEFAULT_RULES) -> DeliveryReport:
    """The DSN in ``raw``; NotAReport when it has no delivery-status part naming a
    recipient (``smtprelay.feedback.analyse`` then tries the text forms)."""
    message = mime.parse(raw)
    report = read(message, rules)
    if report is None:
        raise mime.NotAReport("no message/delivery-status part")
    if not report.recipients:
        raise mime.NotAReport("the delivery-status part names no recipient")
    return report


def read(message: mime.ParsedMessage, rules: Sequence[Rule] = DEFAULT_RULES,
         ) -> DeliveryReport | None:
    """The report from the message's delivery-status part; None when there is none."""
    parts = message.parts_of_type(*DELIVERY_STATUS_TYPES)
    if not parts:
        return None
    notes = Notes()
    if len(parts) > 1:
        notes.add(f"{len(parts)} delivery-status parts; only the first was read")
    if message.truncated:
        notes.add(f"input longer than {mime.MAX_INPUT} octets was cut")
    if message.too_many_parts:
        notes.add(f"more than {mime.MAX_PARTS} MIME parts; the rest were not read")
    text = decode_bytes(mime.part_bytes(parts[0]))
    per_message, groups = split_groups(read_blocks(text), notes)
    recipients: list[RecipientStatus] = []
    for group in groups:
        if len(recipients) >= MAX_RECIPIENTS:
            notes.add(f"more than {MAX_RECIPIENTS} recipients; the rest were not read")
            break
        status = recipient_from_fields(group, rules, notes)
        if status is not None:
            recipients.append(status)
    return DeliveryReport(
        reporting_mta=first(per_message, "reporting-mta"),
        received_from_mta=first(per_message, "received-from-mta"),
        arrival_date=parse_date(first(per_message, "arrival-date")),
        original_envelope_id=first(per_message, "original-envelope-id"),
        recipients=tuple(recipients),
        original=mime.find_original(message),
        date=message.date,
        subject=message.subject,
        report_from=message.header("from"),
        heuristic=None,
        notes=notes.result(),
        message_fields=tuple(per_message),
        truncated=message.truncated,
    )


def split_groups(blocks: list[list[Field]], notes: Notes,
                 ) -> tuple[list[Field], list[list[Field]]]:
    """The per-message fields and the per-recipient groups.

    Normally the first block is per-message and each later one a recipient. Known
    per-message fields are taken as such wherever they are; inside a block, a second
    Final-Recipient (or Action, Status, Original-Recipient) starts a new recipient,
    for MTAs that leave out the blank line between them.
    """
    per_message: list[Field] = []
    groups: list[list[Field]] = []
    for block in blocks:
        current: list[Field] | None = None
        seen: set[str] = set()
        for item in block:
            key = item.key
            if key in _PER_MESSAGE:
                per_message.append(item)
                continue
            if current is None and key not in _PER_RECIPIENT:
                per_message.append(item)  # an unknown X- field before any recipient field
                continue
            if current is None or (key in _STARTS_NEW_GROUP and key in seen):
                if current is not None:
                    notes.add("recipient groups not separated by a blank line")
                current = []
                seen = set()
                groups.append(current)
            current.append(item)
            seen.add(key)
    return per_message, groups


def recipient_from_fields(group: Sequence[Field], rules: Sequence[Rule], notes: Notes,
                          ) -> RecipientStatus | None:
    values = first_values(group)
    final = values.get("final-recipient")
    original = values.get("original-recipient")
    if final is None and original is None:
        notes.add("a per-recipient group without Final-Recipient was skipped")
        return None
    address_type, address = parse_address_field(final or original or "")
    if not address:
        notes.add("a per-recipient group with an empty Final-Recipient was skipped")
        return None
    if final is None:
        notes.add("Final-Recipient missing; Original-Recipient used")
    elif address_type is None:
        notes.add("Final-Recipient without an address type")
    original_address = parse_address_field(original)[1] or None if original else None
    diagnostic = values.get("diagnostic-code")
    if diagnostic is not None and "\\x{" in diagnostic:
        diagnostic = unescape_xtext(diagnostic)
    return make_recipient(
        address=address, address_type=address_type, original_recipient=original_address,
        action=values.get("action"), status=values.get("status"),
        diagnostic=diagnostic, remote_mta=values.get("remote-mta"),
        last_attempt_date=parse_date(values.get("last-attempt-date")),
        will_retry_until=parse_date(values.get("will-retry-until")),
        rules=rules, notes=notes, fields=tuple(group))


def make_recipient(*, address: str, action: str | None, status: str | None,
                   diagnostic: str | None, rules: Sequence[Rule], notes: Notes,
                   address_type: str | None = None, original_recipient: str | None = None,
                   remote_mta: str | None = None, last_attempt_date: float | None = None,
                   will_retry_until: float | None = None,
                   fields: tuple[Field, ...] = ()) -> RecipientStatus:
    """A classified recipient from its raw values (the DSN reader's and the text
    heuristics' common end)."""
    written_status = None
    if status is not None:
        found = _STATUS.search(status)
        written_status = found.group(1) if found else None
        if written_status is None:
            notes.add("Status is not an enhanced status code")
    elif diagnostic:
        notes.add("Status missing; taken from the Diagnostic-Code")
    else:
        notes.add("Status and Diagnostic-Code missing")
    code_text, effective = effective_code_and_status(None, written_status or "",
                                                     diagnostic or "")
    normalised, inferred = _action(action, effective)
    if inferred:
        notes.add("Action missing; inferred from the status" if action is None
                  else "Action not an RFC 3464 value; mapped")
    bounce_type = bounce_subtype = kind_of_delay = None
    if normalised == "failed":
        bounce_type, bounce_subtype = classify(None, written_status or "", diagnostic or "",
                                               rules)
    elif normalised == "delayed":
        kind_of_delay = delay_type(RecipientResult(
            recipient=address, verdict=Verdict.DEFERRED,
            code=int(code_text) if code_text else None,
            status=effective or "4.0.0", diagnostic=diagnostic or ""))
    return RecipientStatus(
        final_recipient=address, address_type=address_type,
        original_recipient=original_recipient, action=normalised, action_inferred=inferred,
        status=written_status, effective_status=effective, diagnostic_code=diagnostic,
        remote_mta=remote_mta, remote_mta_ip=_ip_of(remote_mta),
        last_attempt_date=last_attempt_date, will_retry_until=will_retry_until,
        bounce_type=bounce_type, bounce_subtype=bounce_subtype, delay_type=kind_of_delay,
        fields=fields)


def _action(value: str | None, effective_status: str) -> tuple[str, bool]:
    """The RFC 3464 action and whether it had to be inferred or mapped."""
    if value is not None:
        word = value.strip().split(" ")[0].strip(".,;:()").lower() if value.strip() else ""
        if word in _ACTIONS:
            return word, False
        if word in _ACTION_SYNONYMS:
            return _ACTION_SYNONYMS[word], True
    if effective_status.startswith("4"):
        return "delayed", True
    if effective_status.startswith("2"):
        return "delivered", True
    # 5.x.x, or nothing at all: a report about a recipient that says nothing else is
    # a failure notice (classified Undetermined when nothing says why).
    return "failed", True


def _ip_of(remote_mta: str | None) -> str | None:
    """The IP address in a Remote-MTA value: "dns; mx.example.net. (192.0.2.1)",
    "dns; [192.0.2.1]" or a bare "192.0.2.1"."""
    if not remote_mta:
        return None
    candidates = [match.group(1) for match in _BRACKETED.finditer(remote_mta)]
    candidates.append(remote_mta.rpartition(";")[2].strip().strip("[]").rstrip("."))
    for candidate in candidates:
        # Checked first: ip_address raising on every host name is slow in bulk.
        if not _IP_SHAPED.fullmatch(candidate):
            continue
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None
