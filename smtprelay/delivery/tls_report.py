"""TLS reporting (RFC 8460), the counting half: sessions' TLS outcomes, per recipient
(policy) domain and UTC day, kept on disk until the day's report is made.

`TLSReportCollector.record` is called for every attempted session to an MX host (a
`TLSOutcome`, smtprelay.delivery.tls_outcome). It only adds to counters in memory;
`run` writes them to `data_dir/tls-reports.db` every second, and `close` once more,
so a restart loses nothing and a `kill -9` at most the last second. Each day's rows
are grouped as the report will show them: one row per policy and, for failures, per
result type, sending address, MX host and receiving address, with a session count.

`TLSReportStore` is that database: the counts, the reports made from them (the
gzipped JSON, kept until every destination has it) and each report's destinations
with their attempts. Its `file_report` takes a day's counts for one domain and files
the report made from them in one transaction, so a count is reported once or not at
all. Sending is smtprelay.delivery.tls_report_send's job.

Each node of a cluster keeps its own database and sends its own reports, with report
ids of their own: RFC 8460 reports are per sending MTA, and a receiver adds them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtprelay.db.sqlite import Store
from smtprelay.delivery.client import ConnectError, Connection, TLSPolicy
from smtprelay.delivery.model import Destination
from smtprelay.delivery.tls_outcome import TLSOutcome

log = logging.getLogger("smtprelay.delivery.tlsrpt")

DATABASE = "tls-reports.db"
FLUSH_SECONDS = 1.0
_DAY = 86400.0

# RFC 8460 4.3: result types of negotiation failures the relay sees without a policy.
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
VALIDATION_FAILURE = "validation-failure"


def database_path(data_dir: Path) -> Path:
    return data_dir / DATABASE


def utc_day(when: float) -> str:
    """The UTC date of a moment, as the counts are keyed: 2026-12-05."""
    return datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y-%m-%d")


def day_start(day: str) -> float:
    return datetime.datetime.strptime(day, "%Y-%m-%d").replace(
        tzinfo=datetime.UTC).timestamp()


def rfc3339(when: float) -> str:
    return datetime.datetime.fromtimestamp(int(when), datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ what a session says

def observed(policy_domain: str, destination: Destination,
             opened: Connection | ConnectError) -> TLSOutcome | None:
    """The outcome of a session to `destination` without MTA-STS or DANE: what the
    opportunistic (or required) STARTTLS came to, reported as "no-policy-found".

    None when TLS was not in question: a host that could not be reached or refused
    us before STARTTLS (transient failures, which RFC 8460 4.4 leaves out of
    reports), or a session configured never to try TLS.
    """
    failure: str | None
    if isinstance(opened, ConnectError):
        # Only REQUIRE turns a TLS problem into an error (client._starttls): 4.7.4 is
        # STARTTLS not offered, 4.7.5 with a reply STARTTLS refused, without one a
        # handshake that failed.
        if opened.status == "4.7.4" or (opened.status == "4.7.5" and opened.code is not None):
            failure = STARTTLS_NOT_SUPPORTED
        elif opened.status == "4.7.5":
            failure = VALIDATION_FAILURE
        else:
            return None
        return TLSOutcome("no-policy-found", policy_domain, (), destination.host,
                          destination.address, None, failure)
    if opened.settings.tls is TLSPolicy.NONE:
        return None
    if opened.tls_version is not None:
        failure = None
    elif opened.tls_fallback:
        failure = VALIDATION_FAILURE  # offered, accepted, then the handshake failed
    else:
        failure = STARTTLS_NOT_SUPPORTED  # not offered, or refused
    return TLSOutcome("no-policy-found", policy_domain, (), destination.host,
                      destination.address, opened.local_ip, failure)


# ------------------------------------------------------------------ the counts

@dataclass(frozen=True, slots=True, order=True)
class CountKey:
    """One row of a day's counts. A success keeps only its policy (a report's summary
    counts it); a failure also where it happened (its failure-details entry)."""

    day: str
    policy_domain: str
    policy_type: str
    policy_strings: str  # JSON array, as stored
    mx_key: str  # the MX host for a DANE ("tlsa") policy, which is per host; else ""
    result: str  # "" for success, else the RFC 8460 result type
    sending_ip: str
    receiving_mx: str
    receiving_ip: str

    @classmethod
    def of(cls, outcome: TLSOutcome, day: str) -> CountKey:
        strings = json.dumps(list(outcome.policy_strings), separators=(",", ":"))
        mx_key = outcome.mx_host if outcome.policy_type == "tlsa" else ""
        if outcome.failure is None:
            return cls(day, outcome.policy_domain.lower(), outcome.policy_type, strings,
                       mx_key, "", "", "", "")
        return cls(day, outcome.policy_domain.lower(), outcome.policy_type, strings, mx_key,
                   outcome.failure, outcome.sending_ip or "", outcome.mx_host,
                   outcome.receiving_ip)


@dataclass(frozen=True, slots=True)
class Pending:
    """A day's counts for one domain, not yet reported (`tls-report list`)."""

    day: str
    policy_domain: str
    successes: int
    failures: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """A report on its way to one destination (a mailto: or https: URI)."""

    report_id: str
    uri: str
    policy_domain: str
    start: float
    end: float
    created_at: float
    attempts: int
    filename: str
    body: bytes  # the gzipped JSON


@dataclass(frozen=True, slots=True)
class FiledReport:
    report_id: str
    policy_domain: str
    start: float
    end: float
    created_at: float
    destinations: tuple[tuple[str, str, int, str | None], ...]  # uri, state, attempts, error


_MIGRATIONS = (
    """
    CREATE TABLE tlsrpt_counts (
        day TEXT NOT NULL, policy_domain TEXT NOT NULL, policy_type TEXT NOT NULL,
        policy_strings TEXT NOT NULL, mx_key TEXT NOT NULL, result TEXT NOT NULL,
        sending_ip TEXT NOT NULL, receiving_mx TEXT NOT NULL, receiving_ip TEXT NOT NULL,
        sessions INTEGER NOT NULL,
        PRIMARY KEY (day, policy_domain, policy_type, policy_strings, mx_key, result,
                     sending_ip, receiving_mx, receiving_ip)
    ) WITHOUT ROWID;
    CREATE TABLE tlsrpt_periods (
        day TEXT PRIMARY KEY, reported_until REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE tlsrpt_reports (
        report_id TEXT PRIMARY KEY, policy_domain TEXT NOT NULL, start REAL NOT NULL,
        end REAL NOT NULL, created_at REAL NOT NULL, filename TEXT NOT NULL,
        body BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE tlsrpt_deliveries (
        report_id TEXT NOT NULL REFERENCES tlsrpt_reports (report_id) ON DELETE CASCADE,
        uri TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL, last_error TEXT, done_at REAL,
        PRIMARY KEY (report_id, uri)
    ) WITHOUT ROWID;
    CREATE INDEX tlsrpt_deliveries_due ON tlsrpt_deliveries (state, next_at)
    """,
)

# What `file_report`'s builder gets: the rows and the period; what it gives back: the
# report id, the attachment's file name and the gzipped JSON.
Builder = Callable[[list[CountKey], list[int], float, float], tuple[str, str, bytes]]


class TLSReportStore(Store):
    """data_dir/tls-reports.db. Thread-safe (one connection behind a lock); the daemon
    calls it from worker threads, the CLI from its own process."""

    COMPONENT = "tls_reports"
    MIGRATIONS = _MIGRATIONS

    def add(self, counts: Iterable[tuple[CountKey, int]]) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO tlsrpt_counts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET sessions = sessions + excluded.sessions",
                [(k.day, k.policy_domain, k.policy_type, k.policy_strings, k.mx_key,
                  k.result, k.sending_ip, k.receiving_mx, k.receiving_ip, n)
                 for k, n in counts])

    def pending(self, through_day: str | None = None) -> list[Pending]:
        """Counted and not yet reported, by day and domain, up to `through_day`."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT day, policy_domain,"
                " SUM(CASE WHEN result = '' THEN sessions ELSE 0 END),"
                " SUM(CASE WHEN result != '' THEN sessions ELSE 0 END)"
                " FROM tlsrpt_counts WHERE ? IS NULL OR day <= ?"
                " GROUP BY day, policy_domain ORDER BY day, policy_domain",
                (through_day, through_day)).fetchall()
        return [Pending(day, domain, int(ok), int(failed)) for day, domain, ok, failed in rows]

    def discard(self, day: str, policy_domain: str) -> int:
        """Forget a day's counts for a domain that asks for no report."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM tlsrpt_counts WHERE day = ? AND policy_domain = ?",
                (day, policy_domain))
            return int(cursor.rowcount)

    def file_report(self, day: str, policy_domain: str, *, end: float, now: float,
                    uris: Sequence[str], build: Builder) -> str | None:
        """Take the day's counts for the domain and file the report `build` makes of
        them, with a pending delivery to each URI, in one transaction. The period starts
        at the day's start, or where an earlier report of the same day ended (`send
        --include-today`); a report that ends before the day does records where, so the
        next one of that day starts there. None when nothing was counted."""
        with self.transaction() as conn:
            rows = conn.execute(
                "SELECT day, policy_domain, policy_type, policy_strings, mx_key, result,"
                " sending_ip, receiving_mx, receiving_ip, sessions FROM tlsrpt_counts"
                " WHERE day = ? AND policy_domain = ?", (day, policy_domain)).fetchall()
            if not rows:
                return None
            found = conn.execute("SELECT reported_until FROM tlsrpt_periods WHERE day = ?",
                                 (day,)).fetchone()
            start = float(found[0]) if found is not None else day_start(day)
            keys = [CountKey(*row[:9]) for row in rows]
            report_id, filename, body = build(keys, [int(row[9]) for row in rows], start, end)
            conn.execute("DELETE FROM tlsrpt_counts WHERE day = ? AND policy_domain = ?",
                         (day, policy_domain))
            conn.execute("INSERT INTO tlsrpt_reports VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (report_id, policy_domain, start, end, now, filename, body))
            conn.executemany(
                "INSERT INTO tlsrpt_deliveries (report_id, uri, state, next_at)"
                " VALUES (?, ?, 'pending', ?)", [(report_id, uri, now) for uri in uris])
            return report_id

    def close_day_at(self, day: str, until: float) -> None:
        """What was counted of `day` up to `until` is reported: later reports of that
        day start there."""
        with self.transaction() as conn:
            conn.execute("INSERT INTO tlsrpt_periods VALUES (?, ?) ON CONFLICT DO UPDATE"
                         " SET reported_until = excluded.reported_until", (day, until))

    def due(self, now: float, limit: int = 100) -> list[Delivery]:
        with self._lock:
            rows = self.conn.execute(
                "SELECT d.report_id, d.uri, r.policy_domain, r.start, r.end, r.created_at,"
                " d.attempts, r.filename, r.body FROM tlsrpt_deliveries d"
                " JOIN tlsrpt_reports r USING (report_id)"
                " WHERE d.state = 'pending' AND d.next_at <= ? ORDER BY d.next_at LIMIT ?",
                (now, limit)).fetchall()
        return [Delivery(rid, uri, domain, start, end, created, attempts, name, bytes(body))
                for rid, uri, domain, start, end, created, attempts, name, body in rows]

    def next_due(self) -> float | None:
        with self._lock:
            found = self.conn.execute(
                "SELECT MIN(next_at) FROM tlsrpt_deliveries WHERE state = 'pending'"
            ).fetchone()
        return None if found is None or found[0] is None else float(found[0])

    def delivered(self, report_id: str, uri: str, now: float) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE tlsrpt_deliveries SET state = 'sent', attempts = attempts"
                         " + 1, done_at = ?, last_error = NULL WHERE report_id = ?"
                         " AND uri = ?", (now, report_id, uri))

    def attempt_failed(self, report_id: str, uri: str, error: str, *,
                       retry_at: float | None, now: float) -> None:
        """One more failed attempt; `retry_at` None gives up on this destination."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE tlsrpt_deliveries SET attempts = attempts + 1, last_error = ?,"
                " state = ?, next_at = COALESCE(?, next_at), done_at = ?"
                " WHERE report_id = ? AND uri = ?",
                (error[:1000], "pending" if retry_at is not None else "failed", retry_at,
                 None if retry_at is not None else now, report_id, uri))

    def purge(self, before: float) -> int:
        """Reports filed before `before` whose destinations are all done (kept a while
        for `tls-report list`), and the day markers of days long gone."""
        with self.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM tlsrpt_reports WHERE created_at < ? AND NOT EXISTS (SELECT 1"
                " FROM tlsrpt_deliveries d WHERE d.report_id = tlsrpt_reports.report_id"
                " AND d.state = 'pending')", (before,))
            conn.execute("DELETE FROM tlsrpt_periods WHERE day < ?", (utc_day(before),))
            return int(cursor.rowcount)

    def reports(self, limit: int = 100) -> list[FiledReport]:
        """The latest reports filed, newest first, with their destinations."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT report_id, policy_domain, start, end, created_at FROM tlsrpt_reports"
                " ORDER BY created_at DESC, report_id LIMIT ?", (limit,)).fetchall()
            found = []
            for report_id, domain, start, end, created in rows:
                destinations = tuple(
                    (str(uri), str(state), int(attempts), error)
                    for uri, state, attempts, error in self.conn.execute(
                        "SELECT uri, state, attempts, last_error FROM tlsrpt_deliveries"
                        " WHERE report_id = ? ORDER BY uri", (report_id,)))
                found.append(FiledReport(report_id, domain, start, end, created, destinations))
        return found


# ------------------------------------------------------------------ the report's JSON

def report_json(*, organization_name: str, contact_info: str, report_id: str,
                start: float, end: float, policy_domain: str, rows: Sequence[CountKey],
                sessions: Sequence[int]) -> dict[str, Any]:
    """The report (RFC 8460 section 4) of one domain's counts over [start, end]."""
    policies: dict[tuple[str, str, str], dict[str, Any]] = {}
    details: dict[tuple[str, str, str], Counter[tuple[str, str, str, str]]] = {}
    for row, count in zip(rows, sessions, strict=True):
        key = (row.policy_type, row.policy_strings, row.mx_key)
        entry = policies.get(key)
        if entry is None:
            entry = policies[key] = {
                "policy": _policy(row, policy_domain),
                "summary": {"total-successful-session-count": 0,
                            "total-failure-session-count": 0}}
            details[key] = Counter()
        if row.result:
            entry["summary"]["total-failure-session-count"] += count
            details[key][(row.result, row.sending_ip, row.receiving_mx,
                          row.receiving_ip)] += count
        else:
            entry["summary"]["total-successful-session-count"] += count
    for key, entry in policies.items():
        failures = []
        for (result, sending_ip, mx, receiving_ip), count in sorted(details[key].items()):
            detail: dict[str, Any] = {"result-type": result}
            if sending_ip:
                detail["sending-mta-ip"] = sending_ip
            if mx:
                detail["receiving-mx-hostname"] = mx
            if receiving_ip:
                detail["receiving-ip"] = receiving_ip
            detail["failed-session-count"] = count
            failures.append(detail)
        if failures:
            entry["failure-details"] = failures
    return {
        "organization-name": organization_name,
        "date-range": {"start-datetime": rfc3339(start), "end-datetime": rfc3339(end)},
        "contact-info": contact_info,
        "report-id": report_id,
        "policies": [policies[key] for key in sorted(policies)],
    }


def _policy(row: CountKey, policy_domain: str) -> dict[str, Any]:
    policy: dict[str, Any] = {"policy-type": row.policy_type}
    strings = [str(s) for s in json.loads(row.policy_strings)]
    if strings:
        policy["policy-string"] = strings
    policy["policy-domain"] = policy_domain
    if row.policy_type == "tlsa" and row.mx_key:
        policy["mx-host"] = [row.mx_key]
    elif row.policy_type == "sts":
        # The MTA-STS policy's "mx:" lines (RFC 8461 3.2), as RFC 8460 4.4 asks.
        patterns = [s.partition(":")[2].strip() for s in strings
                    if s.partition(":")[0].strip().lower() == "mx"]
        if patterns:
            policy["mx-host"] = patterns
    return policy


def compress(report: dict[str, Any]) -> bytes:
    """The report as gzip (RFC 8460 5.2); mtime 0, so the same report is the same bytes."""
    return gzip.compress(json.dumps(report, separators=(",", ":")).encode(), mtime=0)


# ------------------------------------------------------------------ the collector

class TLSReportCollector:
    """Counts outcomes in memory and writes them to the store every FLUSH_SECONDS."""

    def __init__(self, store: TLSReportStore, *, clock: Callable[[], float] = time.time,
                 flush_every: float = FLUSH_SECONDS) -> None:
        self.store = store
        self._clock = clock
        self._flush_every = flush_every
        self._counts: Counter[CountKey] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()

    def record(self, outcome: TLSOutcome) -> None:
        """One attempted session. Never raises: reporting must not cost a delivery."""
        try:
            self._counts[CountKey.of(outcome, utc_day(self._clock()))] += 1
        except Exception:
            log.exception("TLS outcome not counted: %r", outcome)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_every)
            await self.flush()

    async def flush(self) -> None:
        """Write what was counted since the last flush; on failure it is kept for the
        next one."""
        async with self._flushing:
            if not self._counts:
                return
            counts, self._counts = self._counts, Counter()
            try:
                await asyncio.to_thread(self.store.add, list(counts.items()))
            except (sqlite3.Error, OSError) as exc:
                log.error("TLS report counts not written to %s, kept for the next try: %s",
                          self.store.path, exc)
                counts.update(self._counts)
                self._counts = counts

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
