"""The MIME layer of a feedback message: read it once, with bounded work, and find parts.

The walk is ``smtprelay.mail.mime``'s lenient reading with any line end (CRLF, LF or a
lone CR: bounces are saved and forwarded by every kind of software): the structure as
Python's email package reads it, without that parser's costs (its parameter parser is
quadratic on some values, and it builds a Message per delivery-status block). It
never raises on a broken structure, reads only header blocks, finds part boundaries
with ``bytes.find``, and does not look into ``message/*`` parts: a returned original
is only of interest for its header section (``OriginalMessage``), and a
delivery-status part is read as text.

Input beyond ``MAX_INPUT`` is not read and the result says so. A report's
machine-readable parts come first and the returned original last, so what is lost is
at most the tail of the original. Beyond ``MAX_PARTS`` parts the rest is left out
(``too_many_parts``); parts nested more than ``mail.mime.MAX_DEPTH`` levels deep make
the input unreadable (MimeError).
"""

from __future__ import annotations

import base64
import binascii
import html
import quopri
import re
from dataclasses import dataclass

from smtprelay.feedback.fields import (
    Field,
    all_values,
    collapse,
    decode_bytes,
    first,
    parse_address_field,
    parse_date,
    read_header_section,
)
from smtprelay.mail import encoded_words
from smtprelay.mail.mime import Part, Walk, token

MAX_INPUT = 4 * 1024 * 1024
MAX_PARTS = 1000
# Text handed to the wording heuristics: a bounce's explanation is at the start.
MAX_TEXT = 256 * 1024
_UUENCODED = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
_ENCODED = frozenset({"quoted-printable", "base64"})
# Of a returned original only its header section is read: at most this much of it.
MAX_ORIGINAL_HEADER = 1024 * 1024
_NOT_SPACE = re.compile(rb"\S")

ORIGINAL_TYPES = frozenset({
    "message/rfc822", "message/global",  # the whole original (RFC 6532 for the second)
    "text/rfc822-headers", "message/global-headers",  # its header section (RFC 6533)
    # Misspellings seen in the wild.
    "message/rfc822-headers", "text/rfc822-header", "text/rfc822",
})
_HEADERS_ONLY = frozenset({"text/rfc822-headers", "message/global-headers",
                           "message/rfc822-headers", "text/rfc822-header"})
_TAG = re.compile(r"<[^>]*>")
_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BLOCK_TAG = re.compile(r"<\s*(br|/p|/div|/tr|/li|/h\d)\b[^>]*>", re.IGNORECASE)
# What our own Received field says (smtprelay.transform.hygiene.received_field): "by host
# (smtprelay) with ESMTPSA id <message id>", and "for <rcpt>" with a single recipient.
_OUR_RECEIVED_ID = re.compile(r"\(smtprelay\)\s+with\s+\S+\s+id\s+([0-9a-f]{12}-[0-9a-f]{16})\b")
_OUR_RECEIVED_FOR = re.compile(r"\(smtprelay\).*?\bfor\s+<([^<>\s]+@[^<>\s]+)>")
_RELAY_MESSAGE_ID = re.compile(r"^<?([0-9a-f]{12}-[0-9a-f]{16})@", re.IGNORECASE)


class NotAReport(ValueError):
    """The input is not the kind of report the parser was asked for; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MimeError(NotAReport):
    """The input cannot be read as a message at all."""


def content_type(part: Part) -> str:
    """The part's content type, lower case ("message/delivery-status")."""
    return part.content_type


def parameter(part: Part, name: str) -> str:
    """A Content-Type parameter, lower case, "" when absent; 8-bit octets in it read as
    replacement characters (report-type and charset are ASCII tokens)."""
    return token(part.param(name) or "").strip().lower()


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    root: Part
    headers: tuple[Field, ...]  # the top-level header section, as text
    # Every part in document order (the root first), not looking into message/*.
    parts: tuple[Part, ...]
    truncated: bool  # the input was longer than MAX_INPUT and was cut
    too_many_parts: bool  # more than MAX_PARTS parts; the rest were not looked at

    @property
    def content_type(self) -> str:
        return content_type(self.root)

    @property
    def report_type(self) -> str:
        """multipart/report's report-type parameter ("delivery-status"), else ""."""
        if self.content_type != "multipart/report":
            return ""
        return parameter(self.root, "report-type")

    def header(self, name: str) -> str | None:
        return first(self.headers, name)

    @property
    def subject(self) -> str | None:
        return decode_words(self.header("subject"))

    @property
    def date(self) -> float | None:
        return parse_date(self.header("date"))

    def parts_of_type(self, *types: str) -> list[Part]:
        return [part for part in self.parts if content_type(part) in types]


def parse(raw: bytes) -> ParsedMessage:
    """The message's structure; MimeError only for absurdly deep nesting."""
    walk = Walk(raw, strict=False, any_newline=True, max_input=MAX_INPUT, max_parts=MAX_PARTS)
    parts = tuple(walk)
    if any(problem.kind == "depth" for problem in walk.problems):
        raise MimeError("MIME parts nested too deeply")
    root = parts[0]
    # 8-bit octets in a field read as replacement characters (what the email package
    # this replaced gave for them).
    headers = tuple(Field.of(field.name, collapse(field.raw.decode("ascii", "replace")))
                    for field in root.fields)
    too_many = any(problem.kind == "parts" for problem in walk.problems)
    return ParsedMessage(root, headers, parts, walk.truncated, too_many)


def part_bytes(part: Part, limit: int | None = None) -> bytes:
    """A leaf part's content, transfer encoding undone; b"" for a multipart.

    With `limit`, at most that many octets, and only the encoded octets that can hold
    them are copied out of the message (not the rest of a 10 MB part)."""
    if part.content_type.startswith("multipart/"):
        return b""
    encoding = part.transfer_encoding
    identity = encoding not in _ENCODED and encoding not in _UUENCODED
    end = part.body_end
    if limit is not None:
        # Base64 and uuencode take under 1.4 octets per decoded one, quoted-printable
        # at most 3 (and its soft line breaks): 4 covers them, cut at a line end.
        wanted = part.body_start + (limit if identity else 4 * limit)
        if wanted < end:
            line_end = part.data.rfind(b"\n", part.body_start, wanted)
            end = wanted if identity or line_end < 0 else line_end + 1
    body = part.data[part.body_start:end]
    if encoding == "quoted-printable":
        body = quopri.decodestring(body)
    elif encoding == "base64":
        body = _base64(body)
    elif encoding in _UUENCODED:
        try:
            body = _uudecode(body)
        except ValueError:
            pass
    return body if limit is None else body[:limit]


def _base64(body: bytes) -> bytes:
    """As forgiving as the email package: padding added, stray characters skipped, and
    the text as it is when nothing decodes."""
    compact = b"".join(body.splitlines())
    padding = b"=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact + padding, validate=True)
    except binascii.Error:
        pass
    for attempt in (compact, compact + b"=="):
        try:
            return base64.b64decode(attempt, validate=False)
        except binascii.Error:
            pass
    return compact


def _uudecode(body: bytes) -> bytes:
    """The lines between "begin <mode> <name>" and "end"; ValueError without a begin line."""
    lines = iter(body.splitlines())
    for line in lines:
        if line.startswith(b"begin "):
            try:
                int(line.removeprefix(b"begin ").partition(b" ")[0], base=8)
            except ValueError:
                continue
            break
    else:
        raise ValueError("no begin line")
    decoded = []
    for line in lines:
        if not line:
            raise ValueError("truncated")
        if line.strip(b" \t\r\n\f") == b"end":
            break
        try:
            decoded.append(binascii.a2b_uu(line))
        except binascii.Error:
            # Broken encoders pad their lines: decode only what the length octet counts.
            decoded.append(binascii.a2b_uu(line[:(((line[0] - 32) & 63) * 4 + 5) // 3]))
    return b"".join(decoded)


def part_text(part: Part, limit: int | None = None) -> str:
    """A leaf part's content as text, in its declared charset (UTF-8 when none)."""
    return decode_bytes(part_bytes(part, limit), parameter(part, "charset") or None)


def human_text(message: ParsedMessage) -> str:
    """The explanation a person would read, for the wording heuristics: the first
    text/plain part, else the first text/html one with its markup dropped. Only the
    first MAX_TEXT octets."""
    plain = message.parts_of_type("text/plain")
    if plain:
        return part_text(plain[0], MAX_TEXT)
    markup = message.parts_of_type("text/html")
    if markup:
        text = _SCRIPT_OR_STYLE.sub(" ", part_text(markup[0], MAX_TEXT))
        text = _BLOCK_TAG.sub("\n", text)
        return html.unescape(_TAG.sub(" ", text))
    return ""


def decode_words(value: str | None) -> str | None:
    """An RFC 2047 encoded header value ("=?utf-8?q?...?=") as text."""
    if value is None:
        return None
    decoded = encoded_words.decode(value)
    return value if decoded is value else collapse(decoded)


@dataclass(frozen=True, slots=True)
class OriginalMessage:
    """The returned original (or its header section) attached to a DSN or ARF report."""

    headers: tuple[Field, ...]
    content_type: str  # of the part that carried it: "message/rfc822", "text/rfc822-headers"
    complete: bool  # the whole message came back, not only its header section

    def get(self, name: str) -> str | None:
        return first(self.headers, name)

    def get_all(self, name: str) -> tuple[str, ...]:
        return all_values(self.headers, name)

    @property
    def message_id(self) -> str | None:
        value = self.get("message-id")
        return value.strip().strip("<>").strip() or None if value else None

    @property
    def subject(self) -> str | None:
        return decode_words(self.get("subject"))

    @property
    def return_path(self) -> str | None:
        """The envelope sender the receiving MTA recorded: our VERP address, if it kept it."""
        value = self.get("return-path")
        if value is None:
            return None
        return parse_address_field(value)[1] or None

    @property
    def relay_message_ids(self) -> tuple[str, ...]:
        """smtprelay message ids named by the original: our Received field's "id" clause,
        and a Message-ID we generated (``<id@host>``). Deduplicated, in that order."""
        found: list[str] = []
        for received in self.get_all("received"):
            match = _OUR_RECEIVED_ID.search(received)
            if match:
                found.append(match.group(1))
        match = _RELAY_MESSAGE_ID.match(self.message_id or "")
        if match:
            found.append(match.group(1).lower())
        return tuple(dict.fromkeys(found))

    @property
    def relay_recipients(self) -> tuple[str, ...]:
        """The recipient our Received field names (only written for a single recipient)."""
        found = []
        for received in self.get_all("received"):
            match = _OUR_RECEIVED_FOR.search(received)
            if match:
                found.append(match.group(1))
        return tuple(dict.fromkeys(found))


def find_original(message: ParsedMessage) -> OriginalMessage | None:
    """The first attached original (whole or headers only) with at least one field.

    Only its header section is decoded: the body (up to 4 MB of a returned original)
    is looked at just to know whether there is one."""
    for part in message.parts[1:]:
        kind = content_type(part)
        if kind not in ORIGINAL_TYPES:
            continue
        if part.transfer_encoding in _ENCODED or part.transfer_encoding in _UUENCODED:
            data = part_bytes(part)[:MAX_INPUT]
            start, end = 0, len(data)
        else:  # as it came: read in place
            data, start, end = part.data, part.body_start, part.body_end
        header_end, body_from = _header_section_end(data, start, end)
        headers = read_header_section(decode_bytes(data[start:header_end]))
        if not headers:
            continue
        complete = (kind not in _HEADERS_ONLY and body_from is not None
                    and _NOT_SPACE.search(data, body_from, end) is not None)
        return OriginalMessage(tuple(headers), kind, complete)
    return None


def _header_section_end(data: bytes, start: int, end: int) -> tuple[int, int | None]:
    """Where the header section of data[start:end] ends (its blank line included, at
    most MAX_ORIGINAL_HEADER on), and where the body starts after the blank line
    (CRLF, LF or CR line ends, in that order of preference), None without one."""
    body_from: int | None = None
    for separator in (b"\r\n\r\n", b"\n\n", b"\r\r"):
        at = data.find(separator, start, end)
        if at >= 0:
            body_from = at + len(separator)
            break
    cut = min(end, start + MAX_ORIGINAL_HEADER)
    # The header section ends at the first blank line of any kind.
    firsts = [at + len(sep) for sep in (b"\r\n\r\n", b"\n\n", b"\r\r", b"\n\r\n")
              if (at := data.find(sep, start, cut)) >= 0]
    return (min(firsts) if firsts else cut), body_from
