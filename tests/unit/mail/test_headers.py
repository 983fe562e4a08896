"""The header reader (smtprelay.mail.headers): every field or a refusal, and the simple
address fast path against the full parser, fuzzed."""

from __future__ import annotations

import email.utils

from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.mail.headers import _SIMPLE_ADDRESS, MalformedHeader, addresses, parse_header_section
from tests.support import examples


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from([b"From: a@example.com", b"From : b@evil.test", b" folded", b"\tfolded",
                     b"Subject: x", b"not a header", b"", b"X-\xff: y", b":", b"A:"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    max_size=12))
def test_header_reader_sees_every_field_or_refuses(lines: list[bytes]) -> None:
    data = b"\r\n".join(lines) + b"\r\n\r\nbody\r\n"
    try:
        fields = parse_header_section(data)
    except MalformedHeader as exc:
        assert exc.line >= 1
        return
    header_lines = data[: data.find(b"\r\n\r\n")].split(b"\r\n") if not data.startswith(
        b"\r\n") else []
    starts = [line for line in header_lines if line and line[:1] not in (b" ", b"\t")]
    # One field per line that starts a field: nothing is skipped or merged away.
    assert len(fields) == len(starts)
    assert all(f.start < f.end for f in fields)


@settings(max_examples=examples(1000), deadline=None)
@given(st.one_of(
    st.from_regex(r"[A-Za-z0-9 ._'-]{0,20}<[a-z0-9.+_-]{1,10}@[a-z0-9.-]{1,12}>", fullmatch=True),
    st.from_regex(r"[a-z0-9.+_'-]{1,10}@[a-z0-9.-]{1,12}", fullmatch=True),
    st.text(alphabet="ab@<>\\\" ,.;:()'", max_size=25)))
def test_simple_address_fast_path_agrees_with_the_full_parser(value: str) -> None:
    if _SIMPLE_ADDRESS.fullmatch(value) is None:
        return
    assert addresses(value) == [a for _, a in email.utils.getaddresses([value])]


def test_comment_depth_counts_nesting_outside_quoted_strings() -> None:
    from smtprelay.mail.headers import comment_depth
    assert comment_depth("a@example.com") == 0
    assert comment_depth("(one) a@example.com (two (three))") == 2
    assert comment_depth('"(not a comment" <a@example.com>') == 0
    assert comment_depth(r"(a \( still one) x") == 1
    assert comment_depth("(" * 5000 + ")" * 5000) == 5000  # no recursion to count it


def test_addresses_in_deeply_nested_comments_are_unparseable_not_a_crash() -> None:
    from smtprelay.mail.headers import MAX_COMMENT_DEPTH, addresses
    deep = "(" * 3000 + "x" + ")" * 3000 + " a@example.com"
    assert addresses(deep) == ["(unparseable)"]
    ok = "(" * MAX_COMMENT_DEPTH + ")" * MAX_COMMENT_DEPTH + " a@example.com"
    assert addresses(ok) == ["a@example.com"]
