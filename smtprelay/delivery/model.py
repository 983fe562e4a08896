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
    (one per recipient with VERP) is stuffed once, not once per transaction."""

    __slots__ = ("_data", "_wire")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._wire: bytes | None = None

    def as_sent(self) -> bytes:
        if self._wire is None:
            data = self._data
            ending = b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"
            head = b"." if data.startswith(b".") else b""
            self._wire = b"".join((head, data.replace(b"\r\n.", b"\r\n.."), ending))
        return self._wire


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message to one destination domain: the envelope and the bytes to send."""

    mail_from: str  # "" for the null sender of a DSN
    recipients: tuple[str, ...]
    data: bytes  # CRLF line endings, not dot-stuffed
    smtputf8: bool = False
    body_8bitmime: bool = False
    # The wire form of `data`, shared by the transactions of one message.
    wire: WireForm | None = None

    def wire_bytes(self) -> bytes:
        return (self.wire or WireForm(self.data)).as_sent()


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
