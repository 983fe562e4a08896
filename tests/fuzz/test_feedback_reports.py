"""Fuzz target: the readers of what comes back, DSN and ARF (smtprelay/feedback/
dsn_parse.py, arf.py, textbounce.py, autoreply.py, mime.py; classify.analyse on top).

Round trips: a DSN our own composer (delivery.dsn_compose) wrote reads back with its
recipients, actions, statuses and our message id; an ARF report written from
generated fields reads back with those fields, in CRLF or LF. Then those reports and
the sample reports of tests/data/feedback, cut and spliced at random, go to each
reader directly (analyse catches every exception, so going through it alone would
hide a crash): dsn_parse.parse and arf.parse raise nothing but NotAReport, the text
and auto-reply readers nothing at all, and analyse never answers "internal error".
"""

from __future__ import annotations

import email.utils
from pathlib import Path
from typing import Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.delivery.dsn_compose import FailedRecipient, build_dsn
from smtprelay.events.model import BounceSubType, BounceType, DelayType
from smtprelay.feedback import (
    DeliveryReport,
    Unparseable,
    analyse,
    arf,
    autoreply,
    dsn_parse,
    mime,
    textbounce,
)
from tests.fuzz import corpus

SAMPLES = sorted((Path(__file__).parents[1] / "data" / "feedback").glob("*.eml"))
MESSAGE_ID = "018bd0e1a2b3-0123456789abcdef"
NOW = 1_700_000_000.0

_ADDRESS = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,11}@[a-z0-9-]{1,10}\.(test|example)",
                         fullmatch=True)
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)


_ACTIONS: list[Literal["failed", "delayed"]] = ["failed", "delayed"]


@st.composite
def _failed(draw: st.DrawFn) -> FailedRecipient:
    action = draw(st.sampled_from(_ACTIONS))
    first = "5" if action == "failed" else "4"
    status = draw(st.from_regex(rf"{first}\.[0-7]\.[0-9]{{1,2}}", fullmatch=True))
    diagnostic = draw(st.one_of(
        st.builds(lambda text: f"smtp; {first}50 {status} {text}", _TEXT),
        st.builds(lambda text: f"{first}21 {text}", _TEXT), _TEXT))
    return FailedRecipient(
        recipient=draw(_ADDRESS), action=action, status=status, diagnostic=diagnostic,
        remote_mta=draw(st.none() | st.sampled_from(["mx1.example.net [192.0.2.25]",
                                                      "mx.example.net", "[2001:db8::1]"])),
        last_attempt=NOW - 10, original_recipient=draw(st.none() | _ADDRESS),
        will_retry_until=NOW + 86400 if action == "delayed" else None)


_ORIGINAL = st.builds(
    lambda subject, extra: (f"From: app@example.com\r\nTo: someone@example.net\r\n"
                            f"Subject: {subject}\r\nMessage-ID: <1@example.com>\r\n").encode()
    + extra + b"\r\nbody\r\n",
    st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=30),
    st.sampled_from([b"", corpus.DEEP_TO, b"X-A: \xff\xfe\r\n",
                     corpus.DEEP_ADDRESS_FIELDS["Return-Path"]]))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_failed(), min_size=1, max_size=4), _ORIGINAL, st.booleans())
def test_our_own_dsns_read_back(recipients: list[FailedRecipient], original: bytes,
                                full: bool) -> None:
    raw = build_dsn(original=original, envelope_sender="app@example.com",
                    reporting_mta="relay.example.org", message_id=MESSAGE_ID,
                    arrival=NOW - 3600, recipients=recipients, now=NOW,
                    return_full_message=full)
    report = dsn_parse.parse(raw)
    assert [(r.final_recipient, r.action, r.status) for r in report.recipients] == [
        (r.recipient, r.action, r.status) for r in recipients]
    assert report.relay_message_id == MESSAGE_ID
    assert report.original is not None and report.original.get("message-id") == "<1@example.com>"
    for status in report.recipients:
        if status.action == "failed":
            assert status.bounce_type in set(BounceType)
            assert status.bounce_subtype in set(BounceSubType)
        else:
            assert status.delay_type in set(DelayType)
    read = analyse(raw)
    assert isinstance(read, DeliveryReport) and read.heuristic is None
    assert len(read.recipients) == len(recipients)


_FEEDBACK_TYPE = st.sampled_from(["abuse", "fraud", "not-spam", "virus", "other", "Abuse"])
# Words with one space between them: a reader of report fields collapses white space.
_USER_AGENT = st.lists(st.from_regex(r"[A-Za-z0-9.;/()-]{1,12}", fullmatch=True), min_size=1,
                       max_size=4).map(" ".join)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_FEEDBACK_TYPE, _USER_AGENT, st.lists(_ADDRESS, max_size=2), _ADDRESS,
       st.integers(0, 2_000_000_000), st.sampled_from(["192.0.2.1", "2001:db8::2"]),
       st.sampled_from(["message/rfc822", "text/rfc822-headers"]), _ORIGINAL,
       st.sampled_from(["\r\n", "\n"]))
def test_arf_reports_read_back(feedback_type: str, user_agent: str, rcpt_to: list[str],
                               mail_from: str, arrival: int, source_ip: str, kind: str,
                               original: bytes, nl: str) -> None:
    fields = [f"Feedback-Type: {feedback_type}", f"User-Agent: {user_agent}", "Version: 1",
              f"Original-Mail-From: <{mail_from}>",
              *(f"Original-Rcpt-To: <{a}>" for a in rcpt_to),
              f"Arrival-Date: {email.utils.formatdate(arrival)}", f"Source-IP: {source_ip}"]
    if kind == "text/rfc822-headers":
        original = original[:original.index(b"\r\n\r\n") + 4]
    text = nl.join([
        "From: feedback@isp.example", "To: fbl@relay.test", "Subject: complaint",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=feedback-report; boundary="=_arf"', "",
        "--=_arf", "Content-Type: text/plain", "", "This is an abuse report.",
        "--=_arf", "Content-Type: message/feedback-report", "", *fields, "",
        "--=_arf", f"Content-Type: {kind}", "", ""])
    raw = text.encode() + original.replace(b"\r\n", nl.encode()) + f"{nl}--=_arf--{nl}".encode()
    report = arf.parse(raw)
    assert report.feedback_type == feedback_type.lower()
    assert report.user_agent == user_agent
    assert report.original_mail_from == mail_from
    assert list(report.original_rcpt_to) == rcpt_to
    assert report.arrival_date == arrival
    assert report.source_ip == source_ip
    assert report.original is not None
    assert report.original.get("message-id") == "<1@example.com>"


_SPLICE = st.sampled_from([
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b":", b";", b" ", b"=?utf-8?q?=C3?=",
    b"Content-Type: message/delivery-status\r\n\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/feedback-report\r\n\r\n", b"Final-Recipient: rfc822; a@b.c\r\n",
    b"Action: failed\r\n", b"Status: 5.1.1\r\n", b"Diagnostic-Code: smtp; 550 5.1.1 no\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Feedback-Type: abuse\r\n", b"\xff\xfe",
    b"\x00", b"<a@b.c>:\r\n", b"Original-Rcpt-To: ", b"Arrival-Date: ", b"(" * 50,
    corpus.DEEP_TO, corpus.DEEP_ADDRESS_FIELDS["From"],
])


def _read_every_way(raw: bytes) -> None:
    for parse in (dsn_parse.parse, arf.parse):
        try:
            parse(raw)
        except mime.NotAReport:
            pass
    try:
        message = mime.parse(raw)
    except mime.MimeError:
        message = None
    if message is not None:
        textbounce.read(message)
        autoreply.read(message)
        arf.read_forwarded(message)
        report = dsn_parse.read(message)
        if report is not None:
            assert len(report.recipients) <= dsn_parse.MAX_RECIPIENTS
    result = analyse(raw)
    if isinstance(result, Unparseable):
        assert result.reason != "internal error while parsing", result.detail


@st.composite
def _report(draw: st.DrawFn) -> bytes:
    """A sample report, or one written by our composer."""
    if draw(st.booleans()):
        return draw(st.sampled_from(SAMPLES)).read_bytes()
    return build_dsn(original=draw(_ORIGINAL), envelope_sender="app@example.com",
                     reporting_mta="relay.example.org", message_id=MESSAGE_ID,
                     arrival=NOW, recipients=draw(st.lists(_failed(), min_size=1, max_size=3)),
                     now=NOW)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_report(), st.data())
def test_cut_and_spliced_reports_read_without_surprises(report: bytes,
                                                        data: st.DataObject) -> None:
    raw = bytearray(report)
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        at = data.draw(st.integers(0, len(raw)), label="at")
        edit = data.draw(st.sampled_from(["delete", "insert", "flip", "duplicate"]),
                         label="edit")
        if edit == "delete":
            del raw[at:at + data.draw(st.integers(1, 200), label="length")]
        elif edit == "insert":
            raw[at:at] = data.draw(st.one_of(_SPLICE, st.binary(max_size=40)), label="bytes")
        elif edit == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255), label="octet")
        else:
            raw[at:at] = raw[at:at + data.draw(st.integers(1, 400), label="length")]
    _read_every_way(bytes(raw))


def test_replay_deep_comments_in_reports() -> None:
    """The deep address fields of the corpus, in a report's own header and in its
    returned original, through every reader."""
    for name, field in corpus.DEEP_ADDRESS_FIELDS.items():
        dsn = build_dsn(original=field + b"Subject: x\r\n\r\nbody\r\n",
                        envelope_sender="app@example.com", reporting_mta="relay.example.org",
                        message_id=MESSAGE_ID, arrival=NOW, now=NOW,
                        recipients=[FailedRecipient("a@b.example", "failed", "5.1.1",
                                                    "smtp; 550 no", None, NOW)])
        _read_every_way(dsn)
        _read_every_way(field + dsn)
        assert name
