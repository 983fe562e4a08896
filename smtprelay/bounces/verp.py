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
4648 alphabet, no padding). Why:

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

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Literal, NamedTuple

from smtprelay.transform.tokens import InvalidToken, KeyRing, read_varint, write_varint

PREFIX = "b-"
MAC_SIZE = 10
MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
# Far above any envelope (SES allows 50 recipients), and what keeps the varint short.
MAX_RECIPIENT_INDEX = 2**32
_CONTEXT = b"smtprelay verp tag\x00"
_MESSAGE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_MESSAGE_BYTES = 14
_BASE32 = re.compile(r"[a-z2-7]+")
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
    """The local part ("b-...") for this message and recipient, signed with the active key.

    ValueError for a message id not in the spool's format, a negative index, or a tag
    that would not fit in a local part.
    """
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"not a relay message id: {message_id!r}")
    if recipient_index is not None and not 0 <= recipient_index < MAX_RECIPIENT_INDEX:
        raise ValueError(f"recipient index out of range: {recipient_index}")
    key = keyring.active()
    body = bytearray()
    write_varint(body, key.id)
    body += bytes.fromhex(message_id.replace("-", ""))
    write_varint(body, 0 if recipient_index is None else recipient_index + 1)
    signed = bytes(body)
    local = PREFIX + _base32(signed + _mac(key.secret, signed))
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(f"VERP tag would be {len(local)} octets (limit {MAX_LOCAL_PART})")
    return local


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
    now = time.time() if now is None else now
    text = local_part.strip().lower()
    if not text.startswith(PREFIX) or len(text) > MAX_LOCAL_PART:
        raise InvalidVerpTag("not a VERP tag")
    encoded = text[len(PREFIX):]
    if not _BASE32.fullmatch(encoded):
        raise InvalidVerpTag("malformed")
    try:
        raw = base64.b32decode(encoded.upper() + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise InvalidVerpTag("malformed") from None
    # Only the canonical spelling: otherwise the unused low bits of the last character
    # would let one tag be written several ways, and a changed character go unnoticed.
    if _base32(raw) != encoded or len(raw) < 1 + _MESSAGE_BYTES + 1 + MAC_SIZE:
        raise InvalidVerpTag("malformed")
    signed, tag = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    try:
        key_id, offset = read_varint(signed, 0, max_bits=36)
    except ValueError:
        raise InvalidVerpTag("malformed") from None
    try:
        key = keyring.verification_key(key_id, now)
    except InvalidToken as exc:
        # The KeyRing speaks of tokens; its two verdicts here mean the same for tags.
        raise InvalidVerpTag("retired key" if exc.reason == "retired key"
                             else "unknown key") from None
    if not hmac.compare_digest(tag, _mac(key.secret, signed)):
        raise InvalidVerpTag("tampered")
    try:
        if offset + _MESSAGE_BYTES > len(signed):
            raise ValueError("short message id")
        hexid = signed[offset:offset + _MESSAGE_BYTES].hex()
        index_plus_one, offset = read_varint(signed, offset + _MESSAGE_BYTES, max_bits=36)
        if offset != len(signed):
            raise ValueError("trailing bytes")
    except ValueError:
        # Signed by us yet unreadable: a bug or a format change, not an attack.
        raise InvalidVerpTag("malformed") from None
    return VerpTag(f"{hexid[:12]}-{hexid[12:]}",
                   None if index_plus_one == 0 else index_plus_one - 1)


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


def _mac(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, _CONTEXT + data, hashlib.sha256).digest()[:MAC_SIZE]


def _base32(data: bytes) -> str:
    return base64.b32encode(data).rstrip(b"=").decode("ascii").lower()
