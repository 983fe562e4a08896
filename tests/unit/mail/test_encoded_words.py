"""RFC 2047 encoded words: decoded when they decode, kept as written when not."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.mail import encoded_words
from tests.support import examples


@pytest.mark.parametrize(("value", "text"), [
    ("=?utf-8?q?Caf=C3=A9?=", "Café"),
    ("=?UTF-8?B?w6l0w6k=?=", "été"),
    ("plain text", "plain text"),
    ("=?\x80TF-8?Q?hi?=", "=?\x80TF-8?Q?hi?="),  # garbled charset name
    ("=?no-such-charset?q?hi?=", "=?no-such-charset?q?hi?="),
])
def test_decode(value: str, text: str) -> None:
    assert encoded_words.decode(value) == text


@settings(max_examples=examples(500), deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.sampled_from("qQbB"))
def test_decode_never_raises(charset: str, payload: str, encoding: str) -> None:
    value = f"=?{charset}?{encoding}?{payload}?="
    assert isinstance(encoded_words.decode(value), str)


def test_decode_anywhere_reads_words_inside_quotes() -> None:
    assert encoded_words.decode_anywhere('"=?utf-8?q?inv=C3=B6ice?= =?utf-8?b?LmV4ZQ==?="') \
        == '"invöice.exe"'
