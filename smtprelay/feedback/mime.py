"""The MIME layer of a feedback message: parse it once, with bounded work, and find parts.

Parsing uses the stdlib ``email.parser.BytesParser`` with ``policy=compat32``: both
policies share the feed parser, which never raises on a broken structure (it records a
defect and goes on), but the default policy parses structured header values on access
and has raised on malformed address and parameter values in several Python releases,
and is about three times slower. compat32 hands header values back as the raw strings,
which ``fields.clean`` turns into text; nothing here needs more from it.

Two guards on the stdlib parser, through the ``_class`` it accepts (``_Part``):

* ``email.message._parseparam`` is quadratic in the length of a Content-Type value
  with many ``;`` inside quotes (200 KB of them took 28 s in a test); the feed parser
  calls it for every multipart boundary. Parameter-bearing fields are cut to
  ``MAX_PARAMETER_FIELD`` characters when read, far beyond any real one.
* Every ``message/*`` part is kept as a raw leaf instead of being parsed further.
  The feed parser would turn a delivery-status part into one Message per block (four
  times slower than reading the blocks ourselves: 0.3 s for 10,000 recipients) and
  fully parse a returned original, whose structure is of no interest: only its header
  section is read (``OriginalMessage``).

Input beyond ``MAX_INPUT`` is cut before parsing and the result says so. A report's
machine-readable parts come first and the returned original last, so what is lost is
at most the tail of the original.
"""

from __future__ import annotations

import email.errors
import email.message
import email.parser
import email.policy
import html
import re
from dataclasses import dataclass
from typing import Any

from smtprelay.feedback.fields import (
    Field,
    all_values,
    clean,
    collapse,
    decode_bytes,
    first,
    parse_address_field,
    parse_date,
    read_header_section,
)
from smtprelay.mail import encoded_words

MAX_INPUT = 4 * 1024 * 1024
MAX_PARTS = 1000
MAX_PARAMETER_FIELD = 4096
# Text handed to the wording heuristics: a bounce's explanation is at the start.
MAX_TEXT = 256 * 1024
_PARAMETER_FIELDS = frozenset({"content-type", "content-disposition"})
# Raw message/* leaves get this type while parsing; content_type() gives the real one.
_RAW_PREFIX = "application/x-smtprelay-raw-"

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


class _Part(email.message.Message):
    """The parts the parser builds: see the module docstring for both overrides."""

    def get(self, name: str, failobj: Any = None) -> Any:
        value = super().get(name, failobj)
        if (isinstance(value, str) and len(value) > MAX_PARAMETER_FIELD
                and name.lower() in _PARAMETER_FIELDS):
            return value[:MAX_PARAMETER_FIELD]
        return value

    def get_content_type(self) -> str:
        real = super().get_content_type()
        if real.startswith("message/"):
            return _RAW_PREFIX + real[len("message/"):]
        return real


def content_type(part: email.message.Message) -> str:
    """The part's real content type, lower case ("message/delivery-status")."""
    return email.message.Message.get_content_type(part)


def parameter(part: email.message.Message, name: str) -> str:
    """A Content-Type parameter, lower case, "" when absent."""
    try:
        value = part.get_param(name, "")
    except (ValueError, IndexError, LookupError):
        return ""
    if isinstance(value, tuple):  # an RFC 2231 value: (charset, language, text)
        value = value[2]
    return clean(str(value)).strip().lower()


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    root: email.message.Message
    headers: tuple[Field, ...]  # the top-level header section, as text
    # Every part in document order (the root first), not looking into message/*.
    parts: tuple[email.message.Message, ...]
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

    def parts_of_type(self, *types: str) -> list[email.message.Message]:
        return [part for part in self.parts if content_type(part) in types]


def parse(raw: bytes) -> ParsedMessage:
    """The message's structure; MimeError only if the stdlib parser gives up entirely."""
    truncated = len(raw) > MAX_INPUT
    data = raw[:MAX_INPUT]
    try:
        root = email.parser.BytesParser(_class=_Part, policy=email.policy.compat32).parsebytes(
            data)
    except RecursionError:
        raise MimeError("MIME parts nested too deeply") from None
    except (email.errors.MessageError, ValueError, LookupError, IndexError,
            TypeError) as exc:
        raise MimeError(f"the email parser failed: {exc!r}") from None
    headers = tuple(
        Field.of(clean(name), collapse(clean(str(value)))) for name, value in root.items())
    parts: list[email.message.Message] = []
    stack: list[email.message.Message] = [root]
    too_many = False
    while stack:
        part = stack.pop()
        if len(parts) >= MAX_PARTS:
            too_many = True
            break
        parts.append(part)
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload
                                   if isinstance(p, email.message.Message)]))
    return ParsedMessage(root, headers, tuple(parts), truncated, too_many)


def part_bytes(part: email.message.Message) -> bytes:
    """A leaf part's content, transfer encoding undone; b"" for a multipart."""
    if part.is_multipart():
        return b""
    try:
        decoded = part.get_payload(decode=True)
    except (ValueError, LookupError, TypeError, IndexError):
        decoded = None
    if isinstance(decoded, bytes):
        return decoded
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def part_text(part: email.message.Message, limit: int | None = None) -> str:
    """A leaf part's content as text, in its declared charset (UTF-8 when none)."""
    data = part_bytes(part)
    if limit is not None:
        data = data[:limit]
    return decode_bytes(data, parameter(part, "charset") or None)


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
    """The first attached original (whole or headers only) with at least one field."""
    for part in message.parts[1:]:
        kind = content_type(part)
        if kind not in ORIGINAL_TYPES:
            continue
        text = decode_bytes(part_bytes(part)[:MAX_INPUT])
        headers = read_header_section(text)
        if not headers:
            continue
        complete = kind not in _HEADERS_ONLY and _has_body(text)
        return OriginalMessage(tuple(headers), kind, complete)
    return None


def _has_body(text: str) -> bool:
    for separator in ("\r\n\r\n", "\n\n", "\r\r"):
        at = text.find(separator)
        if at >= 0:
            return bool(text[at + len(separator):].strip())
    return False
