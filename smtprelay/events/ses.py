"""An event as SES's event-publishing JSON, so consumers written for SES work unchanged.

Field names, nesting and types follow the SES Developer Guide ("Contents of event data
that Amazon SES publishes", seed 004 around lines 10660-10860, and its examples around
11620-11830). Where we differ, docs/events.md says so; docs/events.schema.json is the
schema of what is written here.

Serialising never fails: an event that cannot be written is an event lost, and the
inputs (header bytes from senders, User-Agent strings from anyone) are not ours to
trust. A header section we cannot read gives empty headers, an undecodable word stays
as written, and text that is not valid Unicode is written with U+FFFD in its place.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from smtprelay.events.model import (
    Bounce,
    Click,
    Complaint,
    Delivery,
    DeliveryDelay,
    Detail,
    Event,
    EventType,
    Open,
    Reject,
    RenderingFailure,
    Send,
    Subscription,
    TopicPreferences,
)
from smtprelay.mail import encoded_words, headers
from smtprelay.spool.model import accepted_at
from smtprelay.spool.outbox import MailInfo, StoredEvent

# The guide: headersTruncated is true "if the headers are larger than 10 KB", without
# saying which KB; we read it as 10 KiB of header fields as written (line endings
# included), and keep the first fields that fit whole.
HEADERS_LIMIT = 10 * 1024

# The object that carries each type's detail, next to "mail".
DETAIL_KEYS: dict[EventType, str] = {
    EventType.SEND: "send",
    EventType.REJECT: "reject",
    EventType.BOUNCE: "bounce",
    EventType.COMPLAINT: "complaint",
    EventType.DELIVERY: "delivery",
    EventType.DELIVERY_DELAY: "deliveryDelay",
    EventType.SUBSCRIPTION: "subscription",
    EventType.OPEN: "open",
    EventType.CLICK: "click",
    EventType.RENDERING_FAILURE: "failure",
}

# commonHeaders: the address lists are arrays, the rest strings (the guide's examples,
# and "The From and To fields are represented by arrays").
_ADDRESS_LISTS = {"from": "from", "reply-to": "replyTo", "to": "to", "cc": "cc", "bcc": "bcc"}
_SINGLE = {"return-path": "returnPath", "date": "date", "message-id": "messageId",
           "subject": "subject"}
_COMMON_ORDER = ("returnPath", "from", "replyTo", "date", "to", "cc", "bcc", "messageId",
                 "subject")
# email.utils' own test for a display name that has to be quoted.
_NEEDS_QUOTES = re.compile(r'[][\\()<>@,:;".]')

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
_MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(
    milliseconds=1)

log = logging.getLogger("smtprelay.events")


def to_json(event: Event) -> bytes:
    """The record as one line of compact UTF-8 JSON (no newline), as SES publishes it."""
    return json.dumps(to_ses(event), ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def to_ses(event: Event) -> dict[str, Any]:
    """The record as SES's JSON object: eventType, mail, and the type's own object."""
    record = {
        "eventType": str(event.type),
        "mail": mail_object(event.mail),
        DETAIL_KEYS[event.type]: _detail(event.detail),
    }
    cleaned: dict[str, Any] = _clean(record)
    return cleaned


def stored_to_ses(event: StoredEvent) -> dict[str, Any]:
    """The published form of an outbox row."""
    return assemble(EventType(event.type), event.mail, event.detail,
                    message_id=event.message_id, mail_tags=event.mail_tags)


def _compact(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def stored_to_json(event: StoredEvent) -> bytes:
    """stored_to_ses as compact UTF-8 JSON. The ``mail`` object's JSON is made once per
    message (_MAIL_OBJECTS) and spliced in: a message's events (Send, Delivery, every
    open and click) all carry the same one, and it is most of each line."""
    if event.mail is None or event.mail_tags:
        return _compact(stored_to_ses(event))
    kind = EventType(event.type)
    return b"".join((b'{"eventType":', _compact(str(kind)), b',"mail":',
                     _MAIL_OBJECTS.get(event.mail)[1], b',"',
                     DETAIL_KEYS[kind].encode(), b'":', _compact(_clean(event.detail)), b"}"))


class _MailObjectCache:
    """The cleaned ``mail`` objects (and their JSON) of the messages last published.

    Keyed by message id and checked against the whole MailInfo, so a record that
    differs (rewritten, or another relay's id) is never served a stale object. A lock
    because webhook and file destinations may render from different threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[MailInfo, dict[str, Any], bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, mail: MailInfo) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            entry = self._entries.get(mail.message_id)
            if entry is not None and entry[0] == mail:
                self._entries.move_to_end(mail.message_id)
                return entry[1], entry[2]
        cleaned: dict[str, Any] = _clean(mail_object(mail))
        encoded = _compact(cleaned)
        with self._lock:
            self._entries[mail.message_id] = (mail, cleaned, encoded)
            self._entries.move_to_end(mail.message_id)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return cleaned, encoded


# Events of a message come close together (Send and Delivery within seconds, opens
# and clicks in the hours after a campaign): a few thousand messages cover a burst.
_MAIL_OBJECTS = _MailObjectCache(4096)


def detail_object(detail: Detail) -> dict[str, Any]:
    """The event type's own object alone (what the outbox stores)."""
    cleaned: dict[str, Any] = _clean(_detail(detail))
    return cleaned


def assemble(kind: EventType, mail: MailInfo | None, detail: dict[str, Any], *,
             message_id: str, mail_tags: dict[str, list[str]] | None = None
             ) -> dict[str, Any]:
    """A record from a stored type object and the message's mail info; without the
    mail info (its record expired) the ``mail`` object holds the message id and the
    acceptance time it encodes, with an empty source and sendingAccountId.
    `mail_tags` are the event's own tags (ses:outgoing-ip), added to ``mail.tags``."""
    if mail is None:
        # What the schema requires still: the acceptance time is in the message id;
        # the sender and account went with the record.
        accepted = accepted_at(message_id)
        mail_part: dict[str, Any] = {
            "timestamp": iso_timestamp(accepted if accepted is not None else 0.0),
            "source": "", "sendingAccountId": "", "messageId": message_id,
            "destination": [], "headersTruncated": False, "headers": [], "tags": {}}
        mail_part = _clean(mail_part)
    else:
        mail_part = dict(_MAIL_OBJECTS.get(mail)[0])  # a copy: the cached one is shared
    if mail_tags:
        mail_part["tags"] = _clean(
            {**mail_part["tags"], **{name: list(values) for name, values in mail_tags.items()}})
    return {"eventType": str(kind), "mail": mail_part, DETAIL_KEYS[kind]: _clean(detail)}


def iso_timestamp(seconds: float) -> str:
    """Unix seconds as SES writes times: ISO 8601 UTC with milliseconds, "...T23:20:52.240Z".

    Rounded to the microsecond first (so 0.645 stays .645 despite binary floats), then
    cut to the millisecond; out-of-range and non-finite values are clamped rather than
    raised, since a wrong clock must not lose an event.
    """
    try:
        millis = round(seconds * 1_000_000) // 1000
    except (OverflowError, ValueError):  # inf, nan
        millis = 0 if math.isnan(seconds) else (_MAX_MS if seconds > 0 else _MIN_MS)
    moment = _EPOCH + timedelta(milliseconds=min(max(millis, _MIN_MS), _MAX_MS))
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
            f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z")


def mail_object(mail: MailInfo) -> dict[str, Any]:
    """SES's ``mail`` object: the message's envelope, headers and tags."""
    try:
        fields = headers.parse_header_section(mail.header_section)
    except ValueError:  # MalformedHeader: still an event, just without headers
        fields = []
    kept = fields
    truncated = bool(fields) and fields[-1].end > HEADERS_LIMIT
    if truncated:
        # Fields are contiguous from offset 0, so a field's end is the size so far.
        kept = [f for f in fields if f.end <= HEADERS_LIMIT]
    out: dict[str, Any] = {
        "timestamp": iso_timestamp(mail.timestamp),
        "source": mail.source,
    }
    # What a client wrote is parsed here, maybe months after acceptance (a record from
    # an older relay, a report's original): a value no parser of ours survives must
    # cost the event its commonHeaders, never the stream behind it its publication.
    try:
        domain = _from_domain(mail, fields)
        common = common_headers(fields)
    except (RecursionError, ValueError, LookupError, TypeError) as exc:
        log.warning("msg=%s header fields not readable for the event (%s): commonHeaders "
                    "left out", mail.message_id, type(exc).__name__)
        domain, common = None, {}
    if domain:
        # SES writes the ARN of the identity that sent; ours is a pseudo-ARN in the same
        # six-part shape, so code that splits an ARN keeps working (docs/events.md).
        out["sourceArn"] = (f"arn:smtprelay:ses:local:{mail.sending_account_id}:"
                            f"identity/{domain}")
    out.update({
        "sendingAccountId": mail.sending_account_id,
        "messageId": mail.message_id,
        "destination": list(mail.destination),
        "headersTruncated": truncated,
        "headers": [{"name": f.name, "value": f.value} for f in kept],
        "commonHeaders": common,
        "tags": {name: list(values) for name, values in mail.tags.items()},
    })
    return out


def common_headers(fields: Sequence[headers.HeaderField]) -> dict[str, Any]:
    """SES's ``commonHeaders``: the usual fields, present only when the message has them.

    As in the guide's examples, address lists are arrays with one "Name <address>" per
    address (quotes dropped where not needed), and, as SES does, encoded words (RFC
    2047) in the subject and in display names are decoded here, while ``headers`` keeps
    every value as written. A list we cannot read is given as written, in one string.
    """
    lists: dict[str, list[str]] = {}
    single: dict[str, str] = {}
    for f in fields:
        key = f.key
        if key in _ADDRESS_LISTS:
            lists.setdefault(_ADDRESS_LISTS[key], []).extend(_address_list(f.value))
        elif key in _SINGLE and _SINGLE[key] not in single:
            name = _SINGLE[key]
            if name == "subject":
                single[name] = encoded_words.decode(f.value)
            elif name == "returnPath":
                # The address alone, without the angle brackets; as written if unclear.
                found = headers.addresses(f.value)
                readable = len(found) == 1 and found[0] != "(unparseable)"
                single[name] = found[0] if readable else f.value
            else:
                single[name] = f.value
    merged: dict[str, Any] = {**lists, **single}
    return {name: merged[name] for name in _COMMON_ORDER if name in merged}


def _address_list(value: str) -> list[str]:
    # headers.addresses is the relay's own ambiguity check (the one From is judged by).
    if headers.addresses(value) == ["(unparseable)"]:
        return [value]
    out = [_format_address(encoded_words.decode(name), address)
           for name, address in email.utils.getaddresses([value]) if address]
    return out or ([value] if value else [])


def _format_address(name: str, address: str) -> str:
    if not name:
        return address
    if _NEEDS_QUOTES.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def _from_domain(mail: MailInfo, fields: Sequence[headers.HeaderField]) -> str | None:
    """The domain the message was sent as: the ses:from-domain tag, else From, else
    the envelope sender."""
    tagged = mail.tags.get("ses:from-domain")
    if tagged and tagged[0]:
        return tagged[0]
    for f in fields:
        if f.key == "from":
            found = headers.addresses(f.value)
            if found and "@" in found[0]:
                return found[0].rpartition("@")[2]
            break
    if "@" in mail.source:
        return mail.source.rpartition("@")[2]
    return None


def _detail(detail: Detail) -> dict[str, Any]:
    match detail:
        case Send():
            return {}
        case Reject():
            return {"reason": detail.reason}
        case RenderingFailure():
            return {"errorMessage": detail.error_message, "templateName": detail.template_name}
        case Delivery():
            out: dict[str, Any] = {
                "timestamp": iso_timestamp(detail.timestamp),
                "processingTimeMillis": int(detail.processing_time_millis),
                "recipients": list(detail.recipients),
                "smtpResponse": detail.smtp_response,
                "reportingMTA": detail.reporting_mta,
            }
            _put(out, "remoteMtaIp", detail.remote_mta_ip)
            return out
        case Bounce():
            return _bounce(detail)
        case Complaint():
            return _complaint(detail)
        case DeliveryDelay():
            out = {
                "timestamp": iso_timestamp(detail.timestamp),
                "delayType": str(detail.delay_type),
                "expirationTime": iso_timestamp(detail.expiration_time),
                "delayedRecipients": [
                    {"emailAddress": r.email_address, "status": r.status,
                     "diagnosticCode": r.diagnostic_code}
                    for r in detail.delayed_recipients],
                "reportingMTA": detail.reporting_mta,
            }
            _put(out, "remoteMtaIp", detail.remote_mta_ip)
            return out
        case Subscription():
            return {
                "contactList": detail.contact_list,
                "timestamp": iso_timestamp(detail.timestamp),
                "source": detail.source,
                "newTopicPreferences": _preferences(detail.new_topic_preferences),
                "oldTopicPreferences": _preferences(detail.old_topic_preferences),
            }
        case Open():
            out = {
                "ipAddress": detail.ip_address,
                "timestamp": iso_timestamp(detail.timestamp),
                "userAgent": detail.user_agent,
            }
            _machine(out, detail.machine, detail.machine_reason)
            return out
        case Click():
            out = {
                "ipAddress": detail.ip_address,
                "timestamp": iso_timestamp(detail.timestamp),
                "userAgent": detail.user_agent,
                "link": detail.link,
                "linkTags": {name: list(values) for name, values in detail.link_tags.items()},
            }
            _machine(out, detail.machine, detail.machine_reason)
            return out
    raise TypeError(f"not an event detail: {detail!r}")  # pragma: no cover


def _bounce(detail: Bounce) -> dict[str, Any]:
    recipients = []
    for r in detail.bounced_recipients:
        item = {"emailAddress": r.email_address}
        _put(item, "action", r.action)
        _put(item, "status", r.status)
        _put(item, "diagnosticCode", r.diagnostic_code)
        recipients.append(item)
    out: dict[str, Any] = {
        "bounceType": str(detail.bounce_type),
        "bounceSubType": str(detail.bounce_sub_type),
        "bouncedRecipients": recipients,
        "timestamp": iso_timestamp(detail.timestamp),
        "feedbackId": detail.feedback_id,
    }
    _put(out, "reportingMTA", detail.reporting_mta)
    _put(out, "remoteMtaIp", detail.remote_mta_ip)
    return out


def _complaint(detail: Complaint) -> dict[str, Any]:
    out: dict[str, Any] = {
        "complainedRecipients": [{"emailAddress": a} for a in detail.complained_recipients],
        "timestamp": iso_timestamp(detail.timestamp),
        # The guide's table says feedbackID; every example (and SES) says feedbackId.
        "feedbackId": detail.feedback_id,
        # null is SES's "none" here, not an absent field.
        "complaintSubType": None if detail.complaint_sub_type is None
        else str(detail.complaint_sub_type),
    }
    _put(out, "userAgent", detail.user_agent)
    _put(out, "complaintFeedbackType", detail.complaint_feedback_type)
    if detail.arrival_date is not None:
        out["arrivalDate"] = iso_timestamp(detail.arrival_date)
    return out


def _preferences(prefs: TopicPreferences) -> dict[str, Any]:
    return {
        "unsubscribeAll": prefs.unsubscribe_all,
        "topicSubscriptionStatus": [
            {"topicName": t.topic_name, "subscriptionStatus": str(t.subscription_status)}
            for t in prefs.topic_subscription_status],
    }


def _machine(out: dict[str, Any], machine: bool, reason: str | None) -> None:
    # Only when true: a human open or click is byte for byte what SES would publish.
    if machine:
        out["machine"] = True
        _put(out, "machineReason", reason)


def _put(out: dict[str, Any], name: str, value: str | None) -> None:
    if value is not None:
        out[name] = value


def _clean(value: Any) -> Any:
    """The record with every string made valid Unicode (JSON has no lone surrogates).

    Header values keep undecodable bytes as surrogate escapes, and aiohttp does the
    same with request headers (User-Agent); those become U+FFFD here.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)
        return value
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
