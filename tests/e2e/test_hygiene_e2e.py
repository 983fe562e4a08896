"""Message hygiene over SMTP: blocked attachments and duplicates refused, trace fields added."""

from __future__ import annotations

from smtprelay.mail.headers import header_end, parse_header_section
from tests.support import Credential, RunningRelay, message, send_raw, session, spooled

NESTED_EXE = (
    b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: invoice\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
    b"--outer\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
    b"--alt\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
    b"--alt\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n"
    b"--rel\r\nContent-Type: text/html\r\n\r\n<p>See attached.</p>\r\n"
    b"--rel\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=invoice.exe\r\n\r\nTVqQAAMAAAAEAAAA\r\n"
    b"--rel--\r\n--alt--\r\n--outer--\r\n"
)


def test_blocked_attachment_refused_then_good_message_spooled(
        relay: RunningRelay, cred: Credential) -> None:
    with session(relay, cred) as smtp:
        code, text = send_raw(smtp, ["someone@example.net"], NESTED_EXE)
        assert (code, text) == (554, b"5.6.1 Message rejected: attachment 'invoice.exe' has "
                                     b"a file extension that is not allowed (.exe)")
        code, text = send_raw(smtp, ["someone@example.net"],
                              message(subject="Duplicate\r\nSUBJECT: again"))
        assert (code, text) == (554, b"5.6.0 Message rejected: duplicate header 'SUBJECT'; "
                                     b"it may appear only once")
        good = NESTED_EXE.replace(b"invoice.exe", b"invoice.pdf")
        code, _ = send_raw(smtp, ["someone@example.net"], good)
        assert code == 250
    (entry,) = spooled(relay.config)
    out = entry["data"]
    assert out[header_end(out):] == good[header_end(good):]
    assert good[:header_end(good) - 2] in out


def test_rfc2231_and_rfc2047_encoded_exe_names_are_refused(
        relay: RunningRelay, cred: Credential) -> None:
    """Encoded file names are decoded before the extension check; nothing else is lost."""
    rfc2231 = NESTED_EXE.replace(
        b"Content-Disposition: attachment; filename=invoice.exe",
        b"Content-Disposition: attachment;\r\n filename*0*=UTF-8''r%C3%A9sum;\r\n"
        b" filename*1*=%C3%A9.%65xe")
    rfc2047 = NESTED_EXE.replace(
        b"Content-Disposition: attachment; filename=invoice.exe",
        b"Content-Disposition: attachment; filename=\"=?UTF-8?B?aW52b2ljZS5leGU=?=\"")
    with session(relay, cred) as smtp:
        assert send_raw(smtp, ["someone@example.net"], rfc2231) == (
            554, b"5.6.1 Message rejected: attachment 'r\\xe9sum\\xe9.exe' has a file "
                 b"extension that is not allowed (.exe)")
        assert send_raw(smtp, ["someone@example.net"], rfc2047) == (
            554, b"5.6.1 Message rejected: attachment 'invoice.exe' has a file extension "
                 b"that is not allowed (.exe)")
        assert send_raw(smtp, ["someone@example.net"], message())[0] == 250
    (entry,) = spooled(relay.config)
    assert b"Subject: hello" in entry["data"]


def test_spooled_message_is_normalised(relay: RunningRelay, cred: Credential) -> None:
    data = (b"X-SES-CONFIGURATION-SET: transactional\r\n"
            b"From: app@example.com\r\nTo: someone@example.net\r\n"
            b"Bcc: hidden@example.net,\r\n\tother@example.net\r\n"
            b"X-SES-MESSAGE-TAGS: campaign=spring\r\nSubject: hello\r\n\r\n"
            b"Bcc: not a header, the body\r\n")
    with session(relay, cred) as smtp:
        code, _ = send_raw(smtp, ["someone@example.net"], data)
        assert code == 250
        code, _ = send_raw(smtp, ["a@example.net", "b@example.net"], message())
        assert code == 250
    single, several = spooled(relay.config)
    out = single["data"]
    fields = parse_header_section(out)
    assert [f.key for f in fields] == ["received", "from", "to", "subject", "message-id",
                                       "date"]
    received = fields[0].value
    assert received.startswith("from ")
    assert f"by relay.test (smtprelay) with ESMTPSA id {single['id']}" in received
    assert "for <someone@example.net>" in received and "(using TLSv1" in received
    assert all(len(line) <= 78 for line in out[:fields[0].end].split(b"\r\n"))
    assert fields[4].value == f"<{single['id']}@relay.test>"
    assert out[fields[1].start:fields[3].end] == (
        b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: hello\r\n")
    assert out[header_end(out):] == b"Bcc: not a header, the body\r\n"
    assert b"hidden@" not in out and b"X-SES" not in out.upper()
    # With several recipients the Received field names none of them.
    assert b" for <" not in several["data"]
    assert several["data"].count(b"Message-ID:") == 1


def test_a_return_path_from_the_client_is_removed_after_the_identity_check(
        relay: RunningRelay, cred: Credential) -> None:
    # RFC 5321 4.4: the final delivery adds it from the envelope sender.
    mine = b"Return-Path: <bounces@example.com>\r\n" + message()
    foreign = b"Return-Path: <someone@elsewhere.test>\r\n" + message()
    with session(relay, cred) as smtp:
        assert send_raw(smtp, ["someone@example.net"], mine)[0] == 250
        code, text = send_raw(smtp, ["someone@example.net"], foreign)
        assert code == 554 and b"someone@elsewhere.test" in text  # checked, then removed
    [entry] = spooled(relay.config)
    assert b"Return-Path" not in entry["data"] and b"bounces@example.com" not in entry["data"]


def test_thousands_of_nested_comments_in_an_address_field_are_refused_cleanly(
        relay: RunningRelay, cred: Credential, caplog: object) -> None:
    """Before: a From with 3,000 nested "(" raised RecursionError (no reply after DATA,
    a 179 KB traceback), and a To with 2,700 was accepted and then failed every event
    destination for ever. Now each is a 554 5.6.0, and the session goes on."""
    raw = "(" * 3000 + "x" + ")" * 3000
    deep = "\r\n ".join(raw[i:i + 70] for i in range(0, len(raw), 70))  # folded lines
    with session(relay, cred) as smtp:
        for field in (f"From: {deep} app@example.com", f"To: {deep} b@example.net"):
            data = (f"{field}\r\nSubject: nested\r\n").encode()
            if not field.startswith("From"):
                data = b"From: app@example.com\r\n" + data
            data += b"\r\nbody\r\n"
            code, text = send_raw(smtp, ["someone@example.net"], data)
            name = field.split(":")[0]
            assert (code, text) == (554, f"5.6.0 Message rejected: comments nest more than "
                                         f"20 levels deep in the {name} header".encode())
        assert send_raw(smtp, ["someone@example.net"], message())[0] == 250
    assert len(spooled(relay.config)) == 1
    records = getattr(caplog, "records", [])
    assert not any(r.exc_info for r in records)
