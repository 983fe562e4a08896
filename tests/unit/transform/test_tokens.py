"""Tracking tokens: round trip, tamper resistance, key rotation, the key file."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.transform import tokens
from smtprelay.transform.tokens import (
    RETIREMENT_GRACE,
    ClickToken,
    InvalidToken,
    Key,
    KeyRing,
    KeyRingError,
    OpenToken,
    Payload,
    UnsubscribeToken,
    decode,
    encode,
)
from tests.support import examples

MID = "018bd0e1a2b3-0123456789abcdef"
NOW = 1_700_000_000.0
DAY = 86400.0
TYPICAL = ("https://www.example.com/products/spring-sale?utm_source=newsletter"
           "&utm_medium=email&utm_campaign=spring2024")
RING = KeyRing.generate(NOW)

message_ids = st.from_regex(r"[0-9a-f]{12}-[0-9a-f]{16}", fullmatch=True)
recipients = st.one_of(st.integers(0, 2**40), st.text(max_size=80), st.none())
times = st.integers(0, 2**40)
web_urls = st.builds(lambda scheme, rest: scheme + rest,
                     st.sampled_from(["http://", "https://", "HTTPS://", "Http://"]),
                     st.text(max_size=600))
tag_lists = st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=5)
payloads: st.SearchStrategy[Payload] = st.one_of(
    st.builds(ClickToken, message_ids, recipients, st.integers(0, 10**6), web_urls, times,
              tag_lists.map(tuple)),
    st.builds(OpenToken, message_ids, recipients, times),
    st.builds(UnsubscribeToken, message_ids, recipients, times),
    # A contact list's unsubscribe: the list, and the topic or none (the whole list).
    st.builds(UnsubscribeToken, message_ids, recipients, times, st.text(min_size=1, max_size=64),
              st.one_of(st.none(), st.text(min_size=1, max_size=64))),
)


def reason(token: str, ring: KeyRing = RING, now: float = NOW) -> str:
    with pytest.raises(InvalidToken) as caught:
        decode(token, ring, now)
    return caught.value.reason


# --- round trip ------------------------------------------------------------------------

@settings(max_examples=examples(300), deadline=None)
@given(payloads)
def test_every_payload_round_trips(payload: Payload) -> None:
    token = encode(payload, RING)
    assert decode(token, RING, NOW) == payload
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)


@settings(max_examples=examples(200), deadline=None)
@given(payloads, st.data())
def test_any_single_character_change_is_rejected(payload: Payload, data: st.DataObject) -> None:
    token = encode(payload, RING)
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    replacement = data.draw(st.sampled_from(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.~%é "), label="new")
    changed = token[:position] + replacement + token[position + 1:]
    if changed != token:
        with pytest.raises(InvalidToken):
            decode(changed, RING, NOW)


@settings(max_examples=examples(100), deadline=None)
@given(payloads, st.data())
def test_any_single_byte_change_is_rejected(payload: Payload, data: st.DataObject) -> None:
    raw = bytearray(base64.urlsafe_b64decode(encode(payload, RING) + "=="))
    position = data.draw(st.integers(0, len(raw) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    raw[position] ^= flip
    with pytest.raises(InvalidToken):
        decode(tokens._b64(bytes(raw)), RING, NOW)


@given(st.text(max_size=300))
def test_arbitrary_strings_raise_only_invalid_token(text: str) -> None:
    with pytest.raises(InvalidToken):
        decode(text, RING, NOW)


def test_truncated_and_extended_tokens_are_rejected() -> None:
    token = encode(ClickToken(MID, 2, 0, TYPICAL, int(NOW)), RING)
    for cut in range(1, len(token)):
        with pytest.raises(InvalidToken):
            decode(token[:cut], RING, NOW)
    assert reason(token + "A") in ("malformed", "tampered")
    assert reason("") == "malformed"
    assert reason("A" * (tokens.MAX_TOKEN_CHARS + 1)) == "malformed"


def test_non_canonical_base64_is_malformed() -> None:
    # Find a token whose last character has unused low bits and set one of them.
    for index in range(50):
        token = encode(OpenToken(MID, index, int(NOW)), RING)
        if len(token) % 4 in (2, 3):
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            value = alphabet.index(token[-1])
            sibling = token[:-1] + alphabet[value ^ 1]
            assert reason(sibling) == "malformed"
            return
    pytest.fail("no token with a partial last character")


def test_one_byte_tamper_in_the_url_is_detected() -> None:
    token = encode(ClickToken(MID, 0, 1, "https://bank.example/reset?t=1", int(NOW)), RING)
    raw = bytearray(base64.urlsafe_b64decode(token + "=="))
    raw[-tokens.MAC_SIZE - 1] ^= 0x01
    assert reason(tokens._b64(bytes(raw))) == "tampered"


def test_recipient_address_and_tags_survive() -> None:
    payload = ClickToken(MID, "Jörg@exämple.de", 249, TYPICAL, int(NOW),
                         (("product", "book"), ("genre", "fiction")))
    assert decode(encode(payload, RING), RING, NOW) == payload


def test_whole_message_token_names_no_recipient() -> None:
    payload = OpenToken(MID, None, int(NOW))
    assert decode(encode(payload, RING), RING, NOW) == payload
    # Both recipient flags at once is not something we issue: refused even when signed.
    key = RING.active()
    signed = bytearray(base64.urlsafe_b64decode(encode(payload, RING) + "=="))[:-tokens.MAC_SIZE]
    signed[0] |= 0x01
    forged = tokens._b64(bytes(signed) + tokens._mac(key.secret, bytes(signed)))
    assert reason(forged) == "malformed"


def test_kinds_are_distinct() -> None:
    opened = decode(encode(OpenToken(MID, 0, 5), RING), RING, NOW)
    unsubscribed = decode(encode(UnsubscribeToken(MID, 0, 5), RING), RING, NOW)
    assert isinstance(opened, OpenToken) and isinstance(unsubscribed, UnsubscribeToken)


def test_a_list_unsubscribe_names_its_list_and_topic() -> None:
    topic = decode(encode(UnsubscribeToken(MID, 0, 5, "news", "sports"), RING), RING, NOW)
    whole = decode(encode(UnsubscribeToken(MID, 0, 5, "news"), RING), RING, NOW)
    plain = decode(encode(UnsubscribeToken(MID, 0, 5), RING), RING, NOW)
    assert topic == UnsubscribeToken(MID, 0, 5, "news", "sports")
    assert whole == UnsubscribeToken(MID, 0, 5, "news", None)
    assert plain == UnsubscribeToken(MID, 0, 5, None, None)
    # The list is signed like the rest: another list cannot be written into the token.
    token = base64.urlsafe_b64decode(encode(UnsubscribeToken(MID, 0, 5, "news"), RING) + "==")
    assert b"news" in token
    assert reason(tokens._b64(token.replace(b"news", b"nexs"))) == "tampered"


def test_a_list_unsubscribe_without_its_list_is_malformed() -> None:
    key = RING.active()
    signed = bytearray(base64.urlsafe_b64decode(
        encode(UnsubscribeToken(MID, 0, 5), RING) + "=="))[:-tokens.MAC_SIZE]
    signed[0] |= tokens.Kind.LIST_UNSUBSCRIBE << 3  # kind 2 -> 3, with nothing after
    forged = tokens._b64(bytes(signed) + tokens._mac(key.secret, bytes(signed)))
    assert reason(forged) == "malformed"


@pytest.mark.parametrize("payload", [
    UnsubscribeToken(MID, 0, 0, None, "sports"),  # a topic needs its list
    UnsubscribeToken(MID, 0, 0, "", None),
    OpenToken("018BD0E1A2B3-0123456789ABCDEF", 0, 0),  # upper case would not round trip
    OpenToken("018bd0e1a2b3_0123456789abcdef", 0, 0),
    OpenToken(MID, -1, 0),
    OpenToken(MID, 0, -5),
    ClickToken(MID, 0, 0, "javascript:alert(1)", 0),
    ClickToken(MID, 0, 0, "//evil.example/", 0),
    ClickToken(MID, 0, -1, "https://x.example/", 0),
])
def test_bad_payloads_are_refused_at_encoding(payload: Payload) -> None:
    with pytest.raises(ValueError):
        encode(payload, RING)


def test_compression_only_when_it_helps() -> None:
    short = encode(ClickToken(MID, 0, 0, "https://a.example/", int(NOW)), RING)
    assert not base64.urlsafe_b64decode(short + "==")[0] & 0x02
    long_url = TYPICAL + "&utm_content=" + "hero-button-" * 20
    packed = encode(ClickToken(MID, 0, 0, long_url, int(NOW)), RING)
    assert base64.urlsafe_b64decode(packed + "==")[0] & 0x02
    assert len(packed) < len(long_url)


def test_typical_lengths() -> None:
    """The numbers stated in the module docstring."""
    assert len(encode(OpenToken(MID, 0, int(NOW)), RING)) == 51
    assert len(encode(UnsubscribeToken(MID, 0, int(NOW)), RING)) == 51
    # A list's: 4/3 of a byte per character of the names, and 2 for their lengths.
    assert len(encode(UnsubscribeToken(MID, 0, int(NOW), "newsletters", "weekly"), RING)) == 76
    assert len(encode(ClickToken(MID, 0, 3, TYPICAL, int(NOW)), RING)) == 175
    heavy = ("https://shop.example.com/c/womens/shoes/running?sku=ABC-12345&color=blue"
             "&size=38&utm_source=newsletter&utm_medium=email&utm_campaign=2024-05-spring"
             "-sale&utm_content=hero-button&utm_term=running&mc_cid=4f3a2b1c0d&mc_eid="
             "9e8d7c6b5a&ref=mail&lang=en-GB&cur=EUR&promo=SPRING20&track=abcdef0123456789"
             "abcdef0123456789")
    assert len(heavy) == 311
    assert len(encode(ClickToken(MID, 0, 3, heavy, int(NOW)), RING)) == 358
    # A 1,500-character URL of random-looking data still fits a 2,000-character link.
    noisy = "https://x.example/?" + os.urandom(740).hex()
    assert len("https://links.example.com/c/" + encode(ClickToken(MID, 0, 3, noisy, 0),
                                                      RING)) < 2100


# The wire format is a promise to every link already in someone's inbox: these tokens,
# made by the first release's encoder, must still come out byte for byte.
GOLDEN_RING = KeyRing([Key(7, b"k" * 32, NOW)])
GOLDEN = [
    (OpenToken(MID, 0, int(NOW)), "KAeA4s-qBgGL0OGiswEjRWeJq83vAE4_88rBG8-souNMkwiO64w"),
    (UnsubscribeToken(MID, 3, int(NOW)), "MAeA4s-qBgGL0OGiswEjRWeJq83vA6DZm3hMvQj64khGfeN5C8M"),
    (OpenToken(MID, None, int(NOW)), "LAeA4s-qBgGL0OGiswEjRWeJq83vvyHiGEpAIUCg7s6dusnz7Q"),
    (UnsubscribeToken(MID, "a@b.example", int(NOW)),
     "MQeA4s-qBgGL0OGiswEjRWeJq83vC2FAYi5leGFtcGxlFRXW0FwO5H3nGFq7b9zDzQ"),
    (ClickToken(MID, 0, 3, TYPICAL, int(NOW)),
     "IgeA4s-qBgGL0OGiswEjRWeJq83vAAMlzFsKgCAQRuFW01sa0VMgLSXEfkpwVJwRW3631w_O6U6RzIvWrTWFy1IO"
     "UC6RziXt1QlrzsXHY2AbsFahjVMtDiaicYAISv8qYfeVDMj68IF7VtYf0fz9NE7zDSgH07Wflfl94BxowvfmSmE"),
    (ClickToken(MID, None, 250, "https://a.example/", int(NOW), (("k", "v"),)),
     "JAeA4s-qBgGL0OGiswEjRWeJq83v-gEBAWsBdmh0dHBzOi8vYS5leGFtcGxlL0gO4fUGKY6Z2BOk_7EetSU"),
]


@pytest.mark.parametrize(("payload", "token"), GOLDEN)
def test_tokens_are_the_same_bytes_as_the_first_release_made(payload: Payload,
                                                             token: str) -> None:
    assert encode(payload, GOLDEN_RING) == token
    assert decode(token, GOLDEN_RING, NOW) == payload


@settings(max_examples=examples(100), deadline=None)
@given(message_ids, recipients, times,
       st.lists(st.tuples(st.integers(0, 300), st.sampled_from([TYPICAL, "https://a.example/",
                                                               "http://b.example/?x=1"]),
                          st.sampled_from([(), (("campaign", "spring"),)])), max_size=12))
def test_one_issuer_per_message_makes_the_tokens_encode_makes(
        message_id: str, recipient: int | str | None, issued: int,
        links: list[tuple[int, str, tuple[tuple[str, str], ...]]]) -> None:
    """Repeated URLs share a cached tail; every token must still be the one encode() makes."""
    issuer = tokens.Issuer(RING, message_id, recipient, issued)
    for index, url, tags in links:
        payload = ClickToken(message_id, recipient, index, url, issued, tags)
        token = issuer.click(index, url, tags)
        assert token == encode(payload, RING)
        assert decode(token, RING, NOW) == payload
    assert issuer.open() == encode(OpenToken(message_id, recipient, issued), RING)
    assert issuer.unsubscribe() == encode(UnsubscribeToken(message_id, recipient, issued),
                                          RING)


# --- keys and rotation -----------------------------------------------------------------

def test_rotation_keeps_old_tokens_valid_for_the_grace_period() -> None:
    ring = KeyRing.generate(NOW)
    old = encode(OpenToken(MID, 0, int(NOW)), ring)
    ring.rotate(NOW + DAY)
    new = encode(OpenToken(MID, 0, int(NOW)), ring)
    assert new != old
    assert decode(old, ring, NOW + DAY + 59 * DAY) == decode(new, ring, NOW)
    assert decode(old, ring, NOW + DAY + RETIREMENT_GRACE) is not None  # exactly 60 days
    assert reason(old, ring, NOW + DAY + 61 * DAY) == "retired key"
    assert decode(new, ring, NOW + DAY + 61 * DAY) is not None


def test_active_key_is_the_newest_and_rotation_retires_it() -> None:
    ring = KeyRing.generate(NOW)
    first = ring.active()
    second = ring.rotate(NOW + 10)
    assert second.id == first.id + 1 and ring.active() == second
    retired = {k.id: k.retired_at for k in ring.keys}
    assert retired == {first.id: NOW + 10, second.id: None}


def test_unknown_key_id() -> None:
    other = KeyRing([Key(7, b"k" * 32, NOW)])
    token = encode(OpenToken(MID, 0, int(NOW)), other)
    assert reason(token, KeyRing([Key(1, b"k" * 32, NOW)])) == "unknown key"
    # Same id, different secret: the signature gives it away.
    assert reason(token, KeyRing([Key(7, b"x" * 32, NOW)])) == "tampered"


def test_prune_forgets_only_expired_keys() -> None:
    ring = KeyRing.generate(NOW)
    ring.rotate(NOW)
    ring.rotate(NOW + 30 * DAY)
    gone = ring.prune(NOW + 61 * DAY)
    assert [k.id for k in gone] == [1] and [k.id for k in ring.keys] == [2, 3]


def test_key_secret_is_not_in_repr() -> None:
    key = RING.active()
    assert key.secret.hex() not in repr(key) and repr(key.secret) not in repr(key)


# --- the key file ----------------------------------------------------------------------

def test_open_creates_the_file_with_mode_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "tracking-keys.json"
    ring = KeyRing.open(path, NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [k.id for k in ring.keys] == [1]
    token = encode(ClickToken(MID, 0, 0, TYPICAL, int(NOW)), ring)
    again = KeyRing.open(path)
    assert again.keys == ring.keys
    assert decode(token, again, NOW).url == TYPICAL  # type: ignore[union-attr]


def test_rotation_survives_a_save(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing.open(path, NOW)
    ring.rotate(NOW + 5)
    ring.save(path)
    assert KeyRing.load(path).keys == ring.keys
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    KeyRing.open(path, NOW)
    path.chmod(0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        KeyRing.load(path)


@pytest.mark.parametrize("text", [
    "not json",
    "{}",
    '{"format": 2, "keys": []}',
    '{"format": 1, "keys": [{"id": "1", "secret": "AAAA", "created_at": 0}]}',
    '{"format": 1, "keys": [{"id": 1, "secret": "c2hvcnQ=", "created_at": 0}]}',
    '{"format": 1, "keys": [{"id": 1, "secret": "%%%", "created_at": 0}]}',
    json.dumps({"format": 1, "keys": [
        {"id": 1, "secret": "a" * 43 + "=", "created_at": 0},
        {"id": 1, "secret": "b" * 43 + "=", "created_at": 0}]}),
])
def test_malformed_key_files_are_refused(text: str) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.from_json(text)


def test_missing_key_file_is_an_error_for_load(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.load(tmp_path / "absent.json")
