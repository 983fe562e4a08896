"""Failed-AUTH lockout: too many failures from one client address, for one user name
at one address, or for one user name from many addresses (the local backend's; the
limits come with each failure, state.api.LockoutPolicy)."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

from smtprelay.state.api import LockoutPolicy

# Bounded so a scan from many addresses cannot grow memory without limit; the
# oldest keys are forgotten first.
_MAX_KEYS = 100_000


class _Window:
    """Failures per key over a sliding window; `limit` of them lock the key, counted
    only when they came from at least `min_addresses` client addresses."""

    def __init__(self, clock: Callable[[], float]) -> None:
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

    def fail(self, key: str, limit: int, window: float, lockout: float, address: str = "",
             min_addresses: int = 1) -> None:
        now = self._clock()
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque()
            if len(self._failures) > _MAX_KEYS:
                self._failures.popitem(last=False)
        self._failures.move_to_end(key)
        times.append((now, address))
        while times and times[0][0] <= now - window:
            times.popleft()
        if len(times) >= limit and (
                min_addresses <= 1 or len({a for _, a in times}) >= min_addresses):
            self._locked_until[key] = now + lockout
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

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._ips = _Window(clock)
        self._pairs = _Window(clock)
        self._users = _Window(clock)

    def locked_for(self, ip: str, username: str | None) -> float:
        """Seconds until this address, or this user name here, may try again; 0 when
        not locked."""
        wait = self._ips.locked_for(ip)
        if username is not None:
            wait = max(wait, self._pairs.locked_for(_pair(username, ip)),
                       self._users.locked_for(username))
        return wait

    def failure(self, ip: str, username: str | None, policy: LockoutPolicy) -> None:
        window, lockout = policy.window, policy.lockout
        self._ips.fail(ip, policy.per_ip, window, lockout)
        if username is not None:
            self._pairs.fail(_pair(username, ip), policy.per_user, window, lockout)
            self._users.fail(username, policy.per_user_everywhere, window, lockout, ip,
                             policy.min_addresses)

    def success(self, ip: str, username: str) -> None:
        self._pairs.clear(_pair(username, ip))


def _pair(username: str, ip: str) -> str:
    return f"{username}\x00{ip}"
