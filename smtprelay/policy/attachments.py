"""Walks a message's MIME tree to find the first attachment whose file name SES refuses."""

# This runs for every message on the event loop, so it does not build an email.message
# tree: it reads only each part's header block and finds part boundaries with
# bytes.find, never copying or decoding a body. Where real-world mail is ambiguous it
# errs towards seeing *more* attachments than a strict parser would (a file name that a
# lenient mail client would show must not slip through), and it refuses a structure
# only when it cannot be walked at all.

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from smtprelay.mail.headers import HeaderField, header_end

# SES Developer Guide, "Amazon SES unsupported attachment types" (seed 004, line ~4800).
_SES_TABLE = """
    ade adp app asp bas bat cer chm cmd com cpl crt csh der exe fxp gadget hlp hta inf
    ins isp its js jse ksh lib lnk mad maf mag mam maq mar mas mat mau mav maw mda mdb
    mde mdt mdw mdz msc msh msh1 msh1xml msh2 msh2xml mshxml msi msp mst ops pcd pif plg
    prf prg ps1 ps1xml ps2 ps2xml psc1 psc2 reg scf scr sct shb shs sys tmp url vb vbe
    vbs vps vsmacros vss vst vsw vxd ws wsc wsf wsh xnk
"""
BLOCKED_EXTENSIONS = frozenset(_SES_TABLE.split())

# Resource limits: the walk is synchronous on the event loop, so a crafted message of
# millions of empty parts or thousands of nesting levels must not stall it. Real mail
# stays far below these; beyond them the structure is refused rather than half-checked
# (an attachment after the limit would otherwise go unseen).
MAX_DEPTH = 32
MAX_PARTS = 1000
# A part's header block is read at most this far: real part headers are well under
# 4 KiB, and a part without an empty line would otherwise make us scan its whole body.
MAX_PART_HEADER = 16 * 1024

_WATCHED = ("content-type", "content-disposition")
# A lenient field reader for part headers: lines that are not fields are skipped
# instead of refused (headers.py is strict because it guards identity checks; inside
# the body, a garbled line must not hide a Content-Disposition that follows it).
_PART_FIELD = re.compile(
    rb"^(content-(?:type|disposition))[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
    re.IGNORECASE | re.MULTILINE)
# A parameter: `; name = value`, the value a quoted string (the closing quote may be
# missing in broken mail; text after it is kept apart, see _parse_params) or anything
# up to the next `;` (unquoted values containing `=` or spaces are common in the wild
# even though RFC 2045 forbids them).
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*(?:("[^"\\]*(?:\\.[^"\\]*)*"?)([^;]*)|([^;]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")
_COMMENT = re.compile(r"\([^()]*\)")
# RFC 2231 section 3/4: name*, name*0, name*0*, name*1 ...
_EXTENDED = re.compile(r"^([^*]+)\*(?:(\d+)\*?|)$")
# RFC 2047 encoded-word (RFC 2231 section 5 allows a language after the charset).
_ENCODED_WORD = re.compile(r"=\?([^?*]*)(?:\*[^?]*)?\?([bBqQ])\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")
# What Windows ignores at the end of a name ("a.exe." and "a.exe " open as a.exe), plus
# controls and invisible format characters that some clients drop when saving. Matched
# at the start of the reversed name: a `[...]+$` search is quadratic on a long run of
# spaces that does not reach the end.
_TRAILING = re.compile(r"[\s.\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2060\ufeff]*")


class MimeError(ValueError):
    """The MIME structure cannot be walked (for example a multipart without a boundary)."""


@dataclass(frozen=True, slots=True)
class Blocked:
    filename: str  # decoded, as a mail client would show it
    extension: str  # lower case with the dot, e.g. ".exe"


def blocked_extension(filename: str) -> str | None:
    """The blocked extension ".exe" that `filename` would open as, or None."""
    # A NUL ends the name for C-based clients ("a.exe\0.pdf" saves as a.exe).
    for name in (filename, filename.split("\x00", 1)[0]):
        ignored = _TRAILING.match(name[::-1])  # always matches, possibly nothing
        stem = name[:len(name) - ignored.end()] if ignored else name
        dot = stem.rfind(".")
        if dot >= 0 and stem[dot + 1:].lower() in BLOCKED_EXTENSIONS:
            return "." + stem[dot + 1:].lower()
    return None


def first_blocked(data: bytes, fields: list[HeaderField]) -> Blocked | None:
    """The first attachment in document order with a blocked extension; MimeError if unwalkable.

    `fields` is the message's own (already parsed) header section.
    """
    root = [(f.key, f.value) for f in fields if f.key in _WATCHED]
    # Each entry: the part's watched fields, where it starts (its header block), where
    # its body starts, where it ends, and how deeply it is nested.
    stack = [(root, 0, header_end(data), len(data), 0)]
    parts = 1
    while stack:
        watched, start, body, end, depth = stack.pop()
        ctype = ""
        params: dict[str, list[str]] = {}
        for key, value in watched:
            kind, found = _parse_params(value)
            # filename= belongs in Content-Disposition and name= in Content-Type, but
            # clients read either in either place.
            for name in (*found.get("filename", ()), *found.get("name", ())):
                blocked = _check_name(name)
                if blocked is not None:
                    return blocked
            if key == "content-type" and not ctype:
                # The first Content-Type decides the structure, as in Python's email.
                ctype, params = kind, found
        children: list[tuple[list[tuple[str, str]], int, int, int, int]] = []
        spans: Iterable[tuple[int, int]] = ()
        if ctype.startswith("multipart/"):
            boundaries = [b for b in params.get("boundary", ()) if b]
            if not boundaries:
                raise MimeError(f"{ctype} without a boundary parameter")
            # Scanning from the part's start (not its body) also finds delimiters in a
            # part whose empty line after the headers is missing; a header line never
            # starts with "--boundary" in real mail.
            spans = _split(data, start, end, boundaries[0])
        elif ctype in ("message/rfc822", "message/global") and body < end:
            spans = ((body, end),)
        for part_start, part_end in spans:
            # Counted as they are found, so a flood of parts is cut short at the limit.
            parts += 1
            if parts > MAX_PARTS:
                raise MimeError(f"more than {MAX_PARTS} MIME parts")
            if depth + 1 > MAX_DEPTH:
                raise MimeError(f"MIME parts nested more than {MAX_DEPTH} levels deep")
            children.append((*_read_part_headers(data, part_start, part_end), part_end,
                             depth + 1))
        # Reversed so that parts are checked in document order (the stack pops the last).
        stack.extend(reversed(children))
    return None


def _split(data: bytes, start: int, end: int, boundary: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every part between the delimiter lines of `boundary`.

    Any line that starts with "--boundary" counts as a delimiter, and scanning goes on
    after the close delimiter: stricter parsers ignore such lines, but some mail clients
    honour them, and a part they would show must be checked. A missing close delimiter
    is fine: the last part runs to the end of the enclosing part.
    """
    delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
    marker = b"\r\n" + delimiter
    if data.startswith(delimiter, start, end):
        line = start
    else:
        found = data.find(marker, start, end)
        if found < 0:
            return  # no parts at all: nothing to check, a receiver shows the preamble
        line = found + 2
    while True:
        eol = data.find(b"\r\n", line, end)
        if eol < 0:
            return  # the delimiter is the last line: no part follows
        # The CRLF before the next delimiter belongs to that delimiter (RFC 2046 5.1.1);
        # searching from this line's own CRLF finds an empty part as well.
        found = data.find(marker, eol, end)
        part_end = end if found < 0 else found
        if part_end > eol + 2:  # an empty part (or epilogue) has nothing to check
            yield eol + 2, part_end
        if found < 0:
            return
        line = found + 2


def _read_part_headers(data: bytes, start: int, end: int) -> tuple[list[tuple[str, str]], int, int]:
    """A part's Content-Type/-Disposition fields, its start and its body's start."""
    if data.startswith(b"\r\n", start, end):
        return [], start, start + 2  # no header fields: text/plain by default
    limit = min(end, start + MAX_PART_HEADER)
    blank = data.find(b"\r\n\r\n", start, limit)
    stop, body = (blank + 2, blank + 4) if blank >= 0 else (limit, end)
    watched = [
        (match.group(1).decode("ascii").lower(),
         match.group(2).replace(b"\r\n", b"").decode("utf-8", "surrogateescape").strip())
        for match in _PART_FIELD.finditer(data[start:stop])
    ]
    return watched, start, body


def _parse_params(value: str) -> tuple[str, dict[str, list[str]]]:
    """The lower-case type of a Content-Type/-Disposition value and every parameter value.

    Parameters are lists because a name can repeat (filename and filename* both given,
    or twice): every value is checked, since clients differ in which one they show.
    RFC 2231 continuations and charsets are assembled here.
    """
    head, _, _ = value.partition(";")
    kind = _uncomment(head).lower()
    params: dict[str, list[str]] = {}
    extended: dict[str, list[tuple[int, bool, str]]] = {}
    for match in _PARAM.finditer(value, len(head)):
        name, quoted, after, bare = match.groups()
        name = name.lower()
        values = []
        if quoted is not None:
            inner = quoted[1:-1] if len(quoted) > 1 and quoted.endswith('"') else quoted[1:]
            values.append(_QUOTED_PAIR.sub(r"\1", inner) if "\\" in inner else inner)
            after = _uncomment(after)
            if after:
                # `filename="a.pdf".exe`: some clients glue the rest on, so check that too.
                values.append(values[0] + after)
        else:
            values.append(_uncomment(bare))
        raw = values[0]
        ext = _EXTENDED.match(name) if "*" in name else None
        if ext is None:
            params.setdefault(name, []).extend(values)
        else:
            number = int(ext.group(2)) if ext.group(2) is not None else 0
            extended.setdefault(ext.group(1), []).append((number, name.endswith("*"), raw))
    for name, sections in extended.items():
        params.setdefault(name, []).append(_rfc2231(sorted(sections)))
    return kind, params


def _uncomment(text: str) -> str:
    # The guard is for speed: this runs for every parameter of every part.
    return (_COMMENT.sub("", text) if "(" in text else text).strip()


def _rfc2231(sections: list[tuple[int, bool, str]]) -> str:
    """Join RFC 2231 sections: charset'language' on the first, %XX in encoded ones."""
    charset = "utf-8"
    pieces: list[bytes] = []
    for index, (_, encoded, text) in enumerate(sections):
        if encoded and index == 0 and text.count("'") >= 2:
            charset, _, text = text.split("'", 2)
        raw = text.encode("utf-8", "surrogateescape")
        pieces.append(urllib.parse.unquote_to_bytes(raw) if encoded else raw)
    return _decode(b"".join(pieces), charset or "utf-8")


def _decode(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset, "replace")
    except LookupError:  # unknown charset, or a codec such as "rot13" that is not text
        return raw.decode("utf-8", "replace")


def _decode_words(text: str) -> str:
    """RFC 2047 encoded-words decoded (Outlook puts them in quoted names, RFC 2047 5 aside)."""
    def word(match: re.Match[str]) -> str:
        charset, encoding, payload = match.groups()
        try:
            if encoding in "bB":
                raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                raw = binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)
        except (binascii.Error, ValueError):
            return match.group(0)
        return _decode(raw, charset or "utf-8")

    # White space between adjacent encoded-words is not part of the text (RFC 2047 6.2).
    return _ENCODED_WORD.sub(word, _BETWEEN_WORDS.sub(r"\1\2", text))


def _check_name(name: str) -> Blocked | None:
    # Both the name as written and decoded: clients that do not decode encoded-words
    # show the raw text, and the raw text is what some of them save under.
    candidates = [name, _decode_words(name)] if "=?" in name else [name]
    for candidate in candidates:
        extension = blocked_extension(candidate)
        if extension is not None:
            return Blocked(candidate, extension)
    return None
