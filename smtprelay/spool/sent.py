"""What a report days after delivery needs of the message: account, set and recipients.

A DSN or complaint names a message id (its VERP tag, or our Received field in the
returned original) and at best a recipient index. Acting on it needs the message's
account (whose suppression list), configuration set (whose events and counters) and
envelope recipients (the address behind the index). Three places can hold them, looked
at in this order:

* the spooled message, until ``delivery.keep_finished`` (7 days) after it finished;
* ``sent_messages``: a compact row (~100 bytes: ids, account, set, recipients) written
  when the spooled message is purged, for messages with a delivered recipient, only
  while a feedback listener runs (``Spool.keep_sent_index``) and only when no mail
  record keeps the same facts; kept ``SENT_INDEX_RETENTION`` (30 days) after
  acceptance. Written by the background purge, so acceptance and delivery pay
  nothing for it;
* the mail record, kept 60 days for messages of sets that publish events (whose
  events also need it: a report about a message without one makes no event).

Bounces come within days (remote queues give up after about 5), complaints mostly
within days too; a report about an older message is kept as unmatched.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

SENT_INDEX_RETENTION = 30 * 86400.0
_CHUNK = 500  # host parameters per IN (...) query
# Our DSNs (delivery.dsn_queue.DSN_LISTENER) go out from <>: no report comes back.
_DSN_LISTENER = "dsn"

# The spool's migration adding the index (see smtprelay.spool.store._MIGRATIONS).
MIGRATION = """
    CREATE TABLE sent_messages (
        message_id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        account TEXT NOT NULL,
        configuration_set TEXT,
        recipients TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX sent_messages_received ON sent_messages(received_at);
    """


@dataclass(frozen=True, slots=True)
class SentMessage:
    message_id: str
    account: str
    configuration_set: str | None
    recipients: tuple[str, ...]  # the envelope's, in order: VERP tags index into them
    mail_record: bool  # the message's mail record exists: its events can be published


def keep(conn: sqlite3.Connection, message_id: str) -> None:
    """Index a spooled message about to be purged, if a report may still come for it
    (some recipient delivered) and no mail record already tells the same."""
    row = conn.execute(
        "SELECT received_at, account, configuration_set FROM messages m WHERE id = ?"
        " AND listener != ?"
        " AND EXISTS (SELECT 1 FROM recipients WHERE message_id = m.id AND state = 'delivered')"
        " AND NOT EXISTS (SELECT 1 FROM mail_records WHERE message_id = m.id)",
        (message_id, _DSN_LISTENER)).fetchone()
    if row is None:
        return
    recipients = [r[0] for r in conn.execute(
        "SELECT address FROM recipients WHERE message_id = ? ORDER BY idx", (message_id,))]
    conn.execute(
        "INSERT OR IGNORE INTO sent_messages (message_id, received_at, account,"
        " configuration_set, recipients) VALUES (?,?,?,?,?)",
        (message_id, row[0], row[1], row[2], json.dumps(recipients, separators=(",", ":"))))


def lookup(conn: sqlite3.Connection, message_ids: Iterable[str]) -> dict[str, SentMessage]:
    """The messages among ``message_ids`` still known, from wherever they are."""
    wanted = list(dict.fromkeys(message_ids))
    found: dict[str, SentMessage] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        with_record = {row[0] for row in conn.execute(
            f"SELECT message_id FROM mail_records WHERE message_id IN ({marks})",  # noqa: S608
            chunk)}
        for row in conn.execute(
                "SELECT id, account, configuration_set FROM messages"  # noqa: S608
                f" WHERE id IN ({marks}) AND listener != ?", [*chunk, _DSN_LISTENER]
                ).fetchall():
            recipients = tuple(r[0] for r in conn.execute(
                "SELECT address FROM recipients WHERE message_id = ? ORDER BY idx", (row[0],)))
            found[row[0]] = SentMessage(row[0], row[1], row[2], recipients,
                                        row[0] in with_record)
        for row in conn.execute(
                "SELECT message_id, account, configuration_set, recipients"  # noqa: S608
                f" FROM sent_messages WHERE message_id IN ({marks})", chunk):
            if row[0] not in found:
                found[row[0]] = SentMessage(row[0], row[1], row[2],
                                            tuple(json.loads(row[3])), row[0] in with_record)
        for row in conn.execute(
                "SELECT message_id, account, configuration_set, destination"  # noqa: S608
                f" FROM mail_records WHERE message_id IN ({marks})", chunk):
            if row[0] not in found:
                found[row[0]] = SentMessage(row[0], row[1], row[2],
                                            tuple(json.loads(row[3])), True)
    return found


def purge(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return int(conn.execute(
        "DELETE FROM sent_messages WHERE message_id IN (SELECT message_id FROM sent_messages"
        " WHERE received_at < ? LIMIT ?)", (before, limit)).rowcount)


# Bounces and complaints already counted, per message and recipient (issue 16): a
# second report about the same recipient of the same message (a provider's repeated
# complaint, a DSN after the bounce at delivery) makes no second event, statistic or
# reputation count. Kept as long as the sent index.
COUNTED_MIGRATION = """
    CREATE TABLE counted_feedback (
        message_id TEXT NOT NULL,
        address TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('bounce', 'complaint')),
        at REAL NOT NULL,
        PRIMARY KEY (message_id, address, kind)
    ) WITHOUT ROWID;
    CREATE INDEX counted_feedback_at ON counted_feedback(at);
    """

Counted = tuple[str, str, str]  # (message id, recipient address lower-cased, kind)


def counted(conn: sqlite3.Connection, message_ids: Iterable[str]) -> set[Counted]:
    """What was already counted for these messages."""
    ids = list(dict.fromkeys(message_ids))
    found: set[Counted] = set()
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update((str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(
            f"SELECT message_id, address, kind FROM counted_feedback"  # noqa: S608
            f" WHERE message_id IN ({marks})", chunk))
    return found


def count(conn: sqlite3.Connection, entries: Iterable[tuple[str, str, str, float]]) -> None:
    """Remember (message id, address, kind, time) entries as counted."""
    conn.executemany("INSERT OR IGNORE INTO counted_feedback (message_id, address, kind, at)"
                     " VALUES (?, lower(?), ?, ?)", list(entries))


def purge_counted(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return int(conn.execute(
        "DELETE FROM counted_feedback WHERE (message_id, address, kind) IN (SELECT"
        " message_id, address, kind FROM counted_feedback WHERE at < ? LIMIT ?)",
        (before, limit)).rowcount)
