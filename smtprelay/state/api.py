"""The shared-state interface: operations, not storage, so that each is one atomic step
in any backend (a method call in state.local, a round trip to the supervisor's
state.service, a Lua script in Redis) and a worker never reads a value to decide and
write it back (two workers would both see room for one more).

Limits travel with each call rather than living in the backend: the caller reads them
from the configuration in force, so a reload needs no push into the backend, and
several processes (or nodes) briefly on different configurations each apply their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class StateUnavailable(Exception):
    """The backend cannot be reached (the supervisor's state service went away, Redis is
    down): the caller answers with a temporary failure, never a permanent one and never
    by skipping the limit."""


class SendVerdict(StrEnum):
    OK = "ok"
    RATE = "rate"  # over max_send_rate (and its burst)
    DAILY = "daily"  # over max_24h_send


@dataclass(frozen=True, slots=True)
class SendLimits:
    """An account's quota (config.QuotaConfig with the burst resolved)."""

    max_send_rate: float  # recipients per second, as a token bucket
    burst: int  # the bucket's size
    max_24h_send: int  # recipients per rolling 24 hours


class ConnectionRefusal(StrEnum):
    TOTAL = "max_connections"
    PER_IP = "max_connections_per_ip"
    DRAINING = "draining"  # `smtprelay drain`: the node takes no new connections


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    """When failed AUTHs lock (config.AuthConfig): failures within `window` seconds
    lock for `lockout` seconds."""

    per_ip: int  # from one client address, any user name
    per_user: int  # for one user name at one address
    per_user_everywhere: int  # for one user name, from at least min_addresses addresses
    min_addresses: int
    window: float
    lockout: float


class SharedState(Protocol):
    async def reserve_send(self, account: str, recipients: int, daily: int,
                           limits: SendLimits | None) -> SendVerdict:
        """Take `recipients` from the account's rate and hold `daily` of them against
        its 24-hour quota until settled (limits None: nothing to refuse, usage still
        counted). Held recipients count as sent for other reservations meanwhile."""

    async def settle_send(self, account: str, recipients: int, daily: int, *, sent: bool,
                          limits: SendLimits | None) -> None:
        """End a reservation reserve_send made: sent, its `daily` recipients count in
        the 24 hours (durably, within about a second); not sent, the `recipients` rate
        tokens are given back."""

    async def sent_last_24h(self, account: str) -> int:
        """Recipients counted in the rolling 24 hours (held ones not included)."""

    async def auth_locked_for(self, ip: str, username: str | None) -> float:
        """Seconds until this client address, or this user name at it, may try AUTH
        again; 0 when not locked."""

    async def auth_failure(self, ip: str, username: str | None,
                           policy: LockoutPolicy) -> None:
        """A failed AUTH from `ip` (as `username`, when one was given)."""

    async def auth_success(self, ip: str, username: str) -> None:
        """A good AUTH: it clears the (user, address) pair's failures, never the
        address's own count."""

    async def open_connection(self, ip: str, max_total: int,
                              max_per_ip: int) -> ConnectionRefusal | None:
        """Count an SMTP connection from `ip`, or say which limit it would pass (and
        count nothing). Each counted one ends with close_connection."""

    async def close_connection(self, ip: str) -> None:
        """A connection open_connection counted has ended."""
