"""Group commit: one thread and one connection per database, many writers, one fsync.

Every change goes through a single writer thread that takes whatever work is waiting,
runs it in one transaction and commits once: concurrent SMTP sessions share one
fsync and the event loop never waits on the disk. Each piece of work runs in its own
savepoint, so one failing write fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from smtprelay.db import sqlite
from smtprelay.db.migrations import migrate
from smtprelay.infra import metrics
from smtprelay.infra.safeio import fsync_dir

log = logging.getLogger("smtprelay.db")
T = TypeVar("T")

_MAX_BATCH = 512


class WriteError(Exception):
    """The database could not take the change: whatever depends on it must not be
    acknowledged."""


class DiskFullError(WriteError):
    """The disk holding the database is full."""


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


@dataclass(frozen=True, slots=True)
class CommitMetrics:
    """Where a writer reports its commit latency and batch sizes."""

    commit_seconds: _Observer
    batch_size: _Observer

    @classmethod
    def for_database(cls, name: str) -> CommitMetrics:
        return cls(metrics.DB_COMMIT_SECONDS.labels(database=name),
                   metrics.DB_BATCH_SIZE.labels(database=name))


class _Work:
    __slots__ = ("fn", "future", "queued_at")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()
        self.queued_at = time.perf_counter()


_STOP = object()


class GroupCommitWriter:
    """One thread, one connection: batches queued writes into shared transactions."""

    def __init__(self, path: Path, name: str, *, page_size: int | None = None,
                 metrics: CommitMetrics | None = None) -> None:
        self._path = path
        self._name = name
        self._page_size = page_size
        self._metrics = metrics or CommitMetrics.for_database(name)
        self._queue: queue.SimpleQueue[_Work | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None

    def start(self, migrations: tuple[str, ...], *, component: str | None = None) -> None:
        """Open the database, bring its schema (or `component`'s tables) up to date,
        and start the writer thread."""
        self._conn = sqlite.connect(self._path, page_size=self._page_size)
        migrate(self._conn, migrations, database=str(self._path), component=component)
        fsync_dir(self._path.parent)
        self._thread = threading.Thread(target=self._run, name=f"{self._name}-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        if self._thread is None or not self._thread.is_alive():
            raise WriteError(f"the {self._name} writer is not running")
        work = _Work(fn)
        self._queue.put(work)
        return work.future

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        assert self._conn is not None
        conn = self._conn
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Work] = [first]  # type: ignore[list-item]
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._commit(conn, batch)
            # Drop the work (and the bytes its closures hold: a 10 MB report, a
            # message) now, not when the next write comes along.
            del batch, first
            item = None

    def _commit(self, conn: sqlite3.Connection, batch: list[_Work]) -> None:
        # Work whose waiter gave up (a cancelled task: asyncio.wrap_future cancels the
        # future it waits on) is not done, as no one was told it would be; the rest
        # can no longer be cancelled, so setting their results below cannot fail
        # (it would kill this thread, and with it every later write).
        batch = [work for work in batch if work.future.set_running_or_notify_cancel()]
        if not batch:
            return
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work in batch:
                # A savepoint per piece of work: one bad write fails alone, the
                # others in the same transaction still commit.
                conn.execute("SAVEPOINT work")
                try:
                    outcomes.append((True, work.fn(conn)))
                    conn.execute("RELEASE work")
                except Exception as exc:
                    if not conn.in_transaction:
                        # SQLite rolled the whole transaction back (SQLITE_FULL, an I/O
                        # error): nothing in this batch is durable, so all of it fails.
                        raise
                    conn.execute("ROLLBACK TO work")
                    conn.execute("RELEASE work")
                    outcomes.append((False, _translate(exc)))
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _translate(exc)
            log.error("database=%s commit failed: %s (batch of %d)", self._name, error, len(batch))
            outcomes = [(False, error)] * len(batch)
        done = time.perf_counter()
        self._metrics.batch_size.observe(len(batch))
        for work, (ok, value) in zip(batch, outcomes, strict=True):
            self._metrics.commit_seconds.observe(done - work.queued_at)
            if ok:
                work.future.set_result(value)
            else:
                work.future.set_exception(value)
        log.debug("database=%s committed %d in %.2f ms", self._name, len(batch),
                  (done - started) * 1000)


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return DiskFullError(str(exc))
    if isinstance(exc, sqlite3.Error):
        return WriteError(str(exc))
    return exc
