"""The events a message's life produces, as outbox rows: what each stage hands the spool.

The SMTP side records Send (and the Bounce of recipients the suppression list
refused) with the message; the delivery scheduler records Delivery, Bounce and
DeliveryDelay with each attempt's results; the HTTP side records Open, Click and
Subscription. One event per kind per attempt: the recipients that shared a fate in one
transaction share one event, as SES lists several recipients in one Delivery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from smtprelay.events import ses
from smtprelay.events.model import (
    Bounce,
    BouncedRecipient,
    BounceSubType,
    BounceType,
    DelayedRecipient,
    DelayType,
    Delivery,
    DeliveryDelay,
    Detail,
    Send,
    new_event_id,
    type_of,
)
from smtprelay.spool.model import EventRecord, Outcome

# SES's auto-tag: "The IP address that Amazon SES used to send the email."
OUTGOING_IP = "ses:outgoing-ip"
_REMOTE_IP = re.compile(r"\[([0-9A-Fa-f:.]+)\]\s*$")


def make(message_id: str, configuration_set: str | None, at: float,
         detail: Detail, *, outgoing_ip: str | None = None) -> EventRecord:
    """An outbox row for `detail`, with a new event id; `outgoing_ip` (our end of the
    connection the event is about) becomes the record's ``ses:outgoing-ip`` tag."""
    kind = type_of(detail)
    return EventRecord(event_id=new_event_id(at), message_id=message_id, type=str(kind),
                       configuration_set=configuration_set, at=at,
                       detail=ses.detail_object(detail),
                       mail_tags={OUTGOING_IP: [outgoing_ip]} if outgoing_ip else None)


def bounce_reporting_mta(hostname: str) -> str:
    """``bounce.reportingMTA`` of a bounce the relay itself decided on (a refusal at
    delivery, a lifetime over, the suppression list): "dsn; <our host>", as every Bounce
    example of the SES guide writes it ("dsn; mta.example.com", seed 004 lines ~10891
    and ~11865) and docs/events.md says. A bounce that came back as a DSN keeps that
    DSN's Reporting-MTA as written instead (feedback.classify); Delivery and
    DeliveryDelay write our bare host name (the guide's "host name of the mail server
    that sent the mail")."""
    return f"dsn; {hostname}"


def remote_ip(remote_mta: str | None) -> str | None:
    """The address in "mx1.example.net [192.0.2.1]"."""
    if not remote_mta:
        return None
    match = _REMOTE_IP.search(remote_mta)
    return match.group(1) if match else None


def accepted(message_id: str, configuration_set: str | None, at: float,
             suppressed: dict[str, str], hostname: str) -> tuple[EventRecord, ...]:
    """Send, and one Bounce for the recipients the suppression list refused
    (address -> diagnostic)."""
    events = [make(message_id, configuration_set, at, Send())]
    if suppressed:
        events.append(make(message_id, configuration_set, at, Bounce(
            bounce_type=BounceType.PERMANENT,
            bounce_sub_type=BounceSubType.ON_ACCOUNT_SUPPRESSION_LIST,
            bounced_recipients=tuple(
                BouncedRecipient(email_address=address, action="failed", status="5.1.1",
                                 diagnostic_code=diagnostic)
                for address, diagnostic in suppressed.items()),
            timestamp=at, feedback_id=new_event_id(at),
            reporting_mta=bounce_reporting_mta(hostname))))
    return tuple(events)


def attempt(message_id: str, configuration_set: str | None, received_at: float,
            expires_at: float, outcomes: Iterable[tuple[str, Outcome]],
            hostname: str) -> tuple[EventRecord, ...]:
    """The events for one attempt's outcomes, given as (recipient address, outcome)."""
    delivered: list[tuple[str, Outcome]] = []
    bounced: dict[tuple[str, str], list[tuple[str, Outcome]]] = {}
    delayed: dict[str, list[tuple[str, Outcome]]] = {}
    for address, outcome in outcomes:
        if outcome.kind == "delivery":
            delivered.append((address, outcome))
        elif outcome.kind == "bounce":
            key = (outcome.bounce_type or "Undetermined",
                   outcome.bounce_subtype or "Undetermined")
            bounced.setdefault(key, []).append((address, outcome))
        elif outcome.kind == "delay":
            delayed.setdefault(outcome.delay_type or "General", []).append((address, outcome))
    events: list[EventRecord] = []
    if delivered:
        first = delivered[0][1]
        events.append(make(message_id, configuration_set, first.at, Delivery(
            timestamp=first.at,
            processing_time_millis=max(0, round((first.at - received_at) * 1000)),
            recipients=tuple(address for address, _ in delivered),
            smtp_response=_smtp_response(first.diagnostic),
            reporting_mta=hostname, remote_mta_ip=remote_ip(first.remote_mta)),
            outgoing_ip=first.outgoing_ip))
    for (bounce_type, subtype), group in bounced.items():
        first = group[0][1]
        events.append(make(message_id, configuration_set, first.at, Bounce(
            bounce_type=BounceType(bounce_type), bounce_sub_type=BounceSubType(subtype),
            bounced_recipients=tuple(
                BouncedRecipient(email_address=address, action="failed",
                                 status=o.status, diagnostic_code=o.diagnostic)
                for address, o in group),
            timestamp=first.at, feedback_id=new_event_id(first.at),
            reporting_mta=bounce_reporting_mta(hostname),
            remote_mta_ip=remote_ip(first.remote_mta)), outgoing_ip=first.outgoing_ip))
    for kind, group in delayed.items():
        first = group[0][1]
        events.append(make(message_id, configuration_set, first.at, DeliveryDelay(
            delay_type=DelayType(kind),
            delayed_recipients=tuple(
                DelayedRecipient(email_address=address, status=o.status or "4.0.0",
                                 diagnostic_code=o.diagnostic or "")
                for address, o in group),
            expiration_time=expires_at, reporting_mta=hostname, timestamp=first.at,
            remote_mta_ip=remote_ip(first.remote_mta)), outgoing_ip=first.outgoing_ip))
    return tuple(events)


def _smtp_response(diagnostic: str | None) -> str:
    # Outcomes say "smtp; 250 2.0.0 Ok" (RFC 3464 diagnostic form); SES's smtpResponse
    # is the reply alone.
    text = diagnostic or ""
    return text[6:] if text.lower().startswith("smtp; ") else text
