"""VERP tags (smtprelay.bounces.verp): round trips, tamper detection, case folding,
key rotation, and the size limits of a local part."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.bounces import verp
from smtprelay.transform.tokens import RETIREMENT_GRACE, Key, KeyRing, OpenToken
from smtprelay.transform.tokens import encode as encode_token
from tests.support import examples

SAMPLES_KEY = Key(1, b"feedback-samples-secret-0123456789", 1.69e9)
NOW = 1.7e9
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"

message_ids = st.builds(
    lambda millis, rand: f"{millis:012x}-{rand:016x}",
    st.integers(0, 2**48 - 1), st.integers(0, 2**64 - 1))
indexes = st.one_of(st.none(), st.integers(0, 2**20))


def ring() -> KeyRing:
    return KeyRing([SAMPLES_KEY])


@settings(max_examples=examples(300), deadline=None)
@given(message_ids, indexes)
def test_round_trip(message_id: str, index: int | None) -> None:
    local = verp.encode(message_id, index, ring())
    assert local.startswith(verp.PREFIX)
    assert len(local) <= 64
    assert local == local.lower()
    assert set(local[2:]) <= set(BASE32)
    assert verp.decode(local, ring(), NOW) == (message_id, index)


@settings(max_examples=examples(300), deadline=None)
@given(message_ids, indexes, st.data())
def test_any_single_character_change_is_rejected(
        message_id: str, index: int | None, data: st.DataObject) -> None:
    local = verp.encode(message_id, index, ring())
    position = data.draw(st.integers(0, len(local) - 1))
    # Any other character, except the same letter in the other case (that is the
    # same tag: some MTAs change case).
    replacement = data.draw(st.characters(
        codec="utf-8", exclude_characters=local[position] + local[position].swapcase()))
    changed = local[:position] + replacement + local[position + 1:]
    with pytest.raises(verp.InvalidVerpTag):
        verp.decode(changed, ring(), NOW)


@settings(max_examples=examples(200), deadline=None)
@given(message_ids, indexes, st.data())
def test_upper_casing_still_decodes(message_id: str, index: int | None,
                                    data: st.DataObject) -> None:
    local = verp.encode(message_id, index, ring())
    assert verp.decode(local.upper(), ring(), NOW) == (message_id, index)
    # ... and any mix of cases, as an MTA might leave it.
    flips = data.draw(st.lists(st.booleans(), min_size=len(local), max_size=len(local)))
    mixed = "".join(c.upper() if flip else c for c, flip in zip(local, flips, strict=True))
    assert verp.decode(mixed, ring(), NOW) == (message_id, index)


@settings(max_examples=examples(300), deadline=None)
@given(st.text(max_size=100))
def test_arbitrary_strings_raise_only_invalid_verp_tag(text: str) -> None:
    try:
        verp.decode(text, ring(), NOW)
    except verp.InvalidVerpTag:
        pass


def test_known_tags_of_the_samples() -> None:
    # The tags in tests/data/feedback, documented in its README.
    assert verp.decode("b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy", ring(), NOW) == (
        "018bcfe56800-5f2a9c3e71d04b86", 0)
    assert verp.decode("b-aeayxu5eyeaaugzmhvhf6ydrachr4jlid2hdj7bpdu", ring(), NOW) == (
        "018bd3a4c100-0a1b2c3d4e5f6071", None)


def test_typical_length_and_address() -> None:
    address = verp.address("018bcfe56800-5f2a9c3e71d04b86", 3, "Bounce.Example.COM.", ring())
    local, _, domain = address.partition("@")
    assert domain == "bounce.example.com"
    assert len(local) == 44  # "b-" + 42 base32 characters for 26 bytes
    assert verp.decode_address(f"<{address.upper()}>", ring(), NOW) == (
        "018bcfe56800-5f2a9c3e71d04b86", 3)


def test_largest_index_and_key_id_still_fit_a_local_part() -> None:
    big_ring = KeyRing([Key(2**34, b"k" * 32, NOW)])
    local = verp.encode("ffffffffffff-ffffffffffffffff", verp.MAX_RECIPIENT_INDEX - 1, big_ring)
    assert len(local) <= 64
    assert verp.decode(local, big_ring, NOW) == (
        "ffffffffffff-ffffffffffffffff", verp.MAX_RECIPIENT_INDEX - 1)


@pytest.mark.parametrize(("message_id", "index"), [
    ("not-an-id", 0),
    ("018BCFE56800-5F2A9C3E71D04B86", 0),  # the spool writes lower-case hex
    ("018bcfe56800-5f2a9c3e71d04b86", -1),
    ("018bcfe56800-5f2a9c3e71d04b86", verp.MAX_RECIPIENT_INDEX),
])
def test_bad_input_is_refused_at_encoding(message_id: str, index: int) -> None:
    with pytest.raises(ValueError):
        verp.encode(message_id, index, ring())


def test_bad_domain_is_refused() -> None:
    with pytest.raises(ValueError):
        verp.address("018bcfe56800-5f2a9c3e71d04b86", 0, "user@example.com", ring())


def test_forged_tag_signed_with_another_key_is_tampered() -> None:
    forger = KeyRing([Key(1, b"an attacker's guess at the key!!", NOW)])
    forged = verp.encode("018bcfe56800-5f2a9c3e71d04b86", 0, forger)
    with pytest.raises(verp.InvalidVerpTag) as caught:
        verp.decode(forged, ring(), NOW)
    assert caught.value.reason == "tampered"


def test_tag_naming_an_unknown_key() -> None:
    other = KeyRing([Key(7, b"s" * 32, NOW)])
    with pytest.raises(verp.InvalidVerpTag) as caught:
        verp.decode(verp.encode("018bcfe56800-5f2a9c3e71d04b86", 0, other), ring(), NOW)
    assert caught.value.reason == "unknown key"


def test_rotation_keeps_old_tags_valid_for_the_grace_period() -> None:
    keys = KeyRing([Key(1, b"x" * 32, NOW)])
    old = verp.encode("018bcfe56800-5f2a9c3e71d04b86", 0, keys)
    keys.rotate(NOW + 10)
    new = verp.encode("018bcfe56800-5f2a9c3e71d04b86", 0, keys)
    assert new != old
    assert verp.decode(old, keys, NOW + 10 + RETIREMENT_GRACE - 1).recipient_index == 0
    assert verp.decode(new, keys, NOW + 10 + RETIREMENT_GRACE + 1).recipient_index == 0
    with pytest.raises(verp.InvalidVerpTag) as caught:
        verp.decode(old, keys, NOW + 10 + RETIREMENT_GRACE + 1)
    assert caught.value.reason == "retired key"


def test_a_tracking_token_mac_never_verifies_as_a_tag() -> None:
    # Same key ring, other context label: a token's bytes re-encoded as a tag fail.
    token = encode_token(OpenToken("018bcfe56800-5f2a9c3e71d04b86", 0, 1), ring())
    with pytest.raises(verp.InvalidVerpTag):
        verp.decode("b-" + token.lower(), ring(), NOW)


@pytest.mark.parametrize(("local", "reason"), [
    ("postmaster", "not a VERP tag"),
    ("b-", "malformed"),
    ("b-0189", "malformed"),  # 0, 1, 8, 9 are not base32
    ("b-aaaa", "malformed"),  # too short for a tag
    ("b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jx", "malformed"),  # one character cut
    ("b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxyaa", "tampered"),  # appended
    ("b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxz", "malformed"),  # non-canonical end
    ("b-" + "a" * 70, "not a VERP tag"),  # longer than any local part
])
def test_malformed_tags(local: str, reason: str) -> None:
    with pytest.raises(verp.InvalidVerpTag) as caught:
        verp.decode(local, ring(), NOW)
    assert caught.value.reason == reason


def test_find_tags_in_text() -> None:
    tag = "b-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy"
    text = (f"Return-Path: <{tag.upper()}@bounce.example.com>, "
            f"SRS0=HhHh=TT=bounce.example.com={tag}@forwarder.example, "
            "ab-aeayxt7fnaaf6ku4hzy5as4gagjhcggbw5zfl63jxy")  # not at a word start
    assert verp.find_tags(text) == (tag,)
    assert verp.find_tags("no tags here b-short") == ()
