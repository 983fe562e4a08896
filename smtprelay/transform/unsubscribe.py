"""One-click unsubscribe headers (RFC 2369 List-Unsubscribe, RFC 8058 List-Unsubscribe-Post).

Mailbox providers show an "Unsubscribe" button for a message that carries both:

    List-Unsubscribe: <https://links.example.com/u/TOKEN>, <mailto:...?subject=...>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

and, when it is pressed, POST ``List-Unsubscribe=One-Click`` to the https URL (RFC
8058 3.1). RFC 8058 also requires both fields to be covered by the DKIM signature,
which holds because the pipeline signs after this change (dkim.SIGNED_FIELDS lists
both). A sender's own List-Unsubscribe is kept unless the configuration set says
override; then theirs (and their List-Unsubscribe-Post) is replaced, as SES does
with ListManagementOptions.

The mailto URI (RFC 2369; for mail programs that do not POST) is an address signed per
message and recipient, like a VERP sender (``smtprelay.bounces.verp``):
``<mailto:u-TAG@DOMAIN?subject=unsubscribe-TOKEN>``, where DOMAIN's MX is the
feedback listener. It accepts RCPT only for a tag that verifies, and mail to it
unsubscribes exactly as the https POST does (``smtprelay.feedback.unsubscribes``).
The tag, not the unsubscribe token, is the local part: a token is case-sensitive
base64url (some MTAs change the case of local parts) and a contact list's is longer
than the 64 octets RFC 5321 4.5.3.1.1 allows (76 with list "newsletters" and topic
"weekly"). Layout, before lowercase base32 (RFC 4648, no padding)::

    key id     varint    which key of the tracking KeyRing signed it
    message    14 bytes  the relay's message id, packed from its hex
    recipient  varint    index into the envelope's recipients
    scope      1 byte    0: the configuration set's own unsubscribe (token kind 2);
                         1: a contact list's (kind 3): the list and topic are in the
                         token of the subject, which must match message and recipient
    mac        10 bytes  HMAC-SHA256 over a context label and everything above

"u-" and 44 characters: 46 octets (the largest key id and index the encoder takes
still fit in 64). An 80-bit MAC, as VERP's: a forgery is an online guess per SMTP
message. A fixed address (``mailto: ADDRESS``, the older form) carries the token in
the subject alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
import urllib.parse
from typing import NamedTuple

from smtprelay.mail.headers import HeaderField
from smtprelay.transform.tokens import InvalidToken, KeyRing, read_varint, write_varint

# SES's footer placeholder and ours; both become the recipient's unsubscribe URL.
PLACEHOLDERS = ("{{unsubscribe_url}}", "{{amazonSESUnsubscribeUrl}}")
_FIELDS = ("list-unsubscribe", "list-unsubscribe-post")


MAILTO_PREFIX = "u-"
_MAILTO_MAC = 10
_MAILTO_CONTEXT = b"smtprelay unsubscribe address\x00"
_MESSAGE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_BASE32 = re.compile(r"[a-z2-7]+")
MAX_LOCAL_PART = 64


class MailtoTag(NamedTuple):
    message_id: str
    recipient: int
    contact_list: bool  # the token in the subject says which list (and topic)


class InvalidMailtoTag(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid unsubscribe address: {reason}")
        self.reason = reason


def mailto_local_part(keyring: KeyRing, message_id: str, recipient: int, *,
                      contact_list: bool) -> str:
    """``u-TAG``, signed with the ring's active key. ValueError for a bad id or index."""
    if not _MESSAGE_ID.fullmatch(message_id):
        raise ValueError(f"not a relay message id: {message_id!r}")
    if not 0 <= recipient < 2**32:
        raise ValueError(f"recipient index out of range: {recipient}")
    key = keyring.active()
    body = bytearray()
    write_varint(body, key.id)
    body += bytes.fromhex(message_id.replace("-", ""))
    write_varint(body, recipient)
    body.append(1 if contact_list else 0)
    signed = bytes(body)
    local = MAILTO_PREFIX + _base32(signed + _mailto_mac(key.secret, signed))
    if len(local) > MAX_LOCAL_PART:
        raise ValueError(f"unsubscribe address would be {len(local)} octets")
    return local


def decode_mailto(local_part: str, keyring: KeyRing, now: float | None = None) -> MailtoTag:
    """What a tag we issued says; InvalidMailtoTag otherwise (any case accepted)."""
    now = time.time() if now is None else now
    text = local_part.strip().lower()
    if not text.startswith(MAILTO_PREFIX) or len(text) > MAX_LOCAL_PART:
        raise InvalidMailtoTag("not an unsubscribe address")
    encoded = text[len(MAILTO_PREFIX):]
    if not _BASE32.fullmatch(encoded):
        raise InvalidMailtoTag("malformed")
    try:
        raw = base64.b32decode(encoded.upper() + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise InvalidMailtoTag("malformed") from None
    if _base32(raw) != encoded or len(raw) < 1 + 14 + 1 + 1 + _MAILTO_MAC:
        raise InvalidMailtoTag("malformed")
    signed, mac = raw[:-_MAILTO_MAC], raw[-_MAILTO_MAC:]
    try:
        key_id, offset = read_varint(signed, 0, max_bits=36)
        key = keyring.verification_key(key_id, now)
    except ValueError as exc:  # InvalidToken is one
        raise InvalidMailtoTag(exc.reason if isinstance(exc, InvalidToken)
                               else "malformed") from None
    if not hmac.compare_digest(mac, _mailto_mac(key.secret, signed)):
        raise InvalidMailtoTag("tampered")
    try:
        hexid = signed[offset:offset + 14].hex()
        recipient, offset = read_varint(signed, offset + 14, max_bits=36)
        if len(hexid) != 28 or offset + 1 != len(signed) or signed[offset] > 1:
            raise ValueError("layout")
    except ValueError:
        raise InvalidMailtoTag("malformed") from None
    return MailtoTag(f"{hexid[:12]}-{hexid[12:]}", recipient, signed[offset] == 1)


def mailto_address(target: str, keyring: KeyRing, message_id: str, recipient: int, *,
                   contact_list: bool) -> str:
    """The mailto address for `target`: a fixed address as it is, else u-TAG@target."""
    if "@" in target:
        return target
    local = mailto_local_part(keyring, message_id, recipient, contact_list=contact_list)
    return f"{local}@{target}"


def _mailto_mac(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, _MAILTO_CONTEXT + data, hashlib.sha256).digest()[:_MAILTO_MAC]


def _base32(data: bytes) -> str:
    return base64.b32encode(data).rstrip(b"=").decode("ascii").lower()


def header_fields(url: str, mailto: str | None = None, token: str = "") -> bytes:
    """The two header fields, folded between the URIs so no line passes 78 characters
    where it can be helped (RFC 5322 2.1.1)."""
    uris = [f"<{url}>"]
    if mailto is not None:
        subject = urllib.parse.quote(f"unsubscribe-{token}" if token else "unsubscribe")
        uris.append(f"<mailto:{mailto}?subject={subject}>")
    return (b"List-Unsubscribe: " + ",\r\n ".join(uris).encode("ascii") + b"\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")


def add(data: bytes, fields: list[HeaderField], new_fields: bytes, *,
        override: bool) -> bytes:
    """`data` with `new_fields` after its last header field; unchanged when the sender
    wrote a List-Unsubscribe and `override` is false."""
    ours = [field for field in fields if field.key in _FIELDS]
    if any(field.key == "list-unsubscribe" for field in ours) and not override:
        return data
    insert_at = fields[-1].end if fields else 0
    pieces: list[bytes] = []
    position = 0
    for field in ours:
        pieces.append(data[position:field.start])
        position = field.end
    pieces.append(data[position:insert_at])
    if insert_at > 0 and not data[:insert_at].endswith(b"\r\n"):
        pieces.append(b"\r\n")  # a body-less message whose last line has no CRLF
    pieces.append(new_fields)
    pieces.append(data[insert_at:])
    return b"".join(pieces)
