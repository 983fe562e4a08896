"""Warm-up counters of the IP pools' addresses: the day each address started its warm-up,
and the recipients it sent each day per mailbox provider, behind `WarmupCounters`.

Operations, not storage, as the rest of the shared state: `take` checks both caps and
counts in one atomic step (a method call here, one Lua script in state.warmup_redis),
so two deliveries at once can never both take the last place under a cap. Days are
UTC day numbers (seconds since the epoch // 86400): every node of a cluster turns
the page at the same moment, whatever its time zone.

The local backend keeps the counts in memory and in the state database
(`warmup_started`, `warmup_sent`): start days are written at once, counts once a
second in one transaction, as state.usage does for the 24-hour quota, so a restart
goes on from where the warm-up was (a crash forgets at most a second of counts).
Only the delivery side counts, and it runs in the supervisor: worker processes never
ask, so nothing here crosses state.service.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from smtprelay.db.flushed import FlushedStore

log = logging.getLogger("smtprelay.state")

DAY = 86400
# The provider of destinations no mailbox provider's table names (counted in the
# total only).
NO_PROVIDER = ""
# Counts older than this many days serve no cap and no report: dropped at start.
_KEEP_DAYS = 8
_FLUSH_INTERVAL = 1.0


def day_of(timestamp: float) -> int:
    """The UTC day number of a Unix time."""
    return int(timestamp // DAY)


@dataclass(frozen=True, slots=True)
class AddressCounts:
    """One address on one day: when its warm-up started and what it sent."""

    address: str
    start_day: int | None  # None: never used yet (its warm-up has not begun)
    sent: dict[str, int] = field(default_factory=dict)  # provider ("" none) -> recipients

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class WarmupCounters(Protocol):
    async def start_day(self, address: str, today: int) -> int:
        """The day `address` started its warm-up; today, recorded, if it never has."""

    async def set_start_day(self, address: str, day: int) -> None:
        """Put the address's warm-up start on `day` (an operator restarting or
        advancing it: day N of the warm-up is start_day + N - 1)."""

    async def take(self, today: int, address: str, provider: str, count: int,
                   provider_cap: int | None, total_cap: int | None) -> bool:
        """Count `count` recipients sent from `address` to `provider` today if that
        keeps the address within both caps (None: no cap), else count nothing."""

    async def add(self, today: int, address: str, provider: str, count: int) -> None:
        """Count without a cap (a warm address), or give back (negative) what a
        transaction took and did not send."""

    async def counts(self, today: int, addresses: Iterable[str]) -> list[AddressCounts]:
        """Each address's start day and today's counts, for reports."""


class WarmupStore(Protocol):
    """Where the local backend keeps its counts across restarts."""

    def load(self, since_day: int) -> tuple[dict[str, int], dict[tuple[int, str, str], int]]:
        """Start days by address, and counts by (day, address, provider) since a day."""

    def started(self, address: str, day: int) -> None:
        """Record an address's start day (durable within about a second)."""

    def add(self, day: int, address: str, provider: str, count: int) -> None:
        """Add to a day's count (durable within about a second)."""


class LocalWarmup:
    """WarmupCounters in this process's memory, saved in the state database."""

    def __init__(self, store: WarmupStore | None = None) -> None:
        self._store = store
        self._starts: dict[str, int] = {}
        # (day, address) -> provider -> recipients; days before today are dropped as
        # the days turn.
        self._sent: dict[tuple[int, str], dict[str, int]] = {}

    def load(self, today: int) -> None:
        """Read start days and today's counts (blocking: in a thread at start-up)."""
        if self._store is None:
            return
        starts, sent = self._store.load(today)
        self._starts.update(starts)
        for (day, address, provider), count in sent.items():
            self._sent.setdefault((day, address), {})[provider] = count

    def _today(self, today: int, address: str) -> dict[str, int]:
        found = self._sent.get((today, address))
        if found is None:
            for key in [k for k in self._sent if k[0] < today]:
                del self._sent[key]  # a new day: yesterday's counts are history
            found = self._sent[(today, address)] = {}
        return found

    def _count(self, today: int, address: str, provider: str, count: int) -> None:
        sent = self._today(today, address)
        sent[provider] = max(0, sent.get(provider, 0) + count)
        if self._store is not None:
            self._store.add(today, address, provider, count)

    async def start_day(self, address: str, today: int) -> int:
        found = self._starts.get(address)
        if found is None:
            found = self._starts[address] = today
            if self._store is not None:
                self._store.started(address, today)
        return found

    async def set_start_day(self, address: str, day: int) -> None:
        self._starts[address] = day
        if self._store is not None:
            self._store.started(address, day)

    async def take(self, today: int, address: str, provider: str, count: int,
                   provider_cap: int | None, total_cap: int | None) -> bool:
        sent = self._today(today, address)
        if total_cap is not None and sum(sent.values()) + count > total_cap:
            return False
        if (provider_cap is not None and provider != NO_PROVIDER
                and sent.get(provider, 0) + count > provider_cap):
            return False
        self._count(today, address, provider, count)
        return True

    async def add(self, today: int, address: str, provider: str, count: int) -> None:
        self._count(today, address, provider, count)

    async def counts(self, today: int, addresses: Iterable[str]) -> list[AddressCounts]:
        return [AddressCounts(address, self._starts.get(address),
                              {p: n for p, n in self._sent.get((today, address), {}).items()
                               if n})
                for address in addresses]


class SQLiteWarmupStore(FlushedStore):
    # Versioned as the "warmup" tables of the state database (db.migrations).
    MIGRATIONS: ClassVar[tuple[str, ...]] = (
        "CREATE TABLE IF NOT EXISTS warmup_started (address TEXT PRIMARY KEY,"
        " day INTEGER NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE IF NOT EXISTS warmup_sent (day INTEGER NOT NULL, address TEXT NOT NULL,"
        " provider TEXT NOT NULL, recipients INTEGER NOT NULL,"
        " PRIMARY KEY (day, address, provider)) WITHOUT ROWID",
    )

    def __init__(self, path: Path, flush_interval: float = _FLUSH_INTERVAL) -> None:
        # As state.usage: counts wait here and go to disk once per interval, so a
        # delivery never waits for an fsync of its own.
        super().__init__(path, "warmup", flush_interval)
        self._pending: dict[tuple[int, str, str], int] = {}
        self._starts: dict[str, int] = {}

    def flush(self) -> None:
        """Write what was counted since the last flush (blocking)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            starts, self._starts = self._starts, {}
        if not pending and not starts:
            return
        try:
            self._writer.submit(lambda conn: _write(conn, starts, pending)).result(30)
        except Exception as exc:
            log.error("warm-up counts not saved: %s", exc)
            with self._lock:  # kept for the next flush
                for key, count in pending.items():
                    self._pending[key] = self._pending.get(key, 0) + count
                for address, day in starts.items():
                    self._starts.setdefault(address, day)

    def load(self, since_day: int) -> tuple[dict[str, int], dict[tuple[int, str, str], int]]:
        return self._writer.submit(lambda conn: _load(conn, since_day)).result(30)

    def started(self, address: str, day: int) -> None:
        with self._lock:
            self._starts[address] = day

    def add(self, day: int, address: str, provider: str, count: int) -> None:
        with self._lock:
            key = (day, address, provider)
            self._pending[key] = self._pending.get(key, 0) + count


def _write(conn: sqlite3.Connection, starts: dict[str, int],
           pending: dict[tuple[int, str, str], int]) -> None:
    conn.executemany("INSERT INTO warmup_started (address, day) VALUES (?, ?)"
                     " ON CONFLICT (address) DO UPDATE SET day = excluded.day",
                     list(starts.items()))
    conn.executemany(
        "INSERT INTO warmup_sent (day, address, provider, recipients) VALUES (?,?,?,?)"
        " ON CONFLICT (day, address, provider)"
        " DO UPDATE SET recipients = MAX(0, recipients + excluded.recipients)",
        [(day, address, provider, count)
         for (day, address, provider), count in pending.items()])


def _load(conn: sqlite3.Connection, since_day: int
          ) -> tuple[dict[str, int], dict[tuple[int, str, str], int]]:
    conn.execute("DELETE FROM warmup_sent WHERE day < ?", (since_day - _KEEP_DAYS,))
    starts = {str(a): int(d) for a, d in conn.execute("SELECT address, day FROM warmup_started")}
    sent = {(int(d), str(a), str(p)): int(n) for d, a, p, n in conn.execute(
        "SELECT day, address, provider, recipients FROM warmup_sent WHERE day >= ?",
        (since_day,))}
    return starts, sent


def read_counts(state_path: Path, today: int, addresses: Iterable[str]) -> list[AddressCounts]:
    """The local backend's counts as last saved (within a second of the daemon's), for
    `smtprelay stats` (reads, no writer)."""
    wanted = list(addresses)
    try:
        conn = sqlite3.connect(f"file:{state_path}?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return [AddressCounts(a, None) for a in wanted]
    try:
        starts = dict(conn.execute("SELECT address, day FROM warmup_started").fetchall())
        sent: dict[str, dict[str, int]] = {}
        for address, provider, count in conn.execute(
                "SELECT address, provider, recipients FROM warmup_sent WHERE day = ?",
                (today,)):
            if count:
                sent.setdefault(str(address), {})[str(provider)] = int(count)
    except sqlite3.OperationalError:
        return [AddressCounts(a, None) for a in wanted]  # the daemon never counted
    finally:
        conn.close()
    return [AddressCounts(a, starts.get(a), sent.get(a, {})) for a in wanted]
