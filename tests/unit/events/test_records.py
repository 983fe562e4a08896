"""Outbox rows the stages make (smtprelay.events.records): the fields SES consumers read."""

from __future__ import annotations

import jsonschema

from smtprelay.events import records
from smtprelay.events.model import EventType
from smtprelay.events.ses import assemble
from smtprelay.spool.model import Outcome

HOST = "relay.example.com"
AT = 1_700_000_000.0


def test_a_bounce_from_the_suppression_list_says_dsn_and_our_host() -> None:
    _send, bounce = records.accepted("m1", "set", AT, {"gone@example.net": "suppressed"}, HOST)
    jsonschema.validate(bounce.detail, {"properties": {"reportingMTA": {"const": f"dsn; {HOST}"}},
                                        "required": ["reportingMTA"]})
    assert bounce.mail_tags is None  # nothing was sent: no ses:outgoing-ip


def test_attempt_events_carry_the_outgoing_ip_into_mail_tags() -> None:
    outcomes = [
        ("a@example.net", Outcome(message_id="m1", index=0, kind="delivery", at=AT + 1,
                                  status="2.0.0", diagnostic="smtp; 250 2.0.0 Ok",
                                  remote_mta="mx.example.net [192.0.2.1]",
                                  outgoing_ip="198.51.100.7")),
        ("b@example.net", Outcome(message_id="m1", index=1, kind="bounce", at=AT + 1,
                                  bounce_type="Permanent", bounce_subtype="NoEmail",
                                  status="5.1.1", diagnostic="smtp; 550 5.1.1 unknown",
                                  remote_mta="mx.example.net [192.0.2.1]",
                                  outgoing_ip="198.51.100.7")),
        ("c@example.net", Outcome(message_id="m1", index=2, kind="delay", at=AT + 1,
                                  status="4.4.1", delay_type="TransientCommunicationFailure",
                                  diagnostic="smtp; 421 4.4.1 connect to mx: refused")),
    ]
    delivery, bounce, delay = records.attempt("m1", "set", AT, AT + 86400, outcomes, HOST)
    assert delivery.mail_tags == bounce.mail_tags == {"ses:outgoing-ip": ["198.51.100.7"]}
    assert delay.mail_tags is None
    assert delivery.detail["reportingMTA"] == HOST
    assert bounce.detail["reportingMTA"] == f"dsn; {HOST}"
    assert delay.detail["reportingMTA"] == HOST
    record = assemble(EventType.DELIVERY, None, delivery.detail, message_id="m1",
                      mail_tags=delivery.mail_tags)
    assert record["mail"]["tags"] == {"ses:outgoing-ip": ["198.51.100.7"]}
