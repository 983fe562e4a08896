"""The MIME walker (smtprelay.mail.mime): structure, exact offsets, both readings, limits.

The callers' own tests (attachments in tests/unit/transform/test_hygiene.py, links in
test_links.py, feedback in tests/unit/feedback) cover what each makes of the parts; these
pin the walk itself, and its properties on arbitrary input.
"""

from __future__ import annotations

import email
import email.policy
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtprelay.mail import mime
from smtprelay.mail.mime import MAX_DEPTH, MAX_PARTS, MimeError, Part, Problem, Walk
from tests.support import examples


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def walk(data: bytes, **options: object) -> list[Part]:
    return list(Walk(data, **options))  # type: ignore[arg-type]


def shape(parts: list[Part]) -> list[tuple[str, str]]:
    return [(part.number, part.content_type) for part in parts]


NESTED = crlf(
    "From: a@example.com\n"
    'Content-Type: multipart/mixed; boundary="outer"\n'
    "\n"
    "preamble\n"
    "--outer\n"
    "Content-Type: multipart/alternative; boundary=alt\n"
    "\n"
    "--alt\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "\n"
    "plain\n"
    "--alt\n"
    "Content-Type: text/html\n"
    "Content-Transfer-Encoding: quoted-printable\n"
    "\n"
    "<p>html</p>\n"
    "--alt--\n"
    "--outer\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "Subject: forwarded\n"
    "Content-Type: application/pdf; name=inner.pdf\n"
    "\n"
    "%PDF\n"
    "--outer\n"
    'Content-Type: application/octet-stream; name="a.bin"\n'
    "Content-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.bin\n"
    "\n"
    "AAAA\n"
    "--outer--\n"
    "epilogue\n")


@pytest.mark.parametrize("strict", [True, False])
def test_nested_multiparts_in_document_order(strict: bool) -> None:
    parts = walk(NESTED, strict=strict)
    expected = [("", "multipart/mixed"), ("1", "multipart/alternative"), ("1.1", "text/plain"),
                ("1.2", "text/html"), ("2", "message/rfc822")]
    if strict:  # a forwarded message is walked into: its attachments count
        expected.append(("2.1", "application/pdf"))
    expected.append(("3", "application/octet-stream"))
    if strict:  # so is text after the close delimiter: some clients show it
        expected.append(("4", "text/plain"))
    assert shape(parts) == expected
    by_number = {part.number: part for part in parts}
    assert by_number["1.1"].charset == "utf-8"
    assert by_number["1.2"].transfer_encoding == "quoted-printable"
    assert by_number["3"].disposition == "attachment"
    assert by_number["3"].filename == "résumé.bin"
    assert by_number["3"].name == "a.bin"
    assert by_number["3"].filenames == ("a.bin", "résumé.bin")  # in the fields' order
    assert by_number["1.2"].depth == 2


@pytest.mark.parametrize("strict", [True, False])
def test_offsets_slice_the_input_exactly(strict: bool) -> None:
    parts = {part.number: part for part in walk(NESTED, strict=strict)}
    html = parts["1.2"]
    assert html.header == crlf("Content-Type: text/html\n"
                               "Content-Transfer-Encoding: quoted-printable\n")
    # The line end before the delimiter belongs to the delimiter (RFC 2046 5.1.1).
    assert html.body == b"<p>html</p>"
    assert NESTED[html.header_start:html.body_start] == html.header + b"\r\n"
    assert parts["3"].body == b"AAAA"
    assert parts[""].header == NESTED[:NESTED.index(b"\r\n\r\n") + 2]
    assert parts[""].body_end == len(NESTED)
    forwarded = parts["2"].body
    assert forwarded.startswith(b"Subject: forwarded\r\n") and forwarded.endswith(b"%PDF")
    if strict:
        assert parts["2.1"].body == b"%PDF"
        assert parts["2.1"].header_start == parts["2"].body_start


def test_the_lenient_reading_reads_fields_like_pythons_email() -> None:
    data = crlf("From MAILER-DAEMON Tue Nov 14 22:13:26 2023\n"
                " a continuation before any field\n"
                "Subject: one\n"
                "  folded\n"
                ": no name\n"
                "Content-Type: text/plain;\n"
                "\tcharset=iso-8859-1\n"
                "X-Name : a blank before the colon ends the fields\n"
                "X-After: body\n"
                "\n"
                "body\n")
    (root,) = walk(data, strict=False)
    assert [(field.name, field.raw) for field in root.fields] == [
        ("Subject", b"one\r\n  folded"), ("Content-Type", b"text/plain;\r\n\tcharset=iso-8859-1")]
    assert root.fields[0].value == "one  folded" and root.fields[1].key == "content-type"
    assert root.charset == "iso-8859-1"
    assert root.body.startswith(b"X-Name : a blank") and root.header_end == root.body_start
    # What Python's email makes of it.
    theirs = email.message_from_bytes(data, policy=email.policy.compat32)
    assert [(name, field.raw.decode()) for name, field in zip(theirs.keys(), root.fields,
                                                               strict=True)] == theirs.items()
    assert root.body.decode() == theirs.get_payload()


@pytest.mark.parametrize("strict", [True, False])
def test_missing_empty_line_after_a_parts_fields(strict: bool) -> None:
    data = crlf('Content-Type: multipart/mixed; boundary="b"\n'
                "\n"
                "--b\n"
                "Content-Type: text/html\n"
                "<p>no empty line</p>\n"
                "--b\n"
                "Content-Type: multipart/alternative; boundary=in\n"
                "--in\n"
                "Content-Type: text/plain; name=x.txt\n"
                "\n"
                "inner\n"
                "--in--\n"
                "--b--\n")
    parts = walk(data, strict=strict)
    assert shape(parts) == [("", "multipart/mixed"), ("1", "text/html"),
                            ("2", "multipart/alternative"), ("2.1", "text/plain")]
    if not strict:  # the fields end at the first line that is not one
        assert parts[1].body == b"<p>no empty line</p>"
        assert parts[1].header_end == parts[1].body_start
    assert parts[3].body == b"inner"


def test_odd_boundaries() -> None:
    def lenient_bodies(head: str, body: str) -> list[bytes]:
        parts = walk(crlf(f"Content-Type: multipart/mixed; {head}\n\n{body}"), strict=False)
        return [part.body for part in parts[1:]]

    # White space after the delimiter, a boundary with "=", spaces and no quotes.
    assert lenient_bodies("boundary=----=_Part_1", "------=_Part_1  \n\nx\n------=_Part_1--\n") \
        == [b"x"]
    assert lenient_bodies('boundary="a b"', "--a b\n\nx\n--a b--\n") == [b"x"]
    # RFC 2231 sections, a comment, angle brackets (as in Python's email), case.
    assert lenient_bodies('BOUNDARY*0="a"; boundary*1="b"', "--ab\n\nx\n--ab--\n") == [b"x"]
    assert lenient_bodies("boundary=ab (a comment)", "--ab\n\nx\n--ab--\n") == [b"x"]
    assert lenient_bodies("boundary=<ab>", "--ab\n\nx\n--ab--\n") == [b"x"]
    # No close delimiter: the last part runs to the end.
    assert lenient_bodies("boundary=b", "--b\n\nx\n--b\n\ny\n") == [b"x", b"y\r\n"]
    # Two delimiter lines in a row make no empty part between them (as in Python's
    # email); an empty line does (a part with no fields and an empty body).
    assert lenient_bodies("boundary=b", "--b\n--b\n\nx\n--b\n\n--b--\n") == [b"x", b""]
    # Lines that only start with the delimiter, and anything after the close delimiter,
    # are text.
    assert lenient_bodies("boundary=b", "--b\n\nx\n--bx\n--b--\n--b\n\nlate\n") == [b"x\r\n--bx"]
    # No delimiter at all: no parts.
    assert lenient_bodies("boundary=b", "just text\n") == []


def test_the_strict_reading_splits_wherever_a_client_might() -> None:
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n"
                "--b\n\nx\n--bjunk\nContent-Type: a/b; name=hidden.exe\n\nAAAA\n"
                "--b--\n--b\nContent-Type: a/b; name=late.exe\n\nAAAA\n")
    parts = walk(data, strict=True)
    assert [part.filenames for part in parts[1:]] == [(), ("hidden.exe",), ("late.exe",)]
    lenient = walk(data, strict=False)
    assert [part.filenames for part in lenient[1:]] == [()]


@pytest.mark.parametrize("head", ["Content-Type: multipart/mixed",
                                  'Content-Type: multipart/mixed; boundary=""',
                                  'Content-Type: multipart/mixed; charset="x"'])
def test_multipart_without_a_boundary(head: str) -> None:
    data = crlf(f"{head}\n\n--x\n\nhi\n--x--\n")
    with pytest.raises(MimeError, match="without a boundary"):
        walk(data, strict=True)
    lenient = Walk(data, strict=False)
    assert shape(list(lenient)) == [("", "multipart/mixed")]
    assert lenient.problems == [Problem((), "boundary")]


def test_a_boundary_that_is_not_ascii() -> None:
    data = b'Content-Type: multipart/mixed; boundary="\xe9"\r\n\r\n--\xe9\r\n\r\nhi\r\n--\xe9--\r\n'
    assert [part.body for part in walk(data, strict=True)] == [data[data.index(b"--"):], b"hi"]
    lenient = Walk(data, strict=False)
    assert len(list(lenient)) == 1 and lenient.problems == [Problem((), "boundary")]


def test_message_parts_are_leaves_of_the_lenient_reading() -> None:
    data = crlf("Content-Type: message/rfc822\n\n"
                "Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n")
    assert shape(walk(data, strict=False)) == [("", "message/rfc822")]
    assert shape(walk(data, strict=True)) == [("", "message/rfc822"), ("1", "multipart/mixed"),
                                              ("1.1", "text/plain")]


def test_default_types() -> None:
    data = crlf("Content-Type: multipart/digest; boundary=b\n\n"
                "--b\n\nSubject: one\n\n1\n--b\nContent-Type: text/html\n\n2\n"
                "--b\nContent-Type: nonsense\n\n3\n--b--\n")
    assert shape(walk(data, strict=False))[1:] == [
        ("1", "message/rfc822"), ("2", "text/html"), ("3", "text/plain")]  # RFC 2046 5.1.5
    assert shape(walk(b"no fields at all", strict=False)) == [("", "text/plain")]


def test_tokens_with_8bit_octets_become_replacement_characters() -> None:
    data = b"Content-Type: text/ht\xe9ml\r\nContent-Transfer-Encoding: 8b\xc3\xa9it\r\n\r\nx"
    for strict in (True, False):
        (part,) = walk(data, strict=strict)
        assert part.content_type == "text/ht\ufffdml"
        assert part.transfer_encoding == "8b\ufffd\ufffdit"


def nested(levels: int) -> bytes:
    body = "Content-Type: text/plain\n\nhi"
    for level in range(levels):
        body = (f"Content-Type: multipart/mixed; boundary=l{level}\n\n"
                f"--l{level}\n{body}\n--l{level}--")
    return crlf(body)


def test_depth_limit() -> None:
    assert walk(nested(MAX_DEPTH), strict=True)[-1].depth == MAX_DEPTH
    with pytest.raises(MimeError, match="nested more than"):
        walk(nested(MAX_DEPTH + 1), strict=True)
    lenient = Walk(nested(MAX_DEPTH + 1), strict=False)
    parts = list(lenient)
    assert len(parts) == MAX_DEPTH + 1 and parts[-1].content_type == "multipart/mixed"
    assert lenient.problems == [Problem((1,) * (MAX_DEPTH + 1), "depth")]


def many(count: int) -> bytes:
    return crlf("Content-Type: multipart/mixed; boundary=b\n\n"
                + "--b\nContent-Type: text/plain\n\nhello\n" * count + "--b--\n")


def test_part_limit() -> None:
    assert len(walk(many(MAX_PARTS - 1), strict=True)) == MAX_PARTS
    with pytest.raises(MimeError, match=f"more than {MAX_PARTS}"):
        walk(many(MAX_PARTS), strict=True)
    lenient = Walk(many(10_000), strict=False)
    assert len(list(lenient)) == MAX_PARTS
    assert lenient.problems == [Problem((MAX_PARTS,), "parts")]
    small = Walk(many(5), strict=False, max_parts=3)
    assert shape(list(small)) == [("", "multipart/mixed"), ("1", "text/plain"),
                                  ("2", "text/plain")]


def test_the_strict_reading_yields_before_it_refuses() -> None:
    # A caller that stops at a part (a blocked name) never meets the error after it.
    data = crlf("Content-Type: multipart/mixed; boundary=b\n\n--b\n"
                "Content-Type: a/b; name=first.exe\n\nAAAA\n--b\n"
                "Content-Type: multipart/alternative\n\nx\n--b--\n")
    parts = iter(Walk(data, strict=True))
    assert [next(parts).number, next(parts).number, next(parts).number] == ["", "1", "2"]
    with pytest.raises(MimeError):
        next(parts)


@pytest.mark.parametrize("newline", ["\n", "\r"])
def test_any_newline(newline: str) -> None:
    data = NESTED.replace(b"\r\n", newline.encode())
    parts = walk(data, strict=False, any_newline=True)
    assert shape(parts) == shape(walk(NESTED, strict=False))
    assert [part.body.replace(newline.encode(), b"\r\n") for part in parts] == [
        part.body for part in walk(NESTED, strict=False)]
    # A CRLF reading takes a bare LF or CR for part of a line.
    assert shape(walk(data, strict=False)) == [("", "text/plain")]
    with pytest.raises(ValueError, match="CRLF"):
        Walk(data, strict=True, any_newline=True)


def test_max_input() -> None:
    limit = NESTED.index(b"--outer\r\nContent-Type: message/rfc822")
    cut = Walk(NESTED, strict=False, max_input=limit)
    parts = list(cut)
    assert cut.truncated and not Walk(NESTED, strict=False, max_input=len(NESTED)).truncated
    assert shape(parts) == [("", "multipart/mixed"), ("1", "multipart/alternative"),
                            ("1.1", "text/plain"), ("1.2", "text/html")]
    assert all(part.body_end <= limit for part in parts)


@pytest.mark.parametrize(("value", "kind", "params"), [
    ("text/plain", "text/plain", {}),
    ('Text/HTML; Charset="UTF-8"', "text/html", {"charset": ["UTF-8"]}),
    ("a/b; name=x (comment) ; size=3", "a/b", {"name": ["x"], "size": ["3"]}),
    ('a/b; name="q\\"uote\\\\d"', "a/b", {"name": ['q"uote\\d']}),
    ('a/b; name="unclosed', "a/b", {"name": ["unclosed"]}),
    ('a/b; name="a.pdf".exe', "a/b", {"name": ["a.pdf", "a.pdf.exe"]}),
    ("a/b; name=x; name=y", "a/b", {"name": ["x", "y"]}),
    ("a/b; name*1*=%65xe; name*0*=utf-8''a.; name=plain", "a/b",
     {"name": ["plain", "a.exe"]}),
    ("a/b; name*=iso-8859-1'fr'%E9t%E9", "a/b", {"name": ["été"]}),
    ("a/b; name*=no-such-charset''a%20b", "a/b", {"name": ["a b"]}),
    # A charset name no codec lookup can take (found by the walk's hypothesis test:
    # it used to raise UnicodeEncodeError).
    ("a/b; name*=utf\udc9e-8''x", "a/b", {"name": ["x"]}),
])
def test_parameters(value: str, kind: str, params: dict[str, list[str]]) -> None:
    assert mime.parameters(value) == (kind, params)


@pytest.mark.parametrize(("text", "expected"), [
    ("base64", "base64"), ("8b\udce9it", "8b\ufffdit"), ("\u00e9", "\ufffd\ufffd"),
    # From a charset that decodes to a lone surrogate surrogateescape cannot take (an
    # RFC 2231 value in unicode_escape or UTF-7): found by the property tests below.
    ("\ud800", "\ufffd\ufffd\ufffd"),
])
def test_token(text: str, expected: str) -> None:
    assert mime.token(text) == expected


def test_angle_brackets_only_when_asked() -> None:
    assert mime.parameters("a/b; x=<y>; z=\"<q>\"")[1] == {"x": ["<y>"], "z": ["<q>"]}
    assert mime.parameters("a/b; x=<y>; z=\"<q>\"", angle_brackets=True)[1] == {
        "x": ["y"], "z": ["<q>"]}


# --- properties -------------------------------------------------------------------------

_WORDS = st.sampled_from([
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b"--b", b"--b--", b"--c", b":", b";", b" ",
    b"\t", b'"', b"\\", b"(", b")", b"=", b"*", b"'", b"%", b"\xff", b"\xc3\xa9", b"\x00",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: multipart/digest; boundary=\"c\"\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Type: text/html; charset=utf-8\r\n",
    b"Content-Disposition: attachment; filename*0*=utf-8''a; filename*1=.exe\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"boundary*0=", b"name=", b"From x\r\n",
    # Charsets that decode to lone surrogates, which no UTF-8 encoder takes.
    b"Content-Type: multipart/mixed; boundary*=unicode_escape''%5Cud800\r\n",
    b"Content-Type: text/plain; charset*=utf-7''+2AA-\r\n",
])
_INPUT = st.one_of(st.binary(max_size=2000), st.lists(_WORDS, max_size=80).map(b"".join))


def _check_offsets(data: bytes, parts: list[Part], end: int) -> None:
    previous = -1
    spans: dict[tuple[int, ...], Part] = {}
    for part in parts:
        assert 0 <= part.header_start <= part.header_end <= part.body_start \
            <= part.body_end <= end <= len(data)
        assert part.header_start > previous  # document order
        previous = part.header_start
        assert part.data is data
        spans[part.path] = part
        if part.path:
            parent = spans[part.path[:-1]]  # parents come first
            assert parent.header_start <= part.header_start and part.body_end <= parent.body_end


@settings(max_examples=examples(1000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_INPUT)
def test_strict_raises_nothing_but_mime_error(data: bytes) -> None:
    parts: list[Part] = []
    try:
        for part in Walk(data, strict=True):
            parts.append(part)
    except MimeError:
        pass
    _check_offsets(data, parts, len(data))


@settings(max_examples=examples(1000), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_INPUT, st.booleans(), st.integers(0, 2500))
def test_lenient_never_raises(data: bytes, any_newline: bool, max_input: int) -> None:
    walked = Walk(data, strict=False, any_newline=any_newline, max_input=max_input)
    parts = list(walked)
    assert parts and parts[0].path == ()
    _check_offsets(data, parts, min(len(data), max_input))
    for problem in walked.problems:
        assert problem.kind in ("boundary", "depth", "parts")


# Well-formed mail, any line end: the lenient walk finds what Python's email finds.
_BOUNDARY = st.text(string.ascii_letters + string.digits + "'()+_,./:=? ", min_size=1,
                    max_size=20).map(str.strip).filter(bool)
_LINE = st.text(string.ascii_letters + string.digits + " .,:;<>=\"'/", max_size=30).filter(
    lambda line: not line.startswith("-"))


@st.composite
def _entity(draw: st.DrawFn, depth: int = 0) -> tuple[str, list[str]]:
    """(content type, the entity's lines)."""
    if depth < 3 and draw(st.booleans()):
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "report"]))
        boundary = f"{draw(_BOUNDARY)}={depth}"
        lines = [f'Content-Type: multipart/{subtype}; boundary="{boundary}"', ""]
        lines += draw(st.lists(_LINE, max_size=2))  # preamble
        for _, child in draw(st.lists(_entity(depth + 1), min_size=1, max_size=3)):
            lines += [f"--{boundary}", *child]
        lines += [f"--{boundary}--", *draw(st.lists(_LINE, max_size=2))]
        return f"multipart/{subtype}", lines
    ctype = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream"]))
    return ctype, [f"Content-Type: {ctype}", "", *draw(st.lists(_LINE, max_size=4))]


@settings(max_examples=examples(500), deadline=None)
@given(_entity(), st.sampled_from(["\r\n", "\n", "\r"]))
def test_well_formed_mail_reads_as_in_pythons_email(entity: tuple[str, list[str]],
                                                    newline: str) -> None:
    data = newline.join(["From: a@example.com", *entity[1]]).encode()
    theirs = list(email.message_from_bytes(data, policy=email.policy.compat32).walk())
    ours = walk(data, strict=False, any_newline=True)
    assert [part.content_type for part in ours] == [p.get_content_type() for p in theirs]
    for part, their in zip(ours, theirs, strict=True):
        if not their.is_multipart():
            payload = their.get_payload()
            assert isinstance(payload, str)
            assert part.body == payload.encode("ascii", "surrogateescape")


_PARAMETER_TEXT = st.text(st.sampled_from([*"ab=;'\"\\()*<> %0912", "\x00", "\udcff", "é"]),
                          max_size=40)


@settings(max_examples=examples(1000), deadline=None)
@given(st.one_of(st.text(max_size=80), _PARAMETER_TEXT,
                 st.text(st.characters(blacklist_categories=()), max_size=40)),
       st.one_of(st.text(max_size=20), _PARAMETER_TEXT), _PARAMETER_TEXT, st.booleans())
def test_parameters_never_raise(value: str, charset: str, text: str, brackets: bool) -> None:
    for candidate in (value, f"a/b; name*={charset}'en'{text}", f"a/b; {value}",
                      f"a/b; n*0*={charset}''{text}; n*1={value}"):
        kind, params = mime.parameters(candidate, angle_brackets=brackets)
        assert isinstance(kind, str)
        assert all(isinstance(v, str) for values in params.values() for v in values)


def test_absurd_rfc2231_section_numbers() -> None:
    # Beyond int()'s 4,300 digits, and not a section number anyone writes: a plain name.
    number = "1" * 5000
    assert mime.parameters(f"a/b; name*{number}=x; name*0=y")[1] == {
        f"name*{number}": ["x"], "name": ["y"]}


@settings(max_examples=examples(1000), deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["Content-Type", "content-type", "Content-Disposition", "Subject", "X-A"]),
    st.sampled_from([" ", "", " \t"]),
    st.lists(st.sampled_from(["text/plain", "multipart/mixed", "; boundary=b", "; name=a.exe",
                              "\r\n\t", " ", "=?utf-8?q?x?=", "\r", "é"]), max_size=5)
    .map("".join)), max_size=6),
    st.sampled_from(["\r\nbody\r\n", "\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n",
                     ""]))
def test_root_fields_from_the_header_reader_walk_as_the_walk_reads_them(
        fields: list[tuple[str, str, str]], rest: str) -> None:
    from smtprelay.mail.headers import MalformedHeader, parse_header_section
    data = ("".join(f"{name}{space}:{value}\r\n" for name, space, value in fields)
            + rest).encode()
    try:
        found = parse_header_section(data)
    except MalformedHeader:
        return  # the pipeline refuses the message before any walk
    given_fields = mime.fields_of(data, found)
    assert given_fields == Walk(data, strict=True)._strict_root().fields
    try:
        walked = list(Walk(data, strict=True))
    except MimeError as exc:
        with pytest.raises(MimeError, match=re.escape(str(exc))):
            list(Walk(data, strict=True, root_fields=given_fields))
        return
    assert list(Walk(data, strict=True, root_fields=given_fields)) == walked
