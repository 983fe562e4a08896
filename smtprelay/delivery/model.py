"""Values that cross the delivery boundary: what one attempt did for each recipient."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    DELIVERED = "delivered"  # the remote MTA took it (250)
    DEFERRED = "deferred"  # try again later (4xx, connection, TLS or DNS trouble)
    BOUNCED = "bounced"  # final failure (5xx, null MX, NXDOMAIN, lifetime over)


class WireForm:
    """A message as DATA sends it: dot-stuffed (RFC 5321 4.5.2), ending in CRLF and the
    final ".". Made on first use and kept, so a message sent in several transactions
    (one per recipient with VERP) is stuffed once, not once per transaction.

    The relay's prefix (its DKIM-Signature and Received fields, whole lines) and the
    client's bytes stay apart, written one after the other: neither is copied to join
    them, and a piece without a line that starts with "." is not copied at all.
    """

    __slots__ = ("_data", "_prefix", "_wire")

    def __init__(self, data: bytes, prefix: bytes = b"") -> None:
        self._prefix = prefix
        self._data = data
        self._wire: tuple[bytes, ...] | None = None

    def pieces(self) -> tuple[bytes, ...]:
        """The wire form in pieces, to be written in this order."""
        if self._wire is None:
            prefix, data = self._prefix, self._data
            pieces: list[bytes] = []
            if (prefix or data).startswith(b"."):
                pieces.append(b".")
            if prefix:
                pieces.append(prefix.replace(b"\r\n.", b"\r\n.."))
                if data.startswith(b"."):
                    pieces.append(b".")  # the prefix ends with a CRLF: data starts a line
            if data:
                pieces.append(data.replace(b"\r\n.", b"\r\n.."))
            pieces.append(b".\r\n" if (data or prefix).endswith(b"\r\n") else b"\r\n.\r\n")
            self._wire = tuple(pieces)
        return self._wire

    def as_sent(self) -> bytes:
        return b"".join(self.pieces())


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message to one destination domain: the envelope and the bytes to send."""

    mail_from: str  # "" for the null sender of a DSN
    recipients: tuple[str, ...]
    data: bytes  # CRLF line endings, not dot-stuffed
    smtputf8: bool = False
    body_8bitmime: bool = False
    # The wire form of `prefix + data`, shared by the transactions of one message.
    wire: WireForm | None = None
    # The relay's own fields in front of `data` (spool.model.NewMessage.prefix).
    prefix: bytes = b""

    @property
    def size(self) -> int:
        return len(self.prefix) + len(self.data)

    @property
    def whole(self) -> bytes:
        """The message (a copy when there is a prefix)."""
        return self.prefix + self.data if self.prefix else self.data

    def wire_pieces(self) -> tuple[bytes, ...]:
        return (self.wire or WireForm(self.data, self.prefix)).pieces()

    def wire_bytes(self) -> bytes:
        return b"".join(self.wire_pieces())


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: str
    verdict: Verdict
    code: int | None  # the SMTP reply code, None when no reply was had
    status: str  # enhanced status code: "2.0.0", "4.4.1", "5.1.1"...
    diagnostic: str  # "smtp; 550 5.1.1 user unknown" style text, or our own reason
    remote_mta: str | None = None  # "mx1.example.net [192.0.2.1]"
    retry_after: float | None = None  # seconds, when the remote said so
    # (bounceType, bounceSubType) when the transport knows it (the mailbox simulator);
    # None: the scheduler classifies the reply (smtprelay.bounces.classification).
    bounce: tuple[str, str] | None = None
    # Our end of the connection the result came over ("192.0.2.1"): SES's
    # ses:outgoing-ip tag. None when no connection was made.
    outgoing_ip: str | None = None
    # SES's DeliveryDelay delayType when the transport knows it (the relay held the
    # message back itself: "SendingDeferral"); None: read from the reply (retry.delay_type).
    delay_type: str | None = None


def same_result(recipients: Iterable[str], verdict: Verdict, status: str, diagnostic: str, *,
                code: int | None = None, remote_mta: str | None = None,
                retry_after: float | None = None) -> list[RecipientResult]:
    """One result per recipient, all alike: a whole transaction delivered, deferred or
    bounced at once (DNS, a host that could not be used, a local failure)."""
    return [RecipientResult(recipient=r, verdict=verdict, code=code, status=status,
                            diagnostic=diagnostic, remote_mta=remote_mta,
                            retry_after=retry_after)
            for r in recipients]


@dataclass(frozen=True, slots=True)
class Destination:
    """A host to try, in order: MX host name, its preference and one address."""

    host: str
    address: str
    preference: int = 0
