"""RFC 3464 DSNs (smtprelay.delivery.dsn_compose): built, then parsed back with Python's
email package and the strict header reader; and which messages get one."""

from __future__ import annotations

import email
import email.message
import email.policy
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.delivery.dsn_compose import FailedRecipient, build_dsn, should_send_dsn
from smtprelay.mail.headers import HeaderField, header_end, parse_header_section
from tests.support import examples
from tests.unit.provider_replies import GMAIL_NO_USER, GMAIL_OVER_QUOTA, OUTLOOK_FULL

# --- DSN ------------------------------------------------------------------------------

ORIGINAL = (
    b"Received: from client.example.com (client.example.com [198.51.100.7])\r\n"
    b"\tby relay.example.org with ESMTPSA id 0190abc\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net, carol@example.net\r\n"
    b"Subject: =?utf-8?q?Caf=C3=A9?=\r\n"
    b"Message-ID: <orig-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob and Carol.\r\n"
)
NOW = 1_700_000_000.0


def _failed(recipient: str = "bob@example.net", *,
            action: Literal["failed", "delayed"] = "failed", status: str = "5.1.1",
            diagnostic: str = "smtp; " + GMAIL_NO_USER.replace("\r\n", " "),
            remote_mta: str | None = "mx1.example.net [192.0.2.25]",
            original_recipient: str | None = None,
            will_retry_until: float | None = None) -> FailedRecipient:
    return FailedRecipient(recipient=recipient, action=action, status=status,
                           diagnostic=diagnostic, remote_mta=remote_mta,
                           last_attempt=NOW - 10, original_recipient=original_recipient,
                           will_retry_until=will_retry_until)


def _dsn(*recipients: FailedRecipient, original: bytes = ORIGINAL,
         sender: str = "alice@example.com", full: bool = False) -> bytes:
    return build_dsn(original=original, envelope_sender=sender,
                     reporting_mta="relay.example.org", message_id="0190abc-1234",
                     arrival=NOW - 3600, recipients=recipients or (_failed(),), now=NOW,
                     return_full_message=full)


def _parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def _status_groups(message: email.message.EmailMessage) -> list[email.message.Message]:
    part = list(message.iter_parts())[1]
    assert part.get_content_type() == "message/delivery-status"
    groups = part.get_payload()
    assert isinstance(groups, list)
    return [g for g in groups if isinstance(g, email.message.Message)]


def _raw_field(data: bytes, name: str) -> str:
    """A top-level field as written (the email package normalises address fields)."""
    fields = [f for f in parse_header_section(data) if f.key == name.lower()]
    assert len(fields) == 1
    return fields[0].value


def _assert_wire_clean(data: bytes) -> None:
    """CRLF only, no line over 998 octets, and a header section the strict reader takes."""
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    parse_header_section(data)


def test_dsn_structure() -> None:
    data = _dsn(_failed(original_recipient="Bob@Example.net"),
                _failed("carol@example.net", status="5.2.2",
                        diagnostic="smtp; " + GMAIL_OVER_QUOTA.replace("\r\n", " ")))
    _assert_wire_clean(data)
    assert data.isascii()
    message = _parse(data)
    assert message.is_multipart()
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@relay.example.org>"
    assert _raw_field(data, "To") == "<alice@example.com>"
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Message-ID"] == "<0190abc-1234.dsn@relay.example.org>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["Date"].datetime.timestamp() == NOW
    parts = list(message.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]

    text = parts[0].get_content()
    assert "bob@example.net" in text and "carol@example.net" in text
    assert "The email account that you tried to reach does not exist" in text
    assert "mx1.example.net [192.0.2.25]" in text

    per_message, bob, carol = _status_groups(message)
    assert per_message["Reporting-MTA"] == "dns; relay.example.org"
    assert per_message["X-SMTPRelay-Message-ID"] == "0190abc-1234"
    assert per_message["Arrival-Date"] == "Tue, 14 Nov 2023 21:13:20 GMT"
    assert bob["Final-Recipient"] == "rfc822; bob@example.net"
    assert bob["Original-Recipient"] == "rfc822; Bob@Example.net"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx1.example.net"
    assert bob["Diagnostic-Code"].startswith(
        "smtp; 550-5.1.1 The email account that you tried to reach does not exist.")
    assert bob["Last-Attempt-Date"] == "Tue, 14 Nov 2023 22:13:10 GMT"
    assert bob["Will-Retry-Until"] is None
    assert carol["Original-Recipient"] is None
    assert carol["Status"] == "5.2.2"

    # The third part is the original header section, byte for byte.
    headers_part = data.split(b"Content-Type: text/rfc822-headers\r\n")[1]
    headers_part = headers_part.split(b"\r\n\r\n", 1)[1]
    expected = ORIGINAL[:header_end(ORIGINAL) - 2]
    assert headers_part.startswith(expected + b"\r\n--=_dsn_")
    assert parts[2].get_payload(decode=True) == expected
    assert b"Hello Bob" not in data


def test_full_original_on_request() -> None:
    message = _parse(_dsn(full=True))
    third = list(message.iter_parts())[2]
    assert third.get_content_type() == "message/rfc822"
    payload = third.get_payload()
    assert isinstance(payload, list)
    inner = payload[0]
    assert isinstance(inner, email.message.EmailMessage)
    assert inner["Message-ID"] == "<orig-1@example.com>"
    assert inner.get_content() == "Hello Bob and Carol.\r\n"


def test_full_original_with_overlong_line_falls_back_to_headers() -> None:
    original = ORIGINAL + b"x" * 2000 + b"\r\n"
    data = _dsn(original=original, full=True)
    _assert_wire_clean(data)
    assert list(_parse(data).iter_parts())[2].get_content_type() == "text/rfc822-headers"


def test_eight_bit_original_headers_kept_exact() -> None:
    original = "Subject: Caf\u00e9 \u2615\r\nFrom: z\u00f6e@example.com\r\n\r\nbody\r\n"
    data = _dsn(original=original.encode())
    _assert_wire_clean(data)
    message = _parse(data)
    assert message["Content-Transfer-Encoding"] == "8bit"
    third = list(message.iter_parts())[2]
    assert third["Content-Transfer-Encoding"] == "8bit"
    assert third.get_payload(decode=True) == original.encode()[:-len("\r\nbody\r\n")]


def test_delayed_subject_and_fields() -> None:
    until = NOW + 4 * 86400
    delayed = _failed(action="delayed", status="4.2.2", diagnostic=OUTLOOK_FULL,
                      will_retry_until=until)
    message = _parse(_dsn(delayed))
    assert message["Subject"] == "Delayed Mail (still being retried)"
    _, group = _status_groups(message)
    assert group["Action"] == "delayed"
    assert group["Will-Retry-Until"] == "Sat, 18 Nov 2023 22:13:20 GMT"
    assert group["Diagnostic-Code"] == "smtp; " + OUTLOOK_FULL
    # One failed among the delayed: it is a failure report.
    mixed = _parse(_dsn(delayed, _failed("carol@example.net")))
    assert mixed["Subject"] == "Undelivered Mail Returned to Sender"


def test_own_reasons_get_our_diagnostic_type() -> None:
    _, group = _status_groups(_parse(_dsn(_failed(
        status="5.4.7", remote_mta=None,
        diagnostic="delivery time expired after 5 days; last error: connection refused"))))
    assert group["Diagnostic-Code"].startswith("X-SMTPRelay; delivery time expired")
    assert group["Remote-MTA"] is None
    _, group = _status_groups(_parse(_dsn(_failed(status="garbage"))))
    assert group["Status"] == "5.0.0"


def test_header_injection_neutralised() -> None:
    data = _dsn(
        _failed("bob@example.net\r\nBcc: victim@example.org",
                diagnostic="550 no\r\nX-Injected: yes\r\n\r\n--boundary\r\nContent-Type: x/y",
                remote_mta="mx\r\nX-Also: injected"),
        sender="alice@example.com\r\nBcc: victim@example.org",
    )
    _assert_wire_clean(data)
    message = _parse(data)
    assert message["Bcc"] is None
    assert _raw_field(data, "To") == "<alice@example.com Bcc: victim@example.org>"
    _, group = _status_groups(message)
    assert group["X-Injected"] is None and group["X-Also"] is None
    assert group["Final-Recipient"] == "rfc822; bob@example.net Bcc: victim@example.org"
    assert group["Diagnostic-Code"] == (
        "smtp; 550 no X-Injected: yes --boundary Content-Type: x/y")
    assert len(list(message.iter_parts())) == 3
    for line in data.split(b"\r\n"):
        assert not line.startswith((b"Bcc:", b"X-Injected:", b"X-Also:"))


def test_non_ascii_diagnostic_and_recipient() -> None:
    data = _dsn(_failed("jürgen@bücher.example",
                        diagnostic="550 5.1.1 Empfänger unbekannt — Postfach existiert nicht",
                        original_recipient="Jürgen+x=1@bücher.example"),
                sender="zoë@example.com")
    _assert_wire_clean(data)
    assert data.isascii()
    message = _parse(data)
    text = next(iter(message.iter_parts()))
    assert text.get_content_charset() == "utf-8"
    assert text["Content-Transfer-Encoding"] == "quoted-printable"
    assert "Empfänger unbekannt — Postfach" in text.get_content()
    assert "jürgen@bücher.example" in text.get_content()
    _, group = _status_groups(message)
    # RFC 6533 utf-8-addr-xtext; "+" and "=" escaped too.
    assert group["Final-Recipient"] == "utf-8; j\\x{FC}rgen@b\\x{FC}cher.example"
    assert group["Original-Recipient"] == (
        "utf-8; J\\x{FC}rgen\\x{2B}x\\x{3D}1@b\\x{FC}cher.example")
    assert group["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 Empf\\x{E4}nger unbekannt \\x{2014} Postfach existiert nicht")
    assert _raw_field(data, "To") == "<zo\\x{EB}@example.com>"


def test_long_diagnostic_folded() -> None:
    words = " ".join(f"word{i}" for i in range(1500))  # about 10,000 characters
    blob = "y" * 10_000  # and one without any white space
    for diagnostic in (f"550 5.1.1 {words}"[:10_000], f"550 5.1.1 {blob}"):
        data = _dsn(_failed(diagnostic=diagnostic))
        _assert_wire_clean(data)
        _, group = _status_groups(_parse(data))
        code = group["Diagnostic-Code"]
        if diagnostic.startswith("550 5.1.1 word"):
            # Folded at white space only: unfolding gives back the text exactly.
            assert code == "smtp; " + diagnostic
            lines = data.split(b"Diagnostic-Code: ")[1].split(b"\r\nLast-Attempt")[0]
            assert max(len(line) for line in lines.split(b"\r\n")) <= 78
        else:
            # A word longer than a line is split; only the fold spaces are added.
            assert code.replace(" ", "") == ("smtp; " + diagnostic).replace(" ", "")
        text = next(iter(_parse(data).iter_parts())).get_content()
        assert diagnostic in text.replace("\r\n", "\n").replace("\n", "")


def test_boundary_not_in_content() -> None:
    data = _dsn(full=True)
    boundary = _parse(data).get_boundary()
    assert boundary is not None
    assert data.count(b"--" + boundary.encode()) == 4  # three parts and the close


# --- should_send_dsn ------------------------------------------------------------------

def _headers(text: str) -> list[HeaderField]:
    return parse_header_section(text.replace("\n", "\r\n").encode() + b"\r\n")


PLAIN = "From: a@example.com\nSubject: hi\n"


@pytest.mark.parametrize(("sender", "headers", "expected"), [
    ("alice@example.com", PLAIN, True),
    ("<alice@example.com>", PLAIN, True),
    ("", PLAIN, False),
    ("<>", PLAIN, False),
    ("MAILER-DAEMON@relay.example.org", PLAIN, False),
    ("mailer-daemon", PLAIN, False),
    ("postmaster@example.com", PLAIN, True),
    ("alice@example.com", PLAIN + "Auto-Submitted: no\n", True),
    ("alice@example.com", PLAIN + "Auto-Submitted: No (a person wrote this)\n", True),
    ("alice@example.com", PLAIN + "Auto-Submitted: auto-replied\n", False),
    ("alice@example.com", PLAIN + "Auto-Submitted: auto-generated; owner-email=x@y\n",
     False),
    ("alice@example.com", PLAIN + "Auto-Submitted: auto-notified\n", False),
    ("alice@example.com", PLAIN + "Content-Type: multipart/report;\n"
     " report-type=delivery-status; boundary=\"x\"\n", False),
    ("alice@example.com", PLAIN + 'Content-Type: Multipart/Report; '
     'Report-Type="Delivery-Status"; boundary=x\n', False),
    # A feedback report or a read receipt is not a DSN.
    ("alice@example.com", PLAIN + "Content-Type: multipart/report; "
     "report-type=feedback-report; boundary=x\n", True),
    ("alice@example.com", PLAIN + "Content-Type: multipart/mixed; boundary=x\n", True),
])
def test_should_send_dsn(sender: str, headers: str, expected: bool) -> None:
    assert should_send_dsn(sender, _headers(headers)) is expected


def test_our_own_dsn_is_never_answered() -> None:
    data = _dsn()
    assert should_send_dsn("", parse_header_section(data)) is False
    # Even if something rewrote the null sender into an address.
    assert should_send_dsn("someone@example.com", parse_header_section(data)) is False


# --- property -------------------------------------------------------------------------

_any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=3000)
_recipient = st.builds(
    lambda action, recipient, diagnostic, remote, status: _failed(
        recipient, action=action, diagnostic=diagnostic, remote_mta=remote, status=status),
    st.sampled_from(["failed", "delayed"]),
    _any_text.filter(bool) | st.emails(),
    _any_text,
    st.none() | _any_text,
    st.sampled_from(["5.1.1", "4.2.2", "", "x\r\ny"]) | _any_text,
)


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipients=st.lists(_recipient, min_size=1, max_size=4), sender=_any_text)
def test_dsn_always_well_formed(recipients: list[FailedRecipient], sender: str) -> None:
    data = _dsn(*recipients, sender=sender)
    _assert_wire_clean(data)
    assert data.isascii()
    names = [f.key for f in parse_header_section(data)]
    assert names.count("content-type") == 1 and "bcc" not in names
    message = _parse(data)
    assert message.get_content_type() == "multipart/report"
    groups = _status_groups(message)
    assert len(groups) == 1 + len(recipients)
    assert [g["Action"] for g in groups[1:]] == [r.action for r in recipients]
