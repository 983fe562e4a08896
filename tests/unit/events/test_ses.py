"""Event records as SES event-publishing JSON: the guide's own examples, the schema, edges.

The GUIDE_* records are the SES Developer Guide's Firehose examples (seed 004, lines
~11620-11830), with the PDF's damage repaired where noted. Each test builds the same
event with smtprelay's model and checks that our JSON equals SES's apart from the
differences docs/events.md lists (see ``smtprelay_differences``).

Run this file as a script to print the examples for docs/events.md.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from smtprelay.events import (
    HEADERS_LIMIT,
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
    iso_timestamp,
    new_event_id,
    to_json,
    to_ses,
)
from smtprelay.events.ses import DETAIL_KEYS
from tests.support import examples

DOCS = Path(__file__).resolve().parents[3] / "docs"
SCHEMA = json.loads((DOCS / "events.schema.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

SES_ID = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000"
SES_TAGS: dict[str, Any] = {
    "ses:configuration-set": ["ConfigSet"],
    "ses:source-ip": ["192.0.2.0"],
    "ses:from-domain": ["example.com"],
    "ses:caller-identity": ["ses_user"],
}
SES_ARN = "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com"
OUR_ARN = "arn:smtprelay:ses:local:123456789012:identity/example.com"


def ts(iso: str) -> float:
    """The guide's ISO times back to Unix seconds."""
    return datetime.fromisoformat(iso).timestamp()


def valid(record: dict[str, Any]) -> dict[str, Any]:
    errors = sorted(VALIDATOR.iter_errors(record), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]
    return record


def section(headers: list[dict[str, str]]) -> bytes:
    return b"".join(f"{h['name']}: {h['value']}\r\n".encode() for h in headers) + b"\r\n"


def mail_like(guide: dict[str, Any], extra: Sequence[dict[str, str]] = ()) -> MailInfo:
    """The MailInfo that should produce the guide record's mail object."""
    m = guide["mail"]
    tags = m["tags"]
    return MailInfo(
        message_id=m["messageId"], timestamp=ts(m["timestamp"]), source=m["source"],
        source_ip=tags.get("ses:source-ip", ["192.0.2.0"])[0],
        sending_account_id=m["sendingAccountId"],
        caller_identity=tags.get("ses:caller-identity", ["ses_user"])[0],
        destination=tuple(m["destination"]),
        header_section=section(m.get("headers", []) + list(extra)),
        tags=copy.deepcopy(tags),
    )


def smtprelay_differences(guide: dict[str, Any]) -> dict[str, Any]:
    """The guide's record as smtprelay writes it (docs/events.md, "Differences").

    - sourceArn is our pseudo-ARN, and is always there (the Open and Click examples
      have none);
    - the Message-ID that SES adds when it sends (commonHeaders.messageId is its own
      id) is, with us, added at acceptance, so it is in ``headers`` as well.
    """
    record = copy.deepcopy(guide)
    mail = record["mail"]
    mail["sourceArn"] = OUR_ARN
    if "messageId" in mail.get("commonHeaders", {}) and not any(
            h["name"].lower() == "message-id" for h in mail["headers"]):
        mail["headers"].append({"name": "Message-ID", "value": mail["commonHeaders"]["messageId"]})
    return record


def message_id_header(guide: dict[str, Any]) -> list[dict[str, str]]:
    """The Message-ID our hygiene would have added, where SES's commonHeaders show one."""
    if "commonHeaders" not in guide["mail"]:
        return []
    names = {h["name"].lower() for h in guide["mail"]["headers"]}
    return [] if "message-id" in names else [{"name": "Message-ID", "value": SES_ID}]


def guide_mail(timestamp: str, headers: list[dict[str, str]], *,
               source: str = "sender@example.com", tags: dict[str, list[str]] | None = None,
               destination: tuple[str, ...] = ("recipient@example.com",)) -> dict[str, Any]:
    return {
        "timestamp": timestamp,
        "source": source,
        "sourceArn": SES_ARN,
        "sendingAccountId": "123456789012",
        "messageId": SES_ID,
        "destination": list(destination),
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": {
            "from": [headers[0]["value"]],
            "to": ["recipient@example.com"],
            "messageId": SES_ID,
            "subject": "Message sent from Amazon SES",
        },
        "tags": SES_TAGS if tags is None else tags,
    }


def usual_headers(from_: str, content_type: str, *extra: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"name": "From", "value": from_},
        {"name": "To", "value": "recipient@example.com"},
        {"name": "Subject", "value": "Message sent from Amazon SES"},
        {"name": "MIME-Version", "value": "1.0"},
        {"name": "Content-Type", "value": content_type},
        *extra,
    ]


CUSTOM_TAGS: dict[str, Any] = {"myCustomTag1": ["myCustomTagValue1"],
                               "myCustomTag2": ["myCustomTagValue2"]}
X_TAGS = {"name": "X-SES-MESSAGE-TAGS",
          "value": "myCustomTag1=myCustomTagValue1, myCustomTag2=myCustomTagValue2"}

# The PDF turned the boundary's quotes into \\\" (Bounce) and broke it over lines
# (Complaint); restored to what a Content-Type says.
GUIDE_BOUNCE: dict[str, Any] = {
    "eventType": "Bounce",
    "bounce": {
        "bounceType": "Permanent",
        "bounceSubType": "General",
        "bouncedRecipients": [{
            "emailAddress": "recipient@example.com",
            "action": "failed",
            "status": "5.1.1",
            "diagnosticCode": "smtp; 550 5.1.1 user unknown",
        }],
        "timestamp": "2017-08-05T00:41:02.669Z",
        "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
        "reportingMTA": "dsn; mta.example.com",
    },
    # The example spells it "sentingAccountId": a typo, every other example says
    # sendingAccountId.
    "mail": guide_mail(
        "2017-08-05T00:40:02.012Z",
        usual_headers("Sender Name <sender@example.com>",
                      'multipart/alternative; '
                      'boundary="----=_Part_7307378_1629847660.1516840721503"'),
        source="Sender Name <sender@example.com>"),
}

GUIDE_COMPLAINT: dict[str, Any] = {
    "eventType": "Complaint",
    "complaint": {
        "complainedRecipients": [{"emailAddress": "recipient@example.com"}],
        "timestamp": "2017-08-05T00:41:02.669Z",
        "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
        "userAgent": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
                      "like Gecko) Chrome/60.0.3112.90 Safari/537.36"),
        "complaintFeedbackType": "abuse",
        "arrivalDate": "2017-08-05T00:41:02.669Z",
    },
    "mail": guide_mail(
        "2017-08-05T00:40:01.123Z",
        usual_headers("Sender Name <sender@example.com>",
                      'multipart/alternative; '
                      'boundary="----=_Part_7298998_679725522.1516840859643"'),
        source="Sender Name <sender@example.com>"),
}

GUIDE_DELIVERY: dict[str, Any] = {
    "eventType": "Delivery",
    "mail": guide_mail(
        "2016-10-19T23:20:52.240Z",
        usual_headers("sender@example.com", "text/html; charset=UTF-8",
                      {"name": "Content-Transfer-Encoding", "value": "7bit"}),
        tags={**SES_TAGS, "ses:outgoing-ip": ["192.0.2.0"], **CUSTOM_TAGS}),
    "delivery": {
        "timestamp": "2016-10-19T23:21:04.133Z",
        "processingTimeMillis": 11893,
        "recipients": ["recipient@example.com"],
        "smtpResponse": "250 2.6.0 Message received",
        "reportingMTA": "mta.example.com",
    },
}

GUIDE_SEND: dict[str, Any] = {
    "eventType": "Send",
    "mail": guide_mail(
        "2016-10-14T05:02:16.645Z",
        usual_headers("sender@example.com",
                      'multipart/mixed; boundary="----=_Part_0_716996660.1476421336341"', X_TAGS),
        tags={**SES_TAGS, **CUSTOM_TAGS}),
    "send": {},
}

GUIDE_REJECT: dict[str, Any] = {
    "eventType": "Reject",
    "mail": guide_mail(
        "2016-10-14T17:38:15.211Z",
        usual_headers("sender@example.com", 'multipart/mixed; boundary="qMm9M+Fa2AknHoGS"',
                      X_TAGS),
        tags={**SES_TAGS, **CUSTOM_TAGS}, destination=("sender@example.com",)),
    "reject": {"reason": "Bad content"},
}

_OPEN_CLICK_HEADERS = [
    {"name": "X-SES-CONFIGURATION-SET", "value": "ConfigSet"},
    {"name": "X-SES-MESSAGE-TAGS",
     "value": "myCustomTag1=myCustomValue1, myCustomTag2=myCustomValue2"},
    {"name": "From", "value": "sender@example.com"},
    {"name": "To", "value": "recipient@example.com"},
    {"name": "Subject", "value": "Message sent from Amazon SES"},
    {"name": "MIME-Version", "value": "1.0"},
    {"name": "Content-Type", "value": 'multipart/alternative; boundary="XBoundary"'},
]
_OPEN_CLICK_TAGS: dict[str, Any] = {
    "myCustomTag1": ["myCustomValue1"],
    "myCustomTag2": ["myCustomValue2"],
    "ses:caller-identity": ["ses_user"],
    "ses:configuration-set": ["ConfigSet"],
    "ses:from-domain": ["example.com"],
    "ses:source-ip": ["192.0.2.0"],
}


def _open_click_mail(timestamp: str, headers: list[dict[str, str]]) -> dict[str, Any]:
    mail = guide_mail(timestamp, headers, tags=_OPEN_CLICK_TAGS)
    del mail["sourceArn"]  # these two examples have none
    mail["commonHeaders"]["from"] = ["sender@example.com"]
    return mail


GUIDE_OPEN: dict[str, Any] = {
    "eventType": "Open",
    "mail": _open_click_mail("2017-08-09T21:59:49.927Z", list(_OPEN_CLICK_HEADERS)),
    "open": {
        "ipAddress": "192.0.2.1",
        "timestamp": "2017-08-09T22:00:19.652Z",
        "userAgent": ("Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) "
                      "AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60"),
    },
}

GUIDE_CLICK: dict[str, Any] = {
    "eventType": "Click",
    "click": {
        "ipAddress": "192.0.2.1",
        "link": "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html",
        "linkTags": {"samplekey0": ["samplevalue0"], "samplekey1": ["samplevalue1"]},
        "timestamp": "2017-08-09T23:51:25.570Z",
        "userAgent": ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, "
                      "like Gecko) Chrome/60.0.3112.90 Safari/537.36"),
    },
    "mail": _open_click_mail("2017-08-09T23:50:05.795Z",
                             [*_OPEN_CLICK_HEADERS, {"name": "Message-ID", "value": SES_ID}]),
}

def headerless_mail(timestamp: str) -> dict[str, Any]:
    """The mail object of the guide's later examples, which show no headers."""
    return {"timestamp": timestamp, "source": "sender@example.com", "sourceArn": SES_ARN,
            "sendingAccountId": "123456789012", "messageId": SES_ID,
            "destination": ["recipient@example.com"], "headersTruncated": False,
            "tags": {"ses:configuration-set": ["ConfigSet"]}}


GUIDE_RENDERING_FAILURE: dict[str, Any] = {
    "eventType": "Rendering Failure",
    "mail": headerless_mail("2018-01-22T18:43:06.197Z"),
    "failure": {
        "errorMessage": "Attribute 'attributeName' is not present in the rendering data.",
        "templateName": "MyTemplate",
    },
}

GUIDE_DELIVERY_DELAY: dict[str, Any] = {
    "eventType": "DeliveryDelay",
    "mail": headerless_mail("2020-06-16T00:15:40.641Z"),
    "deliveryDelay": {
        "timestamp": "2020-06-16T00:25:40.095Z",
        "delayType": "TransientCommunicationFailure",
        "expirationTime": "2020-06-16T00:25:40.914Z",
        "delayedRecipients": [{
            "emailAddress": "recipient@example.com",
            "status": "4.4.1",
            "diagnosticCode": "smtp; 421 4.4.1 Unable to connect to remote host",
        }],
    },
}

# Not in the seed (the guide it was cut from predates list management): the Subscription
# record of SES's current guide, as its example shows it, with the mail object of the
# other examples.
GUIDE_SUBSCRIPTION: dict[str, Any] = {
    "eventType": "Subscription",
    "mail": guide_mail(
        "2022-01-12T01:00:14.340Z",
        usual_headers("sender@example.com", "text/html; charset=UTF-8")),
    "subscription": {
        "contactList": "ContactListName",
        "timestamp": "2022-01-12T01:00:14.340Z",
        "source": "UnsubscribeHeader",
        "newTopicPreferences": {
            "unsubscribeAll": True,
            "topicSubscriptionStatus": [
                {"topicName": "ExampleTopicName", "subscriptionStatus": "OptOut"}],
        },
        "oldTopicPreferences": {
            "unsubscribeAll": False,
            "topicSubscriptionStatus": [
                {"topicName": "ExampleTopicName", "subscriptionStatus": "OptOut"}],
        },
    },
}


def ours(guide: dict[str, Any], detail: Detail) -> dict[str, Any]:
    event = Event.of(mail_like(guide, message_id_header(guide)), detail)
    return valid(to_ses(event))


# --- the guide's examples ----------------------------------------------------------


def test_bounce_matches_the_guide() -> None:
    b = GUIDE_BOUNCE["bounce"]
    record = ours(GUIDE_BOUNCE, Bounce(
        bounce_type=BounceType.PERMANENT, bounce_sub_type=BounceSubType.GENERAL,
        bounced_recipients=(BouncedRecipient("recipient@example.com", action="failed",
                                             status="5.1.1",
                                             diagnostic_code="smtp; 550 5.1.1 user unknown"),),
        timestamp=ts(b["timestamp"]), feedback_id=b["feedbackId"],
        reporting_mta="dsn; mta.example.com"))
    assert record == smtprelay_differences(GUIDE_BOUNCE)


def test_complaint_matches_the_guide() -> None:
    c = GUIDE_COMPLAINT["complaint"]
    record = ours(GUIDE_COMPLAINT, Complaint(
        complained_recipients=("recipient@example.com",), timestamp=ts(c["timestamp"]),
        feedback_id=c["feedbackId"], user_agent=c["userAgent"], complaint_feedback_type="abuse",
        arrival_date=ts(c["arrivalDate"])))
    expected = smtprelay_differences(GUIDE_COMPLAINT)
    # The SNS table: complaintSubType "can either be null or OnAccountSuppressionList";
    # SES writes the null, the Firehose example leaves it out.
    expected["complaint"]["complaintSubType"] = None
    assert record == expected


def test_delivery_matches_the_guide() -> None:
    d = GUIDE_DELIVERY["delivery"]
    record = ours(GUIDE_DELIVERY, Delivery(
        timestamp=ts(d["timestamp"]), processing_time_millis=11893,
        recipients=("recipient@example.com",), smtp_response="250 2.6.0 Message received",
        reporting_mta="mta.example.com"))
    assert record == smtprelay_differences(GUIDE_DELIVERY)
    # The guide's example is consistent with itself: 11.893 s from acceptance.
    assert ts(d["timestamp"]) - ts(GUIDE_DELIVERY["mail"]["timestamp"]) == pytest.approx(11.893)


def test_send_matches_the_guide() -> None:
    assert ours(GUIDE_SEND, Send()) == smtprelay_differences(GUIDE_SEND)


def test_reject_matches_the_guide() -> None:
    assert ours(GUIDE_REJECT, Reject()) == smtprelay_differences(GUIDE_REJECT)


def test_open_matches_the_guide() -> None:
    o = GUIDE_OPEN["open"]
    record = ours(GUIDE_OPEN, Open(ip_address="192.0.2.1", timestamp=ts(o["timestamp"]),
                                   user_agent=o["userAgent"]))
    assert record == smtprelay_differences(GUIDE_OPEN)


def test_click_matches_the_guide() -> None:
    c = GUIDE_CLICK["click"]
    record = ours(GUIDE_CLICK, Click(
        ip_address="192.0.2.1", timestamp=ts(c["timestamp"]), user_agent=c["userAgent"],
        link=c["link"], link_tags={"samplekey0": ["samplevalue0"], "samplekey1": ["samplevalue1"]}))
    assert record == smtprelay_differences(GUIDE_CLICK)


def test_delivery_delay_matches_the_guide() -> None:
    d = GUIDE_DELIVERY_DELAY["deliveryDelay"]
    record = ours(GUIDE_DELIVERY_DELAY, DeliveryDelay(
        delay_type=DelayType.TRANSIENT_COMMUNICATION_FAILURE,
        delayed_recipients=(DelayedRecipient(
            "recipient@example.com", "4.4.1",
            "smtp; 421 4.4.1 Unable to connect to remote host"),),
        expiration_time=ts(d["expirationTime"]), reporting_mta="mta.example.com",
        timestamp=ts(d["timestamp"])))
    # The example has no headers (the message is not shown) and no reportingMTA, which
    # the table lists; smtprelay always writes both.
    assert record["deliveryDelay"] == {**d, "reportingMTA": "mta.example.com"}
    mail = record["mail"]
    assert {k: mail[k] for k in GUIDE_DELIVERY_DELAY["mail"]} == {
        **GUIDE_DELIVERY_DELAY["mail"], "sourceArn": OUR_ARN}
    assert mail["headers"] == [] and mail["commonHeaders"] == {}


def test_rendering_failure_matches_the_guide() -> None:
    f = GUIDE_RENDERING_FAILURE["failure"]
    record = ours(GUIDE_RENDERING_FAILURE, RenderingFailure(f["templateName"],
                                                            f["errorMessage"]))
    assert record["failure"] == f and record["eventType"] == "Rendering Failure"
    mail = record["mail"]
    assert {k: mail[k] for k in GUIDE_RENDERING_FAILURE["mail"]} == {
        **GUIDE_RENDERING_FAILURE["mail"], "sourceArn": OUR_ARN}


def test_subscription_matches_ses() -> None:
    s = GUIDE_SUBSCRIPTION["subscription"]
    prefs = (TopicStatus("ExampleTopicName", SubscriptionStatus.OPT_OUT),)
    record = ours(GUIDE_SUBSCRIPTION, Subscription(
        contact_list="ContactListName", timestamp=ts(s["timestamp"]), source="UnsubscribeHeader",
        new_topic_preferences=TopicPreferences(True, prefs),
        old_topic_preferences=TopicPreferences(False, prefs)))
    assert record == smtprelay_differences(GUIDE_SUBSCRIPTION)


@pytest.mark.parametrize("guide", [GUIDE_BOUNCE, GUIDE_COMPLAINT, GUIDE_DELIVERY, GUIDE_SEND,
                                   GUIDE_REJECT, GUIDE_OPEN, GUIDE_CLICK, GUIDE_DELIVERY_DELAY,
                                   GUIDE_SUBSCRIPTION, GUIDE_RENDERING_FAILURE],
                         ids=lambda g: g["eventType"])
def test_the_schema_accepts_what_ses_publishes(guide: dict[str, Any]) -> None:
    """A consumer validating with our schema accepts SES's own records too."""
    valid(guide)


def test_every_event_type_is_covered() -> None:
    covered = {g["eventType"] for g in (GUIDE_BOUNCE, GUIDE_COMPLAINT, GUIDE_DELIVERY, GUIDE_SEND,
                                        GUIDE_REJECT, GUIDE_OPEN, GUIDE_CLICK,
                                        GUIDE_DELIVERY_DELAY, GUIDE_SUBSCRIPTION,
                                        GUIDE_RENDERING_FAILURE)}
    assert covered == {str(t) for t in EventType}
    assert set(SCHEMA["$defs"]["eventType"]["enum"]) == covered


# --- the mail object ----------------------------------------------------------------


def mail(header_section: bytes, **changes: Any) -> MailInfo:
    values: dict[str, Any] = {
        "message_id": "018bd0e1a2b3-0123456789abcdef", "timestamp": 1700016530.099,
        "source": "bounces@example.com", "source_ip": "192.0.2.10",
        "sending_account_id": "acme", "caller_identity": "acme-app",
        "destination": ("jane@example.net",), "header_section": header_section,
        "tags": {"ses:from-domain": ["example.com"]},
    }
    values.update(changes)
    return MailInfo(**values)


def send(m: MailInfo) -> dict[str, Any]:
    return valid(to_ses(Event.of(m, Send())))


def test_header_values_are_unfolded_and_kept_in_order() -> None:
    record = send(mail(b"Subject: a long\r\n\tsubject\r\nFrom: a@example.com\r\n"
                       b"X-Two: 1\r\nx-two: 2\r\n\r\nbody"))
    assert record["mail"]["headers"] == [
        {"name": "Subject", "value": "a long\tsubject"},
        {"name": "From", "value": "a@example.com"},
        {"name": "X-Two", "value": "1"},
        {"name": "x-two", "value": "2"},
    ]
    assert record["mail"]["headersTruncated"] is False


def test_common_headers_follow_the_guide() -> None:
    record = send(mail(
        b'From: "John Doe" <john@example.com>\r\n'
        b'To: "Jane Doe" <jane@example.com>, "Mary Doe" <mary@example.com>, richard@example.com\r\n'
        b"Cc: =?UTF-8?Q?J=C3=BCrgen?= <j@example.com>\r\n"
        b"Reply-To: \"Doe, John\" <reply@example.com>\r\n"
        b"Return-Path: <bounces@example.com>\r\n"
        b"Message-ID: <custom-message-ID@example.com>\r\n"
        b"Date: Wed, 27 Jan 2016 14:05:45 +0000\r\n"
        b"Subject: Hello\r\n\r\n"))
    assert record["mail"]["commonHeaders"] == {
        "returnPath": "bounces@example.com",
        "from": ["John Doe <john@example.com>"],
        "replyTo": ['"Doe, John" <reply@example.com>'],
        "date": "Wed, 27 Jan 2016 14:05:45 +0000",
        "to": ["Jane Doe <jane@example.com>", "Mary Doe <mary@example.com>", "richard@example.com"],
        "cc": ["Jürgen <j@example.com>"],
        "messageId": "<custom-message-ID@example.com>",
        "subject": "Hello",
    }


def test_common_headers_leave_out_what_the_message_lacks() -> None:
    record = send(mail(b"From: a@example.com\r\n\r\n"))
    assert record["mail"]["commonHeaders"] == {"from": ["a@example.com"]}


def test_an_unreadable_address_list_is_given_as_written() -> None:
    record = send(mail(b"From: a@example.com\r\nTo: undisclosed-recipients:;\r\n\r\n"))
    assert record["mail"]["commonHeaders"]["to"] == ["undisclosed-recipients:;"]


def test_unicode_subject_is_decoded_in_common_headers_only() -> None:
    raw = "=?UTF-8?B?w4ljaGFudGlsbG9uIOKAkyDml6XmnKzoqp4=?="
    record = send(mail(f"From: a@example.com\r\nSubject: {raw}\r\n\r\n".encode()))
    assert record["mail"]["commonHeaders"]["subject"] == "Échantillon \u2013 日本語"
    assert record["mail"]["headers"][1] == {"name": "Subject", "value": raw}


def test_raw_utf8_subject_is_kept() -> None:
    record = send(mail("From: a@example.com\r\nSubject: Grüße\r\n\r\n".encode()))
    assert record["mail"]["commonHeaders"]["subject"] == "Grüße"


def test_an_undecodable_encoded_word_stays_as_written() -> None:
    raw = "=?x-no-such-charset?Q?abc?= and =?UTF-8?B?!!!?="
    record = send(mail(f"From: a@example.com\r\nSubject: {raw}\r\n\r\n".encode()))
    assert record["mail"]["commonHeaders"]["subject"] == raw


def test_invalid_utf8_becomes_replacement_characters() -> None:
    record = send(mail(b"From: a@example.com\r\nSubject: caf\xe9 \xff\r\n\r\n",
                       source="b\udcffd@example.com"))
    assert record["mail"]["commonHeaders"]["subject"] == "caf\ufffd \ufffd"
    assert record["mail"]["source"] == "b\ufffdd@example.com"
    assert json.loads(to_json(Event.of(mail(b"Subject: \xc3\r\n\r\n"), Send())))


def test_malformed_header_section_still_makes_an_event() -> None:
    record = send(mail(b"From: a@example.com\r\nthis is not a header\r\n\r\n"))
    assert record["mail"]["headers"] == []
    assert record["mail"]["commonHeaders"] == {}
    assert record["mail"]["headersTruncated"] is False
    assert record["mail"]["sourceArn"] == "arn:smtprelay:ses:local:acme:identity/example.com"


def _fields_of_size(total: int) -> bytes:
    """Header fields taking exactly ``total`` bytes, line endings included."""
    line = b"X-Filler: " + b"x" * 88 + b"\r\n"  # 100 bytes
    out = b"From: a@example.com\r\n"
    out += line * ((total - len(out)) // len(line) - 1)
    pad = total - len(out)  # 100 to 199 bytes
    out += b"X-Pad: " + b"p" * (pad - len(b"X-Pad: \r\n")) + b"\r\n"
    assert len(out) == total
    return out


def test_headers_at_the_limit_are_not_truncated() -> None:
    record = send(mail(_fields_of_size(HEADERS_LIMIT) + b"\r\nbody"))
    assert record["mail"]["headersTruncated"] is False
    fields = record["mail"]["headers"]
    assert sum(len(f"{h['name']}: {h['value']}\r\n") for h in fields) == HEADERS_LIMIT


def test_headers_over_the_limit_keep_the_whole_fields_that_fit() -> None:
    over = _fields_of_size(HEADERS_LIMIT - 50) + b"Subject: " + b"s" * 100 + b"\r\n"
    record = send(mail(over + b"To: z@example.com\r\n\r\n"))
    m = record["mail"]
    assert m["headersTruncated"] is True
    assert m["headers"][-1]["name"] != "Subject"
    assert sum(len(f"{h['name']}: {h['value']}\r\n") for h in m["headers"]) == HEADERS_LIMIT - 50
    # commonHeaders still come from the whole section.
    assert m["commonHeaders"]["subject"] == "s" * 100
    assert m["commonHeaders"]["to"] == ["z@example.com"]


def test_source_arn_falls_back_to_from_then_envelope() -> None:
    no_tag = send(mail(b"From: Ann <ann@shop.example>\r\n\r\n", tags={}))
    assert no_tag["mail"]["sourceArn"] == "arn:smtprelay:ses:local:acme:identity/shop.example"
    bare = send(mail(b"X: y\r\n\r\n", tags={}))
    assert bare["mail"]["sourceArn"] == "arn:smtprelay:ses:local:acme:identity/example.com"
    nothing = send(mail(b"X: y\r\n\r\n", tags={}, source=""))
    assert "sourceArn" not in nothing["mail"]


def test_tags_and_destination_are_copied_as_given() -> None:
    tags = {"ses:configuration-set": ["marketing"], "campaign": ["spring", "b"]}
    record = send(mail(b"\r\n", tags=tags, destination=("a@x.example", "b@y.example")))
    assert record["mail"]["tags"] == tags
    assert record["mail"]["destination"] == ["a@x.example", "b@y.example"]
    assert record["mail"]["headers"] == [] and record["mail"]["headersTruncated"] is False


# --- details: optional fields, extensions -------------------------------------------


M = mail(b"From: a@example.com\r\n\r\n")


def detail_of(detail: Detail) -> dict[str, Any]:
    event = Event.of(M, detail)
    record = valid(to_ses(event))
    detail_object: dict[str, Any] = record[DETAIL_KEYS[event.type]]
    return detail_object


def test_bounce_without_dsn_leaves_the_dsn_fields_out() -> None:
    b = detail_of(Bounce(BounceType.PERMANENT, BounceSubType.ON_ACCOUNT_SUPPRESSION_LIST,
                         (BouncedRecipient("jane@example.com"),), 1.5, "fb-1"))
    assert b == {"bounceType": "Permanent", "bounceSubType": "OnAccountSuppressionList",
                 "bouncedRecipients": [{"emailAddress": "jane@example.com"}],
                 "timestamp": "1970-01-01T00:00:01.500Z", "feedbackId": "fb-1"}


def test_bounce_with_remote_mta_and_partial_dsn() -> None:
    b = detail_of(Bounce(BounceType.TRANSIENT, BounceSubType.MAILBOX_FULL,
                         (BouncedRecipient("a@example.com", action="failed", status="5.2.2"),),
                         0.0, "fb-2", reporting_mta="dsn; relay.example.com",
                         remote_mta_ip="192.0.2.25"))
    assert b["bouncedRecipients"] == [{"emailAddress": "a@example.com", "action": "failed",
                                       "status": "5.2.2"}]
    assert b["reportingMTA"] == "dsn; relay.example.com"
    assert b["remoteMtaIp"] == "192.0.2.25"


def test_bounce_refuses_pairs_ses_does_not_have() -> None:
    with pytest.raises(ValueError, match="not an SES bounce type"):
        Bounce(BounceType.PERMANENT, BounceSubType.MAILBOX_FULL, (BouncedRecipient("a@b.c"),),
               0.0, "x")
    with pytest.raises(ValueError, match="at least one"):
        Bounce(BounceType.PERMANENT, BounceSubType.GENERAL, (), 0.0, "x")


def test_complaint_without_report_has_null_subtype_and_no_report_fields() -> None:
    c = detail_of(Complaint(("a@example.com", "b@example.com"), 2.0, "fb-3"))
    assert c == {"complainedRecipients": [{"emailAddress": "a@example.com"},
                                          {"emailAddress": "b@example.com"}],
                 "timestamp": "1970-01-01T00:00:02.000Z", "feedbackId": "fb-3",
                 "complaintSubType": None}
    suppressed = detail_of(Complaint(("a@example.com",), 2.0, "fb-4",
                                     complaint_sub_type=ComplaintSubType.ON_ACCOUNT_SUPPRESSION_LIST))
    assert suppressed["complaintSubType"] == "OnAccountSuppressionList"


def test_delivery_remote_mta_ip_only_when_known() -> None:
    base = Delivery(3.0, 12, ("a@example.com",), "250 ok", "relay.example.com")
    assert "remoteMtaIp" not in detail_of(base)
    with_ip = Delivery(3.0, 12, ("a@example.com",), "250 ok", "relay.example.com",
                       remote_mta_ip="2001:db8::25")
    assert detail_of(with_ip)["remoteMtaIp"] == "2001:db8::25"


def test_delivery_delay_remote_mta_ip_only_when_known() -> None:
    delay = DeliveryDelay(DelayType.MAILBOX_FULL,
                          (DelayedRecipient("a@example.com", "4.2.2", "smtp; 452 4.2.2 full"),),
                          expiration_time=90000.0, reporting_mta="relay.example.com",
                          timestamp=100.0)
    d = detail_of(delay)
    assert "remoteMtaIp" not in d
    assert d["expirationTime"] == "1970-01-02T01:00:00.000Z"


def test_machine_flag_only_when_true() -> None:
    human = detail_of(Open("192.0.2.1", 1.0, "Mozilla/5.0"))
    assert set(human) == {"ipAddress", "timestamp", "userAgent"}
    scanner = detail_of(Open("192.0.2.1", 1.0, "", machine=True, machine_reason="prefetch"))
    assert scanner["machine"] is True and scanner["machineReason"] == "prefetch"
    bare = detail_of(Click("192.0.2.1", 1.0, "x", "https://example.com/", machine=True))
    assert bare["machine"] is True and "machineReason" not in bare
    assert bare["linkTags"] == {}
    # A reason without the flag says nothing: the record stays SES's.
    quiet = detail_of(Click("192.0.2.1", 1.0, "x", "https://example.com/",
                            machine_reason="ignored"))
    assert "machine" not in quiet and "machineReason" not in quiet


def test_unsubscribe_all() -> None:
    s = detail_of(Subscription("marketing", 5.0, "UnsubscribeHeader",
                               TopicPreferences(True), TopicPreferences(False)))
    assert s["newTopicPreferences"] == {"unsubscribeAll": True, "topicSubscriptionStatus": []}
    assert s["oldTopicPreferences"] == {"unsubscribeAll": False, "topicSubscriptionStatus": []}


def test_event_type_must_match_detail() -> None:
    with pytest.raises(ValueError, match="not the detail of a Bounce"):
        Event(EventType.BOUNCE, M, Send())
    event = Event(EventType.SEND, M, Send())
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{16}", event.event_id)
    assert Event.of(M, Reject(), event_id="e-1").event_id == "e-1"


# --- JSON form, timestamps, ids -----------------------------------------------------


def test_to_json_is_one_compact_utf8_line() -> None:
    event = Event.of(mail("From: a@example.com\r\nSubject: Grüße\u2028\r\n\r\n".encode()),
                      Open("192.0.2.1", 1.0, "line\nbreak"))
    out = to_json(event)
    assert b"\n" not in out and b"\r" not in out
    assert b", " not in out.split(b'"headers"')[0] and b'": ' not in out
    assert "Grüße".encode() in out  # UTF-8, not \u escapes
    assert json.loads(out) == to_ses(event)


@pytest.mark.parametrize(("seconds", "iso"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1476421336.645, "2016-10-14T05:02:16.645Z"),
    (1476919252.24, "2016-10-19T23:20:52.240Z"),
    (1700016530.0999, "2023-11-15T02:48:50.099Z"),  # cut, not rounded up
    (1700016530.9999999, "2023-11-15T02:48:51.000Z"),  # float noise at the microsecond
    (-1.5, "1969-12-31T23:59:58.500Z"),
    (float("nan"), "1970-01-01T00:00:00.000Z"),
    (float("inf"), "9999-12-31T23:59:59.999Z"),
    (float("-inf"), "0001-01-01T00:00:00.000Z"),
    (1e300, "9999-12-31T23:59:59.999Z"),
])
def test_iso_timestamp(seconds: float, iso: str) -> None:
    assert iso_timestamp(seconds) == iso


# Up to 2100: beyond that a float's spacing in seconds passes half a microsecond, and
# "rounded to the microsecond, then cut" no longer recovers the millisecond exactly.
@given(st.integers(-2208988800000, 4102444800000))
def test_iso_timestamp_round_trips_milliseconds(millis: int) -> None:
    iso = iso_timestamp(millis / 1000)
    assert re.fullmatch(SCHEMA["$defs"]["timestamp"]["pattern"], iso)
    assert round(ts(iso) * 1000) == millis


def test_guide_timestamps_round_trip() -> None:
    for guide in (GUIDE_BOUNCE, GUIDE_COMPLAINT, GUIDE_DELIVERY, GUIDE_SEND, GUIDE_REJECT,
                  GUIDE_OPEN, GUIDE_CLICK, GUIDE_DELIVERY_DELAY):
        stamp = guide["mail"]["timestamp"]
        assert iso_timestamp(ts(stamp)) == stamp


def test_event_ids_are_unique_and_sorted() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{16}", i) for i in ids)
    assert new_event_id() > ids[-1]


# --- property: anything a sender can write still serialises --------------------------

texts = st.text(st.characters(exclude_categories=()), max_size=40)
header_lines = st.lists(
    st.one_of(
        st.builds(lambda n, v: n + b": " + v,
                  st.sampled_from([b"From", b"To", b"Cc", b"Bcc", b"Reply-To", b"Subject",
                                   b"Date", b"Message-ID", b"Return-Path", b"X-Other"]),
                  st.binary(max_size=60)),
        st.builds(lambda v: b" " + v, st.binary(max_size=30)),
        st.binary(max_size=60),
    ),
    max_size=12,
).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n")
floats = st.floats(allow_nan=True, allow_infinity=True)
details = st.one_of(
    st.just(Send()),
    st.builds(Reject, texts),
    st.builds(Open, texts, floats, texts, st.booleans(), st.none() | texts),
    st.builds(Click, texts, floats, texts, texts,
              st.dictionaries(texts, st.lists(texts, max_size=2), max_size=3),
              st.booleans(), st.none() | texts),
    st.builds(Complaint, st.lists(texts, max_size=3).map(tuple), floats, texts,
              st.none() | st.sampled_from(ComplaintSubType), st.none() | texts,
              st.none() | texts, st.none() | floats),
    st.builds(Delivery, floats, st.integers(0, 2**40), st.lists(texts, max_size=3).map(tuple),
              texts, texts, st.none() | texts),
)


@settings(max_examples=examples(150), deadline=None)
@given(header=st.one_of(st.binary(max_size=400), header_lines),
       source=texts, account=texts, destination=st.lists(texts, max_size=3).map(tuple),
       tags=st.dictionaries(texts, st.lists(texts, max_size=3), max_size=4),
       timestamp=floats, detail=details)
def test_any_mail_serialises_to_valid_json(header: bytes, source: str, account: str,
                                           destination: tuple[str, ...],
                                           tags: dict[str, list[str]], timestamp: float,
                                           detail: Detail) -> None:
    info = MailInfo(message_id="018bd0e1a2b3-0123456789abcdef", timestamp=timestamp,
                    source=source, source_ip="192.0.2.1", sending_account_id=account,
                    caller_identity=account, destination=destination,
                    header_section=header, tags=tags)
    out = to_json(Event.of(info, detail))
    assert b"\n" not in out
    valid(json.loads(out.decode("utf-8")))


# --- docs/events.md ------------------------------------------------------------------

DOC_HEADERS = (
    b'From: "Example Shop" <news@example.com>\r\n'
    b"To: Jane Doe <jane@example.net>\r\n"
    b"Subject: =?UTF-8?Q?Spring_sale_=E2=80=93_20=25_off?=\r\n"
    b"Date: Wed, 15 Nov 2023 02:48:49 +0000\r\n"
    b"Message-ID: <018bd0e1a2b3-0123456789abcdef@relay.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b1"\r\n'
    b"\r\n"
)
DOC_MAIL = MailInfo(
    message_id="018bd0e1a2b3-0123456789abcdef", timestamp=1700016530.099,
    source="bounces@example.com", source_ip="192.0.2.10", sending_account_id="acme",
    caller_identity="acme-app", destination=("jane@example.net",), header_section=DOC_HEADERS,
    tags={"ses:configuration-set": ["marketing"], "ses:from-domain": ["example.com"],
          "ses:source-ip": ["192.0.2.10"], "ses:caller-identity": ["acme-app"],
          "campaign": ["spring"]})
_T = 1700016530.099
DOC_DETAILS: dict[str, Detail] = {
    "Send": Send(),
    "Reject": Reject(),
    "Delivery": Delivery(_T + 1.207, 1207, ("jane@example.net",),
                         "250 2.0.0 OK 1700016531 x12si345", "relay.example.com",
                         remote_mta_ip="198.51.100.25"),
    "Bounce": Bounce(BounceType.PERMANENT, BounceSubType.NO_EMAIL,
                     (BouncedRecipient("jane@example.net", action="failed", status="5.1.1",
                                       diagnostic_code="smtp; 550 5.1.1 <jane@example.net>: "
                                                       "Recipient address rejected"),),
                     _T + 0.912, "018bd0e1a6c0-4f2a9c0d1e7b3a58",
                     reporting_mta="dsn; relay.example.com", remote_mta_ip="198.51.100.25"),
    "Complaint": Complaint(("jane@example.net",), _T + 86400.5, "018bd237a1f0-9b1c2d3e4f5a6b7c",
                           user_agent="ExampleMail Feedback Loop (V0.01)",
                           complaint_feedback_type="abuse", arrival_date=_T + 86399.0),
    "DeliveryDelay": DeliveryDelay(
        DelayType.RECIPIENT_SERVER_ERROR,
        (DelayedRecipient("jane@example.net", "4.3.0",
                          "smtp; 451 4.3.0 Temporary server error, try again later"),),
        expiration_time=_T + 86400.0, reporting_mta="relay.example.com", timestamp=_T + 600.25,
        remote_mta_ip="198.51.100.25"),
    # A one-click unsubscribe from the topic "weekly" of the contact list "newsletters".
    "Subscription": Subscription(
        "newsletters", _T + 3600.0, "UnsubscribeHeader",
        TopicPreferences(False, (TopicStatus("weekly", SubscriptionStatus.OPT_OUT),
                                 TopicStatus("events", SubscriptionStatus.OPT_OUT))),
        TopicPreferences(False, (TopicStatus("weekly", SubscriptionStatus.OPT_IN),
                                 TopicStatus("events", SubscriptionStatus.OPT_OUT)))),
    "Open": Open("203.0.113.7", _T + 120.5, "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
                 machine=True, machine_reason="prefetch"),
    "Click": Click("203.0.113.7", _T + 130.75,
                   "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X)",
                   "https://www.example.com/sale?utm_source=newsletter",
                   link_tags={"section": ["hero"]}),
    "Rendering Failure": RenderingFailure(
        "welcome", "Attribute 'firstName' is not present in the rendering data."),
}
_DOC_EXAMPLE = re.compile(r"<!-- example: (\w[\w ]*) -->\s*```json\n(.*?)```", re.DOTALL)


def doc_example(kind: str) -> dict[str, Any]:
    return to_ses(Event.of(DOC_MAIL, DOC_DETAILS[kind]))


def test_docs_examples_are_what_the_code_writes() -> None:
    found = dict(_DOC_EXAMPLE.findall((DOCS / "events.md").read_text(encoding="utf-8")))
    assert set(found) == {str(t) for t in EventType}
    for kind, text in found.items():
        record = valid(json.loads(text))
        assert record == doc_example(kind), kind


def pretty(value: Any, indent: str = "") -> str:
    """JSON with every object or array that fits in 96 columns on one line."""
    flat = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    if len(indent) + len(flat) <= 96 or not isinstance(value, dict | list) or not value:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {pretty(v, inner).lstrip()}"
                 for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    return "[\n" + ",\n".join(inner + pretty(v, inner) for v in value) + "\n" + indent + "]"


if __name__ == "__main__":  # print the examples for docs/events.md
    for kind in DOC_DETAILS:
        print(f"<!-- example: {kind} -->\n```json")
        print(pretty(doc_example(kind)))
        print("```\n")


_HEADER_PIECES = st.sampled_from([
    "From", "To", "Cc", "Reply-To", "Sender", "Subject", "Date", "Message-ID", "X-A", ":",
    " ", "\t", "\r\n", "\r\n ", "(", ")", '"', "\\", "<", ">", "@", ",", ";",
    "=?utf-8?b?w6k=?=", "=?x?q?", "é", "\udcff", "a@b.example", "example.com",
])


@pytest.mark.parametrize("depth", [0, 2, 25, 3000])
@settings(max_examples=examples(2000), deadline=None)
@given(st.lists(_HEADER_PIECES, max_size=60).map("".join))
def test_the_serialiser_survives_any_header_section(depth: int, text: str) -> None:
    """Issue 16: one crafted header (a To with 2,700 nested comments) made an event
    that no destination could serialise, blocking its stream for ever. Any header
    section must give a record that is JSON and matches the schema."""
    from smtprelay.events.ses import stored_to_json
    from smtprelay.spool.outbox import StoredEvent
    # The deep To first, so that what follows cannot make it part of a body; its
    # comments folded over lines of 70, as a client would send them.
    nested = f"{'(' * depth}x{')' * depth}"
    folded = "\r\n ".join(nested[i:i + 70] for i in range(0, len(nested), 70))
    section = (f"To: {folded} a@b.example\r\n".encode()
               + text.encode("utf-8", "surrogateescape") + b"\r\n\r\n")
    mail = MailInfo(message_id="018bd0e1a2b3-0123456789abcdef", timestamp=1700000000.0,
                    source="app@example.com", source_ip="192.0.2.1",
                    sending_account_id="acme", caller_identity="u",
                    destination=("a@b.example",), header_section=section, tags={})
    event = StoredEvent(id=1, event_id="e", message_id=mail.message_id, type="Delivery",
                        configuration_set="set", at=1700000001.0,
                        detail={"timestamp": "2023-11-14T22:13:21.000Z",
                                "processingTimeMillis": 1, "recipients": ["a@b.example"],
                                "smtpResponse": "250 ok", "reportingMTA": "relay.test"},
                        mail=mail)
    record = json.loads(stored_to_json(event))
    VALIDATOR.validate(record)


def test_the_spliced_json_is_the_record_and_never_another_version_of_the_mail() -> None:
    """stored_to_json reuses a message's mail object JSON; the line must be exactly
    the record stored_to_ses makes, and a MailInfo that differs under the same id
    (another relay's record, a rewritten one) must not be given the cached one."""
    from smtprelay.events.ses import stored_to_json, stored_to_ses
    from smtprelay.spool.outbox import StoredEvent

    def event(mail: MailInfo, tags: dict[str, list[str]] | None = None) -> StoredEvent:
        return StoredEvent(id=1, event_id="e", message_id=mail.message_id, type="Click",
                           configuration_set="set", at=1700000001.0,
                           detail={"ipAddress": "192.0.2.9", "userAgent": "ua \udcff",
                                   "link": "https://x.example/", "linkTags": {},
                                   "timestamp": "2023-11-14T22:13:21.000Z"},
                           mail=mail, mail_tags=tags)

    first = MailInfo(message_id="018bd0e1a2b3-00000000000000aa", timestamp=1700000000.0,
                     source="app@example.com", source_ip="192.0.2.1",
                     sending_account_id="acme", caller_identity="u",
                     destination=("a@b.example",),
                     header_section=b"Subject: one\r\nTo: a@b.example\r\n\r\n",
                     tags={"campaign": ["fall"]})
    second = MailInfo(**{**{f: getattr(first, f) for f in first.__slots__},
                         "header_section": b"Subject: two\r\n\r\n"})
    for mail, tags in [(first, None), (first, None), (second, None),
                       (first, {"ses:outgoing-ip": ["192.0.2.7"]}), (first, None)]:
        line = stored_to_json(event(mail, tags))
        assert json.loads(line) == stored_to_ses(event(mail, tags))
        record = json.loads(line)
        assert record["mail"]["commonHeaders"]["subject"] == (
            "one" if mail is first else "two")
        assert record["click"]["userAgent"] == "ua \ufffd"
        assert ("ses:outgoing-ip" in record["mail"]["tags"]) == (tags is not None)
