"""The entry point (smtprelay.feedback.classify.analyse): what each sample is, that no
input makes it raise or run long (random bytes, mutated samples, hostile structures),
tracing a report back to our message, and the SES event records made from a report."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.bounces import verp
from smtprelay.events.model import (
    Bounce,
    BouncedRecipient,
    BounceSubType,
    BounceType,
    Complaint,
    DelayedRecipient,
    DelayType,
    DeliveryDelay,
)
from smtprelay.events.ses import detail_object
from smtprelay.feedback import (
    AutoReply,
    ComplaintReport,
    DeliveryReport,
    Unparseable,
    analyse,
    bounce_details,
    complaint_detail,
    delay_details,
    find_verp_tags,
    recover_tag,
    relay_message_ids,
)
from smtprelay.transform.tokens import Key, KeyRing
from tests.support import examples
from tests.unit.feedback.kit import DATA, sample

SAMPLES = sorted(path.name for path in DATA.glob("*.eml"))
RING = KeyRing([Key(1, b"feedback-samples-secret-0123456789", 1.69e9)])
NOW = 1.7e9
TAG0 = "b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy"
MSG_A = "018bcfe56800-5f2a9c3e71d04b86"
MSG_B = "018bd3a4c100-0a1b2c3d4e5f6071"
# Parsing a few MB in one go should take well under a second; the bound is generous
# for a loaded machine, and still catches anything quadratic.
SLOW = 5.0


KINDS = {
    "aol_arf.eml": ComplaintReport,
    "arf_no_original.eml": ComplaintReport,
    "autoreply_x_autoreply.eml": AutoReply,
    "comcast_arf.eml": ComplaintReport,
    "dsn_no_delivery_status.eml": DeliveryReport,
    "exchange_legacy_text.eml": DeliveryReport,
    "exchange_online_ndr.eml": DeliveryReport,
    "exim_dsn.eml": DeliveryReport,
    "exim_legacy.eml": DeliveryReport,
    "exim_legacy_delay.eml": DeliveryReport,
    "gmail_bounce.eml": DeliveryReport,
    "messy_gateway_dsn.eml": DeliveryReport,
    "microsoft_jmrp_arf.eml": ComplaintReport,
    "ooo_abwesenheitsnotiz.eml": AutoReply,
    "ooo_outlook.eml": AutoReply,
    "postfix_bounce.eml": DeliveryReport,
    "postfix_delay.eml": DeliveryReport,
    "qmail_bounce.eml": DeliveryReport,
    "sendmail_bounce.eml": DeliveryReport,
    "spamcop_report.eml": ComplaintReport,
    "yahoo_arf.eml": ComplaintReport,
    "yahoo_failure_notice.eml": DeliveryReport,
}


def test_every_sample_is_covered() -> None:
    assert sorted(KINDS) == SAMPLES


@pytest.mark.parametrize("name", SAMPLES)
def test_each_sample_is_what_it_imitates(name: str) -> None:
    result = analyse(sample(name))
    assert type(result) is KINDS[name]
    assert result.kind == {DeliveryReport: "delivery-report", ComplaintReport: "complaint-report",
                           AutoReply: "auto-reply"}[KINDS[name]]


@pytest.mark.parametrize("name", SAMPLES)
def test_line_endings_do_not_matter(name: str) -> None:
    raw = sample(name)
    lf = raw.replace(b"\r\n", b"\n")
    crlf = lf.replace(b"\n", b"\r\n")
    assert analyse(lf) == analyse(crlf)


# --- never raises, bounded work -------------------------------------------------------

def _assert_an_answer(raw: bytes) -> None:
    result = analyse(raw)
    assert isinstance(result, DeliveryReport | ComplaintReport | AutoReply | Unparseable)
    if isinstance(result, Unparseable):
        assert result.reason and result.reason != "internal error while parsing", result


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(raw: bytes) -> None:
    _assert_an_answer(raw)


_mime_words = st.sampled_from([
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b":", b";", b" ", b"\t", b"=?utf-8?q?=C3?=",
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n",
    b"Content-Type: message/delivery-status\r\n", b"Content-Type: message/rfc822\r\n",
    b"Content-Type: message/feedback-report\r\n", b"--b\r\n", b"--b--\r\n",
    b"Final-Recipient: rfc822; a@b.c\r\n", b"Action: failed\r\n", b"Status: 5.1.1\r\n",
    b"Diagnostic-Code: smtp; 550 5.1.1 no\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Feedback-Type: abuse\r\n", b"\xff\xfe", b"\x00", b"<a@b.c>:\r\n",
])


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mime_words, max_size=60))
def test_mime_shaped_junk_never_raises(words: list[bytes]) -> None:
    _assert_an_answer(b"".join(words))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_samples_never_raise(name: str, data: st.DataObject) -> None:
    raw = bytearray(sample(name))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw)))
        operation = data.draw(st.sampled_from(["delete", "insert", "flip", "duplicate"]))
        if operation == "delete":
            del raw[at:at + data.draw(st.integers(1, 200))]
        elif operation == "insert":
            raw[at:at] = data.draw(st.one_of(st.binary(max_size=40), _mime_words))
        elif operation == "flip" and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            raw[at:at] = raw[at:at + data.draw(st.integers(1, 400))]
    _assert_an_answer(bytes(raw))


def _timed(raw: bytes) -> None:
    started = time.process_time()
    _assert_an_answer(raw)
    assert time.process_time() - started < SLOW


@pytest.mark.parametrize("raw", [
    # email.message._parseparam is quadratic in such a value (28 s for this one
    # without the guard in smtprelay.feedback.mime).
    b'Content-Type: multipart/report; boundary="x' + b";" * 200_000 + b'"\r\n\r\nx\r\n',
    b'Content-Disposition: attachment; filename="' + b";" * 200_000 + b'"\r\n\r\nx\r\n',
    # Deep nesting: the stdlib parser recurses per level.
    b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
             for i in range(5000)),
    # One enormous folded header field.
    b"Subject: x\r\n" + b" y\r\n" * 500_000 + b"\r\nbody\r\n",
    # Millions of tiny lines, a single huge line, pure binary.
    b"From: MAILER-DAEMON@x\r\nSubject: Undelivered\r\n\r\n" + b"<a@b.c>:\r\n" * 400_000,
    b"Subject: x\r\n\r\n" + b"a" * 5_000_000,
    bytes(range(256)) * 20_000,
    # A text bounce naming very many addresses.
    b"From: MAILER-DAEMON@x\r\nSubject: Undelivered Mail\r\n\r\n"
    + b"".join(b"user%d@example.net 550 5.1.1 unknown\r\n" % i for i in range(50_000)),
], ids=["quadratic-content-type", "quadratic-disposition", "deep-nesting", "folded-header",
        "many-lines", "huge-line", "binary", "text-bounce-many-addresses"])
def test_hostile_structures_finish_quickly(raw: bytes) -> None:
    _timed(raw)


def test_deep_nesting_is_reported() -> None:
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                   for i in range(5000))
    assert analyse(raw) == Unparseable("MIME parts nested too deeply")


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty message"),
    (b"\r\n \r\n", "empty message"),
    (b"From: a friend <friend@example.net>\r\nSubject: lunch?\r\n\r\nTomorrow at 12?\r\n",
     "not a delivery report, complaint or auto-reply"),
    (b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\n\r\nIt failed.\r\n",
     "looks like a bounce, but names no recipient that could be read"),
])
def test_unparseable_inputs_say_why(raw: bytes, reason: str) -> None:
    result = analyse(raw)
    assert isinstance(result, Unparseable)
    assert result.reason == reason


def test_an_internal_error_becomes_unparseable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise KeyError("bug")
    monkeypatch.setattr("smtprelay.feedback.classify.arf.read", broken)
    result = analyse(sample("postfix_bounce.eml"))
    assert result == Unparseable("internal error while parsing", detail="KeyError('bug')")


# --- back to our message --------------------------------------------------------------

@pytest.mark.parametrize(("name", "tag", "message_ids"), [
    ("postfix_bounce.eml", (MSG_A, 0), (MSG_A,)),
    ("postfix_delay.eml", (MSG_A, 1), (MSG_A,)),
    ("exim_dsn.eml", (MSG_A, 0), (MSG_A,)),
    ("exim_legacy.eml", (MSG_B, None), (MSG_B,)),
    ("qmail_bounce.eml", (MSG_B, None), (MSG_B,)),
    ("sendmail_bounce.eml", (MSG_B, 0), (MSG_B,)),
    ("exchange_online_ndr.eml", (MSG_A, 0), ()),
    ("yahoo_arf.eml", (MSG_A, 0), (MSG_A,)),
    ("aol_arf.eml", (MSG_A, 1), ()),
    ("comcast_arf.eml", (MSG_A, 1), ()),
    ("microsoft_jmrp_arf.eml", (MSG_A, 0), ()),
    ("spamcop_report.eml", (MSG_A, 0), ()),
    ("exchange_legacy_text.eml", None, ()),
    ("ooo_outlook.eml", None, ()),
])
def test_tracing_a_report_to_our_message(name: str, tag: tuple[str, int | None] | None,
                                         message_ids: tuple[str, ...]) -> None:
    feedback = analyse(sample(name))
    assert recover_tag(feedback, RING, NOW) == tag
    assert relay_message_ids(feedback) == message_ids


def test_forged_verp_tag_is_found_but_never_verifies() -> None:
    # One character of the tag changed everywhere in the report.
    forged_tag = TAG0[:-1] + "a"
    raw = sample("comcast_arf.eml").replace(
        b"b-aeayxt7fnaaf6ku4hzy5as4gaipid6aulayopgx4nm", forged_tag.encode())
    feedback = analyse(raw)
    assert isinstance(feedback, ComplaintReport)
    assert find_verp_tags(feedback) == (forged_tag,)
    assert recover_tag(feedback, RING, NOW) is None
    with pytest.raises(verp.InvalidVerpTag) as caught:
        verp.decode(forged_tag, RING, NOW)
    assert caught.value.reason in ("tampered", "malformed")


def test_a_forged_tag_does_not_hide_a_real_one() -> None:
    # Original-Mail-From forged, the original's Return-Path genuine: the genuine wins.
    raw = sample("yahoo_arf.eml").replace(
        b"Original-Mail-From: <" + TAG0.encode(),
        b"Original-Mail-From: <b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxq")
    assert recover_tag(analyse(raw), RING, NOW) == (MSG_A, 0)


# --- SES event records ----------------------------------------------------------------

def test_bounce_details_from_a_report() -> None:
    report = analyse(sample("messy_gateway_dsn.eml"))
    assert isinstance(report, DeliveryReport)
    ids = iter(["f1", "f2"])
    bounces = bounce_details(report, report.recipients, new_id=lambda _: next(ids))
    assert bounces == (
        Bounce(bounce_type=BounceType.PERMANENT, bounce_sub_type=BounceSubType.NO_EMAIL,
               bounced_recipients=(BouncedRecipient(
                   "a.mueller@example.net", "failed", "5.1.1",
                   "smtp; 550 5.1.1 <a.mueller@example.net> Empf\u00e4nger unbekannt / user "
                   "unknown"),),
               timestamp=report.date or 0, feedback_id="f1",
               reporting_mta="dns; gw.example.net"),
        Bounce(bounce_type=BounceType.TRANSIENT, bounce_sub_type=BounceSubType.GENERAL,
               bounced_recipients=(BouncedRecipient(
                   "d.fischer@example.net", "failed", "5.7.1",
                   "smtp; 554 5.7.1 Service unavailable; Client host [198.51.100.10] "
                   "blocked using zen.spamhaus.org"),),
               timestamp=report.date or 0, feedback_id="f2",
               reporting_mta="dns; gw.example.net"),
    )
    # And SES's JSON for it, as consumers will see it.
    assert detail_object(bounces[0]) == {
        "bounceType": "Permanent", "bounceSubType": "NoEmail",
        "bouncedRecipients": [{
            "emailAddress": "a.mueller@example.net", "action": "failed", "status": "5.1.1",
            "diagnosticCode": "smtp; 550 5.1.1 <a.mueller@example.net> Empf\u00e4nger "
                              "unbekannt / user unknown"}],
        "timestamp": "2023-11-14T22:13:30.000Z", "feedbackId": "f1",
        "reportingMTA": "dns; gw.example.net",
    }


def test_delay_details_from_a_report() -> None:
    report = analyse(sample("postfix_delay.eml"))
    assert isinstance(report, DeliveryReport)
    [status] = report.recipients
    assert delay_details(report, report.recipients) == (DeliveryDelay(
        delay_type=DelayType.TRANSIENT_COMMUNICATION_FAILURE,
        delayed_recipients=(DelayedRecipient(
            "second@example.org", "4.4.1",
            "X-Postfix; connect to mx.example.org[192.0.2.80]:25: Connection timed out"),),
        expiration_time=status.will_retry_until or 0, reporting_mta="dns; mail.example.net",
        timestamp=report.date or 0),)


def test_delay_without_will_retry_until_assumes_five_days() -> None:
    report = analyse(sample("exim_legacy_delay.eml"))
    assert isinstance(report, DeliveryReport)
    [delay] = delay_details(report, report.recipients)
    assert report.date is not None
    assert delay.expiration_time == report.date + 5 * 86400
    assert delay.remote_mta_ip == "192.0.2.40"
    assert delay.delay_type == DelayType.IP_FAILURE


def test_complaint_detail_from_a_report() -> None:
    report = analyse(sample("comcast_arf.eml"))
    assert isinstance(report, ComplaintReport)
    complaint = complaint_detail(report, ["subscriber@comcast.net"], new_id=lambda _: "c1")
    assert complaint == Complaint(
        complained_recipients=("subscriber@comcast.net",), timestamp=report.date or 0,
        feedback_id="c1", user_agent="ReturnPathFBL/2.0", complaint_feedback_type="abuse",
        arrival_date=report.arrival_date)
    assert detail_object(complaint) == {
        "complainedRecipients": [{"emailAddress": "subscriber@comcast.net"}],
        "timestamp": "2023-11-15T12:00:05.000Z", "feedbackId": "c1",
        "complaintSubType": None, "userAgent": "ReturnPathFBL/2.0",
        "complaintFeedbackType": "abuse", "arrivalDate": "2023-11-14T22:13:25.000Z",
    }


def test_report_without_date_uses_the_receipt_time() -> None:
    raw = sample("arf_no_original.eml").replace(b"Date: Wed, 15 Nov 2023 10:00:00 +0000\n",
                                                b"")
    report = analyse(raw)
    assert isinstance(report, ComplaintReport) and report.date is None
    assert complaint_detail(report, ["a@example.net"], received_at=123.0,
                            new_id=lambda _: "c").timestamp == 123.0


def test_an_encoded_word_with_a_garbled_charset_name_stays_as_written() -> None:
    # Found by hypothesis (test_mutated_samples_never_raise): a stray byte in the
    # charset name raised email.errors.CharsetError, and analyse gave up with
    # "internal error while parsing".
    raw = bytearray((DATA / "autoreply_x_autoreply.eml").read_bytes())
    del raw[0:1]
    raw[129] = 0x80
    assert not isinstance(analyse(bytes(raw)), Unparseable)
