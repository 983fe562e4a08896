"""Outbound session limits and the cache of finished sessions for the next message.

Two limits, as Postfix's qmgr applies them:

- `max_connections` bounds the outbound SMTP sessions open at once, in use or idle.
  When the limit is reached and a session is wanted, the least recently used idle
  session is closed to make room; only when every session is in use does the caller
  wait.
- `max_per_domain` bounds the sessions in use at once for one recipient domain, so
  one big destination cannot take every slot and a small receiver is not flooded.

Traffic shaping (delivery.shaping) adds a group per mailbox provider and source
address: at most its `connections` sessions open (in use or idle, as the provider
counts them; an idle one of the group is closed to make room), and a session is
closed after its `messages_per_connection` transactions.

A session that ends a transaction cleanly goes back to the cache under its key (the
address, port and client settings it was opened with) for `idle_timeout` seconds,
and at most `max_age` seconds after it was opened, so a message to the same host
skips TCP, greeting, EHLO and the TLS handshake. Keys are per address rather than
per domain, so domains hosted on the same MX (every Google Workspace domain) share
sessions, as Postfix's connection cache does by address.

In a cluster (`store: redis`) each new session also holds a lease on its slot
(state.leases) for as long as it is open, in use or idle, so the per-domain limit
counts every node's connections as the receiver sees them. Taking an idle session
needs no new lease. A node refused one closes its own idle sessions to the slot
first, then asks again after a short random wait; the slot's semaphore has already
bounded how many of its deliveries ask at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any

from smtprelay.delivery.client import Connection
from smtprelay.infra import metrics
from smtprelay.state.leases import Lease, Leases

_REAP_EVERY = 1.0
# Between two asks for a lease: random within [MIN, wait], the wait doubling up to MAX,
# so waiting nodes neither hammer Redis nor ask in step.
_LEASE_WAIT_MIN = 0.025
_LEASE_WAIT_MAX = 0.25


@dataclass(slots=True)
class _Idle:
    conn: Connection
    since: float


@dataclass(slots=True)
class _Gate:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding or waiting


class ConnectionPool:
    def __init__(self, *, max_connections: int, max_per_domain: int, idle_timeout: float = 5.0,
                 max_age: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 leases: Leases | None = None) -> None:
        self.max_connections = max_connections
        self.max_per_domain = max_per_domain
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._clock = clock
        self._open = 0  # sessions counted against max_connections (in use, idle, opening)
        self._idle: dict[Hashable, list[_Idle]] = {}
        self._active: dict[str, int] = {}
        self._gates: dict[str, _Gate] = {}
        self._changed = asyncio.Condition()
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._stopped = False
        self._leases = leases  # None: one node, the slots' semaphores are the limit
        self._lease_of: dict[Connection, Lease] = {}
        # Shaping groups (provider, source): sessions open per group, and each one's.
        self._group_open: dict[Hashable, int] = {}
        self._group_of: dict[Connection, Hashable] = {}

    # ------------------------------------------------------------------ figures

    @property
    def open_count(self) -> int:
        return self._open

    @property
    def idle_count(self) -> int:
        return sum(len(entries) for entries in self._idle.values())

    def active(self, domain: str) -> int:
        return self._active.get(domain, 0)

    # -------------------------------------------------------------- domain slots

    @contextlib.asynccontextmanager
    async def domain_slot(self, domain: str, limit: int | None = None) -> AsyncIterator[None]:
        """Hold one of the domain's in-use slots (`limit`, default max_per_domain).

        A FIFO semaphore per domain: waiters get slots in arrival order, so a message
        that has waited is not overtaken by one that just arrived (a Condition woken
        with notify_all let newcomers win and starved the oldest: seconds of p99).
        """
        gate = self._gates.get(domain)
        if gate is None:
            gate = self._gates[domain] = _Gate(
                asyncio.Semaphore(self.max_per_domain if limit is None else limit))
        gate.users += 1
        try:
            async with gate.semaphore:
                self._active[domain] = self.active(domain) + 1
                metrics.DOMAIN_ACTIVE.labels(domain=domain).set(self._active[domain])
                try:
                    yield
                finally:
                    left = self._active[domain] - 1
                    if left:
                        self._active[domain] = left
                        metrics.DOMAIN_ACTIVE.labels(domain=domain).set(left)
                    else:
                        # Unbounded label sets are a Prometheus hazard: only active
                        # domains stay.
                        del self._active[domain]
                        with contextlib.suppress(KeyError):
                            metrics.DOMAIN_ACTIVE.remove(domain)
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[domain]  # nobody holds or waits: forget the domain

    # ---------------------------------------------------------------- sessions

    def has_idle(self, matches: Callable[[Hashable], bool]) -> bool:
        """Whether a cached idle session's key `matches` (an IP pool prefers the source
        whose session to the destination can be reused). A scan of the cache's keys,
        which are at most max_connections."""
        return any(entries and matches(key) for key, entries in self._idle.items())

    def take_idle(self, key: Hashable) -> Connection | None:
        """The most recently used idle session under `key` that can still be used."""
        entries = self._idle.get(key)
        now = self._clock()
        while entries:
            entry = entries.pop()
            if not entries:
                del self._idle[key]
            if entry.conn.reusable and now - entry.conn.opened_at < self.max_age:
                return entry.conn
            self._discard(entry.conn)
            entries = self._idle.get(key)
        return None

    async def reserve(self, slot: str | None = None, limit: int = 0, *,
                      group: Hashable | None = None,
                      group_limit: int | None = None) -> Lease | None:
        """Count a new session against max_connections, evicting an idle one if needed.

        With cluster leases, first wait for one of `slot`'s `limit` leases: the caller
        hands it to opened() with the session, or back to unreserve(). With a `group`,
        the session counts against its `group_limit` too (None: no limit), and the
        caller names the group to opened() or unreserve().
        """
        lease = None
        if self._leases is not None and slot is not None:
            lease = await self._lease(self._leases, slot, limit)
        try:
            async with self._changed:
                while True:
                    if (group_limit is not None
                            and self._group_open.get(group, 0) >= group_limit):
                        if not self._evict_oldest(group):
                            await self._changed.wait()
                        continue
                    if self._open < self.max_connections:
                        self._open += 1
                        break
                    if not self._evict_oldest():
                        await self._changed.wait()
                if group is not None:
                    self._group_open[group] = self._group_open.get(group, 0) + 1
        except BaseException:
            self._give_back(lease)
            raise
        metrics.OUTBOUND_CONNECTIONS.set(self._open)
        return lease

    def opened(self, conn: Connection, lease: Lease | None, group: Hashable | None = None
               ) -> None:
        """The session reserve() counted is open: its lease and its place in its group
        last as long as it does."""
        if lease is not None:
            self._lease_of[conn] = lease
        if group is not None:
            self._group_of[conn] = group

    async def unreserve(self, lease: Lease | None = None, group: Hashable | None = None
                        ) -> None:
        """A reserved session never opened (connect failed): give its place back."""
        self._open -= 1
        self._leave_group(group)
        metrics.OUTBOUND_CONNECTIONS.set(self._open)
        self._give_back(lease)
        await self._notify()

    async def release(self, key: Hashable, conn: Connection,
                      max_transactions: int | None = None) -> None:
        """After a transaction: keep the session for the next message, or close it (also
        once it has carried `max_transactions`)."""
        now = self._clock()
        if (self._stopped or not conn.reusable or now - conn.opened_at >= self.max_age
                or (max_transactions is not None and conn.transactions >= max_transactions)
                or not self._may_keep(conn)):
            self._discard(conn)
        else:
            self._idle.setdefault(key, []).append(_Idle(conn, now))
            self._ensure_reaper()
        await self._notify()

    def forget(self, conn: Connection) -> None:
        """A session that broke while in use: close it and give its place back.

        Synchronous, for cancellation paths that cannot await; the waiters for the
        freed place are woken by a task.
        """
        self._discard(conn)
        self._in_background(self._notify())

    async def close(self) -> None:
        """Close every idle session (QUIT); sessions in use close when released."""
        self._stopped = True
        if self._reaper is not None:
            self._reaper.cancel()
        for entries in list(self._idle.values()):
            for entry in entries:
                self._discard(entry.conn)
        self._idle.clear()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=5)

    # ---------------------------------------------------------------- internal

    def _discard(self, conn: Connection) -> None:
        self._open -= 1
        metrics.OUTBOUND_CONNECTIONS.set(self._open)
        self._close(conn)
        self._give_back(self._lease_of.pop(conn, None))

    def _close(self, conn: Connection) -> None:
        """Close `conn` in the background. Its group counts it until it is closed: the
        provider sees it until then, and a new session must not be one too many."""
        group = self._group_of.pop(conn, None)
        if group is None:
            self._in_background(conn.close())
            return

        async def close_then_leave() -> None:
            try:
                await conn.close()
            finally:
                self._leave_group(group)
                await self._notify()

        self._in_background(close_then_leave())

    def _leave_group(self, group: Hashable | None) -> None:
        if group is None:
            return
        left = self._group_open.get(group, 0) - 1
        if left > 0:
            self._group_open[group] = left
        else:
            self._group_open.pop(group, None)

    def _may_keep(self, conn: Connection) -> bool:
        lease = self._lease_of.get(conn)
        return lease is None or self._leases is None or self._leases.keep(lease)

    def _give_back(self, lease: Lease | None) -> None:
        if lease is not None and self._leases is not None:
            self._in_background(self._leases.release(lease))

    async def _lease(self, leases: Leases, slot: str, limit: int) -> Lease:
        wait = _LEASE_WAIT_MIN
        while True:  # as long as the slot is full: a semaphore's wait, polled
            lease = await leases.try_acquire(slot, limit)
            if lease is not None:
                return lease
            own = self._idle_leased(slot)
            if own is not None:
                # Ours to free at once: give it back before asking again.
                conn, held = own
                self._open -= 1
                metrics.OUTBOUND_CONNECTIONS.set(self._open)
                self._close(conn)
                # Shielded: a cancelled wait must still give the lease back.
                await asyncio.shield(self._in_background(leases.release(held)))
                await self._notify()
                continue
            await asyncio.sleep(random.uniform(_LEASE_WAIT_MIN, wait))
            wait = min(_LEASE_WAIT_MAX, wait * 2)

    def _idle_leased(self, slot: str) -> tuple[Connection, Lease] | None:
        """Take out of the cache an idle session holding a lease on `slot`."""
        for key, entries in self._idle.items():
            for index, entry in enumerate(entries):
                lease = self._lease_of.get(entry.conn)
                if lease is not None and lease.slot == slot:
                    del entries[index]
                    if not entries:
                        del self._idle[key]
                    del self._lease_of[entry.conn]
                    return entry.conn, lease
        return None

    def _in_background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Kept referenced until done (the loop holds tasks weakly); close() waits for them.
        task = asyncio.get_running_loop().create_task(work)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return task

    def _evict_oldest(self, group: Hashable | None = None) -> bool:
        """Close the least recently used idle session (of `group` when given): its
        place is free again."""
        oldest_key: Hashable | None = None
        oldest: _Idle | None = None
        for key, entries in self._idle.items():
            for entry in entries:  # oldest first
                if group is not None and self._group_of.get(entry.conn) != group:
                    continue
                if oldest is None or entry.since < oldest.since:
                    oldest_key, oldest = key, entry
                break
        if oldest is None:
            return False
        entries = self._idle[oldest_key]
        entries.remove(oldest)
        if not entries:
            del self._idle[oldest_key]
        self._discard(oldest.conn)
        return True

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while self._idle:
            await asyncio.sleep(min(_REAP_EVERY, self.idle_timeout))
            now = self._clock()
            expired = False
            for key in list(self._idle):
                keep = []
                for entry in self._idle[key]:
                    if (now - entry.since >= self.idle_timeout or not entry.conn.reusable
                            or now - entry.conn.opened_at >= self.max_age):
                        self._discard(entry.conn)
                        expired = True
                    else:
                        keep.append(entry)
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
            if expired:
                await self._notify()
