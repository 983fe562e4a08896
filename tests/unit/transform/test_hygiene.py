"""Message hygiene: SES's single-occurrence fields, blocked attachments, Bcc, trace fields."""

from __future__ import annotations

import base64
import dataclasses
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.mail import replies as R
from smtprelay.mail.headers import header_end, parse_header_section
from smtprelay.policy import attachments, content
from smtprelay.policy.content import refusal
from smtprelay.transform import hygiene
from smtprelay.transform.hygiene import ReceivedInfo, normalise
from tests.support import examples

INFO = ReceivedInfo(
    hostname="relay.test", client_helo="client.example", client_ip="192.0.2.7",
    tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384", authenticated=True,
    message_id="018bd0e1a2b3-0123456789abcdef", recipient="someone@example.net",
    received_at=1700000000.0,
)
STAMP = "Tue, 14 Nov 2023 22:13:20 +0000"


def msg(head: str, body: str = "Hello.\n") -> bytes:
    return (head.replace("\n", "\r\n") + "\r\n" + body.replace("\n", "\r\n")).encode()


def check(data: bytes) -> R.Reply | None:
    return refusal(data, parse_header_section(data))


def spool(data: bytes, info: ReceivedInfo = INFO) -> bytes:
    return normalise(data, parse_header_section(data), info=info)


def mixed(*parts: str, boundary: str = "b1", close: bool = True) -> bytes:
    """A multipart/mixed message with the given parts (each: header lines, blank, body)."""
    body = "preamble\n" + "".join(f"--{boundary}\n{part}\n" for part in parts)
    if close:
        body += f"--{boundary}--\n"
    return msg("From: a@example.com\nTo: b@example.net\nSubject: s\nMIME-Version: 1.0\n"
               f'Content-Type: multipart/mixed; boundary="{boundary}"\n', body)


def attachment(disposition: str, ctype: str = "application/octet-stream") -> str:
    return (f"Content-Type: {ctype}\nContent-Transfer-Encoding: base64\n"
            f"Content-Disposition: {disposition}\n\nAAAA")


TEXT_PART = "Content-Type: text/plain\n\nhello"


# --- header fields that may appear only once -------------------------------------------

@pytest.mark.parametrize(("head", "name"), [
    ("From: a@example.com\nFrom: b@example.com\n", "From"),
    ("From: a@example.com\nSubject: one\nTo: x@example.net\nSUBJECT: two\n", "SUBJECT"),
    ("From: a@example.com\nMessage-ID: <1@x>\nmessage-id: <2@x>\n", "message-id"),
    ("From: a@example.com\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nDate : x\n", "Date"),
    ("From: a@example.com\nacceptLanguage: en\nACCEPTLANGUAGE: de\n", "ACCEPTLANGUAGE"),
    ("From: a@example.com\nDKIM-Signature: a\nDKIM-Signature: b\n", "DKIM-Signature"),
    ("From: a@example.com\nList-Unsubscribe: <x>\nList-Unsubscribe: <y>\n",
     "List-Unsubscribe"),
    ("From: a@example.com\nReply-To: a@x\nSubject: s\nReply-To: b@x\nSubject: t\n",
     "Reply-To"),  # the first duplicate in the message, not the first in the list
])
def test_fields_on_the_ses_list_may_appear_only_once(head: str, name: str) -> None:
    assert check(msg(head)) == R.duplicate_header(name)


@pytest.mark.parametrize("head", [
    "From: a@example.com\nTo: x@example.net\nTo: y@example.net\n",
    "From: a@example.com\nCc: x@example.net\ncc: y@example.net\n",
    "Received: from a\nReceived: from b\nFrom: a@example.com\n",
    "From: a@example.com\nX-Custom: 1\nX-Custom: 2\nResent-From: a@x\nResent-From: b@x\n",
    "From: a@example.com\nBcc: x@example.net\nBcc: y@example.net\n",
])
def test_fields_not_on_the_ses_list_may_repeat(head: str) -> None:
    assert check(msg(head)) is None


def test_single_field_list_is_the_one_in_the_ses_guide() -> None:
    assert len(content.SINGLE_FIELDS) == 59
    assert {"from", "subject", "message-id", "date", "acceptlanguage", "vbr-info",
            "content-type", "mime-version"} <= content.SINGLE_FIELDS
    assert not {"to", "cc", "bcc", "received"} & content.SINGLE_FIELDS


# --- attachments -----------------------------------------------------------------------

def test_exe_deep_in_nested_multiparts_is_refused() -> None:
    data = msg(
        "From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/mixed;\n"
        ' boundary="outer"\n',
        "--outer\nContent-Type: multipart/alternative; boundary=alt\n\n"
        "--alt\nContent-Type: text/plain\n\nhi\n"
        "--alt\nContent-Type: multipart/related; boundary=\"rel\"\n\n"
        "--rel\nContent-Type: text/html\n\n<p>hi</p>\n"
        "--rel\nContent-Type: application/octet-stream\nContent-Disposition: attachment;"
        " filename=invoice.exe\n\nTVqQAAMAAAAEAAAA\n"
        "--rel--\n--alt--\n--outer--\n")
    reply = check(data)
    assert reply == R.blocked_attachment("invoice.exe", ".exe")
    assert reply is not None and reply.code == 554 and reply.text.startswith("5.6.1 ")


@pytest.mark.parametrize(("disposition", "shown", "extension"), [
    ("attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.exe", "résumé.exe", ".exe"),
    ("attachment; filename*0*=UTF-8''inv; filename*1*=oice.%65xe", "invoice.exe", ".exe"),
    ("attachment;\n filename*0*=utf-8'en'a%20b;\n filename*1=\".pdf\";\n filename*2*=.%62at",
     "a b.pdf.bat", ".bat"),
    ("attachment; filename*1=\"xe\"; filename*0=\"x.e\"", "x.exe", ".exe"),  # out of order
    ("attachment; filename*=iso-8859-1''%E9t%E9.scr", "été.scr", ".scr"),
    ("attachment; filename*=x-unknown-charset''a.vbs", "a.vbs", ".vbs"),
    ("attachment; filename*=rot13''n.rkr.exe", "n.rkr.exe", ".exe"),  # not a text codec
    ("attachment; filename=\"=?UTF-8?B?eC5leGU=?=\"", "x.exe", ".exe"),
    ("attachment; filename=\"=?utf-8?q?Rechnung_M=C3=A4rz=2Eexe?=\"", "Rechnung März.exe",
     ".exe"),
    ("attachment; filename=\"=?UTF-8?B?cmVwb3J0?= =?UTF-8?B?LmpzCg==?=\"", "report.js\n",
     ".js"),
    ("attachment; filename=\"invoice.pdf.exe\"", "invoice.pdf.exe", ".exe"),
    ("attachment; filename=\"a.exe.\"", "a.exe.", ".exe"),
    ("attachment; filename=\"a.exe  \"", "a.exe  ", ".exe"),
    ("attachment; filename=\"a.exe. . \"", "a.exe. . ", ".exe"),
    ("attachment; filename=\"A.ExE\"", "A.ExE", ".exe"),
    ("attachment; filename*=UTF-8''a.exe%00.pdf", "a.exe\x00.pdf", ".exe"),
    ("attachment; filename=\"a.lnk\u200b\"", "a.lnk\u200b", ".lnk"),
    ("attachment; filename=\"a.pdf\".exe", "a.pdf.exe", ".exe"),  # junk after the quotes
    ("attachment; filename=my setup.exe", "my setup.exe", ".exe"),  # unquoted, a space
    ("attachment; filename=a.exe (comment)", "a.exe", ".exe"),
    ("attachment; filename=\"a\\\".exe\"", "a\".exe", ".exe"),  # quoted-pair
    ("attachment; filename=\"C:\\\\Temp\\\\a.exe\"", "C:\\Temp\\a.exe", ".exe"),
    ("attachment; FILENAME=\"a.exe\"", "a.exe", ".exe"),
    ("inline; filename=\"a.pdf\"; filename=\"b.exe\"", "b.exe", ".exe"),  # all values count
])
def test_blocked_names_however_encoded(disposition: str, shown: str, extension: str) -> None:
    assert check(mixed(TEXT_PART, attachment(disposition))) == \
        R.blocked_attachment(shown, extension)


@pytest.mark.parametrize(("ctype", "shown"), [
    ("application/octet-stream; name=setup.msi", "setup.msi"),
    ("application/octet-stream; name*=UTF-8''%E2%82%AC.ps1", "€.ps1"),
    ('application/octet-stream; name="=?UTF-8?B?eC5leGU=?="', "x.exe"),
    ('application/x-msdownload;\n\tname="=?utf-8?Q?x=2Ecmd?="', "x.cmd"),
    ("text/plain; charset=us-ascii; filename=\"a.bat\"", "a.bat"),  # misplaced, still read
])
def test_content_type_name_is_checked_too(ctype: str, shown: str) -> None:
    part = f"Content-Type: {ctype}\n\nAAAA"
    extension = shown[shown.rfind("."):]
    assert check(mixed(TEXT_PART, part)) == R.blocked_attachment(shown, extension)


@pytest.mark.parametrize("disposition", [
    'attachment; filename="report.pdf"',
    'attachment; filename="archive.zip"',  # SES lets archives through
    'attachment; filename="invoice.exe.pdf"',
    'attachment; filename="exe"',
    'attachment; filename="notes.txt"; size=1234',
    "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf",
    'attachment; filename="=?UTF-8?B?cmVwb3J0LnBkZg==?="',
    "attachment",
    "inline",
    'attachment; filename="a.executable"',
    'attachment; filename="a.js.map"',
])
def test_allowed_attachments(disposition: str) -> None:
    assert check(mixed(TEXT_PART, attachment(disposition))) is None


def test_every_extension_on_the_ses_list_is_blocked() -> None:
    assert len(attachments.BLOCKED_EXTENSIONS) == 90
    for extension in attachments.BLOCKED_EXTENSIONS:
        data = mixed(attachment(f'attachment; filename="file.{extension.upper()}"'))
        assert check(data) == R.blocked_attachment(f"file.{extension.upper()}",
                                                   f".{extension}")
    for allowed in ("pdf", "zip", "docx", "png", "txt", "html", "ics", "csv", "7z"):
        assert attachments.blocked_extension(f"file.{allowed}") is None


def test_first_blocked_attachment_in_document_order_is_named() -> None:
    data = mixed(TEXT_PART, attachment('attachment; filename="one.bat"'),
                 attachment('attachment; filename="two.exe"'))
    assert check(data) == R.blocked_attachment("one.bat", ".bat")


def test_attachment_inside_a_forwarded_message_is_refused() -> None:
    inner = ("From: x@example.org\nSubject: fwd\nMIME-Version: 1.0\n"
             "Content-Type: multipart/mixed; boundary=inner\n\n"
             "--inner\nContent-Type: text/plain\n\nhi\n"
             "--inner\nContent-Type: application/octet-stream; name=\"tool.scr\"\n\nAAAA\n"
             "--inner--")
    data = mixed(TEXT_PART, f"Content-Type: message/rfc822\n\n{inner}")
    assert check(data) == R.blocked_attachment("tool.scr", ".scr")
    # A forwarded message that is itself a single attachment.
    single = ("From: x@example.org\nContent-Type: application/octet-stream\n"
              "Content-Disposition: attachment; filename=run.cmd\n\nAAAA")
    data = mixed(f"Content-Type: message/rfc822\n\n{single}")
    assert check(data) == R.blocked_attachment("run.cmd", ".cmd")


def test_a_whole_message_that_is_the_attachment() -> None:
    data = msg("From: a@example.com\nContent-Type: application/octet-stream\n"
               "Content-Disposition: attachment; filename=x.hta\n", "AAAA\n")
    assert check(data) == R.blocked_attachment("x.hta", ".hta")


def test_names_in_text_are_not_attachments() -> None:
    assert check(msg("From: a@example.com\nContent-Type: text/plain\n",
                     "Content-Disposition: attachment; filename=x.exe\n")) is None
    assert check(mixed("Content-Type: text/plain\n\nfilename=setup.exe\nname=\"a.bat\"")) \
        is None


def test_multipart_without_boundary_is_bad_mime() -> None:
    data = msg("From: a@example.com\nContent-Type: multipart/mixed\n", "--x\n\nhi\n--x--\n")
    assert check(data) is R.BAD_MIME
    data = msg("From: a@example.com\nContent-Type: multipart/mixed; boundary=\"\"\n", "hi\n")
    assert check(data) is R.BAD_MIME
    nested = mixed(TEXT_PART, "Content-Type: multipart/alternative; charset=x\n\nhi")
    assert check(nested) is R.BAD_MIME


def test_messy_but_walkable_mime_is_accepted() -> None:
    # No close delimiter, no preamble, a part without header fields, an epilogue,
    # white space after a delimiter, a boundary with "=" and no quotes, upper case.
    assert check(mixed(TEXT_PART, attachment('attachment; filename="a.pdf"'),
                       close=False)) is None
    data = msg("From: a@example.com\nContent-Type: Multipart/Mixed; boundary=----=_Part_1\n",
               "------=_Part_1  \n\njust text\n------=_Part_1\nContent-Type: text/plain\n\nx\n"
               "------=_Part_1--\nepilogue\n")
    assert check(data) is None
    # A multipart with no delimiter at all is shown as its preamble: nothing to check.
    assert check(msg("From: a@example.com\nContent-Type: multipart/mixed; boundary=q\n",
                     "no parts here\n")) is None
    # A multipart without a body.
    assert check(b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=q\r\n") \
        is None


def test_blocked_attachment_found_despite_messy_structure() -> None:
    # Without the close delimiter, the last part still counts.
    assert check(mixed(TEXT_PART, attachment('attachment; filename="a.exe"'),
                       close=False)) == R.blocked_attachment("a.exe", ".exe")
    # A garbled header line does not hide the Content-Disposition after it.
    part = ("Content-Type: application/octet-stream\nthis is not a header\n"
            "Content-Disposition: attachment; filename=a.exe\n\nAAAA")
    assert check(mixed(part)) == R.blocked_attachment("a.exe", ".exe")
    # Nor does a missing empty line between a nested multipart's fields and its parts.
    part = ("Content-Type: multipart/alternative; boundary=in\n--in\n"
            "Content-Type: application/octet-stream; name=a.exe\n\nAAAA\n--in--")
    assert check(mixed(part)) == R.blocked_attachment("a.exe", ".exe")
    # A part after the close delimiter, and one behind a delimiter with trailing
    # characters: lenient clients show both, so both are checked.
    data = mixed(TEXT_PART) + b"--b1\r\nContent-Type: a/b; name=late.exe\r\n\r\nAAAA\r\n"
    assert check(data) == R.blocked_attachment("late.exe", ".exe")
    data = mixed(TEXT_PART + "\n--b1junk\nContent-Type: a/b; name=hidden.exe\n\nAAAA")
    assert check(data) == R.blocked_attachment("hidden.exe", ".exe")


def test_unwalkable_depth_and_part_count_are_bad_mime() -> None:
    def nested(levels: int) -> bytes:
        body = "Content-Type: text/plain\n\nhi"
        for level in range(levels):
            body = (f"Content-Type: multipart/mixed; boundary=l{level}\n\n"
                    f"--l{level}\n{body}\n--l{level}--")
        return msg("From: a@example.com\n" + body.split("\n\n", 1)[0] + "\n",
                   body.split("\n\n", 1)[1])

    assert check(nested(attachments.MAX_DEPTH)) is None
    assert check(nested(attachments.MAX_DEPTH + 1)) is R.BAD_MIME
    assert check(mixed(*[TEXT_PART] * (attachments.MAX_PARTS - 1))) is None
    assert check(mixed(*[TEXT_PART] * attachments.MAX_PARTS)) is R.BAD_MIME


def test_long_file_names_are_shortened_in_the_reply() -> None:
    name = "x" * 1000 + ".exe"
    reply = check(mixed(attachment(f'attachment; filename="{name}"')))
    assert reply is not None and len(reply.render()) < 512
    assert reply == R.blocked_attachment("..." + name[-100:], ".exe")


def test_raw_8bit_and_invalid_utf8_names() -> None:
    data = mixed(attachment('attachment; filename="\u00e9t\u00e9.exe"'))
    assert check(data) == R.blocked_attachment("été.exe", ".exe")
    data = mixed(attachment('attachment; filename="x.pdf"')).replace(b"x.pdf", b"\xff.exe")
    reply = check(data)
    assert reply is not None and reply.text.startswith("5.6.1 ")
    assert b"\\udcff.exe" in reply.render()  # shown escaped, the reply stays valid UTF-8


def test_hostile_names_are_not_slow() -> None:
    started = time.perf_counter()
    assert attachments.blocked_extension(" " * 100_000 + "x") is None
    assert check(mixed(attachment('attachment; filename="' + " " * 15_000 + 'x"'))) is None
    assert check(mixed(attachment("attachment; filename=\"" + "\\x" * 7_000))) is None
    part = "Content-Type: a/b; name=\"" + "=?utf-8?q?a?= " * 1000 + "\"\n\nx"
    assert check(mixed(part)) is None
    assert time.perf_counter() - started < 0.1


def test_duplicate_fields_are_reported_before_attachments() -> None:
    data = mixed(attachment('attachment; filename="a.exe"'))
    data = b"Subject: again\r\n" + data
    assert check(data) == R.duplicate_header("Subject")


# --- normalise -------------------------------------------------------------------------

def split(out: bytes) -> tuple[bytes, list[bytes], bytes]:
    """The Received field, the other header fields (raw) and the body of a normalised message."""
    fields = parse_header_section(out)
    assert fields[0].key == "received"
    received = out[fields[0].start:fields[0].end]
    return received, [out[f.start:f.end] for f in fields[1:]], out[header_end(out):]


def test_received_message_id_and_date_added_around_untouched_fields() -> None:
    data = msg("From: a@example.com\nTo: b@example.net\nSubject: hi\n", "Body\n\nmore\n")
    out = spool(data)
    assert out == (
        b"Received: from client.example ([192.0.2.7])\r\n"
        b"\tby relay.test (smtprelay) with ESMTPSA id 018bd0e1a2b3-0123456789abcdef\r\n"
        b"\tfor <someone@example.net>\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384);\r\n"
        b"\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n"
        b"Message-ID: <018bd0e1a2b3-0123456789abcdef@relay.test>\r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        b"\r\nBody\r\n\r\nmore\r\n")


def test_message_id_and_date_kept_when_present() -> None:
    data = msg("From: a@example.com\nmessage-id: <mine@example.com>\n"
               "DATE: Mon, 1 Jan 2024 00:00:00 +0000\n")
    _, fields, body = split(spool(data))
    assert fields == [b"From: a@example.com\r\n", b"message-id: <mine@example.com>\r\n",
                      b"DATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n"]
    assert body == b"Hello.\r\n"
    _, fields, _ = split(spool(msg("From: a@example.com\nMessage-ID: <m@x>\n")))
    assert fields == [b"From: a@example.com\r\n", b"Message-ID: <m@x>\r\n",
                      f"Date: {STAMP}\r\n".encode()]
    _, fields, _ = split(spool(msg("From: a@example.com\nDate: x\n")))
    assert fields[-1] == b"Message-ID: <018bd0e1a2b3-0123456789abcdef@relay.test>\r\n"


@pytest.mark.parametrize("bcc", [
    "Bcc: hidden@example.net\n",
    "BCC: a@example.net,\n b@example.net,\n\tc@example.net\n",
    "bcc:\n",
    "Bcc : obs@example.net\n",
    "Resent-Bcc: r@example.net\n",
])
def test_bcc_is_removed_and_nothing_else_changes(bcc: str) -> None:
    head = "From: a@example.com\nTo: b@example.net\n{}Subject: s\n{}Message-ID: <m@x>\nDate: d\n"
    data = msg(head.format(bcc, bcc), "Bcc: this is the body\n")
    out = spool(data)
    _, fields, body = split(out)
    assert fields == [b"From: a@example.com\r\n", b"To: b@example.net\r\n", b"Subject: s\r\n",
                      b"Message-ID: <m@x>\r\n", b"Date: d\r\n"]
    assert body == b"Bcc: this is the body\r\n"
    assert out.endswith(msg("From: a@example.com\nTo: b@example.net\nSubject: s\n"
                            "Message-ID: <m@x>\nDate: d\n", "Bcc: this is the body\n"))


def test_ses_control_headers_are_removed() -> None:
    data = msg("X-SES-CONFIGURATION-SET: transactional\nFrom: a@example.com\n"
               "x-ses-message-tags: campaign=spring,\n\tkind=promo\n"
               "X-Configuration-Set: other\nX-SES-SOURCE-ARN: arn:aws:ses:x\n"
               "X-SESAME: kept\nX-SES: kept too\nX-Mailer: kept\n"
               "X-SES-LIST-MANAGEMENT-OPTIONS: list; topic=t\nMessage-ID: <m@x>\nDate: d\n")
    _, fields, _ = split(spool(data))
    assert fields == [b"From: a@example.com\r\n", b"X-SESAME: kept\r\n", b"X-SES: kept too\r\n",
                      b"X-Mailer: kept\r\n", b"Message-ID: <m@x>\r\n", b"Date: d\r\n"]


def test_message_without_body() -> None:
    info = INFO
    out = spool(b"From: a@example.com\r\nBcc: x@example.net\r\n", info)
    _, fields, body = split(out)
    assert fields == [b"From: a@example.com\r\n",
                      b"Message-ID: <018bd0e1a2b3-0123456789abcdef@relay.test>\r\n",
                      f"Date: {STAMP}\r\n".encode()]
    assert body == b"" and b"\r\n\r\n" not in out
    # The last line without its CRLF: it gets one before the new fields.
    out = spool(b"From: a@example.com\r\nSubject: s", info)
    assert out.endswith(b"From: a@example.com\r\nSubject: s\r\nMessage-ID: "
                        b"<018bd0e1a2b3-0123456789abcdef@relay.test>\r\nDate: " +
                        STAMP.encode() + b"\r\n")
    # ... but not when that last line was a Bcc that went away.
    out = spool(b"From: a@example.com\r\nBcc: x", info)
    assert out.endswith(b"From: a@example.com\r\nMessage-ID: "
                        b"<018bd0e1a2b3-0123456789abcdef@relay.test>\r\nDate: " +
                        STAMP.encode() + b"\r\n")
    # Nothing to add and nothing to end.
    out = spool(b"From: a@example.com\r\nMessage-ID: <m@x>\r\nDate: d", info)
    assert out.endswith(b"\r\nFrom: a@example.com\r\nMessage-ID: <m@x>\r\nDate: d")


def test_message_without_header_fields() -> None:
    out = spool(b"\r\nonly a body\r\n")
    _, fields, body = split(out)
    assert [f.split(b":")[0] for f in fields] == [b"Message-ID", b"Date"]
    assert body == b"only a body\r\n"


@pytest.mark.parametrize(("tls", "auth", "word"), [
    (True, True, "ESMTPSA"), (True, False, "ESMTPS"), (False, True, "ESMTPA"),
    (False, False, "ESMTP"),
])
def test_received_protocol_follows_rfc_3848(tls: bool, auth: bool, word: str) -> None:
    info = ReceivedInfo(
        hostname="relay.test", client_helo="h", client_ip="192.0.2.7",
        tls_version="TLSv1.2" if tls else None,
        tls_cipher="ECDHE-RSA-AES128-GCM-SHA256" if tls else None,
        authenticated=auth, message_id="m1", recipient=None, received_at=0.0)
    received = hygiene.received_field(info).decode()
    assert f" with {word} id m1" in received
    assert ("(using TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256);" in received) is tls
    assert " for " not in received  # several recipients: none is named
    assert received.endswith(";\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n")


@pytest.mark.parametrize(("ip", "literal"), [
    ("192.0.2.7", "[192.0.2.7]"),
    ("2001:db8::1", "[IPv6:2001:db8::1]"),
    ("::ffff:192.0.2.9", "[192.0.2.9]"),
    ("fe80::1%eth0", "[IPv6:fe80::1]"),
    ("not an ip", "unknown"),
])
def test_received_address_literal(ip: str, literal: str) -> None:
    info = dataclasses.replace(INFO, client_ip=ip)
    assert hygiene.received_field(info).startswith(
        f"Received: from client.example ({literal})\r\n".encode())


@pytest.mark.parametrize(("helo", "shown"), [
    ("evil.example (spoofed.example [10.0.0.1])", "evil.examplespoofed.example[10.0.0.1]"),
    ("(x)", "x"),
    ("bücher.example", "bcher.example"),
    ("a\r\nBcc: x@example.net", "aBcc:xexample.net"),
    ("x; Mon, 1 Jan 2001 00:00:00 +0000", "xMon1Jan200100:00:000000"),
    ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
    ("()", "unknown"),
    ("", "unknown"),
])
def test_helo_cannot_inject_into_the_received_field(helo: str, shown: str) -> None:
    info = dataclasses.replace(INFO, client_helo=helo)
    received = hygiene.received_field(info)
    assert received.startswith(f"Received: from {shown} ([192.0.2.7])".encode())
    assert received.count(b"(") == received.count(b")") == 3
    assert received.count(b";") == 1 and received.count(b"\r\n") == 5
    assert received.isascii()
    (field,) = parse_header_section(received)
    assert field.key == "received"


def test_received_is_folded_to_78_characters() -> None:
    info = ReceivedInfo(
        hostname="mail-relay-frontend-" + "a" * 30 + ".example.com",
        client_helo="client-with-a-rather-long-name." + "b" * 30 + ".example.net",
        client_ip="2001:db8:1234:5678:9abc:def0:1234:5678", tls_version="TLSv1.3",
        tls_cipher="TLS_CHACHA20_POLY1305_SHA256", authenticated=True,
        message_id="018bd0e1a2b3-0123456789abcdef",
        recipient='"a very long quoted local part with spaces"@' + "c" * 40 + ".example",
        received_at=1700000000.0)
    received = hygiene.received_field(info)
    lines = received.split(b"\r\n")
    assert lines[-1] == b""
    assert all(0 < len(line) <= 78 for line in lines[:-1]), lines
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:-1])
    (field,) = parse_header_section(received)
    # Folding only inserted CRLFs: unfolded, the quoted local part is intact.
    assert '<"a very long quoted local part with spaces"@' in field.value
    assert received.replace(b"\r\n ", b" ").count(b"\r\n") == 5


def test_recipient_control_characters_are_dropped() -> None:
    info = dataclasses.replace(INFO, recipient="a\r\nBcc: b@example.net")
    received = hygiene.received_field(info)
    assert b"for <aBcc: b@example.net>" in received
    assert [f.key for f in parse_header_section(received)] == ["received"]


# --- properties and speed --------------------------------------------------------------

_names = st.one_of(
    st.sampled_from(["From", "To", "Bcc", "BCC", "bcc", "Resent-Bcc", "Subject", "Date",
                     "Message-ID", "X-SES-CONFIGURATION-SET", "x-ses-message-tags",
                     "X-Configuration-Set", "Received", "X-Bcc", "Bcc-Info"]),
    st.from_regex(r"[!-9;-~]{1,20}", fullmatch=True),
)
_values = st.lists(st.text(st.characters(blacklist_characters="\r\n",
                                         blacklist_categories=("Cs",)), max_size=40),
                   min_size=1, max_size=3)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(_names, st.sampled_from([":", " :", "\t:"]), _values),
                           max_size=12))
    head = b"".join(
        (name + colon + ("\r\n ".join(values))).encode() + b"\r\n"
        for name, colon, values in fields)
    ending = draw(st.sampled_from(["body", "none", "no-crlf"]))
    if ending == "body":
        return head + b"\r\n" + draw(st.binary(max_size=200))
    if ending == "no-crlf" and head:
        return head[:-2]
    return head


_infos = st.builds(
    ReceivedInfo, hostname=st.just("relay.test"), client_helo=st.text(max_size=300),
    client_ip=st.sampled_from(["192.0.2.1", "2001:db8::5", "x"]),
    tls_version=st.sampled_from([None, "TLSv1.3"]), tls_cipher=st.sampled_from([None, "C"]),
    authenticated=st.booleans(), message_id=st.just("m"),
    # The SMTP layer caps addresses at 254 octets and HELO at 255 characters.
    recipient=st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)),
                                           max_size=200)),
    received_at=st.floats(0, 4e9),
)


@settings(max_examples=examples(500), deadline=None)
@given(_messages(), _infos)
def test_normalise_property(data: bytes, info: ReceivedInfo) -> None:
    fields = parse_header_section(data)
    out = normalise(data, fields, info=info)
    after = parse_header_section(out)  # raises if a line is neither field nor continuation
    assert after[0].key == "received"
    assert out[header_end(out):] == data[header_end(data):]
    assert not any(f.key in ("bcc", "resent-bcc") or f.key.startswith("x-ses-")
                   or f.key == "x-configuration-set" for f in after)
    assert sum(f.key == "message-id" for f in after) == max(
        1, sum(f.key == "message-id" for f in fields))
    assert sum(f.key == "date" for f in after) == max(1, sum(f.key == "date" for f in fields))
    kept = [data[f.start:f.end].rstrip(b"\r\n") for f in fields
            if f.key not in ("bcc", "resent-bcc", "x-configuration-set")
            and not f.key.startswith("x-ses-")]
    assert [out[f.start:f.end].rstrip(b"\r\n") for f in after[1:1 + len(kept)]] == kept
    assert all(len(line) <= 998 for line in out[:after[0].end].split(b"\r\n"))


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"b", b"=_x", b"a b"]))
def test_refusal_never_crashes_on_junk_bodies(body: bytes, boundary: bytes) -> None:
    data = (b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"" + boundary +
            b"\"\r\n\r\n" + body.replace(b"\n", b"\r\n--" + boundary + b"\r\n"))
    reply = refusal(data, parse_header_section(data))
    assert reply is None or reply.code == 554


def test_fifty_kilobytes_with_three_attachments_is_fast() -> None:
    def part(name: str) -> str:
        content = base64.encodebytes(os.urandom(12000)).decode()
        return attachment(f'attachment;\n filename="{name}"',
                          f'application/octet-stream; name="{name}"').replace("AAAA", content)

    data = msg("From: a@example.com\nTo: b@example.net\nBcc: c@example.net\nSubject: s\n"
               "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n",
               "--b1\nContent-Type: multipart/alternative; boundary=b2\n\n--b2\n"
               "Content-Type: text/plain\n\nhi\n--b2\nContent-Type: text/html\n\n<p>hi</p>\n"
               "--b2--\n" + "".join(f"--b1\n{part(n)}\n" for n in ("a.pdf", "b.zip", "c.docx"))
               + "--b1--\n")
    assert 45_000 < len(data) < 55_000
    fields = parse_header_section(data)
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        assert refusal(data, fields) is None
        normalise(data, fields, info=INFO)
    per_message = (time.perf_counter() - started) / rounds
    print(f"refusal + normalise: {per_message * 1e6:.0f} µs per {len(data)}-byte message")
    assert per_message < 0.001, f"{per_message * 1e6:.0f} µs per message"
