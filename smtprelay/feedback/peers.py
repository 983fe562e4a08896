"""Per-client limits of the feedback listener (issue 16: one sender must not flood it).

Port 25 takes mail from anyone, unauthenticated, so each client address gets a share,
counted the way Postfix's anvil(8) counts (``smtpd_client_connection_count_limit``,
``smtpd_client_message_rate_limit``), with the same replies, all temporary, so a real
mail server only retries later and nothing is lost:

=========================================  =============================================
over ``feedback.max_connections_per_ip``   ``421 4.7.0 Error: too many connections from
(sessions open at once)                    IP``, at connect, and the connection closes
over ``feedback.max_messages_per_ip``      ``450 4.7.1 Error: too much mail from IP``,
(MAIL commands per ``rate_window``)        at MAIL; the session may go on (QUIT, RSET)
over ``feedback.max_bytes_per_ip``         ``452 4.3.1 Insufficient system storage: too
(report bytes stored per ``rate_window``)  many bytes from IP``, at MAIL, also when the
                                           MAIL's SIZE= would pass the limit (RFC 1870)
=========================================  =============================================

Messages are counted at MAIL, accepted or not (as anvil counts "message delivery
requests"); bytes when a report is stored. A window starts with a client's first MAIL
and its counts start again from zero ``rate_window`` later (anvil's time unit), so a
client may send up to twice a limit across a window's end, never more.

What a "client" is: an IPv4 address, or an IPv6 /64 (one host usually has a whole
/64, and counting each of its addresses alone would let it walk round every limit).

Nobody is exempt: the relay's ``trusted_networks`` speak for an account on the
submission listeners, and mean nothing on the feedback listener, which trusts no one.
The counts live in memory (a restart forgets them) and hold only clients seen in the
last window.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay.config import Config
from smtprelay.infra import metrics
from smtprelay.mail.replies import Reply


@dataclass(frozen=True, slots=True)
class PeerLimitSettings:
    """feedback.max_connections_per_ip, max_messages_per_ip, max_bytes_per_ip, rate_window."""

    connections: int
    messages: int
    bytes: int
    window: float

    @classmethod
    def of(cls, config: Config) -> PeerLimitSettings:
        settings = config.feedback
        return cls(settings.max_connections_per_ip, settings.max_messages_per_ip,
                   settings.max_bytes_per_ip, settings.rate_window)


def client_key(ip: str) -> str:
    """What one client is: the IPv4 address, or the /64 of an IPv6 one."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Usage:
    __slots__ = ("bytes", "messages", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.messages = 0
        self.bytes = 0


def too_many_connections(ip: str) -> Reply:
    return Reply(421, f"4.7.0 Error: too many connections from {ip}")


def too_much_mail(ip: str) -> Reply:
    return Reply(450, f"4.7.1 Error: too much mail from {ip}")


def too_many_bytes(ip: str) -> Reply:
    return Reply(452, f"4.3.1 Insufficient system storage: too many bytes from {ip}")


class PeerLimits:
    """The counts per client; `settings` is read at each use (a reload applies at once).

    Event-loop only (no locks): every call is synchronous and short."""

    def __init__(self, settings: Callable[[], PeerLimitSettings],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._open: Counter[str] = Counter()
        self._usage: dict[str, _Usage] = {}
        self._next_sweep = 0.0

    def connect(self, ip: str) -> Reply | None:
        """A session starts: None (counted; call ``disconnect`` at its end) or the refusal."""
        key = client_key(ip)
        if self._open[key] >= self._settings().connections:
            metrics.FEEDBACK_REFUSED.labels(reason="connections_per_ip").inc()
            return too_many_connections(ip)
        self._open[key] += 1
        return None

    def disconnect(self, ip: str) -> None:
        key = client_key(ip)
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]

    def mail(self, ip: str, size: int | None) -> Reply | None:
        """A MAIL command (with its SIZE= if any): counted, or the refusal."""
        settings = self._settings()
        usage = self._current(client_key(ip), settings.window)
        usage.messages += 1
        if usage.messages > settings.messages:
            metrics.FEEDBACK_REFUSED.labels(reason="messages_per_ip").inc()
            return too_much_mail(ip)
        # SIZE= only counts against what was sent already: a first report bigger
        # than the limit (the config keeps it at least max_message_size) still goes.
        if usage.bytes >= settings.bytes or (size is not None and usage.bytes
                                             and usage.bytes + size > settings.bytes):
            metrics.FEEDBACK_REFUSED.labels(reason="bytes_per_ip").inc()
            return too_many_bytes(ip)
        return None

    def stored(self, ip: str, size: int) -> None:
        """A report of `size` bytes from `ip` was stored."""
        self._current(client_key(ip), self._settings().window).bytes += size

    def _current(self, key: str, window: float) -> _Usage:
        now = self._clock()
        if now >= self._next_sweep:
            # Forget the clients whose window is over, at most once a window.
            self._next_sweep = now + window
            for gone in [k for k, u in self._usage.items() if now - u.started >= window]:
                del self._usage[gone]
        usage = self._usage.get(key)
        if usage is None or now - usage.started >= window:
            usage = self._usage[key] = _Usage(now)
        return usage
