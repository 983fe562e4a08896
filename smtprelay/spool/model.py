"""Values that cross the spool boundary: what the SMTP side hands in, what the queue holds."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

_ids = random.Random()  # seeded from os.urandom once, at import


class RecipientState(StrEnum):
    """Where one recipient of a spooled message stands.

    queued and deferred wait for the scheduler; sending is held by a delivery attempt
    (turned back into queued on start-up, since the attempt died with the process);
    the rest are final.
    """

    QUEUED = "queued"
    DEFERRED = "deferred"
    SENDING = "sending"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    SUPPRESSED = "suppressed"
    DELETED = "deleted"

    @property
    def is_final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset(
    {RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.SUPPRESSED,
     RecipientState.DELETED}
)
PENDING_STATES = (RecipientState.QUEUED, RecipientState.DEFERRED, RecipientState.SENDING)
# The next attempt of a held recipient (an operator's hold, released by hand): a time
# the scheduler never reaches (year ~33,000), so holding needs no state of its own and
# every query of due recipients already passes it by.
HELD = 1e12
# What a queue listing can filter on: "pending" (some recipient in PENDING_STATES),
# "finished" (none left), or a recipient state some recipient is in.
FILTER_STATES: tuple[str, ...] = ("pending", "finished", "held",
                                  *(s.value for s in RecipientState))


def new_message_id(now: float | None = None) -> str:
    """A unique, time-ordered id: 12 hex digits of milliseconds, a dash, 16 random hex digits."""
    millis = int((time.time() if now is None else now) * 1000)
    # Unique, not secret (nothing is authorised by knowing an id): no syscall needed.
    return f"{millis:012x}-{_ids.getrandbits(64):016x}"


def accepted_at(message_id: str) -> float | None:
    """When the message with this id was accepted (its first 12 hex digits are the
    milliseconds new_message_id was given), or None for an id of another form."""
    head = message_id[:12]
    if len(head) != 12 or message_id[12:13] != "-":
        return None
    try:
        return int(head, 16) / 1000
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    recipients: tuple[str, ...]
    # ESMTP facts about the transaction the delivery side must honour.
    smtputf8: bool = False
    body_8bitmime: bool = False


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event for the outbox, written in the same transaction as the change it reports.

    `detail` is the event type's own SES object (``events.ses.detail_object``); the
    ``mail`` object is rebuilt at publication from the message's mail record, which
    outlives the spooled message for the tracking window.
    """

    event_id: str
    message_id: str
    type: str  # SES eventType: Send, Delivery, Bounce, ...
    configuration_set: str | None
    at: float
    detail: dict[str, Any]
    # Tags this event adds to its ``mail.tags`` (SES's ses:outgoing-ip, known only once
    # a connection was made); the message's own tags come from its mail record.
    mail_tags: dict[str, list[str]] | None = None


@dataclass(frozen=True, slots=True)
class Tracking:
    """What the tracking transform put in a message."""

    links: int
    open: bool
    unsubscribe: bool


@dataclass(frozen=True, eq=False)
class MessageAttributes(Mapping[str, Any]):
    """What the relay knows of a message beyond its envelope, kept with it in the spool.

    Code reads the typed fields. The spool stores `as_json()`, which is also the
    read-only mapping this value is (so `attrs["tags"]` and comparing with a dict keep
    meaning what they meant when this was a dict); keys a newer smtprelay wrote are
    kept in `extra`, so reading and writing a message back loses nothing.
    """

    tags: dict[str, list[str]] | None = None  # the message tags, ses:* ones included
    tls: str | None = None  # TLS version of the submission, None for plain text
    uncounted: tuple[int, ...] | None = None  # recipient indexes left out of the stats
    tag_errors: tuple[str, ...] | None = None  # message tags that were ignored, and why
    control_headers: dict[str, str] | None = None  # X-SES-* fields the relay removed
    tracking: Tracking | None = None
    events: bool = False  # the configuration set publishes events for it
    dsn_for: str | None = None  # a DSN: the message it reports on
    auto_reply_for: str | None = None  # a mailbox simulator auto-reply: the message
    # Delivered as one copy per recipient, each made at delivery by this plan
    # (transform.tracking.Plan.as_json, read by transform.copies); None: one body for all.
    copies: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.tags is not None:
            out["tags"] = self.tags
        if self.tls is not None:
            out["tls"] = self.tls
        if self.uncounted is not None:
            out["uncounted"] = list(self.uncounted)
        if self.tag_errors is not None:
            out["tag_errors"] = list(self.tag_errors)
        if self.control_headers is not None:
            out["control_headers"] = self.control_headers
        if self.tracking is not None:
            out["tracking"] = {"links": self.tracking.links, "open": self.tracking.open,
                               "unsubscribe": self.tracking.unsubscribe}
        if self.events:
            out["events"] = True
        if self.dsn_for is not None:
            out["dsn_for"] = self.dsn_for
        if self.auto_reply_for is not None:
            out["auto_reply_for"] = self.auto_reply_for
        if self.copies is not None:
            out["copies"] = self.copies
        out.update((key, value) for key, value in self.extra.items() if key not in out)
        return out

    @classmethod
    def from_json(cls, value: Any) -> MessageAttributes:
        """Read what the spool stored; a value of the wrong type is left in `extra`."""
        if not isinstance(value, dict):
            return cls()
        extra = dict(value)

        def take(key: str, kind: type) -> Any:
            return extra.pop(key) if isinstance(extra.get(key), kind) else None

        tags = take("tags", dict)
        uncounted = take("uncounted", list)
        tag_errors = take("tag_errors", list)
        tracking = take("tracking", dict)
        return cls(
            tags=tags, tls=take("tls", str),
            uncounted=None if uncounted is None else tuple(
                i for i in uncounted if isinstance(i, int) and not isinstance(i, bool)),
            tag_errors=None if tag_errors is None else tuple(str(e) for e in tag_errors),
            control_headers=take("control_headers", dict),
            tracking=None if tracking is None else Tracking(
                links if isinstance(links := tracking.get("links"), int) else 0,
                tracking.get("open") is True, tracking.get("unsubscribe") is True),
            events=extra.pop("events") if extra.get("events") is True else False,
            dsn_for=take("dsn_for", str),
            auto_reply_for=take("auto_reply_for", str), copies=take("copies", dict),
            extra=extra)

    def __getitem__(self, key: str) -> Any:
        return self.as_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_json())

    def __len__(self) -> int:
        return len(self.as_json())


@dataclass(frozen=True, slots=True)
class NewMessage:
    """An accepted message on its way into the spool."""

    message_id: str
    envelope: Envelope
    data: bytes
    account: str
    configuration_set: str | None
    received_at: float
    client_ip: str
    client_helo: str
    auth_user: str | None
    listener: str
    attrs: MessageAttributes = field(default_factory=MessageAttributes)
    # The relay's own fields in front of `data` (its DKIM-Signature and Received
    # fields), stored apart so that the client's bytes are never copied to put them
    # in front (mox's MsgPrefix): the message is `prefix + data`.
    prefix: bytes = b""
    # Recipient index -> suppression reason (BOUNCE or COMPLAINT), or UNSUBSCRIBED
    # for a contact that left the message's list or topic (store.unsubscribed_reason):
    # spooled as final, never delivered, with a Permanent/OnAccountSuppressionList
    # bounce outcome whose diagnostic says which (store.suppressed_diagnostic).
    suppressed: dict[int, str] = field(default_factory=dict)
    # Events to publish (Send, suppression bounces); with any, or with `publishes`, a
    # mail record (envelope, header section, tags) is kept for later events.
    events: tuple[EventRecord, ...] = ()
    publishes: bool = False

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.data)

@dataclass(frozen=True, slots=True)
class Outcome:
    """A final or notable result for one recipient, kept until events publish it."""

    message_id: str
    index: int
    kind: str  # "delivery", "bounce" or "delay"
    at: float
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    status: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None  # "mx1.example.net [192.0.2.1]"
    delay_type: str | None = None  # SES delayType, for "delay"
    # Our end of the connection ("192.0.2.1"), for the events' ses:outgoing-ip tag; not
    # kept in the outcomes table (the events are made from the attempt's own outcomes).
    outgoing_ip: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """What one delivery attempt did for one held recipient."""

    index: int
    state: RecipientState  # delivered, bounced, or deferred (or queued again)
    at: float
    reply: str  # the remote reply or our reason, shown by `queue list`
    next_attempt: float | None = None  # for deferred
    outcomes: tuple[Outcome, ...] = ()  # delivery, bounce or delay records for events
    delay_noted: float | None = None  # when a delay record was last made (None: unchanged)


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    index: int
    address: str
    state: RecipientState
    attempts: int
    next_attempt: float
    last_attempt: float | None
    last_reply: str | None
    delay_noted: float | None = None

    @property
    def held(self) -> bool:
        return not self.state.is_final and self.state is not RecipientState.SENDING \
            and self.next_attempt >= HELD


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A spooled message without its bytes (those are read separately, on demand)."""

    message_id: str
    account: str
    configuration_set: str | None
    mail_from: str
    received_at: float
    size: int
    client_ip: str
    client_helo: str
    auth_user: str | None
    listener: str
    smtputf8: bool
    body_8bitmime: bool
    attrs: MessageAttributes
    recipients: tuple[QueuedRecipient, ...]

    @property
    def pending(self) -> tuple[QueuedRecipient, ...]:
        return tuple(r for r in self.recipients if not r.state.is_final)

    def as_json(self) -> dict[str, Any]:
        """What `smtprelay queue list --json` and the admin API show of it."""
        return {
            "id": self.message_id, "account": self.account,
            "configuration_set": self.configuration_set, "mail_from": self.mail_from,
            "received_at": self.received_at, "size": self.size,
            "client_ip": self.client_ip, "auth_user": self.auth_user,
            "listener": self.listener,
            "recipients": [
                {"address": r.address, "state": r.state.value, "attempts": r.attempts,
                 "next_attempt": r.next_attempt, "last_attempt": r.last_attempt,
                 "last_reply": r.last_reply, "held": r.held}
                for r in self.recipients
            ],
        }
