"""Durable 24-hour usage: recipients per account per minute, in the state database, so
that a restart does not reset anyone's quota."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import ClassVar, Protocol

from smtprelay.db.flushed import FlushedStore

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


class SQLiteUsageStore(FlushedStore):
    # Versioned as the "quota" tables of the state database (db.migrations); the first
    # entry adopts databases made before schemas were versioned.
    MIGRATIONS: ClassVar[tuple[str, ...]] = (
        "CREATE TABLE IF NOT EXISTS quota_usage (account TEXT NOT NULL, minute INTEGER NOT NULL,"
        " recipients INTEGER NOT NULL, PRIMARY KEY (account, minute)) WITHOUT ROWID",
    )

    def __init__(self, path: Path, flush_interval: float = _FLUSH_INTERVAL) -> None:
        super().__init__(path, "quota", flush_interval)
        self._pending: dict[tuple[str, int], int] = {}

    def flush(self) -> None:
        """Write the counts gathered since the last flush (blocking)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            try:
                self._writer.submit(lambda conn: _add_many(conn, pending)).result(30)
            except Exception as exc:
                log.error("quota usage not saved: %s", exc)
                with self._lock:  # keep them for the next flush
                    for key, count in pending.items():
                        self._pending[key] = self._pending.get(key, 0) + count

    def recent(self, since: float) -> dict[str, list[tuple[int, int]]]:
        return self._writer.submit(lambda conn: _recent(conn, int(since // MINUTE))).result(30)

    def add(self, account: str, minute: int, count: int) -> None:
        with self._lock:
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
