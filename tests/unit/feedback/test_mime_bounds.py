"""The feedback MIME layer reads a big report without copying it whole (issue 16):
part_bytes with a limit copies only the encoded octets that can hold it, and
find_original decodes only the returned original's header section."""

from __future__ import annotations

import base64
import quopri

import pytest

from smtprelay.feedback import mime


def _report(original: bytes, encoding: str = "7bit",
            kind: str = "message/rfc822") -> bytes:
    return (b"From: MAILER-DAEMON@mx.test\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nNo.\r\n"
            b"--b\r\nContent-Type: " + kind.encode() + b"\r\n"
            b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n"
            + original + b"\r\n--b--\r\n")


BIG_BODY = b"z" * 70 + b"\r\n"


@pytest.mark.parametrize("body,complete", [(BIG_BODY * 2000, True), (b"\r\n \r\n", False),
                                           (b"", False)])
def test_the_original_s_header_section_and_whether_a_body_came(body: bytes,
                                                                complete: bool) -> None:
    original = b"Return-Path: <b-x@bounce.example.com>\r\nSubject: hi\r\n\r\n" + body
    found = mime.find_original(mime.parse(_report(original)))
    assert found is not None
    assert (found.return_path, found.subject, found.complete) == (
        "b-x@bounce.example.com", "hi", complete)


def test_an_encoded_original_and_a_headers_only_one() -> None:
    original = b"Subject: encoded\r\nTo: a@b.test\r\n\r\nbody\r\n"
    encoded = base64.encodebytes(original).replace(b"\n", b"\r\n")
    found = mime.find_original(mime.parse(_report(encoded, "base64")))
    assert found is not None and (found.subject, found.complete) == ("encoded", True)
    found = mime.find_original(mime.parse(_report(b"Subject: only\r\n",
                                                  kind="text/rfc822-headers")))
    assert found is not None and (found.subject, found.complete) == ("only", False)


@pytest.mark.parametrize("encoding", ["7bit", "quoted-printable", "base64"])
def test_a_limited_part_is_the_start_of_the_whole(encoding: str) -> None:
    text = ("caf\u00e9 " * 20000).encode("utf-8")
    body = {"7bit": text, "quoted-printable": quopri.encodestring(text),
            "base64": base64.encodebytes(text)}[encoding]
    message = mime.parse(b"Content-Type: text/plain; charset=utf-8\r\n"
                         b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n\r\n"
                         + body)
    part = message.parts[0]
    assert mime.part_bytes(part, 1000) == mime.part_bytes(part)[:1000] == text[:1000]
