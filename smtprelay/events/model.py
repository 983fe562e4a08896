"""The event records: one typed value per state change of a message, shaped after SES's.

Every stage that changes a message's state (acceptance, delivery, the feedback
listener, the tracking server) hands an ``Event`` to the event sinks. The records
here are plain frozen values with no JSON in them, so a stage depends on the fields
it fills in and not on SES's spelling of them; ``smtprelay.events.ses`` writes the
one JSON form, in one place, so that consumers written for SES read it unchanged.

Timestamps are Unix seconds (float) everywhere, as in the spool; the JSON turns them
into SES's ISO 8601 form. A field that SES leaves out when it is unknown is ``None``
(or an empty tuple) here and is left out of the JSON too, never written as null.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from smtprelay.spool.outbox import MailInfo as MailInfo  # part of the event vocabulary
from smtprelay.transform import tokens


class EventType(StrEnum):
    """SES's ``eventType`` values (the ones smtprelay emits)."""

    SEND = "Send"
    REJECT = "Reject"
    BOUNCE = "Bounce"
    COMPLAINT = "Complaint"
    DELIVERY = "Delivery"
    DELIVERY_DELAY = "DeliveryDelay"
    SUBSCRIPTION = "Subscription"
    OPEN = "Open"
    CLICK = "Click"
    RENDERING_FAILURE = "Rendering Failure"


class BounceType(StrEnum):
    UNDETERMINED = "Undetermined"
    PERMANENT = "Permanent"
    TRANSIENT = "Transient"


class BounceSubType(StrEnum):
    UNDETERMINED = "Undetermined"
    GENERAL = "General"
    NO_EMAIL = "NoEmail"
    SUPPRESSED = "Suppressed"
    ON_ACCOUNT_SUPPRESSION_LIST = "OnAccountSuppressionList"
    MAILBOX_FULL = "MailboxFull"
    MESSAGE_TOO_LARGE = "MessageTooLarge"
    CONTENT_REJECTED = "ContentRejected"
    ATTACHMENT_REJECTED = "AttachmentRejected"


# The guide's "Bounce types" table: exactly these ten pairs exist. Consumers switch on
# the pair (only Permanent ones mean "remove the address"), so any other is refused
# when the record is built, at the stage that made the mistake.
BOUNCE_TYPES: frozenset[tuple[BounceType, BounceSubType]] = frozenset({
    (BounceType.UNDETERMINED, BounceSubType.UNDETERMINED),
    (BounceType.PERMANENT, BounceSubType.GENERAL),
    (BounceType.PERMANENT, BounceSubType.NO_EMAIL),
    (BounceType.PERMANENT, BounceSubType.SUPPRESSED),
    (BounceType.PERMANENT, BounceSubType.ON_ACCOUNT_SUPPRESSION_LIST),
    (BounceType.TRANSIENT, BounceSubType.GENERAL),
    (BounceType.TRANSIENT, BounceSubType.MAILBOX_FULL),
    (BounceType.TRANSIENT, BounceSubType.MESSAGE_TOO_LARGE),
    (BounceType.TRANSIENT, BounceSubType.CONTENT_REJECTED),
    (BounceType.TRANSIENT, BounceSubType.ATTACHMENT_REJECTED),
})


class DelayType(StrEnum):
    """SES's ``delayType`` values.

    The guide's table spells one of them ``TransientCommunicationGeneral`` but its own
    DeliveryDelay example (and SES itself) says ``TransientCommunicationFailure``; we
    follow the example, as ``smtprelay.delivery.retry.delay_type`` already does.
    """

    INTERNAL_FAILURE = "InternalFailure"
    GENERAL = "General"
    MAILBOX_FULL = "MailboxFull"
    SPAM_DETECTED = "SpamDetected"
    RECIPIENT_SERVER_ERROR = "RecipientServerError"
    IP_FAILURE = "IPFailure"
    TRANSIENT_COMMUNICATION_FAILURE = "TransientCommunicationFailure"
    BYOIP_HOST_NAME_LOOKUP_UNAVAILABLE = "BYOIPHostNameLookupUnavailable"
    # Held back by the relay itself (SES: "deemed it appropriate to internally defer
    # the message"): an IP pool's warm-up caps (delivery.ip_pools).
    SENDING_DEFERRAL = "SendingDeferral"
    UNDETERMINED = "Undetermined"


class ComplaintSubType(StrEnum):
    # The only value; SES writes null when it does not apply.
    ON_ACCOUNT_SUPPRESSION_LIST = "OnAccountSuppressionList"


class SubscriptionStatus(StrEnum):
    OPT_IN = "OptIn"
    OPT_OUT = "OptOut"


@dataclass(frozen=True, slots=True)
class Send:
    """Accepted; SES's ``send`` object is always empty."""


@dataclass(frozen=True, slots=True)
class Reject:
    # The guide: "The only possible value is Bad content" (a virus was found).
    reason: str = "Bad content"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One remote server took the message for ``recipients`` (a 250 to DATA)."""

    timestamp: float
    processing_time_millis: int  # acceptance to the remote 250
    recipients: tuple[str, ...]
    smtp_response: str  # the remote reply, e.g. "250 2.6.0 Message received"
    reporting_mta: str  # our host name
    remote_mta_ip: str | None = None  # left out when unknown


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    email_address: str
    # DSN fields: SES includes them only when a DSN is known, and each may be absent.
    action: str | None = None  # "failed"
    status: str | None = None  # "5.1.1"
    diagnostic_code: str | None = None  # "smtp; 550 5.1.1 user unknown"


@dataclass(frozen=True, slots=True)
class Bounce:
    bounce_type: BounceType
    bounce_sub_type: BounceSubType
    bounced_recipients: tuple[BouncedRecipient, ...]
    timestamp: float
    feedback_id: str
    reporting_mta: str | None = None  # "dsn; mta.example.com"; only with a DSN
    remote_mta_ip: str | None = None  # only if a remote MTA was reached

    def __post_init__(self) -> None:
        if (self.bounce_type, self.bounce_sub_type) not in BOUNCE_TYPES:
            raise ValueError(
                f"not an SES bounce type: {self.bounce_type}/{self.bounce_sub_type}")
        if not self.bounced_recipients:
            raise ValueError("a bounce needs at least one recipient")


@dataclass(frozen=True, slots=True)
class Complaint:
    complained_recipients: tuple[str, ...]
    timestamp: float  # when the ISP sent the report
    feedback_id: str
    # SES always writes complaintSubType, as null or "OnAccountSuppressionList"; the
    # only field in these records that is null rather than absent when unknown.
    complaint_sub_type: ComplaintSubType | None = None
    # From the ARF report, when there was one; left out of the JSON otherwise.
    user_agent: str | None = None
    complaint_feedback_type: str | None = None  # abuse, fraud, not-spam, ...
    arrival_date: float | None = None


@dataclass(frozen=True, slots=True)
class DelayedRecipient:
    email_address: str
    status: str  # "4.4.1"
    diagnostic_code: str  # "smtp; 421 4.4.1 Unable to connect to remote host"


@dataclass(frozen=True, slots=True)
class DeliveryDelay:
    delay_type: DelayType
    delayed_recipients: tuple[DelayedRecipient, ...]
    expiration_time: float  # when we give up and bounce
    reporting_mta: str
    timestamp: float
    remote_mta_ip: str | None = None  # not in the guide's table; left out when unknown


@dataclass(frozen=True, slots=True)
class TopicStatus:
    topic_name: str
    subscription_status: SubscriptionStatus


@dataclass(frozen=True, slots=True)
class TopicPreferences:
    unsubscribe_all: bool
    topic_subscription_status: tuple[TopicStatus, ...] = ()


@dataclass(frozen=True, slots=True)
class Subscription:
    """A contact changed its preferences; for us, always an unsubscribe (one-click or
    the page's button): from a topic (its status OptOut in the new preferences) or
    from the whole list or configuration set (unsubscribe_all=True)."""

    contact_list: str
    timestamp: float
    source: str  # SES: "UnsubscribeHeader" for RFC 8058 one-click
    new_topic_preferences: TopicPreferences
    old_topic_preferences: TopicPreferences


@dataclass(frozen=True, slots=True)
class Open:
    ip_address: str
    timestamp: float
    user_agent: str
    # Our extension: a mail scanner, privacy proxy or prefetcher rather than a person.
    # Such opens are flagged, not dropped; the JSON names them only when true, so a
    # consumer that ignores the flag sees exactly SES's record.
    machine: bool = False
    machine_reason: str | None = None  # e.g. "known-scanner-ip"


@dataclass(frozen=True, slots=True)
class Click:
    ip_address: str
    timestamp: float
    user_agent: str
    link: str  # the original URL
    link_tags: dict[str, list[str]] = field(default_factory=dict)  # from ses:tags
    machine: bool = False  # as for Open
    machine_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RenderingFailure:
    """A templated message (SES v2 API) whose data did not fit its template: not sent."""

    template_name: str
    error_message: str  # e.g. "Attribute 'name' is not present in the rendering data."


Detail = (Send | Reject | Delivery | Bounce | Complaint | DeliveryDelay | Subscription
          | Open | Click | RenderingFailure)

DETAIL_TYPES: dict[EventType, type[Detail]] = {
    EventType.SEND: Send,
    EventType.REJECT: Reject,
    EventType.BOUNCE: Bounce,
    EventType.COMPLAINT: Complaint,
    EventType.DELIVERY: Delivery,
    EventType.DELIVERY_DELAY: DeliveryDelay,
    EventType.SUBSCRIPTION: Subscription,
    EventType.OPEN: Open,
    EventType.CLICK: Click,
    EventType.RENDERING_FAILURE: RenderingFailure,
}
_TYPE_OF: dict[type[Detail], EventType] = {cls: kind for kind, cls in DETAIL_TYPES.items()}


def type_of(detail: Detail) -> EventType:
    """The event type a detail belongs to."""
    return _TYPE_OF[type(detail)]


_ids = random.Random()  # seeded from os.urandom once, at import
_ids_lock = threading.Lock()
_last_id = (0, 0)


def new_event_id(now: float | None = None) -> str:
    """A unique id that sorts by creation time: 12 hex digits of milliseconds, a dash,
    16 hex digits (the message id's form).

    Within one millisecond of one process the second part counts up from a random
    start, so ids made here are strictly increasing even when many events are made at
    once (a sink can use the last id it saw as a cursor); across nodes the random start
    keeps them unique.
    """
    global _last_id
    millis = int((time.time() if now is None else now) * 1000)
    with _ids_lock:
        last_millis, last_seq = _last_id
        if millis <= last_millis and last_seq < 2**64 - 1:
            millis, seq = last_millis, last_seq + 1
        else:
            seq = _ids.getrandbits(63)  # room to count up within the millisecond
        _last_id = (millis, seq)
    return f"{millis:012x}-{seq:016x}"


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of one message, as the sinks receive it.

    ``event_id`` is not part of SES's JSON; sinks carry it beside the record (a
    webhook header, a stream entry id) so receivers can drop duplicates after retries.
    """

    type: EventType
    mail: MailInfo
    detail: Detail
    event_id: str = field(default_factory=new_event_id)

    def __post_init__(self) -> None:
        if not isinstance(self.detail, DETAIL_TYPES[self.type]):
            raise ValueError(
                f"{type(self.detail).__name__} is not the detail of a {self.type} event")

    @classmethod
    def of(cls, mail: MailInfo, detail: Detail, event_id: str | None = None) -> Event:
        """The event whose type follows from its detail, with a new id unless given."""
        kind = type_of(detail)
        return cls(kind, mail, detail, new_event_id() if event_id is None else event_id)


# --- engagements: what the HTTP side hands the events store ----------------------

@dataclass(frozen=True, slots=True)
class Engagement:
    """One open, click or unsubscribe, as the HTTP side saw it."""

    payload: tokens.ClickToken | tokens.OpenToken | tokens.UnsubscribeToken
    at: float  # time.time() of the request
    ip: str  # client IP (after trusted-proxy handling)
    user_agent: str
    host: str  # tracking domain the request came to (Host, lower case, no port)
    machine: bool  # our guess that no person did this
    # e.g. "head-request", "scanner-user-agent:<rule>", "image-proxy:<rule>",
    # "too-fast:<seconds>s", "no-user-agent"
    machine_reason: str | None


class EngagementSink(Protocol):
    """Where engagements go: the events store (SES Open/Click/Subscription events)."""

    async def engaged(self, engagement: Engagement) -> None:
        """Record an Open or Click event; never raises for bad data."""

    async def unsubscribe(self, engagement: Engagement) -> bool:
        """Record the subscription change (policy.contacts) and the Subscription event.

        True when recorded; False: it could not be recorded now, try later (the
        client gets 503 with Retry-After).
        """
