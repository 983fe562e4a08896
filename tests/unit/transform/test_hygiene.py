"""Message hygiene (smtprelay.transform.hygiene): Bcc and SES's control fields removed,
Message-ID, Date and the Received trace field added, nothing else touched."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.mail.headers import header_end, parse_header_section
from smtprelay.transform import hygiene
from smtprelay.transform.hygiene import ReceivedInfo, normalise
from tests.support import examples
from tests.unit.messages import INFO, msg

STAMP = "Tue, 14 Nov 2023 22:13:20 +0000"


def spool(data: bytes, info: ReceivedInfo = INFO) -> bytes:
    return normalise(data, parse_header_section(data), info=info)


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


# --- property --------------------------------------------------------------------------

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


def test_clean_keeps_the_received_field_apart_and_the_clients_bytes_uncopied() -> None:
    data = msg("From: a@example.com\nMessage-ID: <1@example.com>\nDate: " + STAMP + "\n", "hi\n")
    received, message = hygiene.clean(data, parse_header_section(data), info=INFO)
    assert message is data  # nothing to take out or add: no copy
    assert received == hygiene.received_field(INFO)
    assert received + message == spool(data)
    with_bcc = msg("From: a@example.com\nBcc: x@example.net\n", "hi\n")
    received, message = hygiene.clean(with_bcc, parse_header_section(with_bcc), info=INFO)
    assert received + message == spool(with_bcc) and b"Bcc" not in message
