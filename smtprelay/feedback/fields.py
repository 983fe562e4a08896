"""Tolerant reading of "Name: value" fields: DSN blocks, ARF reports, returned headers.

Reports come from every MTA ever written, so the reader forgives what real ones do:
CRLF, LF or lone CR line ends; folded values (joined, white space collapsed); a
continuation written without the leading white space (Gmail's multi-line
Diagnostic-Code from some gateways); field names in any case; 8-bit junk (decoded as
UTF-8 with replacement characters, never an error); blank lines made of white space.

Everything here is pure and linear in the input; every value is capped, so one
hostile field cannot make the later regexes slow.
"""

from __future__ import annotations

import calendar
import codecs
import email.utils
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

# Our own DSNs cap a diagnostic at 16 KiB (smtprelay.delivery.dsn_compose.MAX_DIAGNOSTIC); a
# little more leaves room for the type prefix. Nothing legitimate is longer.
MAX_VALUE = 20000
_LINE_END = re.compile(r"\r\n|\r|\n")
# A line end followed by white space that continues the line (RFC 5322 folding), but
# not a line of white space alone, which separates blocks.
# (Both for text whose line ends are already "\n".)
_FOLDING = re.compile(r"\n(?=[ \t]+[^ \t\n])")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*(?:\n|$))+")
# RFC 5322 field names are any printable ASCII but ":"; real report fields start with
# a letter, which keeps an SMTP reply line ("550-5.1.1 ...: ...") from passing for one.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_XTEXT_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
_ADDRESS_TYPE = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,19})\s*;(.*)", re.DOTALL)
_ADDRESS_ATOM = r"[^\s<>()\[\];,\"\\@]+"
_SIMPLE_ADDRESS_FIELD = re.compile(
    rf"\s*(rfc822)\s*;\s*<?({_ADDRESS_ATOM}@{_ADDRESS_ATOM})>?\s*", re.IGNORECASE)
_ANGLE = re.compile(r"<([^<>]*)>")
_COMMENT = re.compile(r"\([^()]*\)")
_MAX_DATE = 200  # a date longer than this is junk; parsedate need not look at it


class Field(NamedTuple):
    name: str  # as written
    value: str  # unfolded, white space collapsed, capped at MAX_VALUE
    key: str  # the name in lower case, for lookups (computed once: reports can be big)

    @classmethod
    def of(cls, name: str, value: str) -> Field:
        return cls(name, value, name.lower())


def _latin1_fallback(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start:error.end].decode("latin-1"), error.end


# 8-bit junk in a part declared ASCII or UTF-8 is nearly always Latin-1 (or Windows-1252)
# from an old gateway: reading those octets as Latin-1 keeps "Empfänger" legible, where
# "replace" would leave "Empf\ufffdnger"; valid UTF-8 around them still reads as UTF-8.
_FALLBACK = "smtprelay-feedback-latin1"
codecs.register_error(_FALLBACK, _latin1_fallback)
_UTF8_LIKE = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "ansi_x3.4-1968"})


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Text from octets: the declared charset if Python knows it, else UTF-8; never an
    error (see _FALLBACK for octets that are not UTF-8)."""
    if charset and charset.lower() not in _UTF8_LIKE:
        try:
            return data.decode(charset, "replace")
        except (LookupError, ValueError):
            pass  # an unknown or unusable charset name: read it as UTF-8
    return data.decode("utf-8", _FALLBACK)


def clean(text: str) -> str:
    """A str from the email package (8-bit octets kept as lone surrogates) as real text."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", _FALLBACK)


def collapse(text: str) -> str:
    """One line, single spaces, capped: how every field value is kept."""
    return " ".join(text[:MAX_VALUE * 2].split())[:MAX_VALUE]


def lines_of(text: str) -> list[str]:
    # Not str.splitlines: that also splits at \x0b, \x1c, U+2028 and other characters
    # no MTA means as a line end.
    return _LINE_END.split(text)


def read_fields(lines: Iterable[str]) -> list[Field]:
    """The fields in these lines (no blank lines expected; a blank one is skipped).

    A line that is not "Name: value" continues the previous field, indented or not;
    before any field it is dropped.
    """
    fields: list[Field] = []
    name: str | None = None
    parts: list[str] = []
    size = 0
    for line in lines:
        # str.find and a name check instead of one regex per line: reports with
        # thousands of recipients spend most of their time here.
        colon = -1 if line[:1] in (" ", "\t", "") else line.find(":")
        candidate = line[:colon].rstrip(" \t") if colon > 0 else ""
        if not candidate or not _NAME.fullmatch(candidate):
            if name is not None and size < MAX_VALUE and line.strip():
                parts.append(line)
                size += len(line)
            continue
        if name is not None:
            fields.append(Field.of(name, collapse(" ".join(parts))))
        name = candidate
        parts = [line[colon + 1:]]
        size = len(parts[0])
    if name is not None:
        fields.append(Field.of(name, collapse(" ".join(parts))))
    return fields


def read_blocks(text: str) -> list[list[Field]]:
    """Groups of fields separated by blank lines (RFC 3464 2.1: one per-message block,
    then one block per recipient). Blocks with no field are left out."""
    blocks: list[list[Field]] = []
    # Folded lines are joined first, by one regex pass: far faster than doing it line
    # by line in read_fields for a report with thousands of recipients.
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for chunk in _BLANK_LINES.split(_FOLDING.sub(" ", text)):
        if chunk.strip():
            block = read_fields(chunk.split("\n"))
            if block:
                blocks.append(block)
    return blocks


def read_text_fields(text: str) -> list[Field]:
    """Every field in ``text``, blank lines or not: for a part that should be one block
    (ARF's feedback-report) but is sometimes written with blank lines in it."""
    return read_fields(lines_of(text))


def read_header_section(text: str) -> list[Field]:
    """The fields before the first blank line (a message's header section)."""
    lines: list[str] = []
    for line in lines_of(text):
        if not line.strip():
            break
        lines.append(line)
    return read_fields(lines)


def first_values(fields: Iterable[Field]) -> dict[str, str]:
    """Lower-case name -> value of its first non-empty occurrence: one pass, for
    reading many names from the same group."""
    found: dict[str, str] = {}
    for field in fields:
        if field.value and field.key not in found:
            found[field.key] = field.value
    return found


def first(fields: Sequence[Field], name: str) -> str | None:
    """The value of the first field of that name (any case), None when absent or empty."""
    key = name.lower()
    for field in fields:
        if field.key == key:
            return field.value or None
    return None


def all_values(fields: Sequence[Field], name: str) -> tuple[str, ...]:
    key = name.lower()
    return tuple(field.value for field in fields if field.key == key and field.value)


def unescape_xtext(text: str) -> str:
    """RFC 6533 ``\\x{HEX}`` escapes (what our own DSNs write for non-ASCII) as text."""
    def char(match: re.Match[str]) -> str:
        code = int(match.group(1), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            return match.group(0)
        return chr(code)
    return _XTEXT_ESCAPE.sub(char, text)


def parse_address_field(value: str) -> tuple[str | None, str]:
    """("rfc822", "user@example.net") from "RFC822; <user@example.net>".

    The type is lower-cased and None when the MTA left it out; "utf-8" addresses have
    their RFC 6533 escapes undone. Angle brackets, comments and a display name around
    the address are dropped.
    """
    simple = _SIMPLE_ADDRESS_FIELD.fullmatch(value)
    if simple:  # "rfc822; user@example.net", nearly every one: no further work
        return simple.group(1).lower(), simple.group(2)
    address_type: str | None = None
    rest = value
    match = _ADDRESS_TYPE.fullmatch(value)
    if match and "@" not in match.group(1):
        address_type = match.group(1).lower()
        rest = match.group(2)
    rest = rest.strip()
    angled = _ANGLE.search(rest)
    if angled and "@" in angled.group(1):
        rest = angled.group(1)
    else:
        rest = _COMMENT.sub(" ", rest).strip().strip("<>")
        # "user@example.net some trailing words": the word with the "@".
        words = rest.split()
        with_at = [word for word in words if "@" in word]
        if len(words) > 1 and with_at:
            rest = with_at[0]
    rest = rest.strip()
    if len(rest) > 1 and rest[0] == rest[-1] == '"' and rest.count('"') == 2:
        rest = rest[1:-1]  # the whole address quoted, not just its local part
    if address_type == "utf-8" or "\\x{" in rest:
        rest = unescape_xtext(rest)
    return address_type, rest.strip()


def parse_date(value: str | None) -> float | None:
    """Unix seconds from an RFC 5322 date (an ISO 8601 one also passes); None if it is not
    one. A date without a zone is read as UTC, not as this machine's local time."""
    if not value or len(value) > _MAX_DATE:
        return None
    text = _COMMENT.sub(" ", value).strip()
    try:
        parsed = email.utils.parsedate_tz(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        parsed = None
    if parsed is not None:
        try:
            seconds = calendar.timegm((*parsed[:6], 0, 1, 0))
        except (ValueError, OverflowError):
            return None
        return float(seconds - (parsed[9] or 0))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return float(calendar.timegm(moment.timetuple())) + moment.microsecond / 1e6
    return moment.timestamp()


def normalise_address(address: str) -> str:
    """For comparing addresses: the domain is case-insensitive (RFC 5321 2.4), and so is
    the local part at every mailbox provider that matters (we compare, never rewrite)."""
    return address.strip().strip("<>").strip().lower()
