"""Failed-AUTH lockout: too many failures from one client address or for one user name."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

# Bounded so a scan from many addresses cannot grow memory without limit; the
# oldest keys are forgotten first.
_MAX_KEYS = 100_000


class _Window:
    def __init__(self, limit: int, window: float, lockout: float, clock: Callable[[], float]):
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._locked_until: OrderedDict[str, float] = OrderedDict()

    def locked_for(self, key: str) -> float:
        until = self._locked_until.get(key)
        if until is None:
            return 0.0
        remaining = until - self._clock()
        if remaining <= 0:
            del self._locked_until[key]
            return 0.0
        return remaining

    def fail(self, key: str) -> None:
        now = self._clock()
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque()
            if len(self._failures) > _MAX_KEYS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(key)
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit:
            self._locked_until[key] = now + self.lockout
            self._locked_until.move_to_end(key)
            if len(self._locked_until) > _MAX_KEYS:
                self._locked_until.popitem(last=False)
            times.clear()

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class Lockout:
    """Counts AUTH failures per client IP and per user name over a sliding window."""

    def __init__(self, *, per_ip: int, per_user: int, window: float, lockout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ips = _Window(per_ip, window, lockout, clock)
        self._users = _Window(per_user, window, lockout, clock)

    def locked_for(self, ip: str, username: str | None) -> float:
        """Seconds until this address or user may try again; 0 when not locked."""
        user_wait = self._users.locked_for(username) if username is not None else 0.0
        return max(self._ips.locked_for(ip), user_wait)

    def failure(self, ip: str, username: str | None) -> None:
        self._ips.fail(ip)
        if username is not None:
            self._users.fail(username)

    def success(self, ip: str, username: str) -> None:
        self._ips.clear(ip)
        self._users.clear(username)
