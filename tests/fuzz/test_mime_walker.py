"""Fuzz target: the MIME walker (smtprelay/mail/mime.py), strict and lenient.

Trees of parts are generated (multiparts of any subtype nested up to four deep,
forwarded messages, leaves with charsets, transfer encodings and file names, plain or
RFC 2231), written out with CRLF, LF or CR line ends, and walked: each reading must
find the tree that was written (the strict one looking into forwarded messages and
counting a non-empty epilogue as a part, the lenient one not), each leaf's body and
file names as written. Then the same messages, cut and spliced at random, must walk
without any error but MimeError (strict) or any error at all (lenient), and with every
part's offsets inside the input and in document order.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.mail.mime import MimeError, Part, Walk, parameters
from tests.fuzz import corpus

_TEXT = st.text(st.sampled_from("abc XYZ012.,;!?_=<>é\t"), max_size=30)
_NAME = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=20)


@dataclass
class Node:
    content_type: str
    header: list[str]  # the part's fields, without line ends
    lines: list[str] = field(default_factory=list)  # a leaf's body
    children: list[Node] = field(default_factory=list)  # multipart/*, message/*
    boundary: str = ""
    preamble: list[str] = field(default_factory=list)
    epilogue: list[str] = field(default_factory=list)
    filenames: list[str] = field(default_factory=list)


def _encoded(name: str, parameter: str, sections: int) -> str:
    """An RFC 2231 value: utf-8'' and %XX, cut into at most `sections` numbered sections
    (never inside a %XX)."""
    pieces = re.findall(r"%[0-9A-F]{2}|.", urllib.parse.quote(name.encode("utf-8"), safe=""))
    size = -(-len(pieces) // sections)
    chunks = ["".join(pieces[at:at + size]) for at in range(0, len(pieces), size)]
    return "; ".join(f"{parameter}*{number}*=" + ("utf-8''" if number == 0 else "") + chunk
                     for number, chunk in enumerate(chunks))


@st.composite
def _file_name(draw: st.DrawFn, parameter: str) -> tuple[str, str]:
    """(the parameter as written, the name it says)."""
    name = draw(_NAME)
    if name.isascii() and '"' not in name and "\\" not in name and draw(st.booleans()):
        return f'{parameter}="{name}"', name
    return _encoded(name, parameter, draw(st.integers(1, 3))), name


_counter = iter(range(10**9))


@st.composite
def _tree(draw: st.DrawFn, depth: int = 0) -> Node:
    kind = draw(st.sampled_from(["leaf", "leaf", "multipart", "message"]) if depth < 4
                else st.just("leaf"))
    if kind == "multipart":
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report",
                                        "signed"]))
        # A serial first: no delimiter line can start with another part's delimiter.
        boundary = f"{next(_counter):09d}" + draw(
            st.from_regex(r"[A-Za-z0-9'()+_,./=?]{0,20}", fullmatch=True))
        # RFC 2045 5.1: a value with tspecials must be quoted.
        quoted = draw(st.booleans()) or any(c in "()<>@,;:\\\"/[]?=" for c in boundary)
        return Node(f"multipart/{subtype}",
                    [f'Content-Type: multipart/{subtype}; boundary='
                     + (f'"{boundary}"' if quoted else boundary)],
                    children=draw(st.lists(_tree(depth + 1), min_size=1, max_size=3)),
                    boundary=boundary, preamble=draw(st.lists(_TEXT, max_size=2)),
                    epilogue=draw(st.lists(_TEXT.filter(bool), max_size=2)))
    if kind == "message":
        return Node("message/rfc822", ["Content-Type: message/rfc822"],
                    children=[draw(_tree(depth + 1))])
    media = draw(st.sampled_from(["text/plain", "text/html", "application/pdf",
                                  "image/png"]))
    header = [f"Content-Type: {media}; charset=" + draw(st.sampled_from(["utf-8", "us-ascii",
                                                                         '"iso-8859-1"']))]
    filenames = []
    if draw(st.booleans()):
        written, name = draw(_file_name("name"))
        header[0] += "; " + written
        filenames.append(name)
    if draw(st.booleans()):
        written, name = draw(_file_name("filename"))
        header.append("Content-Disposition: attachment; " + written)
        filenames.append(name)
    if draw(st.booleans()):
        header.append("Content-Transfer-Encoding: "
                      + draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable"])))
    return Node(media, header, lines=draw(st.lists(_TEXT, max_size=4)), filenames=filenames)


def _render(node: Node, nl: str) -> str:
    """The part as written: fields, the empty line, the body (no line end after it)."""
    head = nl.join(node.header) + nl + nl
    if node.content_type.startswith("multipart/"):
        body = "".join(line + nl for line in node.preamble)
        body += "".join(f"--{node.boundary}{nl}{_render(child, nl)}{nl}"
                        for child in node.children)
        body += f"--{node.boundary}--"
        if node.epilogue:
            body += nl + nl.join(node.epilogue)
        return head + body
    if node.children:
        return head + _render(node.children[0], nl)
    return head + nl.join(node.lines)


def _expected(node: Node, strict: bool, path: tuple[int, ...] = ()
              ) -> list[tuple[tuple[int, ...], str]]:
    out = [(path, node.content_type)]
    if node.content_type.startswith("message/") and not strict:
        return out
    for index, child in enumerate(node.children, 1):
        out += _expected(child, strict, (*path, index))
    if strict and node.epilogue:
        # Read past the close delimiter, as some clients show it: a part of its own.
        out.append(((*path, len(node.children) + 1), "text/plain"))
    return out


def _leaves(node: Node, path: tuple[int, ...] = ()) -> dict[tuple[int, ...], Node]:
    if node.content_type.startswith("message/"):
        return {}
    if not node.children:
        return {path: node}
    found: dict[tuple[int, ...], Node] = {}
    for index, child in enumerate(node.children, 1):
        found.update(_leaves(child, (*path, index)))
    return found


def _message(tree: Node, nl: str) -> bytes:
    return (f"From: a@example.com{nl}MIME-Version: 1.0{nl}" + _render(tree, nl)).encode()


def _check_offsets(data: bytes, parts: list[Part]) -> None:
    previous = -1
    for part in parts:
        assert 0 <= part.header_start <= part.header_end <= part.body_start \
            <= part.body_end <= len(data)
        assert part.header_start > previous or part.header_start == previous == 0
        previous = part.header_start


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_tree(), st.sampled_from(["\r\n", "\r\n", "\n", "\r"]))
def test_a_written_tree_walks_back_as_written(tree: Node, nl: str) -> None:
    data = _message(tree, nl)
    readings = [(False, True)] if nl != "\r\n" else [(True, False), (False, False),
                                                     (False, True)]
    for strict, any_newline in readings:
        walk = Walk(data, strict=strict, any_newline=any_newline)
        parts = list(walk)
        _check_offsets(data, parts)
        assert [(p.path, p.content_type) for p in parts] == _expected(tree, strict)
        assert walk.problems == []
        by_path = {p.path: p for p in parts}
        for path, leaf in _leaves(tree).items():
            part = by_path[path]
            assert list(part.filenames) == leaf.filenames
            if not strict:
                assert part.body == nl.join(leaf.lines).encode()


_SPLICE = st.sampled_from([
    b"\r\n", b"\n", b"\r", b"--", b"--000000", b"\r\n--", b"--\r\n", b"Content-Type: ",
    b"multipart/mixed; boundary=", b"message/rfc822\r\n\r\n", b'"', b";", b"*0*=", b"%",
    b"\x00", b"\xff", b"(", b")", b"\r\n\r\n",
])


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_tree(), st.data())
def test_cut_and_spliced_trees_walk_without_surprises(tree: Node, data: st.DataObject) -> None:
    raw = bytearray(_message(tree, "\r\n"))
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        at = data.draw(st.integers(0, len(raw)), label="at")
        edit = data.draw(st.sampled_from(["delete", "insert", "duplicate"]), label="edit")
        if edit == "delete":
            del raw[at:at + data.draw(st.integers(1, 50), label="length")]
        elif edit == "insert":
            raw[at:at] = data.draw(st.one_of(_SPLICE, st.binary(max_size=8)), label="bytes")
        else:
            raw[at:at] = raw[at:at + data.draw(st.integers(1, 200), label="length")]
    message = bytes(raw)
    strict_parts: list[Part] = []
    try:
        strict_parts.extend(Walk(message, strict=True))
    except MimeError:
        pass
    _check_offsets(message, strict_parts)
    for any_newline in (False, True):
        walk = Walk(message, strict=False, any_newline=any_newline,
                    max_input=data.draw(st.sampled_from([None, len(message) // 2]),
                                        label="max_input"))
        parts = list(walk)
        _check_offsets(message, parts)
        assert parts[0].path == ()


@given(_NAME, st.integers(1, 4), st.sampled_from(["filename", "name", "x-b"]))
def test_rfc2231_values_read_back(name: str, sections: int, parameter: str) -> None:
    kind, found = parameters(f"attachment; {_encoded(name, parameter, sections)}")
    assert kind == "attachment"
    assert found[parameter] == [name]


def test_replay_deep_nesting_and_floods() -> None:
    """Limits, not recursion: 5,000 nested multiparts and 5,000 empty parts."""
    nested = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                      for i in range(5000))
    flood = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\nx\r\n" * 5000
    for data in (nested, flood, corpus.HEADER_SECTIONS["deep-from"]):
        try:
            list(Walk(data, strict=True))
        except MimeError:
            pass
        walk = Walk(data, strict=False, any_newline=True)
        assert list(walk)
