"""Bounce classification (the rule table against real provider replies) and RFC 3464
DSNs (built, then parsed back with Python's email package and the strict header reader).

The provider replies are written as the providers send them (Gmail's multi-line
"550-5.1.1 ..." continuation style, Microsoft's single-line replies, Yahoo's "dd"
codes), so the table is tested against what the delivery side actually receives.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from typing import Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.bounces.classification import (
    DEFAULT_RULES,
    SES_BOUNCE_TYPES,
    Rule,
    classify,
    rules_from_config,
)
from smtprelay.delivery.dsn_compose import FailedRecipient, build_dsn, should_send_dsn
from smtprelay.mail.headers import HeaderField, header_end, parse_header_section
from smtprelay.spool.store import suppressed_diagnostic
from tests.support import examples

# --- classification -------------------------------------------------------------------

GMAIL_NO_USER = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    "550-5.1.1 unnecessary spaces. Learn more at\r\n"
    "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si123 - gsmtp"
)
GMAIL_OVER_QUOTA = (
    "552-5.2.2 The email account that you tried to reach is over quota. Please direct\r\n"
    "552-5.2.2 the recipient to\r\n"
    "552 5.2.2  https://support.google.com/mail/?p=OverQuotaPerm a1si123 - gsmtp"
)
GMAIL_UNSOLICITED = (
    "550-5.7.1 [192.0.2.1      12] Our system has detected that this message is\r\n"
    "550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\r\n"
    "550-5.7.1 this message has been blocked. Please visit\r\n"
    "550 5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError a1si - gsmtp"
)
GMAIL_RATE = (
    "421-4.7.0 [192.0.2.1      15] Our system has detected an unusual rate of\r\n"
    "421-4.7.0 unsolicited mail originating from your IP address. To protect our\r\n"
    "421-4.7.0 users from spam, mail sent from your IP address has been temporarily\r\n"
    "421 4.7.0 rate limited. https://support.google.com/mail/?p=UnsolicitedRateLimitError"
)
GMAIL_ATTACHMENT = (
    "552-5.7.0 This message was blocked because its content presents a potential\r\n"
    "552-5.7.0 security issue. Please visit\r\n"
    "552-5.7.0  https://support.google.com/mail/?p=BlockedMessage to review our\r\n"
    "552 5.7.0 message content and attachment content guidelines. a1si - gsmtp"
)
GMAIL_UNAUTHENTICATED = (
    "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\r\n"
    "550 5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM."
)
OUTLOOK_UNAVAILABLE = "550 5.5.0 Requested action not taken: mailbox unavailable"
OUTLOOK_BLOCK_LIST = (
    "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact "
    "your Internet service provider since part of their network is on our block list "
    "(S3150). You can also refer your provider to http://mail.live.com/mail/"
    "troubleshooting.aspx#errors. [AM0PR01MB1234.eurprd01.prod.exchangelabs.com]"
)
OUTLOOK_FULL = "452 4.2.2 The recipient's mailbox is full and can't accept messages now."
OUTLOOK_NOT_FOUND = (
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
)
OUTLOOK_BANNED_IP = "550 5.7.606 Access denied, banned sending IP [192.0.2.1]."
YAHOO_NO_ACCOUNT = (
    "554 delivery error: dd This user doesn't have a yahoo.com account "
    "(someone@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com"
)
YAHOO_DEFERRED = (
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected "
    "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
)


def _code(reply: str) -> int:
    return int(reply[:3])


@pytest.mark.parametrize(("reply", "expected"), [
    (GMAIL_NO_USER, ("Permanent", "NoEmail")),
    # SES: mailbox full is Transient even from a final 5xx (the address is good).
    (GMAIL_OVER_QUOTA, ("Transient", "MailboxFull")),
    (GMAIL_UNSOLICITED, ("Transient", "ContentRejected")),
    (GMAIL_RATE, ("Transient", "General")),
    (GMAIL_ATTACHMENT, ("Transient", "AttachmentRejected")),
    (GMAIL_UNAUTHENTICATED, ("Transient", "General")),
    (OUTLOOK_UNAVAILABLE, ("Permanent", "NoEmail")),
    # Aimed at our IP, not the address: not a reason to suppress the recipient.
    (OUTLOOK_BLOCK_LIST, ("Transient", "General")),
    (OUTLOOK_FULL, ("Transient", "MailboxFull")),
    (OUTLOOK_NOT_FOUND, ("Permanent", "NoEmail")),
    (OUTLOOK_BANNED_IP, ("Transient", "General")),
    (YAHOO_NO_ACCOUNT, ("Permanent", "NoEmail")),
    (YAHOO_DEFERRED, ("Transient", "General")),
    ("550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual "
     "mailbox table", ("Permanent", "NoEmail")),
    ("550 Recipient address rejected: no such user here", ("Permanent", "NoEmail")),
    ("550 user unknown", ("Permanent", "NoEmail")),
    ("550 No such user (x@example.com)", ("Permanent", "NoEmail")),
    ("550 Requested action not taken: mailbox unavailable", ("Permanent", "NoEmail")),
    # Postfix policy rejection of a recipient: 5.7.1, not "the address doesn't exist".
    ("554 5.7.1 <x@example.com>: Recipient address rejected: Access denied",
     ("Permanent", "General")),
    ("554 5.7.1 <x@example.com>: Relay access denied", ("Permanent", "General")),
    ("552 5.3.4 Message size exceeds fixed limit", ("Transient", "MessageTooLarge")),
    ("552 Message size exceeds maximum permitted", ("Transient", "MessageTooLarge")),
    ("552 Requested mail action aborted: exceeded storage allocation",
     ("Transient", "MailboxFull")),
    ("452 4.3.4 Message too big for system", ("Transient", "MessageTooLarge")),
    ("450 4.2.2 Mailbox full, try again later", ("Transient", "MailboxFull")),
    ("554 5.7.1 Message rejected: spam content detected", ("Transient", "ContentRejected")),
    ("451 4.7.1 Message rejected: suspected spam content", ("Transient", "ContentRejected")),
    ("554 5.6.1 Prohibited file type .exe in attachment", ("Transient", "AttachmentRejected")),
    ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
     "zen.spamhaus.org", ("Transient", "General")),
    ("550 5.2.1 The email account that you tried to reach is disabled",
     ("Permanent", "General")),
    ("451 4.3.0 Temporary local problem", ("Transient", "General")),
    # Yahoo's and qmail's "554: delivery error: dd ..." (a colon after the code).
    ("554: delivery error: dd This user doesn't have a yahoo.com account "
     "(x@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com", ("Permanent", "NoEmail")),
    # A user-unknown wording in a temporary reply stays temporary.
    ("450 4.1.1 <x@example.com>: Recipient address rejected: User unknown",
     ("Transient", "General")),
])
def test_provider_replies(reply: str, expected: tuple[str, str]) -> None:
    assert classify(_code(reply), "", reply) == expected


@pytest.mark.parametrize(("code", "status", "diagnostic", "expected"), [
    # The guide's own example: status 5.0.0, "smtp; 550 user unknown" -> Permanent.
    (None, "5.0.0", "smtp; 550 user unknown", ("Permanent", "NoEmail")),
    (None, "5.0.0", "smtp; 550 go away", ("Permanent", "General")),
    # No status and "554:" (Yahoo, qmail): the code is still read from the text.
    (None, "", "smtp; 554: delivery error: dd Sorry your message to x@yahoo.com cannot "
     "be delivered. This mailbox is disabled (554.30)", ("Permanent", "General")),
    (None, "5.1.2", "X-Postfix; Host or domain name not found. Name service error "
     "for name=nowhere.invalid type=MX: Host not found", ("Permanent", "NoEmail")),
    (None, "5.4.4", "X-Postfix; Host or domain name not found", ("Permanent", "NoEmail")),
    (None, "5.1.10", "null MX (RFC 7505): the domain accepts no mail",
     ("Permanent", "NoEmail")),
    (550, "5.1.1", suppressed_diagnostic("BOUNCE"),
     ("Permanent", "OnAccountSuppressionList")),
    (None, "5.1.1", "Amazon SES has suppressed sending to this address because it has "
     "a recent history of bouncing as an invalid address.", ("Permanent", "Suppressed")),
    (None, "4.4.7", "delivery time expired after 5 days; last error: connection refused",
     ("Transient", "General")),
    (None, "", "", ("Undetermined", "Undetermined")),
    # A generic Status above a specific reply (Exim's DSNs): the reply's code decides.
    (None, "5.0.0", "smtp; 552 5.2.2 Mailbox quota usage exceeded",
     ("Transient", "MailboxFull")),
    (None, "5.0.0", "smtp; 550 5.7.26 unauthenticated", ("Transient", "General")),
    # ... but not one of another class.
    (None, "5.0.0", "smtp; 450 4.1.1 user unknown", ("Permanent", "NoEmail")),
    (None, "", "the remote end said something odd", ("Undetermined", "Undetermined")),
    # The code alone gives the class; the enhanced code is found in the text.
    (550, "", "", ("Permanent", "General")),
    (None, "", "smtp; 552-5.2.2 mailbox full", ("Transient", "MailboxFull")),
    # An IPv4 address must not pass for an enhanced status code.
    (None, "", "rejected by [5.1.1.7]", ("Undetermined", "Undetermined")),
])
def test_ses_types(code: int | None, status: str, diagnostic: str,
                   expected: tuple[str, str]) -> None:
    assert classify(code, status, diagnostic) == expected


def test_defaults_only_produce_ses_types() -> None:
    assert {(r.bounce_type, r.bounce_subtype) for r in DEFAULT_RULES} <= SES_BOUNCE_TYPES
    assert DEFAULT_RULES[-1] == Rule("Undetermined", "Undetermined")


def test_operator_rules_come_first() -> None:
    custom = rules_from_config([
        {"bounce_type": "Permanent", "bounce_subtype": "NoEmail",
         "text": r"mailbox (has been )?closed"},
        {"bounce_type": "Transient", "bounce_subtype": "General",
         "code": r"^550$", "status": r"^5\.1\.1$", "text": "greylisted"},
    ])
    rules = custom + DEFAULT_RULES
    assert classify(550, "5.2.1", "550 5.2.1 Mailbox has been closed", rules) == \
        ("Permanent", "NoEmail")
    assert classify(550, "5.2.1", "550 5.2.1 Mailbox has been closed") == \
        ("Permanent", "General")
    assert classify(550, "5.1.1", "550 5.1.1 greylisted, odd server", rules) == \
        ("Transient", "General")
    # All of a rule's patterns must match: another code falls through to the defaults.
    assert classify(551, "5.1.1", "551 5.1.1 greylisted", rules) == ("Permanent", "NoEmail")
    # Text rules are case-insensitive.
    assert classify(550, "", "MAILBOX CLOSED", rules) == ("Permanent", "NoEmail")


@pytest.mark.parametrize(("items", "message"), [
    ([{"bounce_type": "Permanent", "bounce_subtype": "NoEmail", "text": "ok"},
      {"bounce_type": "Permanent", "bounce_subtype": "NoEmail", "status": "5.1.(1"}],
     "bounce rule 1: bad regex"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "General", "text": "[unclosed"}],
     "bounce rule 0: bad regex"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "MessageTooLarge", "code": "552"}],
     "bounce rule 0: Permanent/MessageTooLarge is not an SES bounce type"),
    ([{"bounce_type": "Permanant", "bounce_subtype": "General", "code": "5"}],
     "bounce rule 0: Permanant/General"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "General"}],
     "bounce rule 0: needs at least one"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "General", "regex": "x"}],
     "bounce rule 0: unknown keys ['regex']"),
])
def test_bad_operator_rules(items: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        rules_from_config(items)


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
