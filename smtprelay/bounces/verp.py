"""VERP: the envelope sender that says which message and recipient a bounce is about.

Every delivered message goes out with ``MAIL FROM:<b-TAG@mail_from_domain>``. A DSN
is sent to that address (RFC 3464, RFC 5321 4.5.5), so when one reaches the feedback
listener its envelope recipient names the message and the recipient it reports on,
whatever the report itself says (or fails to say). The tag is signed like a tracking
token (same ``tokens.KeyRing``, same key ids and 60-day grace for retired keys, but a
separate MAC context label, so a tracking-token MAC never verifies as a VERP tag).

Layout, before encoding::

    key id     varint    which key of the KeyRing signed it
    message    14 bytes  the spool's message id ("018bd0e1a2b3-0123456789abcdef":
                         6 bytes of milliseconds, 8 random bytes), packed from its hex
    recipient  varint    index into the envelope's recipients, plus one; 0 means the
                         whole transaction (several recipients shared this envelope)
    mac        10 bytes  HMAC-SHA256 over a context label and everything above, truncated

The local part is ``PREFIX`` ("b-", for bounce) and that in lowercase base32 (RFC
4648 alphabet, no padding), sealed and opened by transform.local_parts, which the
List-Unsubscribe mailto addresses use too ("u-"). Why:

* Some MTAs lower-case local parts (and a few upper-case them), so the encoding has no
  case-significant character: decoding ignores case. "-" is not in the alphabet, so
  the prefix cannot be confused with the tag, and a later format can take another
  prefix ("b2-") while old tags keep decoding.
* RFC 5321 4.5.3.1.1 limits a local part to 64 octets. A typical tag is 44 (2 +
  42 characters for 26 bytes); the largest key id and index the encoder accepts still
  fit, and ``encode`` refuses anything that would not.
* 80-bit MAC: a forged tag could make the relay suppress someone else's address. The
  only way to forge one without the key is to guess the MAC online, one SMTP message
  per guess, and 2**-80 per guess is far beyond reach (64 bits would already be; the
  margin costs three characters). Truncating HMAC-SHA256 keeps its security at the
  truncated length (RFC 2104 section 5).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from smtprelay.transform import local_parts
from smtprelay.transform.local_parts import Unsealed
from smtprelay.transform.tokens import KeyRing, read_varint, write_varint

PREFIX = "b-"
# Far above any envelope (SES allows 50 recipients), and what keeps the varint short.
MAX_RECIPIENT_INDEX = 2**32
_CONTEXT = b"smtprelay verp tag\x00"
# A tag inside any text (an SRS-rewritten address, a Return-Path field): the prefix
# after a non-tag character, then the base32 (the shortest real tag is 40 characters).
_TAG_IN_TEXT = re.compile(r"(?<![a-z0-9])b-[a-z2-7]{38,62}(?![a-z2-7])", re.IGNORECASE)

Reason = Literal["not a VERP tag", "malformed", "tampered", "unknown key", "retired key"]


class InvalidVerpTag(ValueError):
    """A local part that is not a tag we made and may still honour; ``reason`` says why."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"invalid VERP tag: {reason}")
        self.reason: Reason = reason


class VerpTag(NamedTuple):
    message_id: str  # the spool's id, "018bd0e1a2b3-0123456789abcdef"
    recipient_index: int | None  # into the envelope's recipients; None: the whole envelope


def encode(message_id: str, recipient_index: int | None, keyring: KeyRing) -> str:
    """The local part ("b-...") for this message and recipient, signed with the active key
    (transform.local_parts: the tail is the recipient index plus one, 0 for the whole
    envelope).

    ValueError for a message id not in the spool's format, a negative index, or a tag
    that would not fit in a local part.
    """
    if recipient_index is not None and not 0 <= recipient_index < MAX_RECIPIENT_INDEX:
        raise ValueError(f"recipient index out of range: {recipient_index}")
    tail = bytearray()
    write_varint(tail, 0 if recipient_index is None else recipient_index + 1)
    return local_parts.seal(PREFIX, _CONTEXT, keyring, message_id, bytes(tail))


def address(message_id: str, recipient_index: int | None, mail_from_domain: str,
            keyring: KeyRing) -> str:
    """The whole envelope sender: ``b-...@mail_from_domain``."""
    domain = mail_from_domain.strip().rstrip(".")
    if not domain or "@" in domain:
        raise ValueError(f"not a domain: {mail_from_domain!r}")
    return f"{encode(message_id, recipient_index, keyring)}@{domain.lower()}"


def decode(local_part: str, keyring: KeyRing, now: float | None = None) -> VerpTag:
    """What a tag we issued says; InvalidVerpTag for anything else (never another error).

    Case does not matter. A tag signed by a key retired more than the KeyRing's grace
    period ago is refused ("retired key"), as tracking tokens are.
    """
    try:
        message_id, tail = local_parts.unseal(local_part, PREFIX, _CONTEXT, keyring, now)
    except Unsealed as exc:
        raise InvalidVerpTag("not a VERP tag" if exc.reason == "not ours"
                             else exc.reason) from None
    try:
        index_plus_one, offset = read_varint(tail, 0, max_bits=36)
        if offset != len(tail):
            raise ValueError("trailing bytes")
    except ValueError:
        # Signed by us yet unreadable: a bug or a format change, not an attack.
        raise InvalidVerpTag("malformed") from None
    return VerpTag(message_id, None if index_plus_one == 0 else index_plus_one - 1)


def decode_address(envelope_address: str, keyring: KeyRing,
                   now: float | None = None) -> VerpTag:
    """``decode`` of an address's local part ("<b-...@bounce.example.com>" is fine).

    The domain is not checked here: the listener only accepts mail for its own MAIL
    FROM domains in the first place.
    """
    text = envelope_address.strip().strip("<>").strip()
    local, at, _ = text.rpartition("@")
    return decode(local if at else text, keyring, now)


def find_tags(text: str) -> tuple[str, ...]:
    """Every string in ``text`` shaped like one of our local parts, lower case, in order
    and deduplicated: for digging a tag out of a Return-Path, an ARF
    Original-Mail-From or an SRS-rewritten address. Each still has to pass ``decode``."""
    return tuple(dict.fromkeys(match.group(0).lower()
                               for match in _TAG_IN_TEXT.finditer(text[:65536])))
