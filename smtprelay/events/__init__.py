"""Events: one typed record per state change of a message, published as SES's JSON.

``model`` holds the records the stages build (no I/O, no JSON); ``ses`` writes them in
SES's event-publishing form (docs/events.md, docs/events.schema.json), which every
sink (webhook, file, Redis stream) sends unchanged.
"""

from smtprelay.events.model import (
    BOUNCE_TYPES,
    Bounce,
    BouncedRecipient,
    BounceSubType,
    BounceType,
    Click,
    Complaint,
    ComplaintSubType,
    DelayedRecipient,
    DelayType,
    Delivery,
    DeliveryDelay,
    Detail,
    Event,
    EventType,
    MailInfo,
    Open,
    Reject,
    RenderingFailure,
    Send,
    Subscription,
    SubscriptionStatus,
    TopicPreferences,
    TopicStatus,
    new_event_id,
)
from smtprelay.events.ses import HEADERS_LIMIT, iso_timestamp, to_json, to_ses

__all__ = [
    "BOUNCE_TYPES",
    "HEADERS_LIMIT",
    "Bounce",
    "BounceSubType",
    "BounceType",
    "BouncedRecipient",
    "Click",
    "Complaint",
    "ComplaintSubType",
    "DelayType",
    "DelayedRecipient",
    "Delivery",
    "DeliveryDelay",
    "Detail",
    "Event",
    "EventType",
    "MailInfo",
    "Open",
    "Reject",
    "RenderingFailure",
    "Send",
    "Subscription",
    "SubscriptionStatus",
    "TopicPreferences",
    "TopicStatus",
    "iso_timestamp",
    "new_event_id",
    "to_json",
    "to_ses",
]
