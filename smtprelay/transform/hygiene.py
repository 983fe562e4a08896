"""Message hygiene before the spool: strip Bcc, Return-Path and control fields, stamp
the trace fields.

What SES refuses outright is checked before, by `smtprelay.policy.content`.
"""

# The function is pure and splice the original bytes by the offsets the header
# reader found: the message is never re-serialised, so everything not named here
# reaches the recipient byte for byte (and a later DKIM signature covers what the
# client wrote).

from __future__ import annotations

import email.utils
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from smtprelay.mail.headers import HeaderField

# RFC 5322 3.6.3 / 3.6.6: blind copies must not reach any recipient.
_BLIND = frozenset(("bcc", "resent-bcc"))
# RFC 5321 4.4: Return-Path is added by the final delivery, from the envelope sender;
# one written by the client would reach recipients naming an address the bounces do
# not go to. (The identity check has read it before it goes.)
_ADDED_AT_FINAL_DELIVERY = frozenset(("return-path",))
_LINE_LIMIT = 78  # RFC 5322 2.1.1 "SHOULD"
# Only what a host name or address literal is made of survives from the client's HELO:
# no CR/LF (header injection), no parentheses (comment nesting), no ";" (a Received
# parser would take what follows for the date), no white space (fake "by"/"with" clauses).
_NOT_HOST = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ReceivedInfo:
    """What the Received field records about this hop (RFC 5321 4.4)."""

    hostname: str  # our server.hostname
    client_helo: str
    client_ip: str
    tls_version: str | None  # e.g. "TLSv1.3", None for clear text
    tls_cipher: str | None
    authenticated: bool  # True when the client used SMTP AUTH
    message_id: str  # the relay's id (also used as the "id" clause of Received)
    recipient: str | None  # the single envelope recipient, or None when there are several
    received_at: float  # epoch seconds


def normalise(data: bytes, fields: list[HeaderField], *, info: ReceivedInfo) -> bytes:
    """The message as it will be spooled: Bcc and control headers out, trace fields in."""
    received, message = clean(data, fields, info=info)
    return received + message


def clean(data: bytes, fields: list[HeaderField], *, info: ReceivedInfo
          ) -> tuple[bytes, bytes]:
    """(our Received field, the client's message with Bcc and control fields out and
    Message-ID and Date in if missing). The message is `data` itself, not a copy,
    when none of that changes it: the Received field stays apart, as the spool's prefix.
    """
    kept: list[bytes | memoryview] = []
    view = memoryview(data)
    position = 0
    has_id = has_date = False
    for field in fields:
        key = field.key
        has_id = has_id or key == "message-id"
        has_date = has_date or key == "date"
        if key in _BLIND or key in _ADDED_AT_FINAL_DELIVERY or key.startswith("x-ses-") \
                or key == "x-configuration-set":
            kept.append(view[position:field.start])
            position = field.end
    stamp = email.utils.format_datetime(datetime.fromtimestamp(info.received_at, UTC))
    received = received_field(info, stamp)
    if position == 0 and has_id and has_date:
        return received, data
    # New fields go after the last field, i.e. before the empty line (or at the very
    # end of a message without a body, or at 0 for a message without header fields).
    insert_at = fields[-1].end if fields else 0
    kept.append(view[position:insert_at])
    added = b""
    if not has_id:
        added += f"Message-ID: <{_host(info.message_id)}@{_host(info.hostname)}>\r\n".encode()
    if not has_date:
        added += f"Date: {stamp}\r\n".encode()
    if added and insert_at > 0 and not _ends_with_crlf(kept):
        # A body-less message whose last line has no CRLF: end it before adding fields.
        added = b"\r\n" + added
    return received, b"".join([*kept, added, view[insert_at:]])


def received_field(info: ReceivedInfo, stamp: str | None = None) -> bytes:
    """The Received field (RFC 5321 4.4) for this hop, folded, CRLF-terminated."""
    if stamp is None:
        stamp = email.utils.format_datetime(datetime.fromtimestamp(info.received_at, UTC))
    tls = info.tls_version is not None
    # RFC 3848 protocol types.
    protocol = "ESMTP" + ("S" if tls else "") + ("A" if info.authenticated else "")
    clauses = [
        f"from {_host(info.client_helo) or 'unknown'} ({_ip_literal(info.client_ip)})",
        f"by {_host(info.hostname)} (smtprelay) with {protocol} id {_host(info.message_id)}",
    ]
    if info.recipient is not None:
        # Only for a single recipient: with several, naming one would leak it to the others.
        clauses.append(f"for <{_CONTROL.sub('', info.recipient)}>")
    if tls:
        cipher = f" with cipher {_host(info.tls_cipher)}" if info.tls_cipher else ""
        clauses.append(f"(using {_host(info.tls_version or '')}{cipher})")
    clauses[-1] += ";"
    clauses.append(stamp)
    lines: list[str] = []
    for index, clause in enumerate(clauses):
        lines.extend(_fold("Received: " + clause if index == 0 else "\t" + clause))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _fold(line: str) -> list[str]:
    """Break a line before spaces so no piece exceeds the limit (a longer word stays whole).

    The CRLF goes *before* the space and the space is kept, so unfolding (RFC 5322 2.2.3)
    gives back exactly the text, which matters inside a quoted local part.
    """
    pieces: list[str] = []
    while len(line) > _LINE_LIMIT:
        cut = line.rfind(" ", 1, _LINE_LIMIT + 1)
        if cut <= 1:
            cut = line.find(" ", _LINE_LIMIT + 1)  # one long word: break after it
            if cut < 0:
                break
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def _host(text: str | None) -> str:
    return _NOT_HOST.sub("", text or "")


def _ip_literal(ip: str) -> str:
    """RFC 5321 4.1.3 address literal of the client, "unknown" if it is not an address."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"[{address.ipv4_mapped}]"
        # Rebuilt from the bytes to drop a "%scope" zone, which has no literal syntax.
        return f"[IPv6:{ipaddress.IPv6Address(address.packed).compressed}]"
    return f"[{address}]"


def _ends_with_crlf(pieces: list[bytes | memoryview]) -> bool:
    # Pieces are whole fields, so a CRLF is never split across two of them.
    last = next((piece for piece in reversed(pieces) if len(piece)), b"\r\n")
    return bytes(last[-2:]) == b"\r\n"
