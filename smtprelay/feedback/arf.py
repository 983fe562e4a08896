"""Reading complaint reports: ARF (RFC 5965) feedback reports, and the non-ARF forms.

An ARF report is a multipart/report (report-type=feedback-report) with a human part,
a message/feedback-report part (one block of fields: Feedback-Type, User-Agent,
Version, Original-Mail-From, Original-Rcpt-To, Arrival-Date, Source-IP,
Reported-Domain, ...) and the reported message or its header section. ``read`` keeps
all of it; SES's Complaint object takes ``feedback_type`` (complaintFeedbackType),
``user_agent`` and ``arrival_date``.

Who complained is often not in the report: most mailbox providers redact the
recipient (Original-Rcpt-To absent, To rewritten). ``recipient_candidates`` lists
what the report does say, strongest first, and ``original`` is None when no original
came with it; the VERP envelope sender of the original (``original_mail_from`` or the
original's Return-Path, see ``smtprelay.feedback.classify.find_verp_tags``) is then
the reliable way back to message and recipient. That decision is the caller's.

Older drafts of ARF and some providers differ, and are read too: "Received-Date"
for Arrival-Date (Yahoo), "Removal-Recipient" (AOL), Microsoft's
"X-HmXmrOriginalRecipient" header in the returned original.

Non-ARF complaints: the only form still common is a forwarded spam report (SpamCop,
a postmaster forwarding a user's complaint): a message that says so in its Subject or
sender and carries the reported message. ``read_forwarded`` recognises it and marks the
result ``heuristic``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import ClassVar

from smtprelay.feedback import mime
from smtprelay.feedback.fields import (
    Field,
    all_values,
    decode_bytes,
    first,
    parse_address_field,
    parse_date,
    read_header_section,
    read_text_fields,
)
from smtprelay.mail.address import local_of

FEEDBACK_REPORT_TYPE = "message/feedback-report"
# RFC 5965 7.3 and RFC 6591 (auth-failure): the IANA Feedback Report Type Values, which
# SES passes on as complaintFeedbackType.
KNOWN_FEEDBACK_TYPES = frozenset({"abuse", "fraud", "virus", "other", "not-spam",
                                  "auth-failure"})
_FORWARDED_COMPLAINT = re.compile(
    r"\bspamcop\b|spam (report|complaint)|abuse (report|complaint)|complaint about"
    r"|reported as (spam|junk)|unsolicited (commercial )?e-?mail report|feedback loop",
    re.IGNORECASE)

_OFFENDING_MESSAGE = re.compile(r"^\s*\[\s*offending message\s*\][^\n]*\n",
                                re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ComplaintReport:
    """A complaint about one of our messages."""

    kind: ClassVar[str] = "complaint-report"

    # Feedback-Type, lower case ("abuse", "not-spam"); SES's complaintFeedbackType.
    # None when the report has none (a non-ARF complaint is reported as "abuse").
    feedback_type: str | None
    user_agent: str | None  # SES's userAgent
    version: str | None
    arrival_date: float | None  # Arrival-Date, or the older Received-Date: SES's arrivalDate
    source_ip: str | None
    original_mail_from: str | None  # the envelope sender as received: our VERP address
    original_rcpt_to: tuple[str, ...]  # often absent: providers redact the recipient
    removal_recipients: tuple[str, ...]  # AOL's older form of the same
    reported_domains: tuple[str, ...]
    reported_uris: tuple[str, ...]
    incidents: int | None  # how many complaints this report stands for (default 1)
    original: mime.OriginalMessage | None  # None: no original came with the report
    date: float | None  # the report's own Date: SES's complaint "timestamp"
    subject: str | None
    report_from: str | None
    # None for an ARF report; otherwise which non-ARF form was recognised.
    heuristic: str | None
    notes: tuple[str, ...]
    fields: tuple[Field, ...] = field(repr=False, default=())  # the feedback-report fields
    truncated: bool = False

    @property
    def original_missing(self) -> bool:
        return self.original is None

    @property
    def known_feedback_type(self) -> bool:
        return self.feedback_type in KNOWN_FEEDBACK_TYPES

    @property
    def recipient_candidates(self) -> tuple[tuple[str, str], ...]:
        """(address, where it was found) for whoever may have complained, strongest
        evidence first, deduplicated. Empty when the provider redacted them all."""
        found: list[tuple[str, str]] = []
        found += [(a, "Original-Rcpt-To") for a in self.original_rcpt_to]
        found += [(a, "Removal-Recipient") for a in self.removal_recipients]
        if self.original is not None:
            for name in ("X-HmXmrOriginalRecipient", "X-Original-To", "Delivered-To"):
                for value in self.original.get_all(name):
                    found.append((parse_address_field(value)[1], name))
            found += [(a, "Received (smtprelay)") for a in self.original.relay_recipients]
            to = self.original.get_all("to")
            # A To naming exactly one address, and not redacted ("redacted@", "xxx").
            if len(to) == 1 and to[0].count("@") == 1:
                address = parse_address_field(to[0])[1]
                if "@" in address and not _redacted(address):
                    found.append((address, "To"))
        seen: set[str] = set()
        result = []
        for address, source in found:
            key = address.lower()
            if "@" in address and key not in seen and not _redacted(address):
                seen.add(key)
                result.append((address, source))
        return tuple(result)


def parse(raw: bytes) -> ComplaintReport:
    """The ARF report in ``raw``; NotAReport when it has no feedback-report part."""
    report = read(mime.parse(raw))
    if report is None:
        raise mime.NotAReport("no message/feedback-report part")
    return report


def read(message: mime.ParsedMessage) -> ComplaintReport | None:
    """The complaint from the message's feedback-report part; None when there is none."""
    parts = message.parts_of_type(FEEDBACK_REPORT_TYPE)
    if not parts:
        return None
    notes: list[str] = []
    if len(parts) > 1:
        notes.append(f"{len(parts)} feedback-report parts; only the first was read")
    if message.truncated:
        notes.append(f"input longer than {mime.MAX_INPUT} octets was cut")
    # RFC 5965 makes it a single block, but some generators put blank lines in it.
    report_fields = read_text_fields(decode_bytes(mime.part_bytes(parts[0])))
    feedback_type = first(report_fields, "feedback-type")
    if feedback_type is None:
        notes.append("Feedback-Type missing")
    else:
        feedback_type = feedback_type.split()[0].strip(";").lower()
        if feedback_type not in KNOWN_FEEDBACK_TYPES:
            notes.append(f"Feedback-Type {feedback_type!r} is not a registered value")
    arrival = first(report_fields, "arrival-date") or first(report_fields, "received-date")
    original = mime.find_original(message)
    if original is None:
        notes.append("no original message attached")
    elif not original.complete and original.content_type == "message/rfc822":
        notes.append("original message has no body")
    return ComplaintReport(
        feedback_type=feedback_type,
        user_agent=first(report_fields, "user-agent"),
        version=first(report_fields, "version"),
        arrival_date=parse_date(arrival),
        source_ip=_ip(first(report_fields, "source-ip")),
        original_mail_from=_address(first(report_fields, "original-mail-from")),
        original_rcpt_to=_addresses(all_values(report_fields, "original-rcpt-to")),
        removal_recipients=_addresses(all_values(report_fields, "removal-recipient")),
        reported_domains=all_values(report_fields, "reported-domain"),
        reported_uris=all_values(report_fields, "reported-uri"),
        incidents=_count(first(report_fields, "incidents")),
        original=original,
        date=message.date,
        subject=message.subject,
        report_from=message.header("from"),
        heuristic=None,
        notes=tuple(notes),
        fields=tuple(report_fields),
        truncated=message.truncated,
    )


def read_forwarded(message: mime.ParsedMessage) -> ComplaintReport | None:
    """A non-ARF complaint: a spam report (SpamCop, a forwarded user complaint) that
    says so in its Subject or From and carries the reported message."""
    subject = message.subject or ""
    sender = message.header("from") or ""
    if not (_FORWARDED_COMPLAINT.search(subject) or _FORWARDED_COMPLAINT.search(sender)):
        return None
    original = mime.find_original(message) or _inline_original(message)
    if original is None:
        return None
    return ComplaintReport(
        # A spam report, whatever words it uses; the envelope sender is what the
        # reported message's Return-Path recorded (there is no Original-Mail-From).
        feedback_type="abuse", user_agent=None, version=None, arrival_date=None,
        source_ip=None, original_mail_from=original.return_path, original_rcpt_to=(),
        removal_recipients=(), reported_domains=(), reported_uris=(), incidents=None,
        original=original, date=message.date, subject=message.subject,
        report_from=message.header("from"), heuristic="forwarded spam report",
        notes=("no feedback-report part; recognised by its subject or sender",),
        truncated=message.truncated)


def _inline_original(message: mime.ParsedMessage) -> mime.OriginalMessage | None:
    """The reported message pasted into the text under a marker line (SpamCop's
    "[ Offending message ]")."""
    text = mime.human_text(message)
    marker = _OFFENDING_MESSAGE.search(text)
    if marker is None:
        return None
    headers = read_header_section(text[marker.end():].lstrip("\r\n"))
    return mime.OriginalMessage(tuple(headers), "text/plain", complete=False) if headers else None


def _redacted(address: str) -> bool:
    local = local_of(address).lower()
    return not local or "redacted" in local or set(local) <= {"x", "*", "."}


def _address(value: str | None) -> str | None:
    if value is None:
        return None
    return parse_address_field(value)[1] or None


def _addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    found = []
    for value in values:
        # Some reports list several recipients in one field, comma-separated.
        for piece in value.split(","):
            address = parse_address_field(piece)[1]
            if address:
                found.append(address)
    return tuple(found)


def _ip(value: str | None) -> str | None:
    if not value:
        return None
    text = value.split()[0].strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return value  # kept as written: a report's own oddity, not ours to drop


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    digits = value.split()[0] if value.split() else ""
    return int(digits) if digits.isdigit() and len(digits) < 10 else None
