"""The durable event outbox: event rows and mail records in the spool database.

The rows hold SES's JSON objects already made (`smtprelay.events.records.make`); this
module only stores and reads them, and `smtprelay.events` assembles the published form.

An event is written in the same SQLite transaction as the change it reports (the
message accepted, a recipient's result recorded), so a crash can neither lose it nor
report something that did not happen. Each row holds only the event type's own SES
object; the ``mail`` object is rebuilt at publication from the message's mail record
(envelope, header section, tags), which is kept apart from the spooled message: a
message's bytes go once it is finished, but opens and clicks come for weeks.

Publication is at-least-once: every destination keeps its own cursor (the last event
id it has taken), saved after the destination has the events durably; events behind
every cursor are deleted. Ids come from AUTOINCREMENT, so they only grow, even after
deletes, and a cursor never skips an event.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from smtprelay.mail.headers import header_end
from smtprelay.spool.model import EventRecord, NewMessage


@dataclass(frozen=True, slots=True)
class MailInfo:
    """What every event says about the message it is about (SES's ``mail`` object)."""

    message_id: str  # ours, as returned in "250 2.0.0 Ok <id>"
    timestamp: float  # acceptance time
    source: str  # envelope MAIL FROM ("" for the null sender)
    source_ip: str
    sending_account_id: str  # our account name
    caller_identity: str  # the AUTH user, or the account
    destination: tuple[str, ...]  # envelope recipients
    # The client's header section as accepted (after hygiene's changes to it, such as a
    # missing Message-ID added), without the relay's own fields in front (its
    # DKIM-Signature and Received: NewMessage.prefix): SES's "original headers".
    # The whole message may be given; only the header section is read.
    header_section: bytes
    # The message's tags, the ses:* automatic ones included (configsets.auto_tags).
    tags: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MailRecord:
    """What later events need of a message: its ``mail`` object's inputs."""

    message_id: str
    account: str
    configuration_set: str | None
    destination: tuple[str, ...]
    mail: MailInfo


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int  # publication order
    event_id: str
    message_id: str
    type: str
    configuration_set: str | None
    at: float
    detail: dict[str, Any]
    mail: MailInfo | None  # None when the mail record is gone (past the tracking window)
    mail_tags: dict[str, list[str]] | None = None  # EventRecord.mail_tags


def insert_mail_record(conn: sqlite3.Connection, m: NewMessage) -> None:
    tags = m.attrs.tags or {}
    conn.execute(
        "INSERT OR REPLACE INTO mail_records (message_id, created_at, account,"
        " configuration_set, source, source_ip, caller, destination, tags, header_section)"
        " VALUES (?,?,?,?,?,?,?,?,?,?)",
        (m.message_id, m.received_at, m.account, m.configuration_set, m.envelope.mail_from,
         m.client_ip, m.auth_user or m.account, json.dumps(list(m.envelope.recipients)),
         json.dumps(tags, separators=(",", ":")),
         # The client's fields only: the relay's own (m.prefix) are not the message's
         # "original headers" that SES's mail object shows.
         m.data[:header_end(m.data)]))


def insert_events(conn: sqlite3.Connection, events: Iterable[EventRecord]) -> None:
    conn.executemany(
        "INSERT INTO events (event_id, message_id, type, configuration_set, at, detail,"
        " mail_tags) VALUES (?,?,?,?,?,?,?)",
        [(e.event_id, e.message_id, e.type, e.configuration_set, e.at,
          json.dumps(e.detail, ensure_ascii=False, separators=(",", ":")),
          None if not e.mail_tags else json.dumps(e.mail_tags, separators=(",", ":")))
         for e in events])


_RECORD_COLUMNS = ("message_id, created_at, account, configuration_set, source, source_ip,"
                   " caller, destination, tags, header_section")


def _mail_record(row: tuple[Any, ...]) -> MailRecord:
    destination = tuple(json.loads(row[7]))
    return MailRecord(
        message_id=row[0], account=row[2], configuration_set=row[3], destination=destination,
        mail=MailInfo(message_id=row[0], timestamp=row[1], source=row[4], source_ip=row[5],
                      sending_account_id=row[2], caller_identity=row[6],
                      destination=destination, header_section=bytes(row[9]),
                      tags=json.loads(row[8])))


def mail_record(conn: sqlite3.Connection, message_id: str) -> MailRecord | None:
    row = conn.execute(f"SELECT {_RECORD_COLUMNS} FROM mail_records"  # noqa: S608
                       " WHERE message_id = ?", (message_id,)).fetchone()
    return None if row is None else _mail_record(row)


def events_after(conn: sqlite3.Connection, last_id: int, limit: int) -> list[StoredEvent]:
    rows = conn.execute(
        "SELECT id, event_id, message_id, type, configuration_set, at, detail, mail_tags"
        " FROM events"
        " WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
    records: dict[str, MailInfo | None] = {}
    out = []
    for row in rows:
        message_id = row[2]
        if message_id not in records:
            found = mail_record(conn, message_id)
            records[message_id] = found.mail if found is not None else None
        out.append(StoredEvent(id=row[0], event_id=row[1], message_id=message_id, type=row[3],
                               configuration_set=row[4], at=row[5],
                               detail=json.loads(row[6]), mail=records[message_id],
                               mail_tags=json.loads(row[7]) if row[7] else None))
    return out


def events_of(conn: sqlite3.Connection, message_id: str, limit: int) -> list[StoredEvent]:
    """One message's events in the outbox, oldest first, without their mail object
    (the outbox has no index by message: for an operator's look at one message)."""
    rows = conn.execute(
        "SELECT id, event_id, message_id, type, configuration_set, at, detail, mail_tags"
        " FROM events WHERE message_id = ? ORDER BY id LIMIT ?", (message_id, limit))
    return [StoredEvent(id=row[0], event_id=row[1], message_id=row[2], type=row[3],
                        configuration_set=row[4], at=row[5], detail=json.loads(row[6]),
                        mail=None, mail_tags=json.loads(row[7]) if row[7] else None)
            for row in rows]


def cursors(conn: sqlite3.Connection) -> dict[str, int]:
    return {name: int(last) for name, last in
            conn.execute("SELECT destination, last_id FROM event_cursors")}


def advance(conn: sqlite3.Connection, positions: dict[str, int], keep: set[str]) -> int:
    conn.executemany(
        "INSERT INTO event_cursors (destination, last_id) VALUES (?, ?)"
        " ON CONFLICT(destination) DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
        list(positions.items()))
    if not keep:
        # No destination wants events any more (all removed from the config).
        conn.execute("DELETE FROM event_cursors")
        return int(conn.execute("DELETE FROM events").rowcount)
    known = cursors(conn)
    for name in set(known) - keep:
        conn.execute("DELETE FROM event_cursors WHERE destination = ?", (name,))
    floor = min((known[name] for name in keep if name in known), default=None)
    if floor is None or any(name not in known for name in keep):
        # A destination that never saved a position still needs everything.
        return 0
    return int(conn.execute("DELETE FROM events WHERE id <= ?", (floor,)).rowcount)


def purge_mail_records(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return int(conn.execute(
        "DELETE FROM mail_records WHERE message_id IN (SELECT message_id FROM mail_records"
        " WHERE created_at < ? LIMIT ?)", (before, limit)).rowcount)
