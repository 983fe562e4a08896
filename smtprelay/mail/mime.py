"""One walker over a message's MIME structure, with a strict and a lenient reading.

It reads the raw bytes and never builds an ``email.message`` tree: part boundaries are
found with ``bytes.find``, only header blocks are read, and no body is copied or
decoded. Every part comes with its byte offsets, so a caller can slice it out, or
splice an edit into it and keep every other byte as it was.

What the three callers need (written down when this walker replaced theirs):

- ``policy.attachments`` (strict). The file names of every part (``name=`` and
  ``filename=`` in every Content-Type and Content-Disposition field, RFC 2231
  continuations and charsets decoded), forwarded messages included, to refuse SES's
  blocked types. Runs on the event loop for every message, so it must be cheap and
  bounded. It must see *at least* the parts any mail client would show, so it reads
  generously: any line that starts with the delimiter splits, parts after the close
  delimiter count, a part's fields are found past garbled lines, and delimiters are
  searched from the start of the part (a missing empty line after its fields must not
  hide them). What it cannot walk at all, a multipart without a boundary or more than
  MAX_PARTS parts or MAX_DEPTH levels, it refuses (MimeError, then BAD_MIME): an
  attachment beyond it would go unchecked.
- ``transform.links`` (lenient, CRLF). The inline text/html and text/plain leaves
  (not attachments, not inside forwarded messages) with the offsets of each part's
  field block and body, so edits go back byte for byte and a
  Content-Transfer-Encoding field can be replaced or added; the transfer encoding
  and the charset. A part it cannot read is left alone and reported, never refused.
  Its input came over SMTP, where a bare CR or LF is refused: CRLF only.
- ``feedback.mime`` (lenient, any line end). Every part of a DSN or ARF report in
  document order, not looking into message/* parts (a returned original is read by
  its header section only); content types, parameters (report-type, charset),
  transfer encodings, bodies, and the root's header fields. Bounce mail is messy (LF
  or lone CR line ends, missing empty lines or close delimiters, junk) and must still
  be read, within bounds: ``max_input`` octets, MAX_PARTS parts, MAX_DEPTH levels.

Hence two readings. **Strict** (CRLF only) reads as described for attachments and
raises MimeError. **Lenient** reads RFC 2045/2046 the way Python's ``email`` package
does, and never raises: a part's fields end at the first line that is not a field
(the empty line, or a line of body text when the empty line is missing); a delimiter
is a line of exactly ``--boundary``, ``--`` and blanks allowed after it; the close
delimiter ends the parts; the line end before a delimiter belongs to it; two
delimiter lines in a row make no empty part between them; a missing close delimiter
lets the last part run to the end; message/* parts are leaves; a part without
Content-Type is text/plain (message/rfc822 in a multipart/digest), and a type
without exactly one "/" is text/plain. What it cannot read it leaves out and records
in ``Walk.problems``: a multipart without a usable (ASCII, non-empty) boundary is
yielded but not searched; parts beyond the limits are not yielded.

Both readings share the parameter parser (``parameters``), which errs towards
reading what mail clients read: comments dropped, quoted-pairs undone, a missing
closing quote tolerated, RFC 2231 sections joined and decoded.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

MAX_DEPTH = 32
MAX_PARTS = 1000
# Strict reading only: a part's header block is read at most this far. Real part
# headers are well under 4 KiB, and a part without an empty line would otherwise make
# us scan its whole body for fields.
MAX_PART_HEADER = 16 * 1024

Params = Mapping[str, Sequence[str]]

# A parameter: `; name = value`, the value a quoted string (the closing quote may be
# missing in broken mail; text after it is kept apart, see parameters) or anything up
# to the next `;` (unquoted values containing `=` or spaces are common in the wild even
# though RFC 2045 forbids them).
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*(?:("[^"\\]*(?:\\.[^"\\]*)*"?)([^;]*)|([^;]*))')
_QUOTED_PAIR = re.compile(r"\\(.)")
_COMMENT = re.compile(r"\([^()]*\)")
# RFC 2231 section 3/4: name*, name*0, name*0*, name*1 ... (a section number beyond
# nine digits is nobody's, and int() refuses more than 4,300)
_EXTENDED = re.compile(r"^([^*]+)\*(?:([0-9]{1,9})\*?|)$")

# Strict: any field at the start of a line, garbled lines in between skipped (inside a
# body nothing vouches for the fields, and a garbled line must not hide a
# Content-Disposition after it).
_STRICT_FIELD = re.compile(rb"^([\x21-\x39\x3b-\x7e]+)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)",
                           re.MULTILINE)
# The message's own header section, as smtprelay.mail.headers reads it (what the
# identity checks saw): lines end at CRLF only, a bare CR or LF is part of a line.
_LINE_TEXT = rb"[^\r]*+(?:\r(?!\n)[^\r]*+)*+"  # up to the CRLF
_ROOT_FIELD = re.compile(rb"(?:\A|(?<=\r\n))([\x21-\x39\x3b-\x7e]+)[ \t]*:(" + _LINE_TEXT
                         + rb"(?:\r\n[ \t]" + _LINE_TEXT + rb")*+)")
# Lenient: what Python's email parser takes for a header line (email.feedparser's
# headerRE); the first line that is not one ends the fields.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_ANY_NEWLINE = re.compile(rb"\r\n?|\n")
_DELIMITER_END = re.compile(rb"(--)?[ \t]*+(?:\r\n|\Z)")
_DELIMITER_END_ANY = re.compile(rb"(--)?[ \t]*+(?:\r\n?|\n|\Z)")
_MESSAGE_TYPES = ("message/rfc822", "message/global")


class MimeError(ValueError):
    """The MIME structure cannot be walked (strict reading only)."""


class Field(NamedTuple):
    # A NamedTuple, not a frozen dataclass: a message has dozens of fields, and this
    # is built several times faster.
    name: str  # as written before the colon
    raw: bytes  # the value as written: folds kept, the line end after it dropped
    any_newline: bool = False  # folded at any line end, not only at CRLF

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def value(self) -> str:
        """Unfolded, decoded as UTF-8 (invalid octets kept as surrogates), stripped."""
        return _unfold(self.raw, self.any_newline).decode("utf-8", "surrogateescape").strip()


class Part(NamedTuple):
    # A NamedTuple for the same reason as Field: every message has at least one.
    path: tuple[int, ...]  # child numbers from the root: () the root, (2, 1) in the second part
    # Offsets into `data`: the field block (up to the empty line) and the body.
    header_start: int
    header_end: int
    body_start: int
    body_end: int
    fields: tuple[Field, ...]
    content_type: str  # lower case, "text/plain" when not given, 8-bit octets as U+FFFD
    params: Params  # of that Content-Type: lower-case names, every value in order
    disposition: str  # lower case, "" without Content-Disposition
    disposition_params: Params
    transfer_encoding: str  # lower case, "" when not given, 8-bit octets as U+FFFD
    # Every filename= and name= value of every Content-Disposition and Content-Type
    # field, in the order of the fields: the names a mail client might show.
    filenames: tuple[str, ...]
    data: bytes  # the whole input, which the offsets index

    def __repr__(self) -> str:
        return (f"Part(path={self.path}, header={self.header_start}:{self.header_end}, "
                f"body={self.body_start}:{self.body_end}, "
                f"content_type={self.content_type!r})")

    @property
    def depth(self) -> int:
        return len(self.path)

    @property
    def number(self) -> str:
        """The IMAP section number ("1.2"); "" for the root."""
        return ".".join(map(str, self.path))

    @property
    def header(self) -> bytes:
        return self.data[self.header_start:self.header_end]

    @property
    def body(self) -> bytes:
        return self.data[self.body_start:self.body_end]

    def param(self, name: str) -> str | None:
        """The first value of a Content-Type parameter (`name` in lower case)."""
        values = self.params.get(name)
        return values[0] if values else None

    @property
    def charset(self) -> str | None:
        """The charset parameter in lower case; None when absent or not ASCII."""
        value = self.param("charset")
        return value.lower() if value is not None and value.isascii() else None

    @property
    def filename(self) -> str | None:
        values = self.disposition_params.get("filename")
        return values[0] if values else None

    @property
    def name(self) -> str | None:
        return self.param("name")


@dataclass(frozen=True, slots=True)
class Problem:
    """Lenient reading: what was left out, and where."""

    path: tuple[int, ...]  # the multipart not searched, or the first part left out
    kind: Literal["boundary", "depth", "parts"]


class Walk:
    """The parts of `data` in document order (iterate it); see the module docstring.

    `max_input`: octets beyond it are not read (``truncated`` says so). The strict
    reading raises MimeError while iterating, after yielding the parts before the
    problem; the lenient one records it in ``problems`` and goes on.
    """

    def __init__(self, data: bytes, *, strict: bool, any_newline: bool = False,
                 max_input: int | None = None, max_depth: int = MAX_DEPTH,
                 max_parts: int = MAX_PARTS,
                 root_fields: tuple[Field, ...] | None = None) -> None:
        """`root_fields`: the strict reading's root header fields when the caller has
        read them already (`fields_of`), so the header section is not read twice."""
        if strict and any_newline:
            raise ValueError("the strict reading is for CRLF messages only")
        self.data = data
        self.root_fields = root_fields
        self.strict = strict
        self.any_newline = any_newline
        self.end = len(data) if max_input is None else min(len(data), max_input)
        self.truncated = self.end < len(data)
        self.max_depth = max_depth
        self.max_parts = max_parts
        self.problems: list[Problem] = []

    def __iter__(self) -> Iterator[Part]:
        self.problems = []
        return self._strict() if self.strict else self._lenient()

    def _strict(self) -> Iterator[Part]:
        data = self.data
        stack = [self._strict_root()]
        count = 1
        while stack:
            part = stack.pop()
            # Yielded before its children are looked for: a caller that stops at this
            # part (a blocked name) never sees an error further down.
            yield part
            spans: Iterator[tuple[int, int]] | tuple[tuple[int, int], ...] = ()
            if part.content_type.startswith("multipart/"):
                boundary = next((b for b in part.params.get("boundary", ()) if b), None)
                if boundary is None:
                    raise MimeError(f"{part.content_type} without a boundary parameter")
                # From the part's start, not its body: see the module docstring.
                spans = _split_strict(data, part.header_start, part.body_end, _octets(boundary))
            elif part.content_type in _MESSAGE_TYPES and part.body_start < part.body_end:
                spans = ((part.body_start, part.body_end),)
            children = []
            for index, (start, end) in enumerate(spans, 1):
                # Counted as they are found, so a flood of parts is cut short at the limit.
                count += 1
                if count > self.max_parts:
                    raise MimeError(f"more than {self.max_parts} MIME parts")
                if part.depth + 1 > self.max_depth:
                    raise MimeError(f"MIME parts nested more than {self.max_depth} levels deep")
                children.append(self._strict_child((*part.path, index), start, end))
            stack.extend(reversed(children))  # the stack pops the last: document order

    def _strict_root(self) -> Part:
        data, end = self.data, self.end
        if data.startswith(b"\r\n", 0, end):
            header_end, body = 0, 2
        else:
            blank = data.find(b"\r\n\r\n", 0, end)
            header_end, body = (blank + 2, blank + 4) if blank >= 0 else (end, end)
        fields = self.root_fields
        if fields is None:
            fields = _strict_fields(data, 0, header_end, root=True)
        return self._part((), 0, header_end, body, end, fields, "text/plain")

    def _strict_child(self, path: tuple[int, ...], start: int, end: int) -> Part:
        data = self.data
        if data.startswith(b"\r\n", start, end):
            return self._part(path, start, start, start + 2, end, (), "text/plain")
        limit = min(end, start + MAX_PART_HEADER)
        blank = data.find(b"\r\n\r\n", start, limit)
        header_end, body = (blank + 2, blank + 4) if blank >= 0 else (limit, end)
        return self._part(path, start, header_end, body, end,
                          _strict_fields(data, start, header_end, root=False), "text/plain")

    def _lenient(self) -> Iterator[Part]:
        data = self.data
        stack = [self._lenient_part((), 0, self.end, "text/plain")]
        count = 1
        while stack:
            part = stack.pop()
            yield part
            if not part.content_type.startswith("multipart/"):
                continue
            boundary = (part.param("boundary") or "").rstrip()
            if not boundary or not boundary.isascii():
                self.problems.append(Problem(part.path, "boundary"))
                continue
            default = "message/rfc822" if part.content_type == "multipart/digest" \
                else "text/plain"
            children = []
            spans = _split_lenient(data, part.body_start, part.body_end,
                                   boundary.encode("ascii"), self.any_newline)
            for index, (start, end) in enumerate(spans, 1):
                path = (*part.path, index)
                if count >= self.max_parts:
                    self.problems.append(Problem(path, "parts"))
                    break
                if part.depth >= self.max_depth:
                    self.problems.append(Problem(path, "depth"))
                    break
                count += 1
                children.append(self._lenient_part(path, start, end, default))
            stack.extend(reversed(children))

    def _lenient_part(self, path: tuple[int, ...], start: int, end: int,
                      default: str) -> Part:
        fields, header_end, body = _lenient_fields(self.data, start, end, self.any_newline)
        return self._part(path, start, header_end, body, end, fields, default)

    def _part(self, path: tuple[int, ...], header_start: int, header_end: int,
              body_start: int, body_end: int, fields: tuple[Field, ...],
              default: str) -> Part:
        content_type: str | None = None
        disposition: str | None = None
        transfer_encoding: str | None = None
        params: Params = {}
        disposition_params: Params = {}
        filenames: list[str] = []
        lenient = not self.strict
        for name, raw, any_newline in fields:
            key = name.lower()
            if key == "content-type" or key == "content-disposition":
                value = _unfold(raw, any_newline).decode("utf-8", "surrogateescape")
                kind, found = parameters(value, angle_brackets=lenient)
                # filename= belongs in Content-Disposition and name= in Content-Type,
                # but clients read either in either place.
                filenames += found.get("filename", ())
                filenames += found.get("name", ())
                if key == "content-disposition":
                    if disposition is None:
                        disposition, disposition_params = kind, found
                # The first Content-Type decides, as in Python's email; the strict
                # reading passes over one without a type, as it always has.
                elif content_type is None or (self.strict and not content_type):
                    content_type, params = kind, found
            elif key == "content-transfer-encoding" and transfer_encoding is None:
                value = _unfold(raw, any_newline).decode("utf-8", "surrogateescape")
                transfer_encoding = token(value.strip()).lower()
        if content_type is None:
            content_type = default
        elif lenient and content_type.count("/") != 1:
            content_type = "text/plain"  # RFC 2045 5.2
        elif not content_type:
            content_type = "text/plain"
        elif not content_type.isascii():
            content_type = token(content_type)
        return Part(path, header_start, header_end, body_start, body_end, fields,
                    content_type, params, disposition or "", disposition_params,
                    transfer_encoding or "", tuple(filenames), self.data)


def parameters(value: str, *, angle_brackets: bool = False) -> tuple[str, dict[str, list[str]]]:
    """The lower-case type of a Content-Type/-Disposition value and every parameter value.

    Parameters are lists because a name can repeat (filename and filename* both given,
    or twice), and because text glued after a quoted value (`filename="a.pdf".exe`)
    adds a second value, read as some clients read it. Plain values come first, in
    order; values joined from RFC 2231 sections (charsets and %XX decoded) after them.
    With `angle_brackets`, an unquoted value in <> loses them, as in Python's email
    (``boundary=<x>`` is boundary "x" there).
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
                values.append(values[0] + after)
        else:
            bare = _uncomment(bare)
            if angle_brackets and len(bare) > 1 and bare[0] == "<" and bare[-1] == ">":
                bare = bare[1:-1]
            values.append(bare)
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
        raw = _octets(text)
        pieces.append(urllib.parse.unquote_to_bytes(raw) if encoded else raw)
    return decode_text(b"".join(pieces), charset or "utf-8")


def decode_text(raw: bytes, charset: str) -> str:
    """`raw` in `charset`, UTF-8 when Python does not know it; never an error."""
    try:
        return raw.decode(charset, "replace")
    # LookupError: an unknown charset, or a codec such as "rot13" that is not text;
    # ValueError: a name the codec registry cannot even look up (an 8-bit octet in
    # it, a lone surrogate here, raises UnicodeEncodeError; a NUL, ValueError).
    except (LookupError, ValueError):
        return raw.decode("utf-8", "replace")


def token(text: str) -> str:
    """A token (a type, a transfer encoding, a charset name) with each 8-bit octet it
    was read from as a replacement character: it can match nothing, and it can reach a
    log (a lone surrogate cannot)."""
    return text if text.isascii() else _octets(text).decode("ascii", "replace")


def _octets(text: str) -> bytes:
    """`text` as the octets it was read from (UTF-8, surrogateescape undone); never an
    error: some charsets of RFC 2231 values (unicode_escape, UTF-7) decode to lone
    surrogates that surrogateescape cannot take, and those go as UTF-8 would write
    them if it could."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


class _Located(Protocol):
    """A header field as smtprelay.mail.headers found it: name and byte offsets."""

    @property
    def name(self) -> str: ...
    @property
    def start(self) -> int: ...
    @property
    def end(self) -> int: ...


def fields_of(data: bytes, located: Sequence[_Located]) -> tuple[Field, ...]:
    """The strict reading's root fields, from the fields the header reader found in
    `data` (mail.headers.parse_header_section): no second pass over the section."""
    fields = []
    for field in located:
        colon = data.index(b":", field.start, field.end)
        end = field.end - 2 if data.startswith(b"\r\n", field.end - 2, field.end) else field.end
        fields.append(Field(field.name, data[colon + 1:end]))
    return tuple(fields)


def _unfold(raw: bytes, any_newline: bool) -> bytes:
    if b"\r" not in raw and b"\n" not in raw:
        return raw  # the usual case, unfolded already
    raw = raw.replace(b"\r\n", b"")
    return raw.replace(b"\r", b"").replace(b"\n", b"") if any_newline else raw


def _strict_fields(data: bytes, start: int, stop: int, *, root: bool) -> tuple[Field, ...]:
    # pos/endpos instead of a slice: no copy. A part starts just after a line end, so
    # "^" matches at `start` as it would at the start of a slice.
    # findall and a list: twice as fast as match objects, on every message.
    pattern = _ROOT_FIELD if root else _STRICT_FIELD
    return tuple([Field(name.decode("ascii"), raw)
                  for name, raw in pattern.findall(data, start, stop)])


def _lenient_fields(data: bytes, start: int, end: int,
                    any_newline: bool) -> tuple[tuple[Field, ...], int, int]:
    """The fields of the part in data[start:end], where they end and where its body starts.

    As email.feedparser reads them: the fields end at the first line that is not a
    field or a continuation (an empty line is dropped, any other starts the body); a
    continuation before any field and a "From " line (mbox) are not fields.
    """
    lines: list[tuple[int, int]] = []
    header_end = body = end
    position = start
    while position < end:
        if any_newline:
            newline = _ANY_NEWLINE.search(data, position, end)
            eol, after = (newline.start(), newline.end()) if newline else (end, end)
        else:
            eol = data.find(b"\r\n", position, end)
            eol, after = (eol, eol + 2) if eol >= 0 else (end, end)
        if eol == position:  # the empty line
            header_end, body = position, after
            break
        if not _HEADER_LINE.match(data, position, eol):
            header_end = body = position
            break
        lines.append((position, eol))
        position = after
    fields: list[Field] = []
    name = ""
    value_start = value_end = 0
    for line_start, line_end in lines:
        if data[line_start] in b" \t":
            if name:
                value_end = line_end
            continue
        if name:
            fields.append(_lenient_field(data, name, value_start, value_end, any_newline))
            name = ""
        if data.startswith(b"From ", line_start, line_end):
            continue
        colon = data.find(b":", line_start, line_end)
        if colon > line_start:
            name = data[line_start:colon].decode("ascii")
            value_start, value_end = colon + 1, line_end
    if name:
        fields.append(_lenient_field(data, name, value_start, value_end, any_newline))
    return tuple(fields), header_end, body


def _lenient_field(data: bytes, name: str, start: int, end: int, any_newline: bool) -> Field:
    return Field(name, data[start:end].lstrip(b" \t").rstrip(b"\r\n"), any_newline)


def _split_strict(data: bytes, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of every part between the delimiter lines of `boundary`, strictly read.

    Any line that starts with "--boundary" counts as a delimiter, and scanning goes on
    after the close delimiter: stricter parsers ignore such lines, but some mail clients
    honour them, and a part they would show must be checked. A missing close delimiter
    is fine: the last part runs to the end of the enclosing part. Empty parts (and an
    empty epilogue) hold nothing to check and are not yielded.
    """
    delimiter = b"--" + boundary
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
        if part_end > eol + 2:
            yield eol + 2, part_end
        if found < 0:
            return
        line = found + 2


def _split_lenient(data: bytes, start: int, end: int, boundary: bytes,
                   any_newline: bool) -> Iterator[tuple[int, int]]:
    """(start, end) of each body part of the multipart body data[start:end] (RFC 2046 5.1.1).

    A delimiter line is "--boundary", then "--" for the close delimiter, then blanks;
    the line end before it belongs to it. The close delimiter ends the parts (the
    epilogue is nobody's); without one the last part runs to `end`.
    """
    marker = b"--" + boundary
    rest = _DELIMITER_END_ANY if any_newline else _DELIMITER_END
    # A delimiter starts a line: searched together with the line end before it, which
    # also keeps a body full of dashes from stopping the search at every octet.
    before = re.compile(rb"[\r\n]" + re.escape(marker)) if any_newline else None
    crlf_marker = b"\r\n" + marker
    part_start = -1
    candidate = start if data.startswith(marker, start, end) else -1
    search = start
    while True:
        if candidate < 0:
            if before is not None:
                found = before.search(data, search, end)
                if found is None:
                    break
                candidate = found.start() + 1
            else:
                at = data.find(crlf_marker, search, end)
                if at < 0:
                    break
                candidate = at + 2
            search = candidate
        match = rest.match(data, candidate + len(marker), end)
        if match is not None:
            # Right after another delimiter line there is no part (as in Python's email).
            if part_start >= 0 and candidate > part_start:
                # Cut the line end before the delimiter: CRLF, or with any_newline
                # also a lone LF or CR.
                cut = candidate - 1
                if (not any_newline or data[cut] == 0x0A) and cut - 1 >= part_start \
                        and data[cut - 1] == 0x0D:
                    cut -= 1
                yield part_start, max(part_start, cut)
            if match.group(1):
                return
            part_start = match.end()
        candidate = -1
    if part_start >= 0:
        yield part_start, end
