"""The durable spool: an SQLite database (WAL, synchronous=FULL) written by one thread.

Every change goes through a single writer thread that takes whatever work is waiting,
runs it in one transaction and commits once: concurrent SMTP sessions share one
fsync (group commit) and the event loop never waits on the disk. Readers (the CLI,
the scheduler) use their own connections; WAL lets them read while the daemon writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from smtprelay.db import sqlite
from smtprelay.db.migrations import migrate as migrate_to
from smtprelay.db.writer import CommitMetrics, DiskFullError, GroupCommitWriter, WriteError
from smtprelay.infra import metrics
from smtprelay.spool import outbox, sent, set_stats
from smtprelay.spool.model import (
    HELD,
    PENDING_STATES,
    EventRecord,
    MessageAttributes,
    NewMessage,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    RecipientUpdate,
)

log = logging.getLogger("smtprelay.spool")
T = TypeVar("T")
# Called in the writer's transaction when a message's last recipient turns final with
# bounces among them: (message, its bounce outcomes, its bytes) -> a DSN to spool, or None.
Finalizer = Callable[[QueuedMessage, list[Outcome], bytes], NewMessage | None]

_MAX_BATCH = 512
_PAGE_SIZE = 16384

# Each entry moves the schema one version forward; never edit a released entry.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        account TEXT NOT NULL,
        configuration_set TEXT,
        mail_from TEXT NOT NULL,
        size INTEGER NOT NULL,
        client_ip TEXT NOT NULL,
        client_helo TEXT NOT NULL,
        auth_user TEXT,
        listener TEXT NOT NULL,
        smtputf8 INTEGER NOT NULL DEFAULT 0,
        body_8bitmime INTEGER NOT NULL DEFAULT 0,
        attrs TEXT NOT NULL DEFAULT '{}'
    ) WITHOUT ROWID;
    CREATE TABLE bodies (
        message_id TEXT PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
        data BLOB NOT NULL
    );
    CREATE TABLE recipients (
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        address TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        last_reply TEXT,
        PRIMARY KEY (message_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX recipients_due ON recipients(state, next_attempt);
    """,
    """
    CREATE TABLE outcomes (
        id INTEGER PRIMARY KEY,
        message_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL,
        bounce_type TEXT,
        bounce_subtype TEXT,
        status TEXT,
        diagnostic TEXT
    );
    CREATE INDEX outcomes_message ON outcomes(message_id);
    """,
    """
    ALTER TABLE outcomes ADD COLUMN remote_mta TEXT;
    ALTER TABLE outcomes ADD COLUMN delay_type TEXT;
    ALTER TABLE recipients ADD COLUMN delay_noted REAL;
    ALTER TABLE messages ADD COLUMN finished_at REAL;
    CREATE INDEX messages_finished ON messages(finished_at) WHERE finished_at IS NOT NULL;
    """,
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        configuration_set TEXT,
        at REAL NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE mail_records (
        message_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        account TEXT NOT NULL,
        configuration_set TEXT,
        source TEXT NOT NULL,
        source_ip TEXT NOT NULL,
        caller TEXT NOT NULL,
        destination TEXT NOT NULL,
        tags TEXT NOT NULL,
        header_section BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX mail_records_created ON mail_records(created_at);
    CREATE TABLE event_cursors (
        destination TEXT PRIMARY KEY,
        last_id INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # Per-set statistics (hourly counters) and the tracked messages that opens and
    # clicks are counted against: see smtprelay.spool.set_stats.
    """
    CREATE TABLE set_stats (
        hour INTEGER NOT NULL,
        configuration_set TEXT NOT NULL,
        account TEXT NOT NULL,
        kind TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (hour, configuration_set, account, kind)
    ) WITHOUT ROWID;
    CREATE TABLE tracked_messages (
        message_id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        account TEXT NOT NULL,
        configuration_set TEXT NOT NULL,
        opened_at REAL,
        clicked_at REAL
    ) WITHOUT ROWID;
    CREATE INDEX tracked_messages_created ON tracked_messages(created_at);
    """,
    # What feedback reports need of messages purged from the spool: see spool.sent.
    sent.MIGRATION,
    # The relay's own fields (DKIM-Signature, Received), apart from the client's
    # bytes: NewMessage.prefix. The message is prefix || data.
    "ALTER TABLE bodies ADD COLUMN prefix BLOB NOT NULL DEFAULT x'';",
    # Tags an event adds to its mail object (ses:outgoing-ip): EventRecord.mail_tags.
    "ALTER TABLE events ADD COLUMN mail_tags TEXT;",
    # Bounces and complaints counted once per message and recipient: spool.sent.
    sent.COUNTED_MIGRATION,
    # Per-minute totals of the last day for the operator's console: set_stats.MINUTES.
    set_stats.MINUTE_MIGRATION,
)


SpoolError = WriteError  # the spool could not take the change: do not acknowledge
SpoolFullError = DiskFullError


def migrate(conn: sqlite3.Connection, migrations: tuple[str, ...] = _MIGRATIONS) -> None:
    """Bring a spool database to the current schema (or to `migrations`' last)."""
    migrate_to(conn, migrations, database="the spool")


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A spool connection; bodies are tens of KiB, so 16 KiB pages halve the pages
    (and WAL frames) per message."""
    return sqlite.connect(path, readonly=readonly, page_size=None if readonly else _PAGE_SIZE)


class Spool:
    """The queue of accepted messages and the state of each recipient."""

    def __init__(self, path: Path, *, finalize: Finalizer | None = None,
                 keep_sent_index: bool = False) -> None:
        self.path = path
        self._writer = GroupCommitWriter(
            path, "spool", page_size=_PAGE_SIZE,
            metrics=CommitMetrics(metrics.SPOOL_COMMIT_SECONDS, metrics.SPOOL_BATCH_SIZE))
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        # Builds the DSN of a message that arrives already finished (every recipient
        # suppressed); the scheduler passes its own to record().
        self.finalize = finalize
        # Keep a compact row of purged messages for the feedback processor (when a
        # feedback listener runs): see smtprelay.spool.sent.
        self.keep_sent_index = keep_sent_index
        # Called (on the event loop) after a recorded attempt left a message with no
        # recipient pending: the daemon's queue-depth gauge follows deliveries.
        self.on_finished: Callable[[], None] | None = None
        # Told of every event once its transaction is committed (on the event loop's
        # thread), with the new message they came with, if any: the live tail
        # (smtprelay.events.tail). It must not block.
        self.event_tap: Callable[[Sequence[EventRecord], NewMessage | None], None] | None \
            = None

    # -- lifecycle -------------------------------------------------------------

    def open(self) -> None:
        """Create or upgrade the database and start the writer (blocking: call in a thread)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.start(_MIGRATIONS)
        self._reader = connect(self.path)

    def close(self) -> None:
        self._writer.stop()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- writes (async, group-committed) ----------------------------------------

    async def enqueue(self, message: NewMessage) -> None:
        """Return once the message is durable on disk; raise SpoolError otherwise."""
        await self._writer.run(lambda conn: _insert(conn, message, self.finalize))
        self._tap(message.events, message)

    def _tap(self, events: Sequence[EventRecord], message: NewMessage | None = None) -> None:
        """Hand committed events to the live tail; its failure is never the writer's."""
        if events and self.event_tap is not None:
            try:
                self.event_tap(events, message)
            except Exception:
                log.exception("the live event tail failed to take %d event(s)", len(events))

    def enqueue_future(self, message: NewMessage) -> Future[None]:
        return self._writer.submit(lambda conn: _insert(conn, message, self.finalize))

    async def delete(self, message_id: str) -> bool:
        return await asyncio.wrap_future(self.delete_future(message_id))

    def delete_future(self, message_id: str) -> Future[bool]:
        """delete() for a caller in another thread (the operations the admin API runs)."""
        return self._writer.submit(lambda conn: _delete(conn, message_id))

    async def claim_due(self, now: float, limit: int) -> list[QueuedMessage]:
        """Messages with recipients due now; those recipients turn `sending` (held)."""
        return await self._writer.run(lambda conn: _claim_due(conn, now, limit))

    async def record(self, message_id: str, updates: list[RecipientUpdate],
                     finalize: Finalizer | None = None,
                     events: tuple[EventRecord, ...] = ()) -> NewMessage | None:
        """Durably record what an attempt did for each recipient it held.

        When this leaves the message with no recipient pending and some bounced,
        `finalize(message, bounce outcomes, body)` may return a message (the DSN) that
        is spooled in the same transaction: it exists exactly when the results do.
        """
        finished: list[bool] = []

        def work(conn: sqlite3.Connection) -> NewMessage | None:
            outbox.insert_events(conn, events)
            return _record(conn, message_id, updates, finalize, finished)

        dsn = await self._writer.run(work)
        if finished and self.on_finished is not None:
            self.on_finished()  # committed: the queue is one message shorter
        self._tap(events)
        return dsn

    async def add_events(self, events: tuple[EventRecord, ...],
                         counts: tuple[set_stats.Bump, ...] = (),
                         counted: tuple[tuple[str, str, str, float], ...] = ()) -> None:
        """Durably add events that no spool change goes with (unsubscribes...), the
        statistics they count for, and (`counted`) the bounces and complaints they
        report, so that a repeat of the report is not counted again (spool.sent)."""
        def work(conn: sqlite3.Connection) -> None:
            outbox.insert_events(conn, events)
            set_stats.apply(conn, counts)
            sent.count(conn, counted)

        await self._writer.run(work)
        self._tap(events)

    async def record_unsent(self, record: NewMessage, events: tuple[EventRecord, ...]
                            ) -> None:
        """Durably add the events of a message that is never spooled (a template that
        did not render) with the mail record their publication reads."""
        def work(conn: sqlite3.Connection) -> None:
            outbox.insert_mail_record(conn, record)
            outbox.insert_events(conn, events)

        await self._writer.run(work)
        self._tap(events, record)

    def count_later(self, counts: set_stats.Bump) -> None:
        """Count something no spool change goes with (a refused message) in the next
        group commit, without waiting for it; a failure is logged, not raised."""
        def logged(future: Future[None]) -> None:
            if future.exception() is not None:
                log.error("set statistics not saved: %s", future.exception())

        try:
            self._writer.submit(lambda conn: set_stats.apply(conn, (counts,))
                                ).add_done_callback(logged)
        except SpoolError as exc:
            log.error("set statistics not saved: %s", exc)

    async def record_engagements(
            self, hits: Sequence[set_stats.Hit],
            event: Callable[[int, set_stats.Engaged], EventRecord | None]
    ) -> list[set_stats.Engaged | None]:
        """Count opens and clicks of tracked messages and add their events, in one
        piece of work of one transaction. `event(i, engaged)` (run in the writer
        thread: keep it cheap) makes the event of `hits[i]` for its message's set, or
        None; it is kept only while the message's mail record is, since publishing
        needs it. None in the result: that hit's message is unknown."""
        made: list[EventRecord] = []

        def work(conn: sqlite3.Connection) -> list[set_stats.Engaged | None]:
            made.clear()  # a batch the writer runs again starts afresh
            counted = set_stats.count_engagements(conn, hits)
            recorded: dict[str, bool] = {}
            events: list[EventRecord] = []
            for index, engaged in enumerate(counted):
                record = None if engaged is None else event(index, engaged)
                if record is None:
                    continue
                if record.message_id not in recorded:
                    recorded[record.message_id] = conn.execute(
                        "SELECT 1 FROM mail_records WHERE message_id = ?",
                        (record.message_id,)).fetchone() is not None
                if recorded[record.message_id]:
                    events.append(record)
            outbox.insert_events(conn, events)
            made.extend(events)
            return counted

        counted = await self._writer.run(work)
        self._tap(made)
        return counted

    def set_totals(self, window: set_stats.Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, set_stats.Counts]:
        """Statistics over `window` (blocking: call through a thread); see set_stats.totals."""
        with self._read() as conn:
            return set_stats.totals(conn, window, by=by, configuration_set=configuration_set,
                                   account=account)

    def set_stats_since(self, first_hour: int) -> list[set_stats.Row]:
        """The counters from `first_hour` on (blocking; see set_stats.rows_since)."""
        with self._read() as conn:
            return set_stats.rows_since(conn, first_hour)

    async def purge_stats(self, counters_before: float, tracked_before: float,
                          limit: int = 500) -> int:
        """Drop counters older than `counters_before` and up to `limit` tracked
        messages created before `tracked_before`; returns how many of the latter."""
        def work(conn: sqlite3.Connection) -> int:
            set_stats.purge(conn, counters_before)
            set_stats.purge_minutes(conn)
            return set_stats.purge_tracked(conn, tracked_before, limit)

        return await self._writer.run(work)

    async def retry(self, message_id: str | None, now: float) -> int:
        """Make waiting recipients (of one message, or all) due at `now`; how many."""
        return await asyncio.wrap_future(self.retry_future(message_id, now))

    def retry_future(self, message_id: str | None, now: float) -> Future[int]:
        """retry() for a caller in another thread."""
        return self._writer.submit(lambda conn: _retry(conn, message_id, now))

    def hold_future(self, message_id: str) -> Future[int]:
        """Hold a message's waiting recipients (see `hold`), from another thread."""
        return self._writer.submit(lambda conn: _hold(conn, message_id))

    def release_future(self, message_id: str, now: float) -> Future[int]:
        """Release a held message's recipients, due at `now`, from another thread."""
        return self._writer.submit(lambda conn: _release(conn, message_id, now))

    def minute_totals(self, since: float) -> list[tuple[int, str, int]]:
        """(minute, kind, count) from the minute holding `since` on (blocking)."""
        with self._read() as conn:
            return set_stats.minutes_since(conn, since)

    def destinations(self, since: float, limit: int) -> list[DestinationFigures]:
        """The recipient domains with mail waiting or attempts since `since` (blocking)."""
        with self._read() as conn:
            return destination_figures(conn, since, limit)

    def events_after(self, last_id: int, limit: int) -> list[outbox.StoredEvent]:
        """Events after `last_id` with their mail records, for the publisher."""
        with self._read() as conn:
            return outbox.events_after(conn, last_id, limit)

    async def mail_record(self, message_id: str) -> outbox.MailRecord | None:
        def read() -> outbox.MailRecord | None:
            with self._read() as conn:
                return outbox.mail_record(conn, message_id)
        return await asyncio.to_thread(read)

    async def advance_cursors(self, positions: dict[str, int], keep: set[str]) -> int:
        """Save destinations' positions, forget destinations not in `keep`, and delete
        the events every destination has passed; returns how many were deleted."""
        return await self._writer.run(lambda conn: outbox.advance(conn, positions, keep))

    def cursors(self) -> dict[str, int]:
        with self._read() as conn:
            return outbox.cursors(conn)

    def last_event_id(self) -> int:
        with self._read() as conn:
            row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'"
                               ).fetchone()
            return int(row[0]) if row else 0

    def event_backlog(self) -> int:
        """Events not yet passed by every destination (the outbox's depth)."""
        with self._read() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    async def purge_mail_records(self, before: float, limit: int = 500) -> int:
        return await self._writer.run(
            lambda conn: outbox.purge_mail_records(conn, before, limit))

    async def purge_finished(self, before: float, limit: int = 500) -> int:
        """Delete up to `limit` messages finished before `before`; returns how many."""
        keep = self.keep_sent_index
        return await self._writer.run(lambda conn: _purge_finished(conn, before, limit, keep))

    async def purge_sent_index(self, before: float, limit: int = 500) -> int:
        """Forget up to `limit` purged messages accepted before `before` (spool.sent)."""
        return await self._writer.run(lambda conn: sent.purge(conn, before, limit))

    def counted_feedback(self, message_ids: Iterable[str]) -> set[sent.Counted]:
        """The (message id, address, kind) bounces and complaints already counted for
        these messages (blocking: call through a thread)."""
        with self._read() as conn:
            return sent.counted(conn, message_ids)

    async def purge_counted_feedback(self, before: float, limit: int = 500) -> int:
        return await self._writer.run(lambda conn: sent.purge_counted(conn, before, limit))

    def sent_messages(self, message_ids: Iterable[str]) -> dict[str, sent.SentMessage]:
        """The messages feedback reports name, wherever they are still known (blocking:
        call through a thread); see smtprelay.spool.sent."""
        with self._read() as conn:
            return sent.lookup(conn, message_ids)

    async def recover(self) -> int:
        """Hand back recipients whose delivery attempt died with the last process."""
        return await self._writer.run(_recover)

    # -- reads (blocking; the daemon calls them through a thread) ---------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        assert self._reader is not None, "spool is not open"
        with self._read_lock:
            yield self._reader

    def pending_count(self) -> int:
        with self._read() as conn:
            return count_pending(conn)

    def recipient_states(self) -> dict[str, dict[str, int]]:
        """account -> recipient state -> how many (see recipient_states)."""
        with self._read() as conn:
            return recipient_states(conn)

    def outcomes(self, message_id: str) -> list[Outcome]:
        """Every attempt's result recorded for the message, oldest first."""
        with self._read() as conn:
            return get_outcomes(conn, message_id)

    def message_events(self, message_id: str, limit: int = 200) -> list[outbox.StoredEvent]:
        """The message's events still in the outbox (published ones are deleted)."""
        with self._read() as conn:
            return outbox.events_of(conn, message_id, limit)

    def get(self, message_id: str) -> QueuedMessage | None:
        with self._read() as conn:
            return get_message(conn, message_id)

    def body(self, message_id: str) -> bytes | None:
        with self._read() as conn:
            return get_body(conn, message_id)

    def body_parts(self, message_id: str) -> tuple[bytes, bytes] | None:
        """The relay's prefix and the client's bytes, not joined (delivery sends both)."""
        with self._read() as conn:
            return get_body_parts(conn, message_id)

    def messages(self, *, limit: int | None = None, after: str | None = None,
                 filters: MessageFilter | None = None) -> list[QueuedMessage]:
        """A page of the queue (blocking: call through a thread); see list_messages."""
        with self._read() as conn:
            return list_messages(conn, limit=limit, after=after, filters=filters)

    def next_due(self) -> float | None:
        """When the earliest waiting recipient is due (None: nothing waits)."""
        with self._read() as conn:
            return next_due(conn)


# -- SQL, shared by the daemon and the CLI ------------------------------------------


def _insert(conn: sqlite3.Connection, m: NewMessage, finalize: Finalizer | None = None) -> None:
    env = m.envelope
    conn.execute(
        "INSERT INTO messages (id, received_at, account, configuration_set, mail_from, size,"
        " client_ip, client_helo, auth_user, listener, smtputf8, body_8bitmime, attrs)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (m.message_id, m.received_at, m.account, m.configuration_set, env.mail_from,
         m.size, m.client_ip, m.client_helo, m.auth_user, m.listener,
         int(env.smtputf8), int(env.body_8bitmime),
         json.dumps(m.attrs.as_json(), separators=(",", ":"))),
    )
    conn.execute("INSERT INTO bodies (message_id, prefix, data) VALUES (?, ?, ?)",
                 (m.message_id, m.prefix, m.data))
    conn.executemany(
        "INSERT INTO recipients (message_id, idx, address, state, next_attempt, last_reply)"
        " VALUES (?,?,?,?,?,?)",
        [(m.message_id, i, rcpt,
          (RecipientState.SUPPRESSED if i in m.suppressed else RecipientState.QUEUED).value,
          m.received_at,
          suppressed_diagnostic(m.suppressed[i]) if i in m.suppressed else None)
         for i, rcpt in enumerate(env.recipients)],
    )
    if m.suppressed:
        conn.executemany(
            "INSERT INTO outcomes (message_id, idx, kind, at, bounce_type, bounce_subtype,"
            " status, diagnostic) VALUES (?,?,?,?,?,?,?,?)",
            [(m.message_id, i, "bounce", m.received_at, "Permanent", "OnAccountSuppressionList",
              "5.1.1", suppressed_diagnostic(reason)) for i, reason in m.suppressed.items()],
        )
    if m.events or m.publishes:
        outbox.insert_mail_record(conn, m)
        outbox.insert_events(conn, m.events)
    if m.listener not in set_stats.UNCOUNTED_LISTENERS:
        left_out = frozenset(m.attrs.uncounted or ())
        set_stats.bump(conn, m.account, m.configuration_set, m.received_at, {
            set_stats.Kind.SEND: len(env.recipients) - len(left_out),
            set_stats.Kind.SUPPRESSED: len(m.suppressed.keys() - left_out)})
        tracking = m.attrs.tracking
        if tracking is not None and (tracking.links or tracking.open):
            set_stats.track(conn, m.message_id, m.received_at, m.account, m.configuration_set)
    if m.suppressed and len(m.suppressed) == len(env.recipients):
        # Every recipient refused by the suppression list: finished on arrival.
        _finish(conn, m.message_id, m.received_at, finalize)


# The `suppressed` reason of a recipient held back by a contact list rather than by
# the suppression list: "UNSUBSCRIBED <where>" (see unsubscribed_reason).
UNSUBSCRIBED = "UNSUBSCRIBED"


def unsubscribed_reason(where: str) -> str:
    """The reason for a contact that unsubscribed from `where` ("contact list 'news'",
    "topic 'sports' of contact list 'news'", "configuration set 'marketing'")."""
    return f"{UNSUBSCRIBED} {where}"


def suppressed_diagnostic(reason: str) -> str:
    if reason.startswith(UNSUBSCRIBED + " "):
        return f"the recipient unsubscribed from {reason[len(UNSUBSCRIBED) + 1:]}"
    return f"the address is on the account-level suppression list (reason {reason})"


def get_outcomes(conn: sqlite3.Connection, message_id: str) -> list[Outcome]:
    return [
        Outcome(message_id=row[0], index=row[1], kind=row[2], at=row[3], bounce_type=row[4],
                bounce_subtype=row[5], status=row[6], diagnostic=row[7], remote_mta=row[8],
                delay_type=row[9])
        for row in conn.execute(
            "SELECT message_id, idx, kind, at, bounce_type, bounce_subtype, status, diagnostic,"
            " remote_mta, delay_type FROM outcomes WHERE message_id = ? ORDER BY id",
            (message_id,))
    ]


def _delete(conn: sqlite3.Connection, message_id: str) -> bool:
    conn.execute("DELETE FROM outcomes WHERE message_id = ?", (message_id,))
    return conn.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount > 0


def _claim_due(conn: sqlite3.Connection, now: float, limit: int) -> list[QueuedMessage]:
    ids = [row[0] for row in conn.execute(
        "SELECT DISTINCT message_id FROM recipients WHERE state IN (?, ?) AND next_attempt <= ?"
        " ORDER BY next_attempt LIMIT ?",
        (RecipientState.QUEUED.value, RecipientState.DEFERRED.value, now, limit))]
    claimed: list[QueuedMessage] = []
    for message_id in ids:
        conn.execute(
            "UPDATE recipients SET state = ? WHERE message_id = ? AND state IN (?, ?)"
            " AND next_attempt <= ?",
            (RecipientState.SENDING.value, message_id, RecipientState.QUEUED.value,
             RecipientState.DEFERRED.value, now))
        message = get_message(conn, message_id)
        if message is not None:
            claimed.append(message)
    return claimed


def _record(conn: sqlite3.Connection, message_id: str, updates: list[RecipientUpdate],
            finalize: Finalizer | None = None,
            finished: list[bool] | None = None) -> NewMessage | None:
    for u in updates:
        conn.execute(
            "UPDATE recipients SET state = ?, attempts = attempts + 1, last_attempt = ?,"
            " next_attempt = ?, last_reply = ?, delay_noted = COALESCE(?, delay_noted)"
            " WHERE message_id = ? AND idx = ?",
            (u.state.value, u.at, u.next_attempt if u.next_attempt is not None else u.at,
             u.reply, u.delay_noted, message_id, u.index))
        for o in u.outcomes:
            _insert_outcome(conn, message_id, u.index, o)
    _count_outcomes(conn, message_id, updates)
    bounced = [(u.index, o.at) for u in updates for o in u.outcomes if o.kind == "bounce"]
    if bounced:
        # A DSN about the same recipient later is then not counted again.
        addresses = dict(conn.execute(
            "SELECT idx, address FROM recipients WHERE message_id = ?", (message_id,)))
        sent.count(conn, [(message_id, addresses[i], "bounce", at) for i, at in bounced
                          if i in addresses])
    if not any(u.state.is_final for u in updates):
        return None
    placeholders = ",".join("?" * len(PENDING_STATES))
    pending = conn.execute(
        f"SELECT 1 FROM recipients WHERE message_id = ? AND state IN ({placeholders})"  # noqa: S608
        " LIMIT 1", [message_id, *(s.value for s in PENDING_STATES)]).fetchone()
    if pending is not None:
        return None
    if finished is not None:
        finished.append(True)
    return _finish(conn, message_id, max(u.at for u in updates), finalize)


def _count_outcomes(conn: sqlite3.Connection, message_id: str,
                    updates: list[RecipientUpdate]) -> None:
    """The set statistics of an attempt's deliveries, bounces and delays."""
    outcomes = [o for u in updates for o in u.outcomes]
    if not outcomes:
        return  # a plain deferral: nothing counted, no lookup
    row = conn.execute("SELECT account, configuration_set, listener, attrs FROM messages"
                       " WHERE id = ?", (message_id,)).fetchone()
    if row is None or row[2] in set_stats.UNCOUNTED_LISTENERS:
        return
    left_out: frozenset[int] = frozenset()
    if row[3] and '"uncounted"' in row[3]:  # parse only the few that have it
        left_out = frozenset(MessageAttributes.from_json(json.loads(row[3])).uncounted or ())
    by_hour: dict[float, dict[set_stats.Kind, int]] = {}
    for o in outcomes:
        if o.index in left_out:
            continue
        kind = set_stats.outcome_kind(o.kind, o.bounce_type)
        if kind is not None:
            hour = by_hour.setdefault(set_stats.hour_of(o.at) * float(set_stats.HOUR), {})
            hour[kind] = hour.get(kind, 0) + 1
    for at, increments in by_hour.items():
        set_stats.bump(conn, row[0], row[1], at, increments)


def _finish(conn: sqlite3.Connection, message_id: str, at: float,
            finalize: Finalizer | None) -> NewMessage | None:
    """No recipient is pending any more: mark the message, spool its DSN if some
    recipients bounced (now, on an earlier attempt, or by the suppression list), and
    keep only its header section, for `queue show` and events, until purge_finished
    removes it (the body of a delivered message is what fills a disk)."""
    conn.execute("UPDATE messages SET finished_at = ? WHERE id = ?", (at, message_id))
    extra: NewMessage | None = None
    bounces = ([o for o in get_outcomes(conn, message_id) if o.kind == "bounce"]
               if finalize is not None else [])
    if finalize is not None and bounces:
        message = get_message(conn, message_id)
        body = get_body(conn, message_id)
        if message is not None and body is not None:
            extra = finalize(message, bounces, body)
            if extra is not None:
                _insert(conn, extra)
    # In SQL, so the writer thread does not copy a delivered body out just to cut it
    # (the common finish has no DSN to build). A message starting with its empty line
    # has no headers to keep: header_end's rule, in SQL.
    conn.execute(
        "UPDATE bodies SET data = CASE WHEN substr(data, 1, 2) = x'0d0a' THEN x'0d0a'"
        " ELSE substr(data, 1, instr(data, x'0d0a0d0a') + 3) END"
        " WHERE message_id = ? AND (substr(data, 1, 2) = x'0d0a'"
        " OR instr(data, x'0d0a0d0a') > 0)", (message_id,))
    return extra


def _insert_outcome(conn: sqlite3.Connection, message_id: str, index: int, o: Outcome) -> None:
    conn.execute(
        "INSERT INTO outcomes (message_id, idx, kind, at, bounce_type, bounce_subtype,"
        " status, diagnostic, remote_mta, delay_type) VALUES (?,?,?,?,?,?,?,?,?,?)",
        (message_id, index, o.kind, o.at, o.bounce_type, o.bounce_subtype, o.status,
         o.diagnostic, o.remote_mta, o.delay_type))


def _purge_finished(conn: sqlite3.Connection, before: float, limit: int,
                    keep_sent: bool = False) -> int:
    ids = [row[0] for row in conn.execute(
        "SELECT id FROM messages WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?",
        (before, limit))]
    for message_id in ids:
        if keep_sent:
            sent.keep(conn, message_id)
        _delete(conn, message_id)
    return len(ids)


def _recover(conn: sqlite3.Connection) -> int:
    return conn.execute(
        "UPDATE recipients SET state = ? WHERE state = ?",
        (RecipientState.QUEUED.value, RecipientState.SENDING.value),
    ).rowcount


def next_due(conn: sqlite3.Connection) -> float | None:
    # One MIN per state: each is a single step down the (state, next_attempt) index.
    times = [row[0] for state in (RecipientState.QUEUED, RecipientState.DEFERRED)
             for row in conn.execute("SELECT MIN(next_attempt) FROM recipients WHERE state = ?",
                                     (state.value,))
             if row[0] is not None]
    return min(times) if times else None


def count_pending(conn: sqlite3.Connection) -> int:
    placeholders = ",".join("?" * len(PENDING_STATES))
    row = conn.execute(
        f"SELECT COUNT(DISTINCT message_id) FROM recipients WHERE state IN ({placeholders})",  # noqa: S608
        [s.value for s in PENDING_STATES],
    ).fetchone()
    return int(row[0])


_MESSAGE_COLUMNS = (
    "id, account, configuration_set, mail_from, received_at, size, client_ip, client_helo,"
    " auth_user, listener, smtputf8, body_8bitmime, attrs"
)


def _message_from_row(
    row: tuple[Any, ...], recipients: tuple[QueuedRecipient, ...]
) -> QueuedMessage:
    return QueuedMessage(
        message_id=row[0], account=row[1], configuration_set=row[2], mail_from=row[3],
        received_at=row[4], size=row[5], client_ip=row[6], client_helo=row[7],
        auth_user=row[8], listener=row[9], smtputf8=bool(row[10]),
        body_8bitmime=bool(row[11]), attrs=MessageAttributes.from_json(json.loads(row[12])),
        recipients=recipients,
    )


def _recipients(conn: sqlite3.Connection, message_id: str) -> tuple[QueuedRecipient, ...]:
    rows = conn.execute(
        "SELECT idx, address, state, attempts, next_attempt, last_attempt, last_reply,"
        " delay_noted FROM recipients WHERE message_id = ? ORDER BY idx",
        (message_id,),
    ).fetchall()
    return tuple(
        QueuedRecipient(index=r[0], address=r[1], state=RecipientState(r[2]), attempts=r[3],
                        next_attempt=r[4], last_attempt=r[5], last_reply=r[6],
                        delay_noted=r[7])
        for r in rows
    )


def get_message(conn: sqlite3.Connection, message_id: str) -> QueuedMessage | None:
    row = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)  # noqa: S608
    ).fetchone()
    if row is None:
        return None
    return _message_from_row(row, _recipients(conn, message_id))


def get_body(conn: sqlite3.Connection, message_id: str) -> bytes | None:
    """The whole message (or, once finished, its header section)."""
    parts = get_body_parts(conn, message_id)
    if parts is None:
        return None
    prefix, data = parts
    return prefix + data if prefix else data


def get_body_parts(conn: sqlite3.Connection, message_id: str) -> tuple[bytes, bytes] | None:
    """The relay's own fields and the client's message, apart (NewMessage.prefix)."""
    row = conn.execute("SELECT prefix, data FROM bodies WHERE message_id = ?",
                       (message_id,)).fetchone()
    return (bytes(row[0]), bytes(row[1])) if row else None


@dataclass(frozen=True, slots=True)
class MessageFilter:
    """Which messages a listing shows; None: any."""

    account: str | None = None
    configuration_set: str | None = None  # "" for messages without one
    # One of FILTER_STATES: a recipient state (some recipient is in it), "pending"
    # or "finished"; or "held" (some recipient held: Spool.hold_future).
    state: str | None = None
    # Case-insensitive parts of the envelope: the sender's address, a recipient's
    # address, a recipient's domain (the whole domain).
    sender: str | None = None
    recipient: str | None = None
    domain: str | None = None


def _like(text: str) -> str:
    """`text` lower-cased, with LIKE's wildcards escaped."""
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_messages(
    conn: sqlite3.Connection, *, limit: int | None = None, after: str | None = None,
    filters: MessageFilter | None = None,
) -> list[QueuedMessage]:
    """Messages in id (= arrival) order, paged with `after` so a huge queue lists in pieces."""
    sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608
    where: list[str] = []
    params: list[Any] = []
    if after is not None:
        where.append("id > ?")
        params.append(after)
    if filters is not None:
        if filters.account is not None:
            where.append("account = ?")
            params.append(filters.account)
        if filters.configuration_set == "":
            where.append("configuration_set IS NULL")
        elif filters.configuration_set is not None:
            where.append("configuration_set = ?")
            params.append(filters.configuration_set)
        if filters.sender:
            where.append("lower(mail_from) LIKE ? ESCAPE '\\'")
            params.append(f"%{_like(filters.sender)}%")
        if filters.recipient:
            where.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id"
                         " AND lower(r.address) LIKE ? ESCAPE '\\')")
            params.append(f"%{_like(filters.recipient)}%")
        if filters.domain:
            where.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id"
                         " AND lower(r.address) LIKE ? ESCAPE '\\')")
            params.append(f"%@{_like(filters.domain.removeprefix('@'))}")
        if filters.state == "finished":
            where.append("finished_at IS NOT NULL")
        elif filters.state == "held":
            where.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = messages.id"
                         " AND r.state IN (?, ?) AND r.next_attempt >= ?)")
            params.extend([RecipientState.QUEUED.value, RecipientState.DEFERRED.value, HELD])
        elif filters.state is not None:
            states = ([s.value for s in PENDING_STATES] if filters.state == "pending"
                      else [filters.state])
            marks = ",".join("?" * len(states))
            where.append("EXISTS (SELECT 1 FROM recipients r"  # noqa: S608 - only ? marks
                         f" WHERE r.message_id = messages.id AND r.state IN ({marks}))")
            params.extend(states)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_message_from_row(row, _recipients(conn, row[0])) for row in conn.execute(sql, params)]


def _retry(conn: sqlite3.Connection, message_id: str | None, now: float) -> int:
    sql = "UPDATE recipients SET next_attempt = ? WHERE state IN (?, ?)"
    params: list[Any] = [now, RecipientState.QUEUED.value, RecipientState.DEFERRED.value]
    if message_id is not None:
        sql += " AND message_id = ?"
        params.append(message_id)
    else:
        # A flush is not a release: held mail stays held (as Postfix's postqueue -f).
        sql += " AND next_attempt < ?"
        params.append(HELD)
    return int(conn.execute(sql, params).rowcount)


def _hold(conn: sqlite3.Connection, message_id: str) -> int:
    """Hold: the waiting recipients' next attempt moves to HELD, which the scheduler
    never reaches; a recipient in an attempt now is left to it. How many are held."""
    return int(conn.execute(
        "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND state IN (?, ?)"
        " AND next_attempt < ?",
        (HELD, message_id, RecipientState.QUEUED.value, RecipientState.DEFERRED.value, HELD)
    ).rowcount)


def _release(conn: sqlite3.Connection, message_id: str, now: float) -> int:
    """Release a held message: its held recipients are due at `now`; how many."""
    return int(conn.execute(
        "UPDATE recipients SET next_attempt = ? WHERE message_id = ? AND state IN (?, ?)"
        " AND next_attempt >= ?",
        (now, message_id, RecipientState.QUEUED.value, RecipientState.DEFERRED.value, HELD)
    ).rowcount)


def hold_message(conn: sqlite3.Connection, message_id: str) -> int:
    """hold for a connection of the caller's own (the CLI), in its own transaction."""
    return _in_transaction(conn, lambda: _hold(conn, message_id))


def release_message(conn: sqlite3.Connection, message_id: str, now: float) -> int:
    return _in_transaction(conn, lambda: _release(conn, message_id, now))


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = work()
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done


@dataclass(frozen=True, slots=True)
class DestinationFigures:
    """One recipient domain as the console's delivery page shows it."""

    domain: str
    waiting: int  # recipients queued, deferred or in an attempt
    deferred: int
    delivered: int  # outcomes since the window's start
    bounced: int
    delayed: int
    last_remote: str | None  # the remote MTA of the latest outcome ("mx.example [ip]")
    last_error: str | None  # the latest deferral or bounce diagnostic
    last_error_at: float | None


def destination_figures(conn: sqlite3.Connection, since: float,
                        limit: int) -> list[DestinationFigures]:
    """The `limit` busiest recipient domains: mail waiting now, and the outcomes of
    attempts since `since` (kept while their message is in the spool)."""
    domain = "lower(substr(r.address, instr(r.address, '@') + 1))"
    figures: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        return figures.setdefault(name, {
            "waiting": 0, "deferred": 0, "delivered": 0, "bounced": 0, "delayed": 0,
            "last_remote": None, "last_remote_at": -1.0, "last_error": None,
            "last_error_at": None})

    pending = [s.value for s in PENDING_STATES]
    marks = ",".join("?" * len(pending))
    for name, state, count in conn.execute(
            f"SELECT {domain}, r.state, COUNT(*) FROM recipients r"  # noqa: S608 - ? marks
            f" WHERE r.state IN ({marks}) GROUP BY 1, 2", pending):
        found = entry(name)
        found["waiting"] += count
        if state == RecipientState.DEFERRED.value:
            found["deferred"] += count
    kinds = {"delivery": "delivered", "bounce": "bounced", "delay": "delayed"}
    for name, kind, count, remote, at in conn.execute(
            f"SELECT {domain}, o.kind, COUNT(*), o.remote_mta, MAX(o.at)"  # noqa: S608
            " FROM outcomes o JOIN recipients r"
            " ON r.message_id = o.message_id AND r.idx = o.idx"
            " WHERE o.at >= ? GROUP BY 1, 2", (since,)):
        found = entry(name)
        if kind in kinds:
            found[kinds[kind]] += count
        if remote and at > found["last_remote_at"]:
            found["last_remote"], found["last_remote_at"] = remote, at
    for name, diagnostic, at in conn.execute(
            f"SELECT {domain}, o.diagnostic, MAX(o.at) FROM outcomes o"  # noqa: S608
            " JOIN recipients r ON r.message_id = o.message_id AND r.idx = o.idx"
            " WHERE o.at >= ? AND o.kind IN ('bounce', 'delay') AND o.diagnostic IS NOT NULL"
            " GROUP BY 1", (since,)):
        found = entry(name)
        found["last_error"], found["last_error_at"] = diagnostic, at
    for name, reply, at in conn.execute(
            f"SELECT {domain}, r.last_reply, MAX(r.last_attempt) FROM recipients r"  # noqa: S608
            " WHERE r.state = ? AND r.last_reply IS NOT NULL GROUP BY 1",
            (RecipientState.DEFERRED.value,)):
        found = entry(name)
        if found["last_error_at"] is None or (at or 0) > found["last_error_at"]:
            found["last_error"], found["last_error_at"] = reply, at
    ranked = sorted(figures.items(), key=lambda item: (
        -(item[1]["waiting"] + item[1]["delivered"] + item[1]["bounced"]), item[0]))
    return [DestinationFigures(
        domain=name, waiting=f["waiting"], deferred=f["deferred"], delivered=f["delivered"],
        bounced=f["bounced"], delayed=f["delayed"], last_remote=f["last_remote"],
        last_error=f["last_error"], last_error_at=f["last_error_at"])
        for name, f in ranked[:limit]]


def retry_now(conn: sqlite3.Connection, message_id: str | None, now: float) -> int:
    """Make deferred recipients due at once (`queue retry ID`, `queue flush`)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        changed = _retry(conn, message_id, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return changed


def delete_message(conn: sqlite3.Connection, message_id: str) -> bool:
    """Delete from a connection of the caller's own (the CLI), in its own transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        deleted = _delete(conn, message_id)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return deleted


def recipient_states(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """account -> recipient state -> how many recipients of its spooled messages."""
    found: dict[str, dict[str, int]] = {}
    for account, state, count in conn.execute(
            "SELECT m.account, r.state, COUNT(*) FROM recipients r"
            " JOIN messages m ON m.id = r.message_id GROUP BY m.account, r.state"):
        found.setdefault(account, {})[state] = count
    return found


def open_for_cli(path: Path) -> sqlite3.Connection:
    """A connection for operator commands; creates the schema if the daemon never ran."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    migrate(conn)
    return conn
