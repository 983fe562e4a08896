"""Signed local parts: an address's left side that carries a message id and a little
more, which the relay can trust when mail comes back to it.

Used by the VERP envelope senders (bounces.verp, "b-…") and the List-Unsubscribe
mailto addresses (transform.unsubscribe, "u-…"). The layout after the prefix, in
lowercase base32 (RFC 4648 alphabet, no padding):

    key id   varint   which key of the tracking KeyRing signed it
    message  14 bytes the relay's message id
    tail     bytes    what the user of the format puts there (a recipient index...)
    mac      10 bytes HMAC-SHA256 over a context label and everything above, truncated

Case-insensitive because some MTAs change the case of local parts; only the canonical
spelling decodes, so the unused low bits of the last character cannot write one tag
several ways. The 80-bit MAC makes forging one an online guess per message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from typing import Literal

from smtprelay.mail.address import MAX_LOCAL_PART
from smtprelay.transform.tokens import InvalidToken, KeyRing, read_varint, write_varint

MAC_SIZE = 10
MESSAGE_BYTES = 14
_MESSAGE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_BASE32 = re.compile(r"[a-z2-7]+")

Reason = Literal["not ours", "malformed", "tampered", "unknown key", "retired key"]


class Unsealed(ValueError):
    """A local part that is not one we sealed and may still honour."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason)
        self.reason: Reason = reason


def seal(prefix: str, context: bytes, keyring: KeyRing, message_id: str,
         tail: bytes) -> str:
    """`prefix` and the signed base32 of the active key, `message_id` and `tail`.
    ValueError for a message id not in the spool's format or a result over 64 octets."""
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"not a relay message id: {message_id!r}")
    key = keyring.active()
    body = bytearray()
    write_varint(body, key.id)
    body += bytes.fromhex(message_id.replace("-", ""))
    body += tail
    signed = bytes(body)
    local = prefix + _base32(signed + _mac(context, key.secret, signed))
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(f"the local part would be {len(local)} octets "
                         f"(limit {MAX_LOCAL_PART})")
    return local


def unseal(local_part: str, prefix: str, context: bytes, keyring: KeyRing,
           now: float | None = None, *, min_tail: int = 1) -> tuple[str, bytes]:
    """(message id, tail) of a local part `seal` made (any case); Unsealed otherwise.
    A key retired longer ago than the KeyRing's grace is refused ("retired key")."""
    now = time.time() if now is None else now
    text = local_part.strip().lower()
    if not text.startswith(prefix) or len(text) > MAX_LOCAL_PART:
        raise Unsealed("not ours")
    encoded = text[len(prefix):]
    if not _BASE32.fullmatch(encoded):
        raise Unsealed("malformed")
    try:
        raw = base64.b32decode(encoded.upper() + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise Unsealed("malformed") from None
    if _base32(raw) != encoded or len(raw) < 1 + MESSAGE_BYTES + min_tail + MAC_SIZE:
        raise Unsealed("malformed")
    signed, mac = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    try:
        key_id, offset = read_varint(signed, 0, max_bits=36)
    except ValueError:
        raise Unsealed("malformed") from None
    try:
        key = keyring.verification_key(key_id, now)
    except InvalidToken as exc:
        raise Unsealed("retired key" if exc.reason == "retired key"
                       else "unknown key") from None
    if not hmac.compare_digest(mac, _mac(context, key.secret, signed)):
        raise Unsealed("tampered")
    if offset + MESSAGE_BYTES > len(signed):
        # Signed by us yet unreadable: a bug or a format change, not an attack.
        raise Unsealed("malformed")
    hexid = signed[offset:offset + MESSAGE_BYTES].hex()
    return f"{hexid[:12]}-{hexid[12:]}", signed[offset + MESSAGE_BYTES:]


def _mac(context: bytes, secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, context + data, hashlib.sha256).digest()[:MAC_SIZE]


def _base32(data: bytes) -> str:
    return base64.b32encode(data).rstrip(b"=").decode("ascii").lower()
