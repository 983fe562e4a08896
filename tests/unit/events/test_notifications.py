"""SES notifications in an SNS envelope (smtprelay.events.notifications)."""

from __future__ import annotations

import json

from smtprelay.config import EventDestinationConfig
from smtprelay.events import Event, to_ses
from smtprelay.events.notifications import Renderer, notification, sns_envelope
from tests.unit.events.test_ses import DOC_DETAILS, DOC_MAIL


def test_bounce_complaint_and_delivery_become_notifications_the_rest_none() -> None:
    for kind, detail in DOC_DETAILS.items():
        record = to_ses(Event.of(DOC_MAIL, detail))
        found = notification(record)
        if kind not in ("Bounce", "Complaint", "Delivery"):
            assert found is None, kind
            continue
        assert found is not None
        key = kind[0].lower() + kind[1:]
        assert found["notificationType"] == kind and found[key] == record[key]
        mail = found["mail"]
        assert "tags" not in mail  # notifications have no tags (the guide's examples)
        assert mail["sourceIp"] == "192.0.2.10" and mail["callerIdentity"] == "acme-app"
        assert mail["messageId"] == record["mail"]["messageId"]


def test_the_envelope_carries_the_notification_as_a_string() -> None:
    message = notification(to_ses(Event.of(DOC_MAIL, DOC_DETAILS["Bounce"])))
    assert message is not None
    envelope = sns_envelope(message, topic_arn="arn:smtprelay:sns:local:acme:bounces",
                            timestamp="2023-11-15T02:48:51.011Z",
                            unsubscribe_url="http://relay/sns/unsubscribe",
                            signing_cert_url="http://relay/sns/cert.pem", message_id="m-1")
    assert envelope["Type"] == "Notification" and envelope["MessageId"] == "m-1"
    assert json.loads(envelope["Message"]) == message
    assert set(envelope) == {"Type", "MessageId", "TopicArn", "Message", "Timestamp",
                             "SignatureVersion", "Signature", "SigningCertURL",
                             "UnsubscribeURL"}


def test_the_subscription_confirmation_is_snss() -> None:
    settings = EventDestinationConfig(name="lists", type="webhook", format="notification",
                                      url="https://lists.test/ses", secret_env="SECRET")
    renderer = Renderer(settings, topic_arn="arn:smtprelay:sns:relay.test:bulk-lists",
                        hostname="relay.test")
    body, headers = renderer.confirmation(token="t0k", message_id="m-2",
                                          subscribe_url="https://relay.test/sns/confirm?x")
    confirmation = json.loads(body)
    assert confirmation["Type"] == "SubscriptionConfirmation"
    assert confirmation["MessageId"] == "m-2" and confirmation["Token"] == "t0k"
    assert confirmation["TopicArn"] == "arn:smtprelay:sns:relay.test:bulk-lists"
    assert confirmation["SubscribeURL"] == "https://relay.test/sns/confirm?x"
    assert confirmation["Message"].startswith(
        "You have chosen to subscribe to the topic arn:smtprelay:sns:relay.test:bulk-lists.\n")
    assert set(confirmation) == {"Type", "MessageId", "Token", "TopicArn", "Message",
                                 "SubscribeURL", "Timestamp", "SignatureVersion", "Signature",
                                 "SigningCertURL"}
    assert headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"
    assert headers["x-amz-sns-message-id"] == "m-2"
