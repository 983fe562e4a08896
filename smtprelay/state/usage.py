"""Durable 24-hour usage: recipients per account per minute, in the state database, so
that a restart does not reset anyone's quota."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from smtprelay.db.writer import GroupCommitWriter

log = logging.getLogger("smtprelay.quota")

WINDOW = 86400.0
MINUTE = 60
_FLUSH_INTERVAL = 1.0


class UsageStore(Protocol):
    """Durable per-minute recipient counts."""

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
        return self._writer.submit(lambda conn: _recent(conn, int(since // MINUTE))).result(30)

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
            (int(since // MINUTE),)).fetchall()
    except sqlite3.OperationalError:
        return {}  # the daemon never ran: no table yet
    return {str(account): int(total) for account, total in rows}
