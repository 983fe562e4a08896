"""Fuzz target: tracking tokens (smtprelay/transform/tokens.py).

Random strings never get past the tag check, so the interesting input is a token
body that *is* signed with a key of the ring: anything at all after a valid header
and key id, as a bug in an older release (or a change of format) would have signed
it. decode() of any such token, and of any string, raises nothing but InvalidToken;
what it does read encodes again to a token that reads back the same; and tokens
within a few bits of a valid one are refused.
"""

from __future__ import annotations

import base64
import zlib

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from smtprelay.transform import tokens
from smtprelay.transform.tokens import (
    MAX_TAIL,
    InvalidToken,
    KeyRing,
    Kind,
    Payload,
    decode,
    encode,
    write_varint,
)

NOW = 1_700_000_000.0
RING = KeyRing.generate(NOW)
KEY = RING.active(NOW)


def sign(kind: int, flags: int, body: bytes, *, version: int = 1,
         key_id: bytes | None = None) -> str:
    """A token for `body` as the relay would sign it, whatever the body holds."""
    if key_id is None:
        encoded = bytearray()
        write_varint(encoded, KEY.id)
        key_id = bytes(encoded)
    signed = bytes(((version & 7) << 5 | (kind & 3) << 3 | (flags & 7),)) + key_id + body
    return tokens._b64(signed + tokens._mac(KEY.secret, signed))


def read(token: str) -> Payload | None:
    """The payload, or None after an InvalidToken (nothing else may come out)."""
    try:
        return decode(token, RING, NOW)
    except InvalidToken as exc:
        assert exc.reason in ("tampered", "unknown key", "retired key", "malformed")
        return None


def _varint(value: int) -> bytes:
    out = bytearray()
    write_varint(out, value)
    return bytes(out)


_ID = bytes.fromhex("018bd0e1a2b30123456789abcdef")
_PIECES = st.one_of(
    st.binary(max_size=40),
    st.integers(0, 2**70).map(_varint),
    st.sampled_from([b"\x80" * 12, b"\x80\x00", b"\xff" * 10 + b"\x01", _ID, b"\x00",
                     b"https://e.example/", b"HTTP://E/", b"ftp://x", b"\xc3", b"\xed\xa0\x80"]),
    st.builds(lambda text: _varint(len(text.encode())) + text.encode(), st.text(max_size=20)),
    st.binary(max_size=200).map(lambda b: zlib.compressobj(9, zlib.DEFLATED, -12, 4)
                                .compress(b) + b"\x03\x00"),
)
_TEXT = st.one_of(st.text(max_size=20), st.binary(max_size=10).map(
    lambda b: b.decode("utf-8", "replace"))).map(lambda t: _varint(len(t.encode())) + t.encode())
_URL = st.sampled_from([b"https://example.com/", b"http://e.example/?a=1", b"HTTPS://E/",
                        b"https://", b"mailto:x", b"https://\xff", b""])


@st.composite
def _structured(draw: st.DrawFn) -> tuple[int, int, bytes]:
    """(kind, flags, body): a body laid out as the format says for its kind and flags,
    each field drawn from valid and invalid values, then maybe cut short or extended."""
    kind = draw(st.sampled_from(Kind))
    flags = 0
    body = _varint(draw(st.integers(0, 2**40))) + draw(st.sampled_from([_ID, _ID, _ID[:13]]))
    recipient = draw(st.sampled_from(["index", "address", "whole"]))
    if recipient == "index":
        body += _varint(draw(st.integers(0, 2**20)))
    elif recipient == "address":
        flags |= tokens._F_ADDRESS
        body += draw(_TEXT)
    else:
        flags |= tokens._F_WHOLE_MESSAGE
    if kind is Kind.LIST_UNSUBSCRIBE:
        body += draw(_TEXT) + draw(_TEXT)
    elif kind is Kind.CLICK:
        tail = _varint(draw(st.integers(0, 3)))
        tail += b"".join(draw(st.lists(_TEXT, max_size=4))) + draw(_URL)
        if draw(st.booleans()):
            flags |= tokens._F_COMPRESSED
            packer = zlib.compressobj(9, zlib.DEFLATED, -12, 4)
            tail = packer.compress(tail) + packer.flush()
        body += _varint(draw(st.integers(0, 300))) + tail
    if draw(st.integers(0, 3)) == 0:  # now and then, one thing wrong
        if draw(st.booleans()):
            body = body[:draw(st.integers(0, len(body)))]
        else:
            flags ^= 1 << draw(st.integers(0, 2))
            body += draw(st.binary(max_size=4))
    return int(kind), flags, body


_SIGNED = st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 7),
                              st.lists(_PIECES, max_size=8).map(b"".join)),
                    _structured())
def _deflated(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


# A deflate stream that inflates to far more than MAX_TAIL: a click tail as a bomb.
_BOMB = _deflated(b"\x00" + b"A" * (MAX_TAIL * 64))


@given(_SIGNED)
@example((Kind.CLICK, tokens._F_COMPRESSED, _varint(1) + _ID + _varint(0) + _varint(0) + _BOMB))
@example((Kind.CLICK, 0, _varint(2**63) + _ID + _varint(2**63) + _varint(2**63) + b"\x7f"))
@example((Kind.LIST_UNSUBSCRIBE, tokens._F_ADDRESS, _varint(1) + _ID + _varint(10**9)))
@example((Kind.OPEN, 0, _varint(1) + _ID[:13]))
def test_any_signed_body_reads_or_is_refused(signed: tuple[int, int, bytes]) -> None:
    kind, flags, body = signed
    event("read" if read(sign(kind, flags, body)) is not None else "refused")
    token = sign(kind, flags, body)
    if len(token) > tokens.MAX_TOKEN_CHARS:
        return
    payload = read(token)
    if payload is None:
        return
    # What we read, we can write again, and it reads back the same.
    try:
        again = encode(payload, RING)
    except ValueError:
        assert isinstance(payload, tokens.ClickToken)  # a URL that makes it too long
        return
    assert decode(again, RING, NOW) == payload


@given(st.one_of(
    st.text(max_size=120),
    st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
            max_size=200),
    st.builds(lambda head, rest: base64.urlsafe_b64encode(head + rest).rstrip(b"=").decode(),
              st.sampled_from([b"\x20", b"\x28", b"\x30", b"\x3c", b"\x24\x01", b"\x20\x80"]),
              st.binary(max_size=80)),
))
def test_any_string_is_refused_with_a_reason(token: str) -> None:
    assert read(token) is None


@given(st.sampled_from(["open", "click", "unsubscribe"]), st.data())
def test_a_few_flipped_bits_are_refused(kind: str, data: st.DataObject) -> None:
    issuer = tokens.Issuer(RING, "018bd0e1a2b3-0123456789abcdef", 3, int(NOW))
    token = (issuer.open() if kind == "open" else issuer.unsubscribe()
             if kind == "unsubscribe" else issuer.click(0, "https://example.com/a?b=c"))
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        bit = data.draw(st.integers(0, len(raw) * 8 - 1), label="bit")
        raw[bit // 8] ^= 1 << (bit % 8)
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    if flipped != token:
        assert read(flipped) is None


@pytest.mark.parametrize("body", [
    _varint(1) + _ID + _varint(0) + _varint(0) + _BOMB,
    _varint(2**64) + _ID,  # an issued time past 64 bits
    _varint(1) + _ID + b"\xff" * 9 + b"\x7f",
])
def test_replay_hostile_signed_bodies(body: bytes) -> None:
    for flags in range(8):
        assert read(sign(Kind.CLICK, flags, body)) is None
