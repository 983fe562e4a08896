"""The queue as operators see it: list, show, delete, retry, flush, hold, release.

Blocking calls (SQLite): the admin API runs them in a thread. They work on a
`Queue`, of which there are two: `SpoolConnection`, a connection of the caller's
own (the CLI, which may run beside the daemon or without it), and `DaemonSpool`,
the running daemon's spool, whose writes go through its one writer thread.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from smtprelay.operations import paging
from smtprelay.operations.errors import MessageNotFound, NotHeld, NothingToHold, NothingToRetry
from smtprelay.spool import set_stats
from smtprelay.spool import store as spool_store
from smtprelay.spool.model import QueuedMessage, RecipientState
from smtprelay.spool.store import MessageFilter, Spool


class Queue(Protocol):
    def get(self, message_id: str) -> QueuedMessage | None: ...

    def body(self, message_id: str) -> bytes | None: ...

    def messages(self, *, limit: int | None = None, after: str | None = None,
                 filters: MessageFilter | None = None) -> list[QueuedMessage]: ...

    def delete(self, message_id: str) -> bool: ...

    def retry(self, message_id: str | None, now: float) -> int: ...

    def hold(self, message_id: str) -> int: ...

    def release(self, message_id: str, now: float) -> int: ...

    def set_totals(self, window: set_stats.Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, set_stats.Counts]: ...


class SpoolConnection:
    """The spool through a connection of the caller's own; each write is its own
    transaction, which waits for the daemon's (busy_timeout) rather than failing."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, message_id: str) -> QueuedMessage | None:
        return spool_store.get_message(self.conn, message_id)

    def body(self, message_id: str) -> bytes | None:
        return spool_store.get_body(self.conn, message_id)

    def messages(self, *, limit: int | None = None, after: str | None = None,
                 filters: MessageFilter | None = None) -> list[QueuedMessage]:
        return spool_store.list_messages(self.conn, limit=limit, after=after, filters=filters)

    def delete(self, message_id: str) -> bool:
        return spool_store.delete_message(self.conn, message_id)

    def retry(self, message_id: str | None, now: float) -> int:
        return spool_store.retry_now(self.conn, message_id, now)

    def hold(self, message_id: str) -> int:
        return spool_store.hold_message(self.conn, message_id)

    def release(self, message_id: str, now: float) -> int:
        return spool_store.release_message(self.conn, message_id, now)

    def set_totals(self, window: set_stats.Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, set_stats.Counts]:
        return set_stats.totals(self.conn, window, by=by, configuration_set=configuration_set,
                                account=account)

    def recipient_states(self) -> dict[str, dict[str, int]]:
        return spool_store.recipient_states(self.conn)

    def close(self) -> None:
        self.conn.close()


class DaemonSpool:
    """The running daemon's spool. Its writes queue for the writer thread and wait
    for it, so call from a thread other than the event loop's."""

    def __init__(self, spool: Spool, counters: set_stats.Counters | None = None) -> None:
        self.spool = spool
        # The statistics: the spool's, or with store: redis the cluster's.
        self.counters: set_stats.Counters = spool if counters is None else counters

    def get(self, message_id: str) -> QueuedMessage | None:
        return self.spool.get(message_id)

    def body(self, message_id: str) -> bytes | None:
        return self.spool.body(message_id)

    def messages(self, *, limit: int | None = None, after: str | None = None,
                 filters: MessageFilter | None = None) -> list[QueuedMessage]:
        return self.spool.messages(limit=limit, after=after, filters=filters)

    def delete(self, message_id: str) -> bool:
        return self.spool.delete_future(message_id).result()

    def retry(self, message_id: str | None, now: float) -> int:
        return self.spool.retry_future(message_id, now).result()

    def hold(self, message_id: str) -> int:
        return self.spool.hold_future(message_id).result()

    def release(self, message_id: str, now: float) -> int:
        return self.spool.release_future(message_id, now).result()

    def set_totals(self, window: set_stats.Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, set_stats.Counts]:
        return self.counters.set_totals(window, by=by, configuration_set=configuration_set,
                                        account=account)


def listing(queue: Queue, filters: MessageFilter, *, limit: int | None = None,
            after: str | None = None) -> list[QueuedMessage]:
    """Messages in arrival order (finished ones until purged), after the id `after`."""
    return queue.messages(limit=limit, after=after, filters=filters)


def page(queue: Queue, filters: MessageFilter, *, limit: int,
         after: str | None = None) -> paging.Page[QueuedMessage]:
    return paging.page(lambda n: listing(queue, filters, limit=n, after=after), limit,
                       key=lambda message: message.message_id)


def show(queue: Queue, message_id: str) -> QueuedMessage:
    message = queue.get(message_id)
    if message is None:
        raise MessageNotFound(message_id)
    return message


def body(queue: Queue, message_id: str) -> bytes:
    """The message as spooled (b"" if its body is gone while the row is not)."""
    show(queue, message_id)
    return queue.body(message_id) or b""


def delete(queue: Queue, message_id: str) -> None:
    """Remove a message: it is not delivered and no DSN is sent."""
    if not queue.delete(message_id):
        raise MessageNotFound(message_id)


def retry(queue: Queue, message_id: str, now: float) -> int:
    """Make the message's waiting recipients due at `now`; how many were."""
    message = show(queue, message_id)
    due = queue.retry(message_id, now)
    if not due:
        raise NothingToRetry(message_id, held=any(
            r.state is RecipientState.SENDING for r in message.recipients))
    return due


def retry_all(queue: Queue, now: float) -> int:
    """Every waiting recipient due at `now` (flush); how many."""
    return queue.retry(None, now)


def hold(queue: Queue, message_id: str) -> int:
    """Keep the message's waiting recipients from delivery until `release` (a retry of
    the message releases it too; a flush does not); how many are held."""
    show(queue, message_id)
    held = queue.hold(message_id)
    if not held:
        raise NothingToHold(message_id)
    return held


def release(queue: Queue, message_id: str, now: float) -> int:
    """Make a held message's recipients due at `now`; how many."""
    show(queue, message_id)
    released = queue.release(message_id, now)
    if not released:
        raise NotHeld(message_id)
    return released
