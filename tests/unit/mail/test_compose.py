"""Messages composed from the SES API's Simple content: structure, encodings, and every
way a field could smuggle a header in."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.mail.compose import (
    LINE_BREAKS,
    Attachment,
    ComposeError,
    Parts,
    Text,
    addresses,
    compose,
)
from smtprelay.mail.headers import parse_header_section

NOW = 1_800_000_000.0


def build(**fields: object) -> bytes:
    parts = Parts(**{"from_address": "App <app@example.com>", "subject": Text("Hi"),
                     "text": Text("Hello"), "to": ["a@example.net"], **fields})  # type: ignore[arg-type]
    return compose(parts, message_id="m1@relay.test", date=NOW)


def parsed(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def test_text_only_is_a_single_text_part_with_crlf_line_ends() -> None:
    data = build()
    assert b"\n" not in data.replace(b"\r\n", b"")
    message = parsed(data)
    assert message["From"] == "App <app@example.com>"
    assert message["To"] == "a@example.net"
    assert message["Message-ID"] == "<m1@relay.test>"
    assert message.get_content_type() == "text/plain"
    assert message.get_content().strip() == "Hello"
    # The relay's own parser reads it too (the pipeline does).
    assert [f.key for f in parse_header_section(data)][:2] == ["from", "to"]


def test_text_and_html_are_alternatives_and_attachments_are_mixed_in() -> None:
    message = parsed(build(html=Text("<p>Hello</p>"), cc=["c@example.net"],
                           reply_to=["r@example.com"],
                           attachments=[Attachment(b"%PDF-1.4 \x00\xff", "report.pdf",
                                                   "application/pdf")]))
    assert message.get_content_type() == "multipart/mixed"
    body, attachment = list(message.iter_parts())
    assert body.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in body.iter_parts()] == ["text/plain", "text/html"]
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content() == b"%PDF-1.4 \x00\xff"
    assert message["Cc"] == "c@example.net" and message["Reply-To"] == "r@example.com"


def test_non_ascii_subject_body_and_names_are_encoded() -> None:
    data = build(from_address="Zoë <app@example.com>", subject=Text("Grüße ✓"),
                 text=Text("Größe: 10 €"))
    assert data.isascii()  # encoded words and a transfer encoding, no raw 8-bit
    message = parsed(data)
    assert message["Subject"] == "Grüße ✓"
    assert message["From"].addresses[0].display_name == "Zoë"
    assert message.get_content().strip() == "Größe: 10 €"


def test_a_charset_the_text_does_not_fit_is_refused_by_name() -> None:
    with pytest.raises(ComposeError) as refused:
        build(text=Text("€", charset="ISO-8859-1"))
    assert refused.value.field == "plain.Data"
    with pytest.raises(ComposeError, match="unknown character set"):
        build(text=Text("x", charset="no-such-charset"))


@pytest.mark.parametrize("fields", [
    {"subject": Text("Hi\r\nBcc: victim@example.org")},
    {"subject": Text("Hi\nX-Injected: 1")},
    {"from_address": "App\r\nBcc: victim@example.org <app@example.com>"},
    {"to": ["a@example.net\r\nBcc: victim@example.org"]},
    {"reply_to": ["Name\n <r@example.com>"]},
    {"headers": [("X-Campaign", "spring\r\nBcc: victim@example.org")]},
    {"headers": [("X-Bad\r\nBcc", "v")]},
    {"attachments": [Attachment(b"x", "a.txt\r\nContent-Type: text/html")]},
])
def test_a_line_break_in_any_field_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ComposeError, match="line break"):
        build(**fields)


@pytest.mark.parametrize("name", ["From", "bcc", "Message-ID", "Content-Type", "Subject"])
def test_extra_headers_may_not_set_what_the_message_writes(name: str) -> None:
    with pytest.raises(ComposeError, match="written by the relay"):
        build(headers=[(name, "x")])


def test_bad_addresses_and_a_missing_body_are_refused() -> None:
    for fields in ({"to": ["not an address"]}, {"from_address": "app@"},
                   {"to": ["ü@exämple.net"]}):
        with pytest.raises(ComposeError, match="not an email address"):
            build(**fields)
    with pytest.raises(ComposeError, match="needs Text, Html or both"):
        build(text=None)


@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=200),
       st.text(st.characters(exclude_categories=("Cs",)), max_size=200))
def test_any_subject_and_text_come_back_or_are_refused(subject: str, body: str) -> None:
    try:
        data = build(subject=Text(subject), text=Text(body))
    except ComposeError as refused:
        assert not LINE_BREAKS.isdisjoint(subject), refused
        return
    message = parsed(data)
    assert str(message["Subject"]) == " ".join(subject.split()) or \
        message["Subject"] == subject
    # No line of the header section can be anything but a field or its continuation.
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] in (b" ", b"\t") or b":" in line for line in head.split(b"\r\n"))


@given(st.from_regex(r"[a-z0-9._+-]{1,20}@[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){1,3}",
                     fullmatch=True))
def test_plain_addresses_read_as_the_email_package_reads_them(value: str) -> None:
    """The fast path for bare addresses agrees with the email package's parser, and
    what it does not take goes to that parser (and is refused if it refuses it)."""
    try:
        fast = addresses("To", [value])[0]
    except ComposeError:
        fast = None
    header = email.policy.SMTP.header_factory("to", value)
    parsed = list(getattr(header, "addresses", ()))
    if header.defects or len(parsed) != 1 or not parsed[0].username or not parsed[0].domain:
        assert fast is None
    else:
        assert fast is not None and fast.addr_spec == parsed[0].addr_spec
        assert fast.display_name == ""
