"""Content SES refuses (smtprelay.policy.content): a once-only header field given twice,
MIME that cannot be walked, an attachment of a blocked type."""

from __future__ import annotations

import base64
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.mail import replies as R
from smtprelay.mail.headers import parse_header_section
from smtprelay.policy import content
from smtprelay.policy.content import refusal
from smtprelay.transform.hygiene import normalise
from tests.support import examples
from tests.unit.messages import INFO, TEXT_PART, attachment, check, mixed, msg

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


def test_duplicate_fields_are_reported_before_attachments() -> None:
    data = mixed(attachment('attachment; filename="a.exe"'))
    data = b"Subject: again\r\n" + data
    assert check(data) == R.duplicate_header("Subject")


# --- properties and speed --------------------------------------------------------------

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
