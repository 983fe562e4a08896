"""Failed-AUTH lockout: too many failures from one client address, for one user name
at one address, or for one user name from many addresses."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

# Bounded so a scan from many addresses cannot grow memory without limit; the
# oldest keys are forgotten first.
_MAX_KEYS = 100_000


class _Window:
    """Failures per key over a sliding window; `limit` of them lock the key, counted
    only when they came from at least `min_addresses` client addresses."""

    def __init__(self, limit: int, window: float, lockout: float, clock: Callable[[], float],
                 min_addresses: int = 1) -> None:
        self.limit = limit
        self.window = window
        self.lockout = lockout
        self.min_addresses = min_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
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

    def fail(self, key: str, address: str = "") -> None:
        now = self._clock()
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque()
            if len(self._failures) > _MAX_KEYS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(key)
        times.append((now, address))
        while times and times[0][0] <= now - self.window:
            times.popleft()
        if len(times) >= self.limit and (
                self.min_addresses <= 1 or len({a for _, a in times}) >= self.min_addresses):
            self._locked_until[key] = now + self.lockout
            self._locked_until.move_to_end(key)
            if len(self._locked_until) > _MAX_KEYS:
                self._locked_until.popitem(last=False)
            times.clear()

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)


class Lockout:
    """Counts AUTH failures over a sliding window, as large providers do:

    - per client address: `per_ip` failures lock the address for every user name;
    - per user name at one address: `per_user` failures lock that pair only, so a
      stranger guessing from elsewhere cannot lock the real user out;
    - per user name everywhere: `per_user_everywhere` failures that came from at
      least `min_addresses` addresses lock the user name for everyone (a guess
      spread over many addresses).

    Failures decay with time only: a successful AUTH clears its own (user, address)
    pair, never the address's count, so a tenant cannot interleave its own logins to
    guess on without limit.
    """

    def __init__(self, *, per_ip: int, per_user: int, window: float, lockout: float,
                 per_user_everywhere: int = 100, min_addresses: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ips = _Window(per_ip, window, lockout, clock)
        self._pairs = _Window(per_user, window, lockout, clock)
        self._users = _Window(per_user_everywhere, window, lockout, clock,
                              min_addresses=min_addresses)

    def locked_for(self, ip: str, username: str | None) -> float:
        """Seconds until this address, or this user name here, may try again; 0 when
        not locked."""
        wait = self._ips.locked_for(ip)
        if username is not None:
            wait = max(wait, self._pairs.locked_for(_pair(username, ip)),
                       self._users.locked_for(username))
        return wait

    def failure(self, ip: str, username: str | None) -> None:
        self._ips.fail(ip)
        if username is not None:
            self._pairs.fail(_pair(username, ip))
            self._users.fail(username, ip)

    def success(self, ip: str, username: str) -> None:
        self._pairs.clear(_pair(username, ip))


def _pair(username: str, ip: str) -> str:
    return f"{username}\x00{ip}"
