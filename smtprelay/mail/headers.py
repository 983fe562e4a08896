"""A strict reader of a message's header section: every line is a field or a continuation.

Python's email parser stops at the first line it does not understand and calls the
rest body, and ignores obsolete syntax such as ``From : x`` that receivers still
honour. A relay that checks From against the sender's identities must see exactly
the fields a receiver will see, so anything ambiguous is refused instead.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

# RFC 5322 2.2 field name: printable ASCII except colon; obs-syntax (4.5) allows
# white space before the colon, which receivers accept, so we read it the same way.
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
# The forms nearly every From takes: "a@b.c" and "Plain Name <a@b.c>", with nothing in
# them (quotes, commas, comments, a second @) that could make a receiver read more.
_SIMPLE_ADDRESS = re.compile(
    r"\s*(?:[A-Za-z0-9 ._'-]*<([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>"
    r"|([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+))\s*")


class MalformedHeader(ValueError):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"header line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HeaderField:
    name: str  # as written, without the white space before the colon
    value: str  # unfolded, decoded as UTF-8 (invalid bytes kept as surrogates)
    start: int  # byte offsets of the whole field, line endings included
    end: int

    @property
    def key(self) -> str:
        return self.name.lower()


def header_end(data: bytes) -> int:
    """Offset of the body (just after the empty line), or len(data) without a body."""
    if data.startswith(b"\r\n"):
        return 2
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 4


def parse_header_section(data: bytes) -> list[HeaderField]:
    """The header fields of a CRLF message; MalformedHeader for any line that is neither."""
    end = header_end(data)
    fields: list[HeaderField] = []
    name: str | None = None
    start = 0
    parts: list[bytes] = []
    offset = 0
    line_no = 0
    section = data[:end]
    while offset < len(section):
        newline = section.find(b"\r\n", offset)
        stop = len(section) if newline < 0 else newline + 2
        line = section[offset:newline if newline >= 0 else len(section)]
        line_no += 1
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if name is None:
                raise MalformedHeader(line_no, "continuation line before any header field")
            parts.append(line)
        else:
            match = _FIELD.match(line)
            if match is None:
                raise MalformedHeader(line_no, "not a header field (name: value)")
            if name is not None:
                fields.append(_field(name, parts, start, offset))
            name = match.group(1).decode("ascii")
            start = offset
            parts = [line[match.end():]]
        offset = stop
    if name is not None:
        fields.append(_field(name, parts, start, offset))
    return fields


def _field(name: str, parts: list[bytes], start: int, end: int) -> HeaderField:
    value = b"".join(parts).decode("utf-8", "surrogateescape").strip()
    return HeaderField(name=name, value=value, start=start, end=end)


def content_type(fields: list[HeaderField]) -> str:
    """The media type of the message's top level as Python's email package reads it:
    text/plain without a Content-Type field or with a value it cannot read."""
    for field in fields:
        if field.key == "content-type":
            media = field.value.split(";", 1)[0].strip().lower()
            return media if media.count("/") == 1 else "text/plain"
    return "text/plain"


# RFC 5322 lets comments nest; real mail nests them once or twice. Python's address
# parser recurses per level (thousands of "(" raise RecursionError), so deeper values
# are not handed to it: the pipeline refuses them, and readers elsewhere take them as
# unparseable.
MAX_COMMENT_DEPTH = 20


def comment_depth(value: str) -> int:
    """How deep comments nest in a header value (quoted strings and quoted pairs
    skipped, as RFC 5322 reads them); one pass, no recursion."""
    depth = deepest = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == '"' and depth == 0:
            quoted = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")" and depth:
            depth -= 1
    return deepest


def addresses(value: str) -> list[str]:
    """The addresses in an address-list header; "(unparseable)" when it is ambiguous.

    Every "@" outside quoted strings and comments must belong to a parsed address:
    a value that a receiver could read as more addresses than we did is refused.
    """
    if value.strip() == "<>":
        return []  # the null path, as in Return-Path: <>
    simple = _SIMPLE_ADDRESS.fullmatch(value)
    if simple is not None:
        return [simple.group(1) or simple.group(2)]
    if "(" in value and comment_depth(value) > MAX_COMMENT_DEPTH:
        return ["(unparseable)"]
    parsed = [addr for _, addr in email.utils.getaddresses([value])]
    bare = _COMMENT.sub("", _QUOTED.sub("", value))
    if not parsed or any("@" not in a for a in parsed) or bare.count("@") != len(parsed):
        return ["(unparseable)"]
    return parsed
