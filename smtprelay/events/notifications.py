"""SES feedback notifications (``notificationType``) in an SNS envelope: the shape that
list managers with an "SES bounces via SNS" endpoint read (issue 15).

An event destination's ``format: notification``: ``notification`` turns one published
event record (``events.ses``) into SES's notification JSON (the guide, "Amazon SES
notification contents" and "Amazon SNS notification examples", seed 004 ~6380-7100),
and ``sns_envelope`` wraps it as SNS POSTs it (``Type: Notification``). Only Bounce,
Complaint and Delivery have notifications; every other event type gives None.
``sns_confirmation`` is SNS's SubscriptionConfirmation, which such a webhook sends
before any notification (smtprelay.events.subscriptions).

What cannot match AWS: ``TopicArn`` and ``sourceArn`` name no AWS account, and the
envelope's ``Signature`` is not an SNS signature (there is no AWS key to sign with):
a consumer must turn SNS signature verification off to accept these.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from smtprelay.config import NOTIFICATION_TYPES, EventDestinationConfig
from smtprelay.events.ses import stored_to_json, stored_to_ses
from smtprelay.spool.outbox import StoredEvent

_DETAIL = {"Bounce": "bounce", "Complaint": "complaint", "Delivery": "delivery"}
# The mail object of a notification: the event record's, with sourceIp and
# callerIdentity (as in the guide's notification examples) and without tags.
_MAIL_ORDER = ("timestamp", "messageId", "source", "sourceArn", "sourceIp", "callerIdentity",
               "sendingAccountId", "destination", "headersTruncated", "headers",
               "commonHeaders")


def notification(record: dict[str, Any]) -> dict[str, Any] | None:
    """SES's notification for an event record, or None for a type SES has none for."""
    kind = record.get("eventType")
    if kind not in NOTIFICATION_TYPES:
        return None
    mail = dict(record["mail"])
    tags = mail.get("tags", {})
    if "ses:source-ip" in tags:
        mail["sourceIp"] = tags["ses:source-ip"][0]
    if "ses:caller-identity" in tags:
        mail["callerIdentity"] = tags["ses:caller-identity"][0]
    key = _DETAIL[kind]
    return {"notificationType": kind, key: record[key],
            "mail": {name: mail[name] for name in _MAIL_ORDER if name in mail}}


def sns_envelope(message: dict[str, Any], *, topic_arn: str, timestamp: str,
                 unsubscribe_url: str, signing_cert_url: str,
                 message_id: str | None = None) -> dict[str, Any]:
    """``message`` as SNS delivers it to an HTTP(S) subscriber: ``Message`` is the JSON
    as a string. ``Signature`` is a fixed placeholder that no SNS client can verify;
    see the module's note."""
    return {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic_arn,
        "Message": json.dumps(message, ensure_ascii=False, separators=(",", ":")),
        "Timestamp": timestamp,
        "SignatureVersion": "1",
        "Signature": base64.b64encode(b"smtprelay: not an SNS signature").decode(),
        "SigningCertURL": signing_cert_url,
        "UnsubscribeURL": unsubscribe_url,
    }


def sns_confirmation(*, topic_arn: str, token: str, subscribe_url: str, timestamp: str,
                     signing_cert_url: str, message_id: str | None = None
                     ) -> dict[str, Any]:
    """SNS's SubscriptionConfirmation: what an HTTP(S) subscriber gets first, and must
    answer by GETting ``SubscribeURL``. ``Signature`` as in ``sns_envelope``."""
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": message_id or str(uuid.uuid4()),
        "Token": token,
        "TopicArn": topic_arn,
        "Message": f"You have chosen to subscribe to the topic {topic_arn}.\n"
                   "To confirm the subscription, visit the SubscribeURL included in this "
                   "message.",
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp,
        "SignatureVersion": "1",
        "Signature": base64.b64encode(b"smtprelay: not an SNS signature").decode(),
        "SigningCertURL": signing_cert_url,
    }


def sns_timestamp(at: float) -> str:
    """SNS's Timestamp: ISO 8601 in UTC with milliseconds."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
    return stamp + f".{int(at * 1000) % 1000:03d}Z"


def default_topic_arn(hostname: str, configuration_set: str, destination: str) -> str:
    return f"arn:smtprelay:sns:{hostname}:{configuration_set}-{destination}"


class Unrenderable(Exception):
    """An event record no body can be made of (issue 16: it must not block the
    records behind it); `reason` says what failed."""

    def __init__(self, event: StoredEvent, reason: str) -> None:
        super().__init__(f"event {event.event_id} of message {event.message_id}: {reason}")
        self.event = event
        self.reason = reason


def _safely(make: Callable[[StoredEvent], bytes], event: StoredEvent) -> bytes:
    """`make(event)`, whose failures (any exception: a record holds what a client wrote)
    become Unrenderable."""
    try:
        return make(event)
    except Exception as exc:
        raise Unrenderable(event, f"{type(exc).__name__}: {exc}"[:300]) from exc


class Renderer:
    """One destination's bodies: SES event JSON, or (format: notification) the
    notification JSON, for a webhook in its SNS envelope. A record no body can be made
    of raises Unrenderable."""

    def __init__(self, settings: EventDestinationConfig, *, topic_arn: str,
                 hostname: str) -> None:
        self.notifications = settings.format == "notification"
        self.topic_arn = settings.topic_arn or topic_arn
        self._hostname = hostname

    def line(self, event: StoredEvent) -> bytes:
        """A file destination's line (without its newline)."""
        return _safely(self._line, event)

    def body(self, event: StoredEvent) -> bytes:
        """A webhook's request body."""
        return _safely(self._body, event)

    def _line(self, event: StoredEvent) -> bytes:
        if not self.notifications:
            return stored_to_json(event)
        return _dumps(notification(stored_to_ses(event)) or {})

    def _body(self, event: StoredEvent) -> bytes:
        if not self.notifications:
            return stored_to_json(event)
        envelope = sns_envelope(
            notification(stored_to_ses(event)) or {}, topic_arn=self.topic_arn,
            timestamp=sns_timestamp(event.at), message_id=event.event_id,
            unsubscribe_url=f"https://{self._hostname}/sns/unsubscribe-not-supported",
            signing_cert_url=self._signing_cert_url)
        return _dumps(envelope)

    @property
    def _signing_cert_url(self) -> str:
        return f"https://{self._hostname}/sns/no-signing-certificate.pem"

    def confirmation(self, *, token: str, subscribe_url: str, message_id: str
                     ) -> tuple[bytes, dict[str, str]]:
        """A SubscriptionConfirmation's body and headers (format: notification)."""
        body = sns_confirmation(topic_arn=self.topic_arn, token=token,
                                subscribe_url=subscribe_url, message_id=message_id,
                                timestamp=sns_timestamp(time.time()),
                                signing_cert_url=self._signing_cert_url)
        return _dumps(body), {"Content-Type": "text/plain; charset=UTF-8",
                              "x-amz-sns-message-type": "SubscriptionConfirmation",
                              "x-amz-sns-message-id": message_id,
                              "x-amz-sns-topic-arn": self.topic_arn}

    def headers(self, event: StoredEvent) -> dict[str, str]:
        """What SNS adds to each POST (x-amz-sns-*); nothing for SES event JSON."""
        if not self.notifications:
            return {"Content-Type": "application/json"}
        return {"Content-Type": "text/plain; charset=UTF-8",
                "x-amz-sns-message-type": "Notification",
                "x-amz-sns-message-id": event.event_id,
                "x-amz-sns-topic-arn": self.topic_arn}


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
