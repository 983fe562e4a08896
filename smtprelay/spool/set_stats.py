"""Per-configuration-set sending statistics: durable hourly counters and the rates over a window.

What is counted, per (hour, configuration set, account, kind):

- ``send``: recipients of accepted messages (the suppressed ones included, as SES
  counts a Send for them); ``suppressed``: those refused by the suppression list,
  never delivered and, as in SES (seed line 9011), left out of the bounce rate;
- ``delivery``; ``bounce`` (Permanent: the hard bounces of the bounce rate),
  ``bounce_transient`` and ``bounce_undetermined`` (counted, not in the rate);
  ``delivery_delay`` (DeliveryDelay records); ``complaint``; ``reject`` (a message
  refused for its content after its set was known);
- ``open`` and ``click`` (every one, machine-made included), ``open_unique`` and
  ``click_unique`` (the first one of each message made by a person), ``open_machine``
  and ``click_machine`` (flagged scanners and proxies), ``unsubscribe``.

Counters are written in the same SQLite transaction as what they count (the message
spooled, an attempt's results recorded, an engagement recorded), in the spool
database, so a crash never leaves the two apart and nothing else waits for them.
They are counted whether or not the set publishes events. Mail sent without a
configuration set counts under the pseudo-set ``""`` (``NO_SET``), shown as
"(none)"; bounce messages the relay itself sends (DSNs) are not counted.

Buckets are whole UTC hours (``hour = floor(unix time / 3600)``). A window of W
seconds ending now covers every bucket that overlaps it: the current hour so far and
the hours back to the one holding ``now - W``, so "24 h" reads between 24 and 25
hours of counts. ``RETENTION`` (15 days) of buckets are kept; the daemon purges older
ones. The table's key starts with the hour, so a window is one range scan whatever
the number of sets, and a reputation check every few seconds costs next to nothing.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from smtprelay.config import Duration
from smtprelay.db.sqlite import connect

HOUR = 3600
DAY = 86400.0
RETENTION = 15 * DAY
NO_SET = ""  # the configuration set key of mail sent without one
NO_SET_LABEL = "(none)"
# Listeners of messages the relay writes itself (dsn_queue.DSN_LISTENER, the mailbox
# simulator's auto-replies): not the sender's mail, so not in its statistics.
UNCOUNTED_LISTENERS = frozenset({"dsn", "simulator"})
class Kind(StrEnum):
    SEND = "send"
    SUPPRESSED = "suppressed"
    DELIVERY = "delivery"
    BOUNCE = "bounce"
    BOUNCE_TRANSIENT = "bounce_transient"
    BOUNCE_UNDETERMINED = "bounce_undetermined"
    DELIVERY_DELAY = "delivery_delay"
    COMPLAINT = "complaint"
    REJECT = "reject"
    OPEN = "open"
    OPEN_UNIQUE = "open_unique"
    OPEN_MACHINE = "open_machine"
    CLICK = "click"
    CLICK_UNIQUE = "click_unique"
    CLICK_MACHINE = "click_machine"
    UNSUBSCRIBE = "unsubscribe"


# The tables (set_stats, tracked_messages) are created by the spool's migration 5.
# tracked_messages: one row per message with tracked links or an open pixel, for
# the tracking window, so an open weeks later still finds its set and account (the
# token carries only ids), and the first open and click of a message are told
# apart from the rest (the unique counts).


def hour_of(at: float) -> int:
    return int(at // HOUR)


def set_key(configuration_set: str | None) -> str:
    return NO_SET if configuration_set is None else configuration_set


def set_label(key: str) -> str:
    return NO_SET_LABEL if key == NO_SET else key


Increments = Mapping[Kind, int]


def bump(conn: sqlite3.Connection, account: str, configuration_set: str | None, at: float,
         increments: Increments) -> None:
    """Add to the counters, inside the caller's transaction."""
    rows = [(hour_of(at), set_key(configuration_set), account, str(kind), count)
            for kind, count in increments.items() if count]
    if rows:
        conn.executemany(
            "INSERT INTO set_stats (hour, configuration_set, account, kind, count)"
            " VALUES (?,?,?,?,?) ON CONFLICT (hour, configuration_set, account, kind)"
            " DO UPDATE SET count = count + excluded.count", rows)
        minute = int(at // MINUTE)
        conn.executemany(
            "INSERT INTO minute_stats (minute, kind, count) VALUES (?,?,?)"
            " ON CONFLICT (minute, kind) DO UPDATE SET count = count + excluded.count",
            [(minute, kind, count) for _, _, _, kind, count in rows])


# -- per-minute totals (the console's charts) ----------------------------------------------
#
# The same increments, summed over sets and accounts, per whole UTC minute, for the
# last MINUTES_KEPT: a day is at most 1,440 minutes by 16 kinds, small enough to read
# whole for a chart. They are this spool's alone (with store: redis, this node's).

MINUTE = 60
MINUTES_KEPT = DAY + HOUR  # a day's chart, and the minutes of its first, partial hour
MINUTE_MIGRATION = """
CREATE TABLE minute_stats (
    minute INTEGER NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (minute, kind)
) WITHOUT ROWID;
"""


def minutes_since(conn: sqlite3.Connection, since: float) -> list[tuple[int, str, int]]:
    """(minute, kind, count) rows from the minute holding `since` on, by minute."""
    return [(int(m), str(k), int(c)) for m, k, c in conn.execute(
        "SELECT minute, kind, count FROM minute_stats WHERE minute >= ? ORDER BY minute",
        (int(since // MINUTE),))]


def purge_minutes(conn: sqlite3.Connection, now: float | None = None) -> int:
    cutoff = int(((time.time() if now is None else now) - MINUTES_KEPT) // MINUTE)
    return int(conn.execute("DELETE FROM minute_stats WHERE minute < ?", (cutoff,)).rowcount)


@dataclass(frozen=True, slots=True)
class Bump:
    """Increments to apply in some later transaction (see Spool.add_events)."""

    account: str
    configuration_set: str | None
    at: float
    increments: Increments


def apply(conn: sqlite3.Connection, bumps: Iterable[Bump]) -> None:
    for b in bumps:
        bump(conn, b.account, b.configuration_set, b.at, b.increments)


def outcome_kind(kind: str, bounce_type: str | None) -> Kind | None:
    """The counter for a spool outcome ("delivery", "bounce", "delay")."""
    if kind == "delivery":
        return Kind.DELIVERY
    if kind == "delay":
        return Kind.DELIVERY_DELAY
    if kind == "bounce":
        if bounce_type == "Permanent":
            return Kind.BOUNCE
        if bounce_type == "Transient":
            return Kind.BOUNCE_TRANSIENT
        return Kind.BOUNCE_UNDETERMINED
    return None


# -- engagements ------------------------------------------------------------------------


def track(conn: sqlite3.Connection, message_id: str, created_at: float, account: str,
          configuration_set: str | None) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO tracked_messages (message_id, created_at, account,"
        " configuration_set) VALUES (?,?,?,?)",
        (message_id, created_at, account, set_key(configuration_set)))


@dataclass(frozen=True, slots=True)
class Engaged:
    """Where an engagement counted: the message's account and set (None: not at all)."""

    account: str
    configuration_set: str | None


@dataclass(frozen=True, slots=True)
class Hit:
    """One open or click (`kind` "open"/"click") of a tracked message, to be counted."""

    message_id: str
    kind: str
    at: float
    machine: bool


def count_engagements(conn: sqlite3.Connection, hits: Sequence[Hit]) -> list[Engaged | None]:
    """Count opens and clicks of tracked messages, in the caller's transaction: one
    look-up per message and one write per counter for the whole batch, however many
    hits it holds (a campaign's clicks arrive by the thousand).

    The message is found in tracked_messages, else (a message spooled before that
    table existed) in its mail record, which knows no earlier engagements: such
    opens count in the totals only. None for a hit whose message is unknown (past
    the tracking window): nothing is counted for it.
    """
    # message id -> (account, set, first open, first click) as this batch leaves them.
    seen: dict[str, list[Any] | None] = {}
    firsts: list[tuple[str, float, str]] = []
    totals: dict[tuple[int, str, str, str], int] = {}
    results: list[Engaged | None] = []
    for hit in hits:
        if hit.message_id not in seen:
            seen[hit.message_id] = _tracked(conn, hit.message_id)
        known = seen[hit.message_id]
        if known is None:
            results.append(None)
            continue
        account, key = known[0], known[1]
        slot = 2 if hit.kind == "open" else 3
        first = known[slot] is False and not hit.machine
        if first:
            known[slot] = True
            firsts.append(("opened_at" if hit.kind == "open" else "clicked_at", hit.at,
                           hit.message_id))
        total, unique, flagged = ((Kind.OPEN, Kind.OPEN_UNIQUE, Kind.OPEN_MACHINE)
                                  if hit.kind == "open" else
                                  (Kind.CLICK, Kind.CLICK_UNIQUE, Kind.CLICK_MACHINE))
        hour = hour_of(hit.at)
        for kind, count in ((total, 1), (unique, int(first)), (flagged, int(hit.machine))):
            if count:
                counter = (hour, key, account, str(kind))
                totals[counter] = totals.get(counter, 0) + count
        results.append(Engaged(account, None if key == NO_SET else key))
    for column, at, message_id in firsts:
        conn.execute(f"UPDATE tracked_messages SET {column} = ?"  # noqa: S608
                     " WHERE message_id = ?", (at, message_id))
    if totals:
        conn.executemany(
            "INSERT INTO set_stats (hour, configuration_set, account, kind, count)"
            " VALUES (?,?,?,?,?) ON CONFLICT (hour, configuration_set, account, kind)"
            " DO UPDATE SET count = count + excluded.count",
            [(*counter, count) for counter, count in totals.items()])
    return results


def _tracked(conn: sqlite3.Connection, message_id: str) -> list[Any] | None:
    """[account, set key, opened?, clicked?] of a message; None when unknown. A message
    found only by its mail record has None for both: it never counts as a first."""
    row = conn.execute("SELECT account, configuration_set, opened_at, clicked_at"
                       " FROM tracked_messages WHERE message_id = ?", (message_id,)).fetchone()
    if row is not None:
        return [str(row[0]), str(row[1]), row[2] is not None, row[3] is not None]
    record = conn.execute("SELECT account, configuration_set FROM mail_records"
                          " WHERE message_id = ?", (message_id,)).fetchone()
    if record is None:
        return None
    return [str(record[0]), set_key(record[1]), None, None]


def purge(conn: sqlite3.Connection, before: float) -> int:
    """Delete the counters of hours wholly before `before`. Each hour holds a row per
    set, account and kind seen in it, so even days of them go in one short statement."""
    return int(conn.execute("DELETE FROM set_stats WHERE hour < ?",
                            (hour_of(before),)).rowcount)


def purge_tracked(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return int(conn.execute(
        "DELETE FROM tracked_messages WHERE message_id IN (SELECT message_id FROM"
        " tracked_messages WHERE created_at < ? LIMIT ?)", (before, limit)).rowcount)


# -- reading ---------------------------------------------------------------------------


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class Counts:
    """Counters summed over a window, and the rates made from them.

    Rates are None when their denominator is 0 (no volume says nothing, and 0.0
    would read as "perfect"). Deliveries and bounces are per recipient; unique opens
    and clicks per message, so open and click rates are exact for one-recipient
    messages (the usual tracked mail) and low for messages to several recipients.
    """

    values: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, kind: Kind | str) -> int:
        return self.values.get(str(kind), 0)

    @property
    def bounce_rate(self) -> float | None:
        """Permanent bounces / (deliveries + permanent bounces), SES's bounce rate."""
        return _ratio(self[Kind.BOUNCE], self[Kind.DELIVERY] + self[Kind.BOUNCE])

    @property
    def complaint_rate(self) -> float | None:
        """Complaints / deliveries."""
        return _ratio(self[Kind.COMPLAINT], self[Kind.DELIVERY])

    @property
    def open_rate(self) -> float | None:
        """Unique (human) opens / deliveries."""
        return _ratio(self[Kind.OPEN_UNIQUE], self[Kind.DELIVERY])

    @property
    def click_rate(self) -> float | None:
        """Unique (human) clicks / deliveries."""
        return _ratio(self[Kind.CLICK_UNIQUE], self[Kind.DELIVERY])

    def add(self, other: Counts) -> Counts:
        merged = dict(self.values)
        for kind, count in other.values.items():
            merged[kind] = merged.get(kind, 0) + count
        return Counts(merged)

    def as_json(self) -> dict[str, Any]:
        return {
            "counts": {str(kind): self[kind] for kind in Kind},
            "rates": {"bounce": self.bounce_rate, "complaint": self.complaint_rate,
                      "open": self.open_rate, "click": self.click_rate},
        }


@dataclass(frozen=True, slots=True)
class Window:
    """The hours a window covers: [first_hour, last_hour], as times for display."""

    seconds: float
    first_hour: int
    last_hour: int

    @classmethod
    def ending(cls, now: float, seconds: float = DAY) -> Window:
        """Every hour that overlaps [now - seconds, now]: a superset of the span, for
        judgements (reputation) that must not miss a bounce at the span's start."""
        return cls(seconds, hour_of(now - seconds), hour_of(now))

    @classmethod
    def last_hours(cls, now: float, seconds: float = DAY) -> Window:
        """The current hour and the ones before it, as many as `seconds` spans rounded
        up to whole hours: what an operator asking for "the last hour" means to see
        (one hour bucket, not the two that overlap the last 60 minutes)."""
        hours = max(1, math.ceil(seconds / HOUR - 1e-9))
        last = hour_of(now)
        return cls(seconds, last - hours + 1, last)

    @property
    def since(self) -> float:
        return float(self.first_hour * HOUR)

    @property
    def until(self) -> float:
        return float((self.last_hour + 1) * HOUR)

    def as_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "since": self.since, "until": self.until}


class Counters(Protocol):
    """Where totals come from: a spool (one node) or cluster_stats (every node)."""

    def set_totals(self, window: Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, Counts]: ...


class FileCounters:
    """The counters of a spool database another process writes (a worker reading the
    supervisor's): a read-only connection per call, so any thread may call."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def set_totals(self, window: Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, Counts]:
        conn = connect(self._path, readonly=True)
        try:
            return totals(conn, window, by=by, configuration_set=configuration_set,
                          account=account)
        finally:
            conn.close()


def totals(conn: sqlite3.Connection, window: Window, *, by: str = "configuration_set",
           configuration_set: str | None = None, account: str | None = None
           ) -> dict[str, Counts]:
    """Counts per set key (`by="configuration_set"`) or per account (`by="account"`)
    over `window`, optionally only one set (its key, "" for none) or one account.

    Groups with no counts in the window are absent.
    """
    if by not in ("configuration_set", "account"):
        raise ValueError(f"by must be configuration_set or account, not {by!r}")
    sql = (f"SELECT {by}, kind, SUM(count) FROM set_stats"  # noqa: S608 - by is checked
           " WHERE hour BETWEEN ? AND ?")
    params: list[object] = [window.first_hour, window.last_hour]
    if configuration_set is not None:
        sql += " AND configuration_set = ?"
        params.append(configuration_set)
    if account is not None:
        sql += " AND account = ?"
        params.append(account)
    sql += f" GROUP BY {by}, kind"
    found: dict[str, dict[str, int]] = {}
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}  # a spool older than the statistics: nothing counted yet
        raise
    for group, kind, count in rows:
        found.setdefault(str(group), {})[str(kind)] = int(count)
    return {group: Counts(values) for group, values in found.items()}


Row = tuple[int, str, str, str, int]  # hour, set key, account, kind, count


def rows_since(conn: sqlite3.Connection, first_hour: int) -> list[Row]:
    """Every counter from `first_hour` on, as stored (what a cluster's mirror copies)."""
    try:
        rows = conn.execute("SELECT hour, configuration_set, account, kind, count"
                            " FROM set_stats WHERE hour >= ?", (first_hour,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    return [(int(h), str(s), str(a), str(k), int(c)) for h, s, a, k, c in rows]


def group(rows: Iterable[tuple[str, str, str, int]], *, by: str,
          configuration_set: str | None = None, account: str | None = None
          ) -> dict[str, Counts]:
    """(set key, account, kind, count) rows summed per set key or per account, as
    `totals` sums them in SQL; groups with no counts are absent."""
    if by not in ("configuration_set", "account"):
        raise ValueError(f"by must be configuration_set or account, not {by!r}")
    found: dict[str, dict[str, int]] = {}
    for set_name, account_name, kind, count in rows:
        if configuration_set is not None and set_name != configuration_set:
            continue
        if account is not None and account_name != account:
            continue
        counts = found.setdefault(set_name if by == "configuration_set" else account_name, {})
        counts[kind] = counts.get(kind, 0) + count
    return {name: Counts(values) for name, values in found.items()}


def merge(many: Iterable[Counts]) -> Counts:
    total = Counts()
    for counts in many:
        total = total.add(counts)
    return total


# -- windows as operators write them -------------------------------------------------------

_DURATION: TypeAdapter[float] = TypeAdapter(Duration)


def parse_window(text: str) -> float:
    """"24h", "90m", "7d" (the config's duration syntax) as seconds; a window longer
    than the RETENTION kept reads as RETENTION. ValueError with the reason otherwise."""
    try:
        seconds = float(_DURATION.validate_python(text))
    except ValidationError:
        raise ValueError(f"window {text!r}: expected a duration such as 1h, 24h or "
                         "7d") from None
    if not math.isfinite(seconds):
        raise ValueError(f"window {text!r}: expected a duration such as 1h, 24h or 7d")
    return min(seconds, RETENTION)
