"""Sending quotas per account, as SES counts them: recipients per second and per rolling 24 h.

Recipients are reserved at RCPT (so a refusal is an SMTP reply on the recipient that
went over) and committed when the message is spooled, or released when the transaction
fails. The 24-hour count lives in minute buckets persisted in the state database, so
a restart does not reset anyone's quota; the rate bucket is in memory (it refills in a
second anyway).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from smtprelay.config import SANDBOX_QUOTA, Config, ConfigSource, QuotaConfig
from smtprelay.db.writer import GroupCommitWriter
from smtprelay.mail import replies as R
from smtprelay.mail.replies import Reply

log = logging.getLogger("smtprelay.quota")

WINDOW = 86400.0
_MINUTE = 60
_FLUSH_INTERVAL = 1.0


class UsageStore(Protocol):
    """Durable per-minute recipient counts; SQLite here, Redis for several nodes later."""

    def recent(self, since: float) -> dict[str, list[tuple[int, int]]]:
        """account -> [(minute, recipients)] for minutes at or after `since`."""

    def add(self, account: str, minute: int, count: int) -> None:
        """Add to a minute's count; it becomes durable within about a second."""


class SQLiteUsageStore:
    # Versioned as the "quota" tables of the state database (db.migrations); the first
    # entry adopts databases made before schemas were versioned.
    MIGRATIONS: tuple[str, ...] = (
        "CREATE TABLE IF NOT EXISTS quota_usage (account TEXT NOT NULL, minute INTEGER NOT NULL,"
        " recipients INTEGER NOT NULL, PRIMARY KEY (account, minute)) WITHOUT ROWID",
    )

    def __init__(self, path: Path, flush_interval: float = _FLUSH_INTERVAL) -> None:
        self.path = path
        self._writer = GroupCommitWriter(path, "quota")
        # Counts wait here and go to disk once per interval in one transaction: a
        # write (and fsync) per accepted message would compete with the spool's own
        # commits on the hot path. A crash forgets at most one interval of use.
        self._pending: dict[tuple[str, int], int] = {}
        self._pending_lock = threading.Lock()
        self._flush_interval = flush_interval
        self._stopped = threading.Event()
        self._flusher: threading.Thread | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.start(self.MIGRATIONS, component="quota")
        self._stopped.clear()
        self._flusher = threading.Thread(target=self._flush_loop, name="quota-flush",
                                         daemon=True)
        self._flusher.start()

    def close(self) -> None:
        self._stopped.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        self.flush()
        self._writer.stop()

    def _flush_loop(self) -> None:
        while not self._stopped.wait(self._flush_interval):
            self.flush()

    def flush(self) -> None:
        """Write the counts gathered since the last flush (blocking)."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if pending:
            try:
                self._writer.submit(lambda conn: _add_many(conn, pending)).result(30)
            except Exception as exc:
                log.error("quota usage not saved: %s", exc)
                with self._pending_lock:  # keep them for the next flush
                    for key, count in pending.items():
                        self._pending[key] = self._pending.get(key, 0) + count

    def recent(self, since: float) -> dict[str, list[tuple[int, int]]]:
        return self._writer.submit(lambda conn: _recent(conn, int(since // _MINUTE))).result(30)

    def add(self, account: str, minute: int, count: int) -> None:
        with self._pending_lock:
            key = (account, minute)
            self._pending[key] = self._pending.get(key, 0) + count


def _recent(conn: sqlite3.Connection, since_minute: int) -> dict[str, list[tuple[int, int]]]:
    conn.execute("DELETE FROM quota_usage WHERE minute < ?", (since_minute - 1440,))
    result: dict[str, list[tuple[int, int]]] = {}
    for account, minute, count in conn.execute(
            "SELECT account, minute, recipients FROM quota_usage WHERE minute >= ?"
            " ORDER BY account, minute", (since_minute,)):
        result.setdefault(account, []).append((minute, count))
    return result


def _add_many(conn: sqlite3.Connection, counts: dict[tuple[str, int], int]) -> None:
    conn.executemany(
        "INSERT INTO quota_usage (account, minute, recipients) VALUES (?,?,?)"
        " ON CONFLICT (account, minute)"
        " DO UPDATE SET recipients = recipients + excluded.recipients",
        [(account, minute, count) for (account, minute), count in counts.items()])


def usage_since(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Recipients per account since `since`, for `smtprelay stats` (reads, no writer)."""
    try:
        rows = conn.execute(
            "SELECT account, SUM(recipients) FROM quota_usage WHERE minute >= ? GROUP BY account",
            (int(since // _MINUTE),)).fetchall()
    except sqlite3.OperationalError:
        return {}  # the daemon never ran: no table yet
    return {str(account): int(total) for account, total in rows}


@dataclass
class _Account:
    limits: QuotaConfig | None  # None: no limit, usage still counted for stats
    tokens: float
    refilled_at: float
    minutes: deque[tuple[int, int]]
    in_window: int = 0
    pending: int = 0


def effective_quota(config: Config, account: str) -> QuotaConfig | None:
    """The quota in force: the configured one, else SES's sandbox quota in the sandbox."""
    settings = config.accounts[account]
    if settings.quota is not None:
        return settings.quota
    return SANDBOX_QUOTA if settings.sandbox else None


class Quotas:
    def __init__(self, live: ConfigSource, store: UsageStore,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._live = live
        # The configuration the accounts' limits were taken from.
        self._config = live.config

    def load(self) -> None:
        """Read the last 24 h of usage (blocking: call in a thread at start-up)."""
        now = self._clock()
        for account, minutes in self._store.recent(now - WINDOW).items():
            state = self._state(account)
            if state is not None:
                state.minutes.extend(minutes)
                state.in_window = sum(count for _, count in minutes)

    def _follow(self) -> None:
        """After a reload, the accounts' new limits; their usage and tokens stay."""
        config = self._live.config
        if config is self._config:
            return
        self._config = config
        for name, state in self._accounts.items():
            if name in config.accounts:
                state.limits = effective_quota(config, name)
                state.tokens = min(state.tokens, float(_burst(state.limits)))

    def _state(self, account: str) -> _Account | None:
        self._follow()
        state = self._accounts.get(account)
        if state is None:
            if account not in self._config.accounts:
                return None
            limits = effective_quota(self._config, account)
            state = _Account(limits=limits, tokens=float(_burst(limits)),
                             refilled_at=self._clock(), minutes=deque())
            self._accounts[account] = state
        return state

    def _expire(self, state: _Account, now: float) -> None:
        oldest = int((now - WINDOW) // _MINUTE)
        while state.minutes and state.minutes[0][0] < oldest:
            state.in_window -= state.minutes.popleft()[1]

    def reserve(self, account: str, count: int = 1, *, daily: bool = True) -> Reply | None:
        """Take `count` recipients from the quota, or the SES 454 that refuses them.

        `daily=False` (mailbox simulator recipients): the rate applies, the 24-hour
        quota does not, as in SES. They are pending like the others until the message
        is committed (the session releases a count, not a list), so while a
        transaction is open they briefly narrow the 24-hour room of concurrent ones.
        """
        state = self._state(account)
        if state is None:
            return None
        limits = state.limits
        if limits is not None:
            now = self._clock()
            self._expire(state, now)
            if daily and state.in_window + state.pending + count > limits.max_24h_send:
                return R.DAILY_QUOTA_EXCEEDED
            state.tokens = min(float(_burst(limits)),
                               state.tokens + (now - state.refilled_at) * limits.max_send_rate)
            state.refilled_at = now
            if state.tokens < count:
                return R.RATE_EXCEEDED
            state.tokens -= count
        state.pending += count
        return None

    def release(self, account: str, count: int) -> None:
        """The transaction ended without a message: give the recipients back."""
        self._follow()
        state = self._accounts.get(account)
        if state is not None and count:
            state.pending = max(0, state.pending - count)
            state.tokens = min(float(_burst(state.limits)), state.tokens + count)

    def commit(self, account: str, count: int, *, daily: int | None = None) -> None:
        """The message is spooled: its recipients count against the 24 hours, or only
        `daily` of them (the rest are mailbox simulator recipients)."""
        state = self._accounts.get(account)
        if state is None or not count:
            return
        state.pending = max(0, state.pending - count)
        count = count if daily is None else max(0, min(daily, count))
        if not count:
            return
        minute = int(self._clock() // _MINUTE)
        if state.minutes and state.minutes[-1][0] == minute:
            state.minutes[-1] = (minute, state.minutes[-1][1] + count)
        else:
            state.minutes.append((minute, count))
        state.in_window += count
        self._store.add(account, minute, count)

    def sent_last_24h(self, account: str) -> int:
        state = self._accounts.get(account)
        if state is None:
            return 0
        self._expire(state, self._clock())
        return state.in_window


def _burst(limits: QuotaConfig | None) -> int:
    if limits is None:
        return 0
    return limits.burst if limits.burst is not None else max(1, int(limits.max_send_rate))
