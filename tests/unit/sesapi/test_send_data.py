"""The API's message bytes on their fast paths: base64 decoded by pybase64, held to
the standard library's answers; line ends made CRLF, held to two replaces."""

from __future__ import annotations

import base64
import binascii
import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from smtprelay.sesapi import send
from smtprelay.sesapi.errors import V2, ApiError


def _stdlib(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _ours(text: str) -> bytes | None:
    try:
        return send.base64_data(text, "Content.Raw.Data", V2)
    except ApiError as exc:
        assert exc.message == "Content.Raw.Data must be base64"
        return None


def test_every_short_string_of_base64_and_stray_characters_decodes_as_the_stdlib_does(
) -> None:
    # Padding in every place, white space, URL-safe letters, non-ASCII: up to 5 long.
    alphabet = "AB+/=a\n é-_"
    for length in range(6):
        for chars in itertools.product(alphabet, repeat=length):
            text = "".join(chars)
            assert _ours(text) == _stdlib(text), repr(text)


@given(st.binary(max_size=300), st.sampled_from(["", "=", "==", "===", "A", "AAAA=", "\n"]))
@example(b"x" * 51200, "")
def test_encoded_data_with_any_tail_decodes_as_the_stdlib_does(data: bytes, tail: str
                                                                ) -> None:
    text = base64.b64encode(data).decode() + tail
    assert _ours(text) == _stdlib(text)


def test_data_after_the_padding_is_ignored_as_the_stdlib_ignores_it() -> None:
    # pybase64 refuses these; the standard library's answer is the one kept.
    assert send.base64_data("AAAA=", "f", V2) == b"\0\0\0"
    assert send.base64_data("QUJD====", "f", V2) == b"ABC"


def test_a_refusal_names_the_field() -> None:
    with pytest.raises(ApiError, match=r"RawMessage\.Data must be base64") as refused:
        send.base64_data("not base64!", "RawMessage.Data", V2)
    assert refused.value.code == "BadRequestException"


@given(st.lists(st.sampled_from([b"a", b"bcdefghijklmnopqrstuvwxyz0123456789", b"\r", b"\n",
                                 b"\r\n", b"\n\r", b""]), max_size=60))
@example([b"a\r\nb\r\n"])
@example([b"a\nb\r\n"])
@example([b"\r\r\n\n"])
@example([b"\n\r"])
@example([b"x" * 100 + b"\r\n", b"y" * 100 + b"\n"])  # long lines: the search
@example([b"\r\n" * 50, b"\n"])  # short lines: the counts
def test_line_ends_become_crlf_as_replacing_every_bare_lf_makes_them(pieces: list[bytes]
                                                                     ) -> None:
    data = b"".join(pieces)
    assert send._crlf(data) == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@pytest.mark.parametrize("line", [b"", b"x" * 14, b"x" * 76])
def test_a_message_with_crlf_line_ends_is_passed_on_as_it_is(line: bytes) -> None:
    data = b"Subject: x\r\n\r\n" + (line + b"\r\n") * 700
    assert send._crlf(data) is data
