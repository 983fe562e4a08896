"""The local backend: shared state in one process's memory, for a relay on one machine.

With one worker this is the daemon's own object; with several, the supervisor holds it
and serves it to the workers (state.service), so every worker sees one rate bucket and
one 24-hour count per account however its connections are spread. The 24-hour counts
are also written to the state database (state.usage) and read back at start-up; the
rate buckets live in memory only (they refill within a second anyway).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from smtprelay.state.api import ConnectionRefusal, LockoutPolicy, SendLimits, SendVerdict
from smtprelay.state.lockout import Lockout
from smtprelay.state.usage import MINUTE, WINDOW, UsageStore


@dataclass
class _Account:
    tokens: float | None = None  # None: a full bucket, whatever its size
    refilled_at: float = 0.0
    minutes: deque[tuple[int, int]] = field(default_factory=deque)
    in_window: int = 0
    pending: int = 0


class LocalState:
    """SharedState in memory (every method is synchronous inside; async for the
    interface, so callers do not know which backend they have)."""

    def __init__(self, usage: UsageStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._usage = usage
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self.lockout = Lockout()
        self.connections = 0
        self.connections_by_ip: Counter[str] = Counter()
        # The node is being drained (`smtprelay drain`): every process of it refuses
        # new connections, since they all ask here.
        self.draining = False

    def load(self) -> None:
        """Read the last 24 hours of usage (blocking: in a thread at start-up)."""
        if self._usage is None:
            return
        for account, minutes in self._usage.recent(self._clock() - WINDOW).items():
            state = self._account(account)
            state.minutes.extend(minutes)
            state.in_window = sum(count for _, count in minutes)

    def _account(self, account: str) -> _Account:
        state = self._accounts.get(account)
        if state is None:
            state = self._accounts[account] = _Account(refilled_at=self._clock())
        return state

    def _expire(self, state: _Account, now: float) -> None:
        oldest = int((now - WINDOW) // MINUTE)
        while state.minutes and state.minutes[0][0] < oldest:
            state.in_window -= state.minutes.popleft()[1]

    def _refill(self, state: _Account, limits: SendLimits, now: float) -> float:
        tokens = float(limits.burst) if state.tokens is None else min(
            float(limits.burst), state.tokens + (now - state.refilled_at) * limits.max_send_rate)
        state.refilled_at = now
        return tokens

    def reserve_now(self, account: str, recipients: int, daily: int,
                    limits: SendLimits | None) -> SendVerdict:
        state = self._account(account)
        if limits is not None:
            now = self._clock()
            self._expire(state, now)
            if daily and state.in_window + state.pending + daily > limits.max_24h_send:
                return SendVerdict.DAILY
            tokens = self._refill(state, limits, now)
            if tokens < recipients:
                state.tokens = tokens
                return SendVerdict.RATE
            state.tokens = tokens - recipients
        state.pending += daily
        return SendVerdict.OK

    def settle_now(self, account: str, recipients: int, daily: int, *, sent: bool,
                   limits: SendLimits | None) -> None:
        state = self._account(account)
        state.pending = max(0, state.pending - daily)
        if not sent:
            if limits is not None and state.tokens is not None:
                state.tokens = min(float(limits.burst), state.tokens + recipients)
            return
        if not daily:
            return
        minute = int(self._clock() // MINUTE)
        if state.minutes and state.minutes[-1][0] == minute:
            state.minutes[-1] = (minute, state.minutes[-1][1] + daily)
        else:
            state.minutes.append((minute, daily))
        state.in_window += daily
        if self._usage is not None:
            self._usage.add(account, minute, daily)

    def sent_now(self, account: str) -> int:
        state = self._accounts.get(account)
        if state is None:
            return 0
        self._expire(state, self._clock())
        return state.in_window

    # SharedState
    async def reserve_send(self, account: str, recipients: int, daily: int,
                           limits: SendLimits | None) -> SendVerdict:
        return self.reserve_now(account, recipients, daily, limits)

    async def settle_send(self, account: str, recipients: int, daily: int, *, sent: bool,
                          limits: SendLimits | None) -> None:
        self.settle_now(account, recipients, daily, sent=sent, limits=limits)

    async def sent_last_24h(self, account: str) -> int:
        return self.sent_now(account)

    async def auth_locked_for(self, ip: str, username: str | None) -> float:
        return self.lockout.locked_for(ip, username)

    async def auth_failure(self, ip: str, username: str | None,
                           policy: LockoutPolicy) -> None:
        self.lockout.failure(ip, username, policy)

    async def auth_success(self, ip: str, username: str) -> None:
        self.lockout.success(ip, username)

    def open_now(self, ip: str, max_total: int, max_per_ip: int) -> ConnectionRefusal | None:
        if self.draining:
            return ConnectionRefusal.DRAINING
        if self.connections >= max_total:
            return ConnectionRefusal.TOTAL
        if self.connections_by_ip[ip] >= max_per_ip:
            return ConnectionRefusal.PER_IP
        self.connections += 1
        self.connections_by_ip[ip] += 1
        return None

    def close_now(self, ip: str) -> None:
        self.connections = max(0, self.connections - 1)
        self.connections_by_ip[ip] -= 1
        if self.connections_by_ip[ip] <= 0:
            del self.connections_by_ip[ip]

    async def open_connection(self, ip: str, max_total: int,
                              max_per_ip: int) -> ConnectionRefusal | None:
        return self.open_now(ip, max_total, max_per_ip)

    async def close_connection(self, ip: str) -> None:
        self.close_now(ip)
