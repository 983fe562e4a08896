"""Fields of the published events that SES consumers read (issue 15, "Events that SES
consumers read"), end to end: a relay in mx mode delivering over real sockets to SMTP
sinks found through a real DNS server, its events in an NDJSON file.

Each case is a JSON Schema (on top of docs/events.schema.json, which every record
passes) saying what SES writes in that case:

- reportingMTA: a Bounce the relay decides on says "dsn; <host>" (every Bounce example
  of the SES guide); Delivery and DeliveryDelay say the bare host name;
- diagnosticCode: a failure with no server reply (connection refused) is written as
  SES writes it, "smtp; 421 4.4.1 ...";
- delayType: "451 4.3.0 ..., try again later" is RecipientServerError, not IPFailure;
- mail.headers: the client's header fields, without the relay's Received/DKIM-Signature;
- mail.tags: ses:outgoing-ip, our end of the connection, once one was made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema

from tests.e2e.delivery_world import World, wait_for
from tests.support import events, message

HOST = "relay.test"  # base_config's server.hostname


def start(net: World, **delivery: Any) -> Path:
    path = net.tmp_path / "events.ndjson"
    net.start(top={"configuration_sets": {"transactional": {"event_destinations": [
        {"name": "archive", "type": "file", "path": str(path)}]}}}, **delivery)
    return path


def records(path: Path, message_id: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in events(path)
            if r["mail"]["messageId"] == message_id and r["eventType"] == kind]


def first(path: Path, message_id: str, kind: str) -> dict[str, Any]:
    found = wait_for(lambda: records(path, message_id, kind), 20)
    assert found, f"no {kind} event for {message_id}"
    return found[0]


def detail(key: str, properties: dict[str, Any], *,
           tags: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema for a record whose `key` object has `properties` (and mail.tags)."""
    mail: dict[str, Any] = {"type": "object"}
    if tags is not None:
        mail = {"type": "object", "required": ["tags"], "properties": {"tags": tags}}
    return {"type": "object", "required": [key, "mail"],
            "properties": {key: {"type": "object", "required": sorted(properties),
                                 "properties": properties},
                           "mail": mail}}


OUTGOING_IP = {"type": "object", "required": ["ses:outgoing-ip"],
               "properties": {"ses:outgoing-ip": {
                   "type": "array", "minItems": 1, "maxItems": 1,
                   "items": {"type": "string", "format": "ipv4", "pattern": r"^127\."}}}}
NO_OUTGOING_IP = {"type": "object", "not": {"required": ["ses:outgoing-ip"]}}


def recipients(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "minItems": 1,
            "items": {"type": "object", "required": sorted(properties),
                      "properties": properties}}


DELIVERY = detail("delivery", {"reportingMTA": {"const": HOST}}, tags=OUTGOING_IP)

BOUNCE_AT_RCPT = detail("bounce", {
    "reportingMTA": {"const": f"dsn; {HOST}"},
    "remoteMtaIp": {"const": "127.0.0.2"},
    "bouncedRecipients": recipients({
        "diagnosticCode": {"pattern": r"^smtp; 550 5\.1\.1 "},
        "status": {"const": "5.1.1"}, "action": {"const": "failed"}}),
}, tags=OUTGOING_IP)

DELAY_CONNECTION_REFUSED = detail("deliveryDelay", {
    "reportingMTA": {"const": HOST},
    "delayType": {"const": "TransientCommunicationFailure"},
    "delayedRecipients": recipients({
        "status": {"const": "4.4.1"},
        # SES's own example: "smtp; 421 4.4.1 Unable to connect to remote host".
        "diagnosticCode": {"pattern": r"^smtp; 421 4\.4\.1 connect to .*refused"}}),
}, tags=NO_OUTGOING_IP)

DELAY_SERVER_ERROR = detail("deliveryDelay", {
    "reportingMTA": {"const": HOST},
    "delayType": {"const": "RecipientServerError"},
    "delayedRecipients": recipients({
        "status": {"const": "4.3.0"},
        "diagnosticCode": {"const": "smtp; 451 4.3.0 Temporary server error, try again later"}}),
}, tags=OUTGOING_IP)


def check(record: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.validate(record, schema, format_checker=jsonschema.FormatChecker())


def test_delivery_names_our_host_and_outgoing_ip_and_shows_the_clients_headers(
        net: World) -> None:
    mx = net.smtp_host("dest.test")
    path = start(net)
    data = message(subject="original headers", to="a@dest.test")
    message_id = net.submit(["a@dest.test"], data=data)
    delivery = first(path, message_id, "Delivery")
    # The client's fields, in order (hygiene adds the missing Date at the end), and
    # nothing of the relay's own (Received, in front of them on the wire).
    sent = [line.split(b":", 1)[0].decode()
            for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")]
    for record in (delivery, first(path, message_id, "Send")):
        names = [h["name"] for h in record["mail"]["headers"]]
        assert names == [*sent, "Date"], names
        check(record, {"type": "object", "properties": {"mail": {"type": "object",
              "properties": {"headers": {"type": "array", "items": {
                  "not": {"properties": {"name": {"enum": ["Received",
                                                           "DKIM-Signature"]}}}}}}}}})
    check(delivery, DELIVERY)
    # The relay's own fields still go out with the message.
    assert mx.received[0].data.startswith(b"Received: ")


def test_bounce_at_rcpt_says_dsn_our_host_with_the_smtp_diagnostic(net: World) -> None:
    net.smtp_host("dest.test", rcpt_replies={"b@dest.test": "550 5.1.1 no such user"})
    path = start(net)
    message_id = net.submit(["a@dest.test", "b@dest.test"])
    check(first(path, message_id, "Bounce"), BOUNCE_AT_RCPT)
    check(first(path, message_id, "Delivery"), DELIVERY)


def test_connection_refused_delay_has_an_smtp_diagnostic(net: World) -> None:
    net.mx("dest.test", (10, "mx.dest.test", net.address()))  # nothing listens there
    path = start(net, delay={"after": "1ms", "every": "1h"})
    message_id = net.submit(["a@dest.test"])
    check(first(path, message_id, "DeliveryDelay"), DELAY_CONNECTION_REFUSED)


def test_451_4_3_0_try_again_later_is_a_recipient_server_error(net: World) -> None:
    net.smtp_host("dest.test", rcpt_replies={
        "a@dest.test": "451 4.3.0 Temporary server error, try again later"})
    path = start(net, delay={"after": "1ms", "every": "1h"})
    message_id = net.submit(["a@dest.test"])
    check(first(path, message_id, "DeliveryDelay"), DELAY_SERVER_ERROR)
