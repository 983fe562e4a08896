"""Signed tracking tokens: what a click, open or unsubscribe URL carries, no database needed.

A token is the URL-safe base64 (no padding) of::

    header    1 byte   version (3 bits, = 1) | kind (2 bits) | whole message | compressed
                       | address
    key id    varint   which key of the KeyRing signed it
    issued    varint   Unix seconds
    message   14 bytes the relay's message id: 6 bytes of milliseconds, 8 random bytes
    recipient varint   index into the envelope's recipients, or varint length + UTF-8
                       address; absent for a whole-message token (several recipients
                       got the same copy, so a click cannot name one of them)
    -- list unsubscribes only (kind 3) --
    list      varint length + UTF-8: the contact list the message named
    topic     varint length + UTF-8: its topic, empty for the whole list
    -- clicks only --
    link      varint   0-based index of the link in the message
    tail      rest     [varint tag count, (varint length + UTF-8) per key and value] + URL,
                       raw-deflated (zlib) only when that makes it shorter
    mac       16 bytes HMAC-SHA256 over a context label and everything above, truncated

The kinds: click (0), open (1), unsubscribe (2), and list unsubscribe (3), an
unsubscribe of a message sent with X-SES-LIST-MANAGEMENT-OPTIONS: it names the list
and topic the person leaves, so the HTTP side needs no lookup to know what to change
(the address still comes from the message's mail record, never from the token). A
kind-2 token leaves the configuration set's own implicit list (policy.contacts).

Why a 128-bit tag: forging a token means guessing the tag online, one HTTP request
per guess, and 2**-128 per guess is far beyond reach; truncating HMAC-SHA256 to 128
bits keeps its security at that level (RFC 2104 section 5, NIST SP 800-107 5.3.4)
while saving 22 characters in every tracked link. The key id goes in clear so keys
can rotate: a retired key still verifies for RETIREMENT_GRACE, then its tokens die.

Measured lengths (tests/unit/test_tokens.py::test_typical_lengths keeps them honest):
an open or unsubscribe token is 51 characters (a list's unsubscribe 76 with the list
"newsletters" and topic "weekly"); a click on a typical 107-character
marketing URL with utm parameters is 175; a 311-character URL with a dozen tracking
parameters is 358 (deflate pays off from about 100 characters of URL). So even with
``https://links.example.com/c/`` in front, typical tracked links stay far under the
2,000 characters that old browsers and some mail filters cut at.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import os
import re
import secrets
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Literal

from smtprelay.infra.safeio import write_durably

# Tokens signed by a key that was retired longer ago than this are refused: long enough
# for nearly every open and click (most happen within days), short enough that a leaked
# old key stops mattering.
RETIREMENT_GRACE = 60 * 86400.0
MAC_SIZE = 16
SECRET_SIZE = 32
# Nothing we issue comes near this; it bounds the work an attacker's request can cause.
MAX_TOKEN_CHARS = 8192
MAX_TAIL = 16384  # decompressed click tail
_VERSION = 1
_CONTEXT = b"smtprelay tracking token\x00"
_MESSAGE_ID = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
_B64_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_F_ADDRESS = 0x01
_F_COMPRESSED = 0x02
_F_WHOLE_MESSAGE = 0x04

Reason = Literal["tampered", "unknown key", "retired key", "malformed"]


class InvalidToken(ValueError):
    """A token that must not be honoured; `reason` says why (for logs and metrics)."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"invalid token: {reason}")
        self.reason: Reason = reason


class KeyRingError(ValueError):
    """The key file cannot be used (unreadable, malformed, or readable by others)."""


class Kind(IntEnum):
    CLICK = 0
    OPEN = 1
    UNSUBSCRIBE = 2
    LIST_UNSUBSCRIBE = 3


@dataclass(frozen=True, slots=True)
class ClickToken:
    message_id: str  # "018bd0e1a2b3-0123456789abcdef"
    # Index into the envelope's recipients, the address, or None: the whole message.
    recipient: int | str | None
    link_index: int
    url: str  # where the redirect goes: http or https only
    issued_at: int  # Unix seconds
    # Link tags (ses:tags), so the Click event can carry linkTags without a lookup.
    tags: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class OpenToken:
    message_id: str
    recipient: int | str | None
    issued_at: int


@dataclass(frozen=True, slots=True)
class UnsubscribeToken:
    message_id: str
    recipient: int | str | None
    issued_at: int
    # The contact list (and topic) of a message sent with list-management options;
    # None: the configuration set's own one-click unsubscribe.
    contact_list: str | None = None
    topic: str | None = None


Payload = ClickToken | OpenToken | UnsubscribeToken


@dataclass(frozen=True, slots=True)
class Key:
    id: int
    secret: bytes = field(repr=False)
    created_at: float
    retired_at: float | None = None


class KeyRing:
    """The signing keys: one active, older ones retired but still verifying for a while."""

    def __init__(self, keys: Iterable[Key] = ()) -> None:
        self._keys: dict[int, Key] = {}
        for key in keys:
            if key.id in self._keys:
                raise KeyRingError(f"key id {key.id} appears twice")
            if key.id < 1 or len(key.secret) < 16:
                raise KeyRingError(f"key {key.id}: bad id or secret shorter than 16 bytes")
            self._keys[key.id] = key

    @property
    def keys(self) -> tuple[Key, ...]:
        return tuple(sorted(self._keys.values(), key=lambda k: k.id))

    @classmethod
    def generate(cls, now: float | None = None) -> KeyRing:
        ring = cls()
        ring.active(now)
        return ring

    def active(self, now: float | None = None) -> Key:
        """The key that signs new tokens; the first one is made here on first use."""
        live = [k for k in self._keys.values() if k.retired_at is None]
        if live:
            return max(live, key=lambda k: k.id)
        return self._add(now)

    def rotate(self, now: float | None = None) -> Key:
        """Start signing with a new key; the previous ones are retired as of now."""
        now = time.time() if now is None else now
        for key in list(self._keys.values()):
            if key.retired_at is None:
                self._keys[key.id] = Key(key.id, key.secret, key.created_at, now)
        return self._add(now)

    def prune(self, now: float | None = None) -> list[Key]:
        """Forget keys whose grace period is over (their tokens are refused anyway)."""
        now = time.time() if now is None else now
        gone = [k for k in self._keys.values()
                if k.retired_at is not None and now - k.retired_at > RETIREMENT_GRACE]
        for key in gone:
            del self._keys[key.id]
        return gone

    def verification_key(self, key_id: int, now: float) -> Key:
        key = self._keys.get(key_id)
        if key is None:
            raise InvalidToken("unknown key")
        if key.retired_at is not None and now - key.retired_at > RETIREMENT_GRACE:
            raise InvalidToken("retired key")
        return key

    def _add(self, now: float | None) -> Key:
        key = Key(max(self._keys, default=0) + 1, secrets.token_bytes(SECRET_SIZE),
                  time.time() if now is None else now)
        self._keys[key.id] = key
        return key

    # --- persistence -------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"format": 1, "keys": [
            {"id": k.id, "secret": base64.urlsafe_b64encode(k.secret).decode("ascii"),
             "created_at": k.created_at, "retired_at": k.retired_at}
            for k in self.keys]}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> KeyRing:
        try:
            doc = json.loads(text)
            if doc.get("format") != 1:
                raise KeyRingError("unknown key file format")
            keys = []
            for item in doc["keys"]:
                retired = item.get("retired_at")
                keys.append(Key(
                    id=_strict_int(item["id"]),
                    secret=base64.urlsafe_b64decode(item["secret"].encode("ascii")),
                    created_at=float(item["created_at"]),
                    retired_at=None if retired is None else float(retired)))
        except KeyRingError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise KeyRingError(f"malformed key file: {exc!r}") from None
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        """Read a key file; it must not be accessible to group or others (it holds secrets)."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise KeyRingError(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            if os.fstat(fd).st_mode & 0o077:
                raise KeyRingError(f"{path}: readable by group or others; chmod 600 it")
            text = handle.read().decode("utf-8", "replace")
        try:
            return cls.from_json(text)
        except KeyRingError as exc:
            raise KeyRingError(f"{path}: {exc}; restore it from a backup (links already "
                               "sent need its keys), or move it away to start a new one"
                               ) from None

    @classmethod
    def open(cls, path: Path, now: float | None = None) -> KeyRing:
        """Load the key file, or create it (mode 0600) with a first key if it is missing."""
        if path.exists():
            return cls.load(path)
        ring = cls.generate(now)
        ring.save(path)
        return ring

    def save(self, path: Path) -> None:
        write_durably(path, self.to_json().encode("utf-8"), mode=0o600)


def _strict_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    return value


# --- encoding ------------------------------------------------------------------------

def encode(payload: Payload, keyring: KeyRing) -> str:
    """The token for `payload`, signed with the ring's active key. ValueError for a bad payload."""
    issuer = Issuer(keyring, payload.message_id, payload.recipient, payload.issued_at)
    if isinstance(payload, ClickToken):
        return issuer.click(payload.link_index, payload.url, payload.tags)
    if isinstance(payload, OpenToken):
        return issuer.open()
    return issuer.unsubscribe(payload.contact_list, payload.topic)


class Issuer:
    """The tokens of one message for one recipient (or the whole message).

    What its tokens share (key, time, message id, recipient) is encoded once; a URL's
    compressed tail once per process (`_click_tail`): a newsletter links to the same
    page from its picture, its title and its button, every copy of a campaign carries
    the same links, and deflating is most of what a click token costs.
    """

    __slots__ = ("_common", "_flags", "_key", "_key_id")

    def __init__(self, keyring: KeyRing, message_id: str, recipient: int | str | None,
                 issued_at: int) -> None:
        if not _MESSAGE_ID.fullmatch(message_id):
            raise ValueError(f"not a relay message id: {message_id!r}")
        self._key = keyring.active()
        key_id = bytearray()
        write_varint(key_id, self._key.id)
        self._key_id = bytes(key_id)
        flags = 0
        common = bytearray()
        write_varint(common, issued_at)
        common += bytes.fromhex(message_id.replace("-", ""))
        if recipient is None:
            flags |= _F_WHOLE_MESSAGE
        elif isinstance(recipient, str):
            flags |= _F_ADDRESS
            _text(common, recipient)
        else:
            write_varint(common, recipient)
        self._common = bytes(common)
        self._flags = flags

    def open(self) -> str:
        return self._sign(Kind.OPEN, self._flags, self._common)

    def unsubscribe(self, contact_list: str | None = None, topic: str | None = None) -> str:
        """The unsubscribe token; with `contact_list`, one that leaves that list (or its
        `topic`) rather than the configuration set's implicit list."""
        if contact_list is None:
            if topic is not None:
                raise ValueError("a topic needs its contact list")
            return self._sign(Kind.UNSUBSCRIBE, self._flags, self._common)
        if not contact_list:
            raise ValueError("empty contact list name")
        body = bytearray(self._common)
        _text(body, contact_list)
        _text(body, topic or "")
        return self._sign(Kind.LIST_UNSUBSCRIBE, self._flags, body)

    def click(self, link_index: int, url: str,
              tags: tuple[tuple[str, str], ...] = ()) -> str:
        """ValueError if `url` is not http(s) or the token would be too long."""
        if not _is_web_url(url):
            raise ValueError("a click token's URL must be http or https")
        compressed, tail = _click_tail(url, tags)
        body = bytearray(self._common)
        write_varint(body, link_index)
        body += tail
        return self._sign(Kind.CLICK, self._flags | compressed, body)

    def _sign(self, kind: Kind, flags: int, body: bytes | bytearray) -> str:
        signed = bytes((_VERSION << 5 | kind << 3 | flags,)) + self._key_id + body
        token = _b64(signed + _mac(self._key.secret, signed))
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError(f"token would be {len(token)} characters "
                             f"(limit {MAX_TOKEN_CHARS})")
        return token


# Per process, not per message: a campaign's messages (one copy per recipient) carry
# the same links, and deflating each was a fifth of tracking a newsletter's links.
@functools.lru_cache(maxsize=4096)
def _click_tail(url: str, tags: tuple[tuple[str, str], ...]) -> tuple[int, bytes]:
    """The compressed flag and the click tail: tags and URL, deflated if that is shorter."""
    tail = bytearray()
    write_varint(tail, len(tags))
    for name, value in tags:
        _text(tail, name)
        _text(tail, value)
    tail += url.encode("utf-8")
    # A 4 KiB window and memLevel 4: URLs are short, and setting up the default 32 KiB
    # window was most of a token's cost. Inflating with wbits -15 reads it.
    packer = zlib.compressobj(9, zlib.DEFLATED, -12, 4)
    packed = packer.compress(tail) + packer.flush()
    if len(packed) < len(tail):
        return _F_COMPRESSED, packed
    return 0, bytes(tail)


def decode(token: str, keyring: KeyRing, now: float | None = None) -> Payload:
    """The payload of a token we issued; InvalidToken otherwise (never another exception)."""
    now = time.time() if now is None else now
    if not 0 < len(token) <= MAX_TOKEN_CHARS or not _B64_TOKEN.fullmatch(token):
        raise InvalidToken("malformed")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed") from None
    # Only the canonical spelling is accepted: otherwise the unused low bits of the last
    # character would let one token be written several ways.
    if _b64(raw) != token or len(raw) < 2 + MAC_SIZE:
        raise InvalidToken("malformed")
    signed, tag = raw[:-MAC_SIZE], raw[-MAC_SIZE:]
    header = signed[0]
    if (header >> 5 != _VERSION
            or header & (_F_WHOLE_MESSAGE | _F_ADDRESS) == _F_WHOLE_MESSAGE | _F_ADDRESS):
        raise InvalidToken("malformed")
    try:
        key_id, offset = read_varint(signed, 1)
    except ValueError:
        raise InvalidToken("malformed") from None
    key = keyring.verification_key(key_id, now)
    if not hmac.compare_digest(tag, _mac(key.secret, signed)):
        raise InvalidToken("tampered")
    try:
        return _parse(signed, offset, Kind((header >> 3) & 0x03), header & 0x07)
    except (ValueError, IndexError, zlib.error):
        # Signed by us yet unreadable: a bug or a format change, not an attack.
        raise InvalidToken("malformed") from None


def _parse(data: bytes, offset: int, kind: Kind, flags: int) -> Payload:
    issued, offset = read_varint(data, offset)
    if offset + 14 > len(data):
        raise ValueError("short message id")
    hexid = data[offset:offset + 14].hex()
    message_id = f"{hexid[:12]}-{hexid[12:]}"
    offset += 14
    recipient: int | str | None = None
    if flags & _F_WHOLE_MESSAGE:
        pass
    elif flags & _F_ADDRESS:
        recipient, offset = _read_text(data, offset)
    else:
        recipient, offset = read_varint(data, offset)
    if kind is Kind.LIST_UNSUBSCRIBE:
        contact_list, offset = _read_text(data, offset)
        topic, offset = _read_text(data, offset)
        if flags & _F_COMPRESSED or offset != len(data) or not contact_list:
            raise ValueError("trailing bytes or no list")
        return UnsubscribeToken(message_id, recipient, issued, contact_list, topic or None)
    if kind is not Kind.CLICK:
        if flags & _F_COMPRESSED or offset != len(data):
            raise ValueError("trailing bytes")
        cls = OpenToken if kind is Kind.OPEN else UnsubscribeToken
        return cls(message_id, recipient, issued)
    link_index, offset = read_varint(data, offset)
    tail = data[offset:]
    if flags & _F_COMPRESSED:
        unpacker = zlib.decompressobj(-15)
        tail = unpacker.decompress(tail, MAX_TAIL)
        if unpacker.unconsumed_tail or not unpacker.eof:
            raise ValueError("compressed tail too long or truncated")
    count, position = read_varint(tail, 0)
    tags = []
    for _ in range(count):
        name, position = _read_text(tail, position)
        value, position = _read_text(tail, position)
        tags.append((name, value))
    url = tail[position:].decode("utf-8")
    if not _is_web_url(url):
        raise ValueError("not a web URL")
    return ClickToken(message_id, recipient, link_index, url, issued, tuple(tags))


def _is_web_url(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def _mac(secret: bytes, data: bytes) -> bytes:
    return hmac.digest(secret, _CONTEXT + data, "sha256")[:MAC_SIZE]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def write_varint(out: bytearray, value: int) -> None:
    """Append `value` as an unsigned LEB128 varint (also the VERP tags' number format)."""
    if value < 0:
        raise ValueError(f"negative number in a token: {value}")
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def read_varint(data: bytes, offset: int, max_bits: int = 64) -> tuple[int, int]:
    """The number at `offset` and the offset after it; ValueError if malformed."""
    value = shift = 0
    while True:
        if offset >= len(data) or shift >= max_bits:
            raise ValueError("bad varint")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            # Minimal encoding only, so a number has one spelling (0x80 0x00 is not 0).
            if byte == 0 and shift:
                raise ValueError("overlong varint")
            return value, offset
        shift += 7


def _text(out: bytearray, value: str) -> None:
    raw = value.encode("utf-8")
    write_varint(out, len(raw))
    out += raw


def _read_text(data: bytes, offset: int) -> tuple[str, int]:
    length, offset = read_varint(data, offset)
    if offset + length > len(data):
        raise ValueError("short string")
    return data[offset:offset + length].decode("utf-8"), offset + length
