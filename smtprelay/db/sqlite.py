"""Opening the daemon's SQLite databases (spool, state) with the settings they all share."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from smtprelay.db.migrations import migrate

BUSY_TIMEOUT_MS = 10_000


def connect(path: Path, *, readonly: bool = False, page_size: int | None = None
            ) -> sqlite3.Connection:
    """A connection in autocommit mode: WAL, synchronous=FULL, a busy timeout.

    Autocommit (isolation_level=None) so single statements commit by themselves and
    multi-statement changes use an explicit BEGIN IMMEDIATE. FULL fsyncs the WAL at
    every commit: committed data survives power loss, not only a process crash.
    Several processes (the daemon, the CLI) may hold connections at once.
    """
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    if page_size is not None:
        conn.execute(f"PRAGMA page_size={page_size}")  # only takes effect on a new file
    _wal(conn)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting out other connections doing the same. Changing the
    journal mode of a new file needs an exclusive lock, and SQLite answers "database is
    locked" at once, without its busy handler, when another connection holds one: two
    processes (the daemon and a CLI command) or threads opening a fresh database
    together would otherwise fail one of them."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


class Store:
    """One lazily opened connection, for one process, to a database shared by several
    stores: each owns its tables and migrates them as `COMPONENT` (db.migrations).

    Callers come from worker threads (the daemon runs SQLite off the event loop), so
    a lock serialises use of the connection; other processes (the CLI) have their own.
    """

    COMPONENT: str = ""
    MIGRATIONS: tuple[str, ...] = ()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    def open(self) -> None:
        with self._lock:
            if self._conn is None:
                conn = connect(self.path)
                if self.MIGRATIONS:
                    try:
                        migrate(conn, self.MIGRATIONS, database=str(self.path),
                                component=self.COMPONENT)
                    except BaseException:
                        conn.close()
                        raise
                self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside BEGIN IMMEDIATE (a read-then-write sees the same state
        another process would); committed on leaving, rolled back on an exception."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
