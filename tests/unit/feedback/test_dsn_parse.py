"""Delivery status notifications (smtprelay.feedback.dsn_parse and .textbounce): every sample
of tests/data/feedback (see its README for what each imitates), our own DSNs, and the
bad inputs: no delivery-status part, statuses for addresses never sent to, a
10,000-recipient report.

Each sample's result is compared whole: every field of the report and of each
recipient (``view`` leaves out only the raw field lists, checked separately).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from smtprelay.bounces.classification import DEFAULT_RULES, Rule
from smtprelay.delivery.dsn_compose import FailedRecipient, build_dsn
from smtprelay.feedback import dsn_parse, mime
from smtprelay.feedback.classify import Unparseable, analyse, attribute
from smtprelay.feedback.dsn_parse import DeliveryReport, RecipientStatus
from tests.unit.feedback.kit import sample, ts


def report_of(name: str) -> DeliveryReport:
    result = analyse(sample(name))
    assert isinstance(result, DeliveryReport), result
    return result


def rcpt(**values: Any) -> dict[str, Any]:
    """A RecipientStatus as a dict: the given values, everything else empty."""
    empty: dict[str, Any] = {f.name: None for f in dataclasses.fields(RecipientStatus)
                             if f.name != "fields"}
    empty["action_inferred"] = False
    unknown = set(values) - set(empty)
    assert not unknown, unknown
    return empty | values


def original(**values: Any) -> dict[str, Any]:
    return {"relay_message_ids": (), "relay_recipients": ()} | values


def view(report: DeliveryReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(report):
        value = getattr(report, f.name)
        if f.name == "message_fields":
            continue
        if f.name == "recipients":
            value = [{g.name: getattr(r, g.name) for g in dataclasses.fields(r)
                      if g.name != "fields"} for r in value]
        elif f.name == "original" and value is not None:
            value = {"content_type": value.content_type, "complete": value.complete,
                     "message_id": value.message_id, "return_path": value.return_path,
                     "subject": value.subject,
                     "relay_message_ids": value.relay_message_ids,
                     "relay_recipients": value.relay_recipients}
        out[f.name] = value
    return out


TAG0 = "b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy@bounce.example.com"
TAG1 = "b-aeayxt7fnaaf6ku4hzy5as4gaipid6aulayopgx4nm@bounce.example.com"
TAG2 = "b-aeayxu5eyeaaugzmhvhf6ydraf4pb75rsud5lvch3y@bounce.example.com"
TAG_ALL = "b-aeayxu5eyeaaugzmhvhf6ydrachr4jlid2hdj7bpdu@bounce.example.com"
MSG_A = "018bcfe56800-5f2a9c3e71d04b86"
MSG_B = "018bd3a4c100-0a1b2c3d4e5f6071"


# --- RFC 3464 samples ---------------------------------------------------------------

def test_postfix_bounce() -> None:
    report = report_of("postfix_bounce.eml")
    assert view(report) == {
        "reporting_mta": "dns; mail.example.net",
        "received_from_mta": None,
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:21 +0000"),
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="user@example.net", address_type="rfc822",
            original_recipient="user@example.net", action="failed", status="5.1.1",
            effective_status="5.1.1",
            diagnostic_code="smtp; 550 5.1.1 <user@example.net>: Recipient address "
                            "rejected: User unknown in virtual mailbox table",
            remote_mta="dns; mx2.example.net",
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": original(
            content_type="text/rfc822-headers", complete=False,
            message_id="invoice-2023-11-4711@example.com", return_path=TAG0,
            subject="Your invoice for November", relay_message_ids=(MSG_A,),
            relay_recipients=("user@example.net",)),
        "date": ts("Tue, 14 Nov 2023 22:13:26 +0000"),
        "subject": "Undelivered Mail Returned to Sender",
        "report_from": "MAILER-DAEMON@mail.example.net (Mail Delivery System)",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }
    assert report.envelope_sender == TAG0  # X-Postfix-Sender, folded
    assert report.relay_message_id is None  # not one of ours
    assert [f.name for f in report.message_fields] == [
        "Reporting-MTA", "X-Postfix-Queue-ID", "X-Postfix-Sender", "Arrival-Date"]
    assert [f.name for f in report.recipients[0].fields] == [
        "Final-Recipient", "Original-Recipient", "Action", "Status", "Remote-MTA",
        "Diagnostic-Code"]
    assert report.bounces == report.recipients
    assert report.delays == report.ignored == ()
    assert report.recipients[0].permanent


def test_postfix_delay() -> None:
    report = report_of("postfix_delay.eml")
    assert view(report) == {
        "reporting_mta": "dns; mail.example.net",
        "received_from_mta": None,
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:21 +0000"),
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="second@example.org", address_type="rfc822",
            original_recipient="second@example.org", action="delayed", status="4.4.1",
            effective_status="4.4.1",
            diagnostic_code="X-Postfix; connect to mx.example.org[192.0.2.80]:25: "
                            "Connection timed out",
            will_retry_until=ts("Sun, 19 Nov 2023 22:13:21 +0000"),
            delay_type="TransientCommunicationFailure")],
        "original": original(
            content_type="text/rfc822-headers", complete=False,
            message_id="invoice-2023-11-4711@example.com", return_path=TAG1,
            subject="Your invoice for November", relay_message_ids=(MSG_A,)),
        "date": ts("Wed, 15 Nov 2023 02:13:40 +0000"),
        "subject": "Delayed Mail (still being retried)",
        "report_from": "MAILER-DAEMON@mail.example.net (Mail Delivery System)",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }
    assert report.delays == report.recipients and report.bounces == ()
    assert not report.recipients[0].permanent


def test_exim_dsn_generic_status_classified_by_the_remote_reply() -> None:
    report = report_of("exim_dsn.eml")
    assert view(report) == {
        "reporting_mta": "dns; mx.example.org",
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="someone@example.org", address_type="rfc822",
            action="failed",
            # As written (what SES's bouncedRecipients.status shows) ...
            status="5.0.0",
            # ... while classification used the remote's own, more specific code.
            effective_status="5.1.1",
            diagnostic_code="smtp; 550 5.1.1 <someone@example.org>: Recipient address "
                            "rejected: User unknown in local recipient table",
            remote_mta="dns; mx.example.org",
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": original(
            content_type="message/rfc822", complete=True,
            message_id=f"{MSG_A}@relay.example.com", return_path=TAG0,
            subject="Your invoice for November", relay_message_ids=(MSG_A,),
            relay_recipients=("someone@example.org",)),
        "date": ts("Tue, 14 Nov 2023 23:15:00 +0100"),
        "subject": "Mail delivery failed: returning message to sender",
        "report_from": "Mail Delivery System <Mailer-Daemon@mx.example.org>",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }


def test_sendmail_bounce() -> None:
    report = report_of("sendmail_bounce.eml")
    assert view(report) == {
        "reporting_mta": "dns; smtp.example.edu",
        "received_from_mta": "DNS; relay.example.com",
        "arrival_date": ts("Tue, 14 Nov 2023 17:13:40 -0500"),
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="prof@example.edu", address_type="rfc822", action="failed",
            status="5.1.1", effective_status="5.1.1",
            diagnostic_code="SMTP; 550 5.1.1 <prof@example.edu>... User unknown",
            remote_mta="DNS; mail.cs.example.edu",
            last_attempt_date=ts("Tue, 14 Nov 2023 17:14:02 -0500"),
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": original(
            content_type="message/rfc822", complete=True,
            message_id="news-2023-11-prof@example.com", return_path=TAG2,
            subject="November newsletter", relay_message_ids=(MSG_B,),
            relay_recipients=("prof@example.edu",)),
        "date": ts("Tue, 14 Nov 2023 17:14:02 -0500"),
        "subject": "Returned mail: see transcript for details",
        "report_from": "Mail Delivery Subsystem <MAILER-DAEMON@smtp.example.edu>",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }


def test_gmail_folded_multi_line_diagnostic() -> None:
    report = report_of("gmail_bounce.eml")
    assert view(report) == {
        "reporting_mta": "dns; googlemail.com",
        "received_from_mta": "dns; relay.example.com",
        "arrival_date": ts("Tue, 14 Nov 2023 14:13:21 -0800"),
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="nobody.here@gmail.com", address_type="rfc822",
            action="failed", status="5.1.1", effective_status="5.1.1",
            # Unfolded into one line, each continuation's "550-5.1.1" kept as written.
            diagnostic_code=(
                "smtp; 550-5.1.1 The email account that you tried to reach does not "
                "exist. Please try 550-5.1.1 double-checking the recipient's email "
                "address for typos or 550-5.1.1 unnecessary spaces. Learn more at "
                "550 5.1.1 https://support.google.com/mail/?p=NoSuchUser "
                "a1-20020a05600c000100b0040a3f9a5b2esi123456wmq.0 - gsmtp"),
            remote_mta="dns; gmail-smtp-in.l.google.com. (2a00:1450:400c:c0b::1a, the "
                       "server for the domain gmail.com.)",
            remote_mta_ip="2a00:1450:400c:c0b::1a",
            last_attempt_date=ts("Tue, 14 Nov 2023 14:13:22 -0800"),
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": original(
            content_type="message/rfc822", complete=True,
            message_id="invoice-2023-11-4712@example.com", return_path=TAG0,
            subject="Your invoice for November", relay_message_ids=(MSG_A,),
            relay_recipients=("forwarder@example.com",)),
        "date": ts("Tue, 14 Nov 2023 14:13:22 -0800"),
        "subject": "Delivery Status Notification (Failure)",
        "report_from": "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }
    # The failed address is where the recipient forwarded to, not the one we sent to.
    attribution = attribute(report, ["forwarder@example.com"])
    assert attribution.matched == ()
    assert attribution.unrelated == report.recipients
    assert attribution.probably_forwarded == report.recipients[0]


def test_exchange_online_ndr() -> None:
    report = report_of("exchange_online_ndr.eml")
    assert view(report) == {
        "reporting_mta": "dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.com",
        "received_from_mta": "dns;relay.example.com",
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:23 +0000"),
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="user@contoso.com", address_type="rfc822", action="failed",
            status="5.1.10", effective_status="5.1.10",
            diagnostic_code="smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient "
                            "not found by SMTP address lookup",
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": original(
            content_type="text/rfc822-headers", complete=False,
            message_id="invoice-2023-11-4713@example.com", return_path=TAG0,
            subject="Your invoice for November"),
        "date": ts("Tue, 14 Nov 2023 22:13:24 +0000"),
        "subject": "Undeliverable: Your invoice for November",
        "report_from": "Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e"
                       "@contoso.onmicrosoft.com>",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }
    assert [(f.name, f.value) for f in report.recipients[0].fields][-1] == (
        "X-Display-Name", "user@contoso.com")


def test_messy_gateway_dsn() -> None:
    report = report_of("messy_gateway_dsn.eml")
    assert view(report) == {
        "reporting_mta": "dns; gw.example.net",  # folded onto two lines
        "received_from_mta": None,
        "arrival_date": ts("Tue, 14 Nov 2023 23:13:25 +0100"),
        "original_envelope_id": None,
        "recipients": [
            # No type prefix, "FAILED", no Status: taken from the diagnostic; the
            # Latin-1 octet in a 7-bit part read as Latin-1.
            rcpt(final_recipient="a.mueller@example.net", action="failed",
                 effective_status="5.1.1",
                 diagnostic_code="smtp; 550 5.1.1 <a.mueller@example.net> Empf\u00e4nger "
                                 "unbekannt / user unknown",
                 bounce_type="Permanent", bounce_subtype="NoEmail"),
            rcpt(final_recipient="b.schmidt@example.net", address_type="rfc822",
                 action="delayed", status="4.2.2", effective_status="4.2.2",
                 diagnostic_code="smtp; 452 4.2.2 Mailbox full", delay_type="MailboxFull"),
            # No blank line before this group; angle brackets around the address.
            rcpt(final_recipient="c.weber@example.net", address_type="rfc822",
                 action="delivered", status="2.0.0", effective_status="2.0.0"),
            # No Action: inferred from "5.7.1 (delivery not authorized)". A block list
            # aims at our IP, not the address: Transient.
            rcpt(final_recipient="d.fischer@example.net", address_type="rfc822",
                 action="failed", action_inferred=True, status="5.7.1",
                 effective_status="5.7.1",
                 diagnostic_code="smtp; 554 5.7.1 Service unavailable; Client host "
                                 "[198.51.100.10] blocked using zen.spamhaus.org",
                 bounce_type="Transient", bounce_subtype="General"),
            rcpt(final_recipient="e.wagner@example.net", address_type="rfc822",
                 action="relayed", status="2.0.0", effective_status="2.0.0",
                 remote_mta="dns; [192.0.2.99]", remote_mta_ip="192.0.2.99"),
        ],
        "original": original(
            content_type="text/rfc822-headers", complete=False,
            message_id=f"{MSG_B}@relay.example.com", return_path=TAG_ALL,
            subject="November newsletter", relay_message_ids=(MSG_B,)),
        "date": ts("Tue, 14 Nov 2023 23:13:30 +0100"),
        "subject": "Delivery Report (failure)",
        "report_from": '"Mail Gateway" <postmaster@gw.example.net>',
        "heuristic": None,
        "notes": ("recipient groups not separated by a blank line",
                  "Final-Recipient without an address type",
                  "Status missing; taken from the Diagnostic-Code",
                  "Action missing; inferred from the status"),
        "truncated": False,
    }
    assert [r.final_recipient for r in report.bounces] == [
        "a.mueller@example.net", "d.fischer@example.net"]
    assert [r.final_recipient for r in report.delays] == ["b.schmidt@example.net"]
    assert [r.final_recipient for r in report.ignored] == [
        "c.weber@example.net", "e.wagner@example.net"]


# --- our own DSNs ---------------------------------------------------------------------

OUR_ORIGINAL = (
    b"Received: from app1.example.com (app1.example.com [198.51.100.7])\r\n"
    b"\tby relay.example.com (smtprelay) with ESMTPSA id " + MSG_A.encode() + b"\r\n"
    b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384);\r\n"
    b"\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Acme Billing <billing@example.com>\r\n"
    b"To: user@example.net, us\xc3\xa9r@ex\xc3\xa4mple.net\r\n"
    b"Subject: Your invoice\r\n"
    b"Message-ID: <" + MSG_A.encode() + b"@relay.example.com>\r\n"
    b"\r\n"
    b"body\r\n")


@pytest.mark.parametrize("full", [False, True])
def test_our_own_dsn_reads_back(full: bool) -> None:
    raw = build_dsn(
        original=OUR_ORIGINAL, envelope_sender="billing@example.com",
        reporting_mta="relay.example.com", message_id=MSG_A, arrival=1700000000.0,
        now=1700000100.0, return_full_message=full,
        recipients=[
            FailedRecipient("user@example.net", "failed", "5.1.1",
                            "smtp; 550 5.1.1 <user@example.net>: user unknown",
                            "mx.example.net [192.0.2.1]", 1700000050.0,
                            original_recipient="User@Example.NET"),
            FailedRecipient("us\u00e9r@ex\u00e4mple.net", "failed", "5.0.0",
                            "r\u00e9ponse: 550 bo\u00eete inconnue", None, 1700000060.0),
        ])
    report = analyse(raw)
    assert isinstance(report, DeliveryReport)
    assert view(report) == {
        "reporting_mta": "dns; relay.example.com",
        "received_from_mta": None,
        "arrival_date": 1700000000.0,
        "original_envelope_id": None,
        "recipients": [
            rcpt(final_recipient="user@example.net", address_type="rfc822",
                 original_recipient="User@Example.NET", action="failed", status="5.1.1",
                 effective_status="5.1.1",
                 diagnostic_code="smtp; 550 5.1.1 <user@example.net>: user unknown",
                 remote_mta="dns; mx.example.net", last_attempt_date=1700000050.0,
                 bounce_type="Permanent", bounce_subtype="NoEmail"),
            # RFC 6533 utf-8 address type and \x{..} escapes undone.
            rcpt(final_recipient="us\u00e9r@ex\u00e4mple.net", address_type="utf-8",
                 action="failed", status="5.0.0", effective_status="5.0.0",
                 diagnostic_code="X-SMTPRelay; r\u00e9ponse: 550 bo\u00eete inconnue",
                 last_attempt_date=1700000060.0,
                 bounce_type="Permanent", bounce_subtype="General"),
        ],
        "original": original(
            content_type="message/rfc822" if full else "text/rfc822-headers",
            complete=full, message_id=f"{MSG_A}@relay.example.com", return_path=None,
            subject="Your invoice", relay_message_ids=(MSG_A,)),
        "date": 1700000100.0,
        "subject": "Undelivered Mail Returned to Sender",
        "report_from": "Mail Delivery System <MAILER-DAEMON@relay.example.com>",
        "heuristic": None,
        "notes": (),
        "truncated": False,
    }
    assert report.relay_message_id == MSG_A


def test_our_own_delay_dsn() -> None:
    raw = build_dsn(
        original=OUR_ORIGINAL, envelope_sender="billing@example.com",
        reporting_mta="relay.example.com", message_id=MSG_A, arrival=1700000000.0,
        now=1700000100.0,
        recipients=[FailedRecipient("user@example.net", "delayed", "4.2.2",
                                    "452 4.2.2 mailbox full", "mx.example.net [192.0.2.1]",
                                    1700000050.0, will_retry_until=1700432000.0)])
    report = analyse(raw)
    assert isinstance(report, DeliveryReport)
    [status] = report.recipients
    assert (status.action, status.status, status.diagnostic_code, status.will_retry_until,
            status.delay_type) == ("delayed", "4.2.2", "smtp; 452 4.2.2 mailbox full",
                                   1700432000.0, "MailboxFull")
    assert report.subject == "Delayed Mail (still being retried)"


# --- text bounces (heuristics) --------------------------------------------------------

def test_qmail_text_bounce() -> None:
    report = report_of("qmail_bounce.eml")
    assert view(report) == {
        "reporting_mta": "dns; mail.example.info",
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [
            rcpt(final_recipient="someone@example.info", action="failed",
                 effective_status="5.1.1",
                 diagnostic_code="smtp; 550 5.1.1 <someone@example.info>... User unknown "
                                 "Giving up on 192.0.2.61.",
                 bounce_type="Permanent", bounce_subtype="NoEmail"),
            rcpt(final_recipient="other@example.info", action="failed",
                 effective_status="5.1.1",
                 diagnostic_code="Sorry, no mailbox here by that name. (#5.1.1)",
                 bounce_type="Permanent", bounce_subtype="NoEmail"),
        ],
        # The inline copy below the marker line: the original's own To names both
        # addresses, and neither is taken for a failed recipient twice.
        "original": original(
            content_type="text/plain", complete=False,
            message_id="news-2023-11-q@example.com", return_path=TAG_ALL,
            subject="November newsletter", relay_message_ids=(MSG_B,)),
        "date": ts("14 Nov 2023 22:13:30 -0000"),
        "subject": "failure notice",
        "report_from": "MAILER-DAEMON@mail.example.info",
        "heuristic": "qmail",
        "notes": ("no delivery-status part; recipients read from qmail wording",
                  "Status missing; taken from the Diagnostic-Code (x2)"),
        "truncated": False,
    }


def test_yahoo_failure_notice() -> None:
    report = report_of("yahoo_failure_notice.eml")
    assert view(report) == {
        "reporting_mta": None,
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="no.such.user@yahoo.com", action="failed",
            # "554:" read as the reply code 554, so the rules see class 5.
            effective_status="5.0.0",
            diagnostic_code="smtp; 554 delivery error: dd This user doesn't have a "
                            "yahoo.com account (no.such.user@yahoo.com) [0] - "
                            "mta1042.mail.ne1.yahoo.com",
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": original(
            content_type="text/plain", complete=False,
            message_id="invoice-2023-11-4714@example.com", return_path=TAG0,
            subject="Your invoice for November", relay_message_ids=(MSG_A,),
            relay_recipients=("no.such.user@yahoo.com",)),
        "date": ts("Tue, 14 Nov 2023 22:13:26 +0000"),
        "subject": "Failure Notice",
        "report_from": "MAILER-DAEMON@yahoo.com",
        "heuristic": "qmail",
        "notes": ("no delivery-status part; recipients read from qmail wording",
                  "Status missing; taken from the Diagnostic-Code"),
        "truncated": False,
    }


def test_exim_legacy_text_bounce() -> None:
    # Auto-Submitted: auto-replied, yet a bounce (Exim marks its bounces so).
    report = report_of("exim_legacy.eml")
    assert view(report) == {
        "reporting_mta": None,
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [
            rcpt(final_recipient="gone@example.org", action="failed",
                 effective_status="5.1.1",
                 diagnostic_code="smtp; 550 5.1.1 <gone@example.org>: Recipient address "
                                 "rejected: User unknown",
                 remote_mta="mx.example.org [192.0.2.40]", remote_mta_ip="192.0.2.40",
                 bounce_type="Permanent", bounce_subtype="NoEmail"),
            rcpt(final_recipient="full@example.org", action="failed",
                 effective_status="5.2.2",
                 diagnostic_code="smtp; 552 5.2.2 Mailbox quota usage exceeded",
                 remote_mta="mx.example.org [192.0.2.40]", remote_mta_ip="192.0.2.40",
                 bounce_type="Transient", bounce_subtype="MailboxFull"),
        ],
        "original": original(
            content_type="text/plain", complete=False,
            message_id="news-2023-11@example.com", return_path=TAG_ALL,
            subject="November newsletter", relay_message_ids=(MSG_B,)),
        "date": ts("Wed, 15 Nov 2023 08:00:00 +0100"),
        "subject": "Mail delivery failed: returning message to sender",
        "report_from": "Mail Delivery System <Mailer-Daemon@mail.example.org>",
        "heuristic": "exim",
        "notes": ("no delivery-status part; recipients read from exim wording",
                  "Status missing; taken from the Diagnostic-Code (x2)"),
        "truncated": False,
    }


def test_exim_legacy_delay_warning() -> None:
    report = report_of("exim_legacy_delay.eml")
    assert view(report) == {
        "reporting_mta": None,
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="slow@example.org", action="delayed", effective_status="4.7.1",
            diagnostic_code="smtp; 451 4.7.1 Greylisting in action, please come back later",
            remote_mta="mx.example.org [192.0.2.40]", remote_mta_ip="192.0.2.40",
            # smtprelay.delivery.retry.delay_type: any 4.7.x reads as aimed at the IP.
            delay_type="IPFailure")],
        "original": None,
        "date": ts("Thu, 16 Nov 2023 08:00:00 +0100"),
        "subject": "Warning: message 1r2y9z-0001Xw-7P delayed 24 hours",
        "report_from": "Mail Delivery System <Mailer-Daemon@mail.example.org>",
        "heuristic": "exim",
        "notes": ("no delivery-status part; recipients read from exim wording",
                  "Status missing; taken from the Diagnostic-Code"),
        "truncated": False,
    }


def test_exchange_legacy_ndr_wording() -> None:
    report = report_of("exchange_legacy_text.eml")
    assert view(report) == {
        "reporting_mta": None,
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="jsmith@corp.example.biz", action="failed",
            effective_status="5.1.1", diagnostic_code="smtp; 550 5.1.1 User unknown",
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": None,
        "date": ts("Tue, 14 Nov 2023 17:13:26 -0500"),
        "subject": "Undeliverable: Your invoice for November",
        "report_from": "postmaster@corp.example.biz",
        "heuristic": "exchange",
        "notes": ("no delivery-status part; recipients read from exchange wording",
                  "Status missing; taken from the Diagnostic-Code"),
        "truncated": False,
    }


# --- bad input ------------------------------------------------------------------------

def test_report_without_delivery_status_part_falls_back_to_marked_heuristics() -> None:
    report = report_of("dsn_no_delivery_status.eml")
    assert view(report) == {
        "reporting_mta": None,
        "received_from_mta": None,
        "arrival_date": None,
        "original_envelope_id": None,
        "recipients": [rcpt(
            final_recipient="user@example.net", action="failed", effective_status="5.1.1",
            diagnostic_code="smtp; 550 5.1.1 <user@example.net>: Recipient address "
                            "rejected: User unknown (in reply to RCPT TO command)",
            bounce_type="Permanent", bounce_subtype="NoEmail")],
        "original": None,
        "date": ts("Tue, 14 Nov 2023 22:13:26 +0000"),
        "subject": "Undelivered Mail Returned to Sender",
        "report_from": "MAILER-DAEMON@filter.example.net (Mail Delivery System)",
        "heuristic": "generic",
        "notes": ("multipart/report without a delivery-status part",
                  "no delivery-status part; recipients read from generic wording",
                  "Status missing; taken from the Diagnostic-Code"),
        "truncated": False,
    }
    with pytest.raises(mime.NotAReport, match="no message/delivery-status part"):
        dsn_parse.parse(sample("dsn_no_delivery_status.eml"))


def test_report_without_delivery_status_part_or_readable_text_is_unparseable() -> None:
    raw = (b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n"
           b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nSomething went wrong.\r\n--b--\r\n")
    assert analyse(raw) == Unparseable(
        "multipart/report without a delivery-status part", subject="Undelivered Mail",
        report_from="MAILER-DAEMON@example.net")


def test_delivery_status_part_naming_no_recipient() -> None:
    raw = (b"From: someone@example.net\r\nSubject: report\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n"
           b"\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.example.net\r\n\r\nAction: failed\r\n--b--\r\n")
    result = analyse(raw)
    assert result == Unparseable("the delivery-status part names no recipient",
                                 subject="report", report_from="someone@example.net")
    with pytest.raises(mime.NotAReport, match="names no recipient"):
        dsn_parse.parse(raw)


def test_status_for_an_address_that_was_never_sent_to() -> None:
    # A report about our message naming one real recipient and one stranger: only the
    # real one may lead to an event or a suppression entry.
    raw = sample("postfix_bounce.eml").replace(
        b"Diagnostic-Code: smtp; 550 5.1.1 <user@example.net>: Recipient address rejected:\r\n"
        b"    User unknown in virtual mailbox table\r\n",
        b"Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        b"Final-Recipient: rfc822; ceo@victim.example\r\nAction: failed\r\nStatus: 5.1.1\r\n")
    report = analyse(raw)
    assert isinstance(report, DeliveryReport)
    assert [r.final_recipient for r in report.recipients] == [
        "user@example.net", "ceo@victim.example"]
    attribution = attribute(report, ["USER@example.net"])
    assert [r.final_recipient for r in attribution.matched] == ["user@example.net"]
    assert [r.final_recipient for r in attribution.unrelated] == ["ceo@victim.example"]
    assert attribution.probably_forwarded is None
    # Nothing about the stranger at all: not even a "forwarded" guess with two statuses.
    only_stranger = attribute(report, ["someone.else@example.net"])
    assert only_stranger.matched == () and only_stranger.probably_forwarded is None


def test_original_recipient_matches_too() -> None:
    report = report_of("postfix_bounce.eml")
    status = dataclasses.replace(report.recipients[0], final_recipient="alias@example.net",
                                 original_recipient="User@Example.net")
    report = dataclasses.replace(report, recipients=(status,))
    assert attribute(report, ["user@example.net"]).matched == (status,)


def test_strict_parse_accepts_a_dsn() -> None:
    assert dsn_parse.parse(sample("sendmail_bounce.eml")).recipients[0].final_recipient == (
        "prof@example.edu")


def test_operator_rules_come_first() -> None:
    # An operator who reads Exchange's 5.1.10 as General (say, for a catch-all tenant).
    rules = (Rule("Permanent", "General", text=r"RESOLVER\.ADR\.RecipientNotFound"),
             *DEFAULT_RULES)
    report = analyse(sample("exchange_online_ndr.eml"), rules)
    assert isinstance(report, DeliveryReport)
    assert (report.recipients[0].bounce_type, report.recipients[0].bounce_subtype) == (
        "Permanent", "General")


def _big_dsn(count: int) -> bytes:
    groups = "".join(
        f"\r\nFinal-Recipient: rfc822; user{i}@example.net\r\nAction: failed\r\n"
        f"Status: 5.1.1\r\nRemote-MTA: dns; mx.example.net\r\nDiagnostic-Code: smtp; 550 "
        f"5.1.1 <user{i}@example.net>: Recipient address rejected: User unknown\r\n"
        for i in range(count))
    return ("From: MAILER-DAEMON@mx.example.net\r\nSubject: Undelivered Mail\r\n"
            "Content-Type: multipart/report; report-type=delivery-status; boundary=\"BB\"\r\n"
            "\r\n--BB\r\nContent-Type: text/plain\r\n\r\nThey all failed.\r\n--BB\r\n"
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net"
            f"\r\n{groups}\r\n--BB--\r\n").encode()


def test_ten_thousand_recipient_dsn_parses_within_bounds() -> None:
    raw = _big_dsn(10_000)
    assert len(raw) > 2_000_000
    started = time.process_time()
    report = analyse(raw)
    elapsed = time.process_time() - started
    assert isinstance(report, DeliveryReport)
    assert len(report.recipients) == 10_000
    assert report.recipients[-1].final_recipient == "user9999@example.net"
    assert {r.bounce_subtype for r in report.recipients} == {"NoEmail"}
    # About 0.35 s of CPU on the development machine; generous for a loaded CI box.
    assert elapsed < 5.0


def test_input_over_the_cap_is_cut_and_says_so() -> None:
    # A DSN whose returned original is larger than the cap: the report part still
    # reads; the tail of the original is lost.
    raw = (sample("postfix_bounce.eml").replace(b"text/rfc822-headers", b"message/rfc822")
           .replace(b"\r\n--8E5E3C1234.1700000006/mail.example.net--",
                    b"\r\n" + b"x" * 998 + (b"\r\n" + b"x" * 998) * (mime.MAX_INPUT // 1000)
                    + b"\r\n--8E5E3C1234.1700000006/mail.example.net--"))
    assert len(raw) > mime.MAX_INPUT
    report = analyse(raw)
    assert isinstance(report, DeliveryReport)
    assert report.truncated
    assert report.notes == (f"input longer than {mime.MAX_INPUT} octets was cut",)
    assert report.recipients[0].bounce_subtype == "NoEmail"
    assert report.original is not None and report.original.message_id == (
        "invoice-2023-11-4711@example.com")


def test_several_delivery_status_parts_read_the_first() -> None:
    part = (b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; m\r\n"
            b"\r\nFinal-Recipient: rfc822; a@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n")
    raw = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           + part * 10_000 + b"--b--\r\n")
    started = time.process_time()
    report = analyse(raw)
    assert time.process_time() - started < 5.0
    assert isinstance(report, DeliveryReport)
    assert len(report.recipients) == 1
    assert report.notes == (
        f"{mime.MAX_PARTS - 1} delivery-status parts; only the first was read",
        f"more than {mime.MAX_PARTS} MIME parts; the rest were not read")
