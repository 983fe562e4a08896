"""Complaint reports (smtprelay.feedback.arf): the ARF samples of tests/data/feedback
(Yahoo, AOL, Microsoft JMRP-like, Comcast), an ARF report without its original, and the
non-ARF SpamCop form. Every field of each result is compared."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from smtprelay.feedback import arf, mime
from smtprelay.feedback.arf import ComplaintReport
from smtprelay.feedback.classify import Unparseable, analyse, recover_tag
from smtprelay.transform.tokens import Key, KeyRing
from tests.unit.feedback.kit import sample, ts

RING = KeyRing([Key(1, b"feedback-samples-secret-0123456789", 1.69e9)])
TAG0 = "b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy@bounce.example.com"
TAG1 = "b-aeayxt7fnaaf6ku4hzy5as4gaipid6aulayopgx4nm@bounce.example.com"
MSG_A = "018bcfe56800-5f2a9c3e71d04b86"


def complaint_of(name: str) -> ComplaintReport:
    result = analyse(sample(name))
    assert isinstance(result, ComplaintReport), result
    return result


def view(report: ComplaintReport) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(report):
        value = getattr(report, f.name)
        if f.name == "fields":
            continue
        if f.name == "original" and value is not None:
            value = {"content_type": value.content_type, "complete": value.complete,
                     "message_id": value.message_id, "return_path": value.return_path,
                     "relay_message_ids": value.relay_message_ids,
                     "relay_recipients": value.relay_recipients}
        out[f.name] = value
    out["recipient_candidates"] = report.recipient_candidates
    return out


def test_yahoo_arf() -> None:
    report = complaint_of("yahoo_arf.eml")
    assert view(report) == {
        "feedback_type": "abuse",
        "user_agent": "Yahoo!-Mail-Feedback/2.0",
        "version": "0.1",
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:25 +0000"),  # from Received-Date
        "source_ip": None,
        "original_mail_from": TAG0,
        "original_rcpt_to": (),
        "removal_recipients": (),
        "reported_domains": (),
        "reported_uris": (),
        "incidents": None,
        "original": {"content_type": "message/rfc822", "complete": True,
                     "message_id": "invoice-2023-11-4715@example.com", "return_path": TAG0,
                     "relay_message_ids": (MSG_A,),
                     "relay_recipients": ("happy.reader@yahoo.com",)},
        "date": ts("Wed, 15 Nov 2023 09:12:45 +0000"),
        "subject": "FW: Your invoice for November",
        "report_from": '"Yahoo! Mail AntiSpam Feedback" <feedback@arf.mail.yahoo.com>',
        "heuristic": None,
        "notes": (),
        "truncated": False,
        # To is "redacted@yahoo.com": only our own Received field names the recipient.
        "recipient_candidates": (("happy.reader@yahoo.com", "Received (smtprelay)"),),
    }
    assert report.known_feedback_type and not report.original_missing
    assert [f.name for f in report.fields] == [
        "Feedback-Type", "User-Agent", "Version", "Original-Mail-From", "Received-Date",
        "Authentication-Results"]
    assert recover_tag(report, RING, 1.7e9) == (MSG_A, 0)


def test_aol_arf_with_older_draft_fields() -> None:
    report = complaint_of("aol_arf.eml")
    assert view(report) == {
        "feedback_type": "abuse",
        "user_agent": "AOL SComp",
        "version": "0.1",
        "arrival_date": ts("Tue, 14 Nov 2023 17:13:25 -0500"),
        "source_ip": "198.51.100.10",
        "original_mail_from": None,
        "original_rcpt_to": (),
        "removal_recipients": ("loyal.reader@aol.com",),
        "reported_domains": ("example.com",),
        "reported_uris": (),
        "incidents": None,
        "original": {"content_type": "message/rfc822", "complete": True,
                     "message_id": "invoice-2023-11-4716@example.com", "return_path": TAG1,
                     "relay_message_ids": (), "relay_recipients": ()},
        "date": ts("Tue, 14 Nov 2023 19:40:02 -0500"),
        "subject": "Email Feedback Report for IP 198.51.100.10",
        "report_from": "scomp@aol.net",
        "heuristic": None,
        "notes": (),
        "truncated": False,
        "recipient_candidates": (("loyal.reader@aol.com", "Removal-Recipient"),),
    }
    # No Original-Mail-From: the tag comes from the original's Return-Path.
    assert recover_tag(report, RING, 1.7e9) == (MSG_A, 1)


def test_microsoft_jmrp_like_arf() -> None:
    report = complaint_of("microsoft_jmrp_arf.eml")
    assert view(report) == {
        "feedback_type": "abuse",
        "user_agent": "Hotmail FBL",
        "version": "0.1",
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:25 -0800"),
        "source_ip": "198.51.100.10",
        "original_mail_from": TAG0,
        "original_rcpt_to": (),
        "removal_recipients": (),
        "reported_domains": ("relay.example.com",),
        "reported_uris": (),
        "incidents": None,
        "original": {"content_type": "message/rfc822", "complete": True,
                     "message_id": "invoice-2023-11-4717@example.com", "return_path": TAG0,
                     "relay_message_ids": (), "relay_recipients": ()},
        "date": ts("Wed, 15 Nov 2023 03:20:10 +0000"),
        "subject": "complaint about message from 198.51.100.10",
        "report_from": "staff@hotmail.com",
        "heuristic": None,
        "notes": (),
        "truncated": False,
        "recipient_candidates": (("someone@hotmail.com", "X-HmXmrOriginalRecipient"),),
    }


def test_comcast_arf() -> None:
    report = complaint_of("comcast_arf.eml")
    assert view(report) == {
        "feedback_type": "abuse",
        "user_agent": "ReturnPathFBL/2.0",
        "version": "1",
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:25 +0000"),
        "source_ip": "198.51.100.10",
        "original_mail_from": TAG1,
        "original_rcpt_to": ("subscriber@comcast.net",),
        "removal_recipients": (),
        "reported_domains": ("example.com",),
        "reported_uris": (),
        "incidents": 1,
        "original": {"content_type": "text/rfc822-headers", "complete": False,
                     "message_id": "invoice-2023-11-4718@example.com", "return_path": TAG1,
                     "relay_message_ids": (), "relay_recipients": ()},
        "date": ts("Wed, 15 Nov 2023 12:00:05 +0000"),
        "subject": "Feedback Loop Report",
        "report_from": "Comcast Feedback Loop <feedbackloop@comcastfbl.senderscore.net>",
        "heuristic": None,
        "notes": (),
        "truncated": False,
        "recipient_candidates": (("subscriber@comcast.net", "Original-Rcpt-To"),),
    }


def test_arf_without_original_message_is_parsed_and_flagged() -> None:
    report = complaint_of("arf_no_original.eml")
    assert view(report) == {
        "feedback_type": "fraud",
        "user_agent": "ExampleISP-FBL/0.9",
        "version": "1",
        "arrival_date": ts("Tue, 14 Nov 2023 22:13:25 +0000"),
        "source_ip": "198.51.100.10",
        "original_mail_from": TAG0,
        "original_rcpt_to": (),
        "removal_recipients": (),
        "reported_domains": (),
        "reported_uris": (),
        "incidents": None,
        "original": None,
        "date": ts("Wed, 15 Nov 2023 10:00:00 +0000"),
        "subject": "Abuse report",
        "report_from": "fbl@isp.example.net",
        "heuristic": None,
        "notes": ("no original message attached",),
        "truncated": False,
        "recipient_candidates": (),
    }
    assert report.original_missing
    # Only the VERP envelope sender leads back to the message and recipient.
    assert recover_tag(report, RING, 1.7e9) == (MSG_A, 0)


def test_spamcop_report_is_a_heuristic_complaint() -> None:
    report = complaint_of("spamcop_report.eml")
    assert view(report) == {
        "feedback_type": "abuse",
        "user_agent": None,
        "version": None,
        "arrival_date": None,
        "source_ip": None,
        "original_mail_from": TAG0,  # the pasted original's Return-Path
        "original_rcpt_to": (),
        "removal_recipients": (),
        "reported_domains": (),
        "reported_uris": (),
        "incidents": None,
        "original": {"content_type": "text/plain", "complete": False,
                     "message_id": "invoice-2023-11-4719@example.com", "return_path": TAG0,
                     "relay_message_ids": (), "relay_recipients": ()},
        "date": ts("Wed, 15 Nov 2023 11:00:00 -0000"),
        "subject": "[SpamCop (https://www.example.com/unsubscribe) id:7234567890]Your "
                   "invoice for November",
        "report_from": "7234567890@reports.spamcop.net",
        "heuristic": "forwarded spam report",
        "notes": ("no feedback-report part; recognised by its subject or sender",),
        "truncated": False,
        "recipient_candidates": (),  # "To: x" is SpamCop's redaction
    }


@pytest.mark.parametrize(("value", "expected", "known"), [
    ("not-spam", "not-spam", True),
    ("Auth-Failure", "auth-failure", True),
    ("VIRUS ; extra", "virus", True),
    ("opt-out", "opt-out", False),  # kept as written: SES passes the value on
])
def test_feedback_types(value: str, expected: str, known: bool) -> None:
    raw = sample("arf_no_original.eml").replace(b"Feedback-Type: fraud",
                                                 f"Feedback-Type: {value}".encode())
    report = arf.parse(raw)
    assert (report.feedback_type, report.known_feedback_type) == (expected, known)
    assert ("is not a registered value" in " ".join(report.notes)) is not known


def test_missing_feedback_type_and_odd_values() -> None:
    raw = (b"Subject: r\r\nContent-Type: multipart/report; report-type=feedback-report; "
           b"boundary=b\r\n\r\n--b\r\nContent-Type: message/feedback-report\r\n\r\n"
           b"User-Agent: x\r\n\r\nSource-IP: not an ip\r\nIncidents: many\r\n"
           b"Original-Rcpt-To: <a@example.net>, b@example.net\r\n--b--\r\n")
    report = arf.parse(raw)
    assert report.feedback_type is None
    assert report.notes == ("Feedback-Type missing", "no original message attached")
    assert report.source_ip == "not an ip"  # kept as written
    assert report.incidents is None
    assert report.original_rcpt_to == ("a@example.net", "b@example.net")
    assert report.recipient_candidates == (("a@example.net", "Original-Rcpt-To"),
                                           ("b@example.net", "Original-Rcpt-To"))


def test_feedback_report_without_its_part_is_unparseable() -> None:
    raw = (b"Subject: r\r\nContent-Type: multipart/report; report-type=feedback-report; "
           b"boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nspam!\r\n--b--\r\n")
    assert analyse(raw) == Unparseable("multipart/report without a feedback-report part",
                                       subject="r")
    with pytest.raises(mime.NotAReport, match="no message/feedback-report part"):
        arf.parse(raw)


def test_forwarded_complaint_needs_the_reported_message() -> None:
    raw = (b"From: abuse-desk@isp.example\r\nSubject: Spam report\r\n\r\n"
           b"Please stop sending.\r\n")
    assert isinstance(analyse(raw), Unparseable)
