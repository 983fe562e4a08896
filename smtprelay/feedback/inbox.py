"""The feedback inbox: every report the feedback listener accepted, durable before its 250.

``data_dir/feedback.db`` (SQLite, WAL, synchronous=FULL), written by one group-commit
thread (``smtprelay.db.writer.GroupCommitWriter``), so that thousands of reports
arriving at once share fsyncs and the event loop never waits for the disk. It is a
database of its own, not a table of the spool: a flood of reports must not queue in
front of the submissions' commits.

A report is ``pending`` from arrival until the processor (``smtprelay.feedback.processor``)
has acted on it. Then it is deleted, its results being the events, suppression
entries and counters it made (and the log lines), or it stays as ``unmatched``, with
the reason, when nothing could be done with it: unparseable, no VERP tag or relay
message id, a message this relay does not know, only addresses the message was not
sent to. Unmatched reports are kept ``feedback.unmatched_retention`` (30 days) for
``smtprelay feedback unmatched`` and ``smtprelay feedback show ID``, then purged.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtprelay.config import Config
from smtprelay.db import sqlite
from smtprelay.db.migrations import migrate
from smtprelay.db.writer import GroupCommitWriter
from smtprelay.spool import space

PENDING = "pending"
UNMATCHED = "unmatched"

# Each entry moves the schema one version forward; never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        token TEXT NOT NULL,
        received_at REAL NOT NULL,
        listener TEXT NOT NULL,
        peer_ip TEXT NOT NULL,
        helo TEXT NOT NULL,
        tls TEXT,
        mail_from TEXT NOT NULL,
        recipients TEXT NOT NULL,
        size INTEGER NOT NULL,
        raw BLOB NOT NULL,
        state TEXT NOT NULL,
        kind TEXT,
        reason TEXT,
        processed_at REAL
    );
    CREATE INDEX reports_state ON reports(state, id);
    CREATE INDEX reports_unmatched ON reports(processed_at) WHERE state = 'unmatched';
    """,
)



def inbox_path(config: Config) -> Path:
    return config.server.data_dir / "feedback.db"


def has_listener(config: Config) -> bool:
    """Whether a feedback listener is configured (else no report can arrive)."""
    return any(listener.role == "feedback" for listener in config.listeners)


_COLUMNS = ("id, token, received_at, listener, peer_ip, helo, tls, mail_from, recipients,"
            " size, state, kind, reason, processed_at")


@dataclass(frozen=True, slots=True)
class Arrival:
    """A report as the listener took it: the envelope, the peer and the bytes."""

    received_at: float
    listener: str
    peer_ip: str
    helo: str
    tls: str | None  # TLS version, None for plain text
    mail_from: str  # "" for the null sender (what DSNs use)
    recipients: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class Report:
    """A stored report. ``raw`` is None in listings (only ``get`` and ``pending`` read it;
    ``pending`` perhaps only its first bytes: ``size`` is the whole report's)."""

    id: int
    # Random, chosen at arrival: with the id, what event ids derived from this report
    # are made from, so that processing it twice (after a crash) makes the same ids,
    # and a recreated feedback.db (ids from 1 again) does not.
    token: str
    received_at: float
    listener: str
    peer_ip: str
    helo: str
    tls: str | None
    mail_from: str
    recipients: tuple[str, ...]
    size: int
    state: str  # pending or unmatched
    kind: str | None  # what the parser made of it, once processed
    reason: str | None  # why it is unmatched
    processed_at: float | None
    raw: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "received_at": self.received_at, "listener": self.listener,
                "peer_ip": self.peer_ip, "helo": self.helo, "tls": self.tls,
                "mail_from": self.mail_from, "recipients": list(self.recipients),
                "size": self.size, "state": self.state, "kind": self.kind,
                "reason": self.reason, "processed_at": self.processed_at}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of a processed report: deleted (``unmatched`` None) or kept."""

    report_id: int
    kind: str
    unmatched: str | None = None


def _directory(conn: sqlite3.Connection) -> Path:
    """The directory of the database `conn` writes."""
    for _, name, filename in conn.execute("PRAGMA database_list"):
        if name == "main" and filename:
            return Path(filename).parent
    raise sqlite3.OperationalError("the feedback inbox has no file")


def _report(row: Sequence[Any], raw: bytes | None = None) -> Report:
    return Report(id=int(row[0]), token=str(row[1]), received_at=float(row[2]),
                  listener=str(row[3]), peer_ip=str(row[4]), helo=str(row[5]), tls=row[6],
                  mail_from=str(row[7]), recipients=tuple(json.loads(row[8])),
                  size=int(row[9]), state=str(row[10]), kind=row[11], reason=row[12],
                  processed_at=row[13], raw=raw)


# Besides the report: its WAL frames are written again into the database file at the
# checkpoint, and the row, index and page overhead.
_WRITE_OVERHEAD = 64 * 1024
_CHUNK = 1024 * 1024


def _insert(conn: sqlite3.Connection, arrival: Arrival, keep_free: int | None = None) -> int:
    if keep_free is not None:
        # In the writer's thread, right before the write: the free space as it is now.
        space.check_room(_directory(conn), 2 * len(arrival.raw) + _WRITE_OVERHEAD,
                         keep_free)
    cursor = conn.execute(
        "INSERT INTO reports (token, received_at, listener, peer_ip, helo, tls, mail_from,"
        " recipients, size, raw, state) VALUES (?,?,?,?,?,?,?,?,?,zeroblob(?),?)",
        (os.urandom(8).hex(), arrival.received_at, arrival.listener, arrival.peer_ip,
         arrival.helo, arrival.tls, arrival.mail_from, json.dumps(list(arrival.recipients)),
         len(arrival.raw), len(arrival.raw), PENDING))
    assert cursor.lastrowid is not None
    report_id = int(cursor.lastrowid)
    # Written in pieces into the space zeroblob() made: binding the whole report would
    # have SQLite copy it first (issue 16: 10 MB reports held several times over).
    if arrival.raw:
        with conn.blobopen("reports", "raw", report_id) as blob:
            view = memoryview(arrival.raw)
            for start in range(0, len(view), _CHUNK):
                blob.write(view[start:start + _CHUNK])
    return report_id


def _head(conn: sqlite3.Connection, report_id: int, size: int) -> bytes:
    """The first `size` bytes of a report, read through the blob handle: only the pages
    that hold them, where ``SELECT raw`` (or substr(raw)) makes SQLite load it whole."""
    with conn.blobopen("reports", "raw", report_id, readonly=True) as blob:
        return blob.read(size)


@dataclass(frozen=True, slots=True)
class UnmatchedBounds:
    """How much of what could not be matched is kept (feedback.unmatched_*): junk sent
    to the feedback addresses must not fill the disk (issue 16)."""

    max_size: int  # bytes kept of each unmatched report (the rest is cut)
    quota: int  # bytes of all unmatched reports together (the oldest go first)


def _finish(conn: sqlite3.Connection, verdicts: Iterable[Verdict], now: float,
            bounds: UnmatchedBounds | None = None) -> int:
    """Apply the verdicts; the number of older unmatched reports dropped for the quota."""
    done: list[tuple[int]] = []
    kept: list[tuple[str, str, float, int]] = []
    for verdict in verdicts:
        if verdict.unmatched is None:
            done.append((verdict.report_id,))
        else:
            kept.append((verdict.kind, verdict.unmatched[:1000], now, verdict.report_id))
    # Only pending rows: a report finished twice (a retried batch) keeps its first fate.
    conn.executemany("DELETE FROM reports WHERE id = ? AND state = 'pending'", done)
    conn.executemany("UPDATE reports SET state = 'unmatched', kind = ?, reason = ?,"
                     " processed_at = ? WHERE id = ? AND state = 'pending'", kept)
    if bounds is None or not kept:
        return 0
    # The start of a report says what it was; the rest of a 10 MB one is rarely worth
    # keeping for a month (`size` still says how big it came).
    for _, _, _, report_id in kept:
        found = conn.execute("SELECT length(raw) FROM reports WHERE id = ?",
                             (report_id,)).fetchone()
        if found is not None and found[0] > bounds.max_size:
            conn.execute("UPDATE reports SET raw = ? WHERE id = ?",
                         (_head(conn, report_id, bounds.max_size), report_id))
    dropped = 0
    total = int(conn.execute("SELECT coalesce(sum(length(raw)), 0) FROM reports"
                             " WHERE state = 'unmatched'").fetchone()[0])
    while total > bounds.quota:
        oldest = conn.execute("SELECT id, length(raw) FROM reports WHERE state = 'unmatched'"
                              " ORDER BY id LIMIT 100").fetchall()
        if not oldest:
            break
        for report_id, length in oldest:
            if total <= bounds.quota:
                break
            conn.execute("DELETE FROM reports WHERE id = ?", (report_id,))
            total -= int(length)
            dropped += 1
    return dropped


def _purge(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return int(conn.execute(
        "DELETE FROM reports WHERE id IN (SELECT id FROM reports WHERE state = 'unmatched'"
        " AND processed_at < ? LIMIT ?)", (before, limit)).rowcount)


def pending(conn: sqlite3.Connection, limit: int, max_bytes: int,
            after: int = 0, head: int | None = None) -> list[Report]:
    """The oldest pending reports after id ``after``, with their bytes (only the first
    ``head`` of each, when given: what the parsers read): at most ``limit``, and no
    more than ``max_bytes`` of those bytes in all (but at least one report)."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM reports WHERE state = 'pending' AND id > ?"  # noqa: S608
        " ORDER BY id LIMIT ?", (after, limit)).fetchall()
    chosen: list[Any] = []
    total = 0
    for row in rows:
        total += int(row[9]) if head is None else min(int(row[9]), head)
        if chosen and total > max_bytes:
            break
        chosen.append(row)
    reports = []
    for row in chosen:
        size = int(row[9]) if head is None else min(int(row[9]), head)
        try:
            raw = _head(conn, int(row[0]), size)
        except sqlite3.OperationalError:
            continue  # gone since (finished by the writer meanwhile)
        reports.append(_report(row, raw))
    return reports


def count(conn: sqlite3.Connection, state: str = PENDING) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM reports WHERE state = ?",
                            (state,)).fetchone()[0])


def listing(conn: sqlite3.Connection, state: str = UNMATCHED, *, limit: int | None = None,
            after: int = 0) -> list[Report]:
    """Reports in one state, oldest first, without their bytes."""
    sql = (f"SELECT {_COLUMNS} FROM reports WHERE state = ? AND id > ?"  # noqa: S608
           " ORDER BY id")
    params: list[Any] = [state, after]
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_report(row) for row in conn.execute(sql, params)]


def get(conn: sqlite3.Connection, report_id: int) -> Report | None:
    row = conn.execute(f"SELECT {_COLUMNS}, raw FROM reports WHERE id = ?",  # noqa: S608
                       (report_id,)).fetchone()
    return None if row is None else _report(row[:-1], bytes(row[-1]))


def open_for_cli(path: Path) -> sqlite3.Connection:
    """A connection for operator commands; creates the schema if the daemon never ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite.connect(path)
    migrate(conn, MIGRATIONS, database=str(path))
    return conn


class FeedbackInbox:
    """The daemon's handle on feedback.db: group-committed writes, one reader connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = GroupCommitWriter(path, "feedback")
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()

    def open(self) -> None:
        """Create or upgrade the database and start the writer (blocking: call in a thread)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.start(MIGRATIONS)
        self._reader = sqlite.connect(self.path)

    def close(self) -> None:
        self._writer.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    async def store(self, arrival: Arrival, keep_free: int | None = None) -> int:
        """Return the report's id once it is durable on disk; WriteError otherwise.

        `keep_free`: the free space the spool needs (store.spool_reserve); a report
        that would leave less is refused with ``spool.space.ReserveError``."""
        return await self._writer.run(lambda conn: _insert(conn, arrival, keep_free))

    async def finish(self, verdicts: Sequence[Verdict], now: float,
                     bounds: UnmatchedBounds | None = None) -> int:
        """Delete the reports acted on, keep the unmatched ones with their reason (within
        `bounds`); how many older unmatched reports were dropped for the quota."""
        if not verdicts:
            return 0
        return await self._writer.run(lambda conn: _finish(conn, verdicts, now, bounds))

    async def purge(self, before: float, limit: int = 500) -> int:
        """Delete up to ``limit`` unmatched reports processed before ``before``."""
        return await self._writer.run(lambda conn: _purge(conn, before, limit))

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        assert self._reader is not None, "feedback inbox is not open"
        with self._read_lock:
            yield self._reader

    # Reads: blocking, the daemon calls them through a thread.

    def pending(self, limit: int, max_bytes: int, after: int = 0,
                head: int | None = None) -> list[Report]:
        with self._read() as conn:
            return pending(conn, limit, max_bytes, after, head)

    def count(self, state: str = PENDING) -> int:
        with self._read() as conn:
            return count(conn, state)

    def get(self, report_id: int) -> Report | None:
        with self._read() as conn:
            return get(conn, report_id)
