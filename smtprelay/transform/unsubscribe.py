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
"weekly"). Layout, before lowercase base32 (RFC 4648, no padding; transform.local_parts
seals and opens it, as it does VERP's "b-" tags)::

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

import urllib.parse
from typing import NamedTuple

from smtprelay.mail.headers import HeaderField
from smtprelay.transform import local_parts
from smtprelay.transform.local_parts import Unsealed
from smtprelay.transform.tokens import KeyRing, read_varint, write_varint

# SES's footer placeholder and ours; both become the recipient's unsubscribe URL.
PLACEHOLDERS = ("{{unsubscribe_url}}", "{{amazonSESUnsubscribeUrl}}")
_FIELDS = ("list-unsubscribe", "list-unsubscribe-post")


MAILTO_PREFIX = "u-"
_MAILTO_CONTEXT = b"smtprelay unsubscribe address\x00"


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
    """``u-TAG``, signed with the ring's active key (transform.local_parts: the tail is
    the recipient index and a contact-list flag). ValueError for a bad id or index."""
    if not 0 <= recipient < 2**32:
        raise ValueError(f"recipient index out of range: {recipient}")
    tail = bytearray()
    write_varint(tail, recipient)
    tail.append(1 if contact_list else 0)
    return local_parts.seal(MAILTO_PREFIX, _MAILTO_CONTEXT, keyring, message_id,
                            bytes(tail))


def decode_mailto(local_part: str, keyring: KeyRing, now: float | None = None) -> MailtoTag:
    """What a tag we issued says; InvalidMailtoTag otherwise (any case accepted)."""
    try:
        message_id, tail = local_parts.unseal(local_part, MAILTO_PREFIX, _MAILTO_CONTEXT,
                                              keyring, now, min_tail=2)
    except Unsealed as exc:
        raise InvalidMailtoTag("not an unsubscribe address" if exc.reason == "not ours"
                               else exc.reason) from None
    try:
        recipient, offset = read_varint(tail, 0, max_bits=36)
        if offset + 1 != len(tail) or tail[offset] > 1:
            raise ValueError("layout")
    except (ValueError, IndexError):
        raise InvalidMailtoTag("malformed") from None
    return MailtoTag(message_id, recipient, tail[offset] == 1)


def mailto_address(target: str, keyring: KeyRing, message_id: str, recipient: int, *,
                   contact_list: bool) -> str:
    """The mailto address for `target`: a fixed address as it is, else u-TAG@target."""
    if "@" in target:
        return target
    local = mailto_local_part(keyring, message_id, recipient, contact_list=contact_list)
    return f"{local}@{target}"


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
