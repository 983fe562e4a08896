"""The per-account suppression list: addresses that bounced or complained are not mailed.

SES semantics (seed: "Using the account-level suppression list"): an entry is an
(account, address) pair with a reason, BOUNCE or COMPLAINT, and the time it was last
added; adding an address that is already listed updates its reason and time; a
message to a suppressed address is still accepted, only not delivered.

`SuppressionStore` is the interface the pipeline, the CLI and the admin API use;
`SQLiteSuppressionStore` keeps the list in the state database beside the credentials
(a Redis store for `store: redis` can implement the same protocol). The acceptance
path asks one question per message, `lookup(account, recipients)`, answered by one
indexed query however long the list is.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

from smtprelay.config import Config
from smtprelay.db import sqlite
from smtprelay.mail.address import Address

Reason = Literal["BOUNCE", "COMPLAINT"]
REASONS: tuple[Reason, ...] = ("BOUNCE", "COMPLAINT")

# Rows per transaction in import_entries: big enough that the commit's fsync is
# amortised (100,000 rows in about a second), small enough that the daemon, which may
# want to add an address after a bounce, waits at most a few tens of milliseconds.
IMPORT_BATCH = 10_000

# Bound on the host parameters of one `IN (...)` query; SQLite allows 32,766 since
# 3.32, older builds 999. A message has at most limits.max_recipients addresses.
_IN_CHUNK = 500

# Each entry moves these tables one version on; never edit a released entry. The
# first uses IF NOT EXISTS to adopt databases made before schemas were versioned.
_MIGRATIONS: tuple[str, ...] = ("""
CREATE TABLE IF NOT EXISTS suppression (
    account TEXT NOT NULL,
    address TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('BOUNCE', 'COMPLAINT')),
    created_at REAL NOT NULL,
    source_message_id TEXT,
    PRIMARY KEY (account, address)
) WITHOUT ROWID
""",
    # Why the address went on the list: the bounce's diagnostic (an MX's reply, a DSN's
    # Diagnostic-Code), kept so an operator can judge an entry before removing it.
    "ALTER TABLE suppression ADD COLUMN diagnostic TEXT",
)
# WITHOUT ROWID: the primary key is the only way rows are found, so the table itself
# is the (account, address) B-tree and a lookup reads one tree, not an index and then
# the table.

_COLUMNS = "account, address, reason, created_at, source_message_id, diagnostic"


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    account: str
    address: str  # normalised, see normalise()
    reason: Reason
    created_at: float  # last time the address was added (SES's LastUpdateTime)
    source_message_id: str | None
    diagnostic: str | None = None  # the bounce that put it there, when one did

    def as_json(self) -> dict[str, Any]:
        return {"account": self.account, "address": self.address, "reason": self.reason,
                "created_at": self.created_at, "source_message_id": self.source_message_id,
                "diagnostic": self.diagnostic}


@dataclass(frozen=True, slots=True)
class Suppress:
    """An address to put on its account's list, from a bounce or complaint of a message
    the relay sent (a reply at delivery, a DSN, an ARF report, an unsubscribe)."""

    account: str
    address: str
    reason: Reason
    message_id: str
    at: float
    configuration_set: str | None = None  # the message's: its suppression.reasons apply
    diagnostic: str | None = None


def reasons_for(config: Config, configuration_set: str | None) -> tuple[str, ...]:
    """The suppression reasons that apply to mail of `configuration_set`: the set's
    `suppression.reasons`, both for mail without a set (SES's account-level default).
    Both ways: a listed address with another reason is mailed, and a bounce or
    complaint with another reason does not list the address."""
    if configuration_set is None:
        return REASONS
    settings = config.configuration_sets.get(configuration_set)
    return settings.suppression.reasons if settings is not None else REASONS


def normalise(address: str) -> str:
    """The form addresses are stored and looked up in.

    The domain is case-insensitive (and may carry the root's trailing dot); the local
    part is, by RFC 5321, the receiving system's business, so `A@x` and `a@x` stay
    two addresses. A string without `@` is returned stripped, unchanged otherwise.
    """
    address = address.strip()
    return str(Address.parse(address)) if "@" in address else address


def address_problem(address: str) -> str | None:
    """Why `address` cannot be a suppression list entry, or None if it can."""
    address = address.strip()
    if "@" not in address:
        return f"{address!r} is not an email address (no @)"
    local, _, domain = address.rpartition("@")
    if not local:
        return f"{address!r} has an empty local part"
    if not domain.rstrip("."):
        return f"{address!r} has an empty domain"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in address):
        return f"{address!r} contains white space or control characters"
    if len(address) > 320:
        return f"address longer than 320 characters ({len(address)})"
    return None


def parse_reason(value: str) -> Reason | None:
    """BOUNCE or COMPLAINT in any case, else None."""
    upper = value.strip().upper()
    return upper if upper in REASONS else None


class SuppressionStore(Protocol):
    """What the relay needs from a suppression list, whatever keeps it."""

    def lookup(self, account: str, addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        """The suppressed ones among `addresses`, keyed by the address as passed in."""

    # Whether lookup_on_loop runs on the event loop (batched with the other messages'
    # look-ups) rather than in a thread: then the acceptance path calls it instead of
    # doing the look-up in its thread hop.
    looks_up_on_loop: bool

    async def lookup_on_loop(self, account: str,
                             addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        """lookup() without a thread, where the store can (looks_up_on_loop)."""

    async def close_on_loop(self) -> None:
        """Close what lookup_on_loop opened (in the loop that used it)."""

    def add(self, account: str, address: str, reason: Reason, *,
            source_message_id: str | None = None, created_at: float | None = None,
            diagnostic: str | None = None) -> bool:
        """Add or update an entry; True if the address was not listed before."""

    def remove(self, account: str, address: str) -> bool:
        """True if the address was listed."""

    def get(self, account: str, address: str) -> SuppressionEntry | None: ...

    def list(self, account: str | None = None, *, reason: Reason | None = None,
             limit: int | None = None, after: tuple[str, str] | None = None,
             contains: str | None = None,
             prefix: str | None = None) -> builtins.list[SuppressionEntry]:
        """Entries ordered by (account, address), those after `after` (keyset paging);
        `prefix` matches the start of the stored (normalised) address."""

    def iterate(self, account: str | None = None, *, reason: Reason | None = None,
                contains: str | None = None, page: int = 5000) -> Iterator[SuppressionEntry]:
        """Every matching entry, page by page (exports)."""

    def count(self, account: str | None = None) -> int: ...

    def import_entries(self, account: str,
                       entries: Iterable[tuple[str, Reason, float | None]]) -> int:
        """Bulk upsert of (address, reason, created_at or None for now); returns how
        many addresses were new."""

    def open(self) -> None: ...

    def close(self) -> None: ...


class SQLiteSuppressionStore(sqlite.Store):
    """The suppression list in the state database (config.state_path).

    Safe from several processes at once (the daemon and the CLI): WAL lets the daemon's
    lookups read while an import writes, and busy_timeout makes writers queue instead
    of failing. Within one process a lock serialises use of the one connection, which
    the pipeline calls from worker threads.
    """

    COMPONENT = "suppression"
    MIGRATIONS = _MIGRATIONS

    # -- the acceptance path ---------------------------------------------------------

    looks_up_on_loop = False  # a SQLite read is cheaper in the caller's one thread hop

    async def lookup_on_loop(self, account: str,
                             addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        return await asyncio.to_thread(self.lookup, account, addresses)

    async def close_on_loop(self) -> None:
        """Nothing was opened on a loop."""

    def lookup(self, account: str, addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        wanted = by_key(addresses)
        if not wanted:
            return {}
        keys = builtins.list(wanted)
        found: dict[str, SuppressionEntry] = {}
        with self._lock:
            conn = self.conn
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start:start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                # One query per message: the primary key answers `account = ? AND
                # address IN (...)` with one B-tree probe per address.
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM suppression"  # noqa: S608 - only ? marks
                    f" WHERE account = ? AND address IN ({marks})", (account, *chunk),
                ).fetchall()
                for row in rows:
                    entry = _entry(row)
                    for original in wanted[entry.address]:
                        found[original] = entry
        return found

    # -- single entries ----------------------------------------------------------------

    def add(self, account: str, address: str, reason: Reason, *,
            source_message_id: str | None = None, created_at: float | None = None,
            diagnostic: str | None = None) -> bool:
        key = checked_key(address, reason)
        when = time.time() if created_at is None else created_at
        # IMMEDIATE: the existence check and the write see the same state even when
        # the CLI and the daemon add the same address at once.
        with self.transaction() as conn:
            existed = conn.execute(
                "SELECT 1 FROM suppression WHERE account = ? AND address = ?",
                (account, key)).fetchone() is not None
            conn.execute(_UPSERT, (account, key, reason, when, source_message_id, diagnostic))
        return not existed

    def remove(self, account: str, address: str) -> bool:
        with self._lock:
            cursor = self.conn.execute(
                "DELETE FROM suppression WHERE account = ? AND address = ?",
                (account, normalise(address)))
            return cursor.rowcount > 0

    def get(self, account: str, address: str) -> SuppressionEntry | None:
        with self._lock:
            row = self.conn.execute(
                f"SELECT {_COLUMNS} FROM suppression WHERE account = ? AND address = ?",  # noqa: S608
                (account, normalise(address))).fetchone()
        return _entry(row) if row else None

    # -- listings -----------------------------------------------------------------------

    def list(self, account: str | None = None, *, reason: Reason | None = None,
             limit: int | None = None, after: tuple[str, str] | None = None,
             contains: str | None = None,
             prefix: str | None = None) -> builtins.list[SuppressionEntry]:
        where: builtins.list[str] = []
        params: builtins.list[object] = []
        if account is not None:
            where.append("account = ?")
            params.append(account)
        if after is not None:
            # A row-value comparison, which SQLite answers from the primary key, so a
            # page costs the same at the end of a million entries as at the start.
            where.append("(account, address) > (?, ?)")
            params.extend(after)
        if reason is not None:
            where.append("reason = ?")
            params.append(reason)
        if prefix:
            # A range on the key, so that with an account it is a B-tree range scan
            # (U+10FFFF sorts after every other character in UTF-8); the substr test
            # keeps the rare address with U+10FFFF itself exact.
            where.append("address >= ? AND address < ? AND substr(address, 1, ?) = ?")
            params.extend((prefix, prefix + "\U0010ffff", len(prefix), prefix))
        if contains:
            # Case-insensitive substring, like grepping SES's listing; instr rather
            # than LIKE so that % and _ in the text are not wildcards.
            where.append("instr(lower(address), ?) > 0")
            params.append(contains.lower())
        sql = f"SELECT {_COLUMNS} FROM suppression"  # noqa: S608 - only ? marks
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY account, address"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(max(0, limit))
        with self._lock:
            rows = self.conn.execute(sql, params).fetchall()
        return [_entry(row) for row in rows]

    def iterate(self, account: str | None = None, *, reason: Reason | None = None,
                contains: str | None = None, page: int = 5000) -> Iterator[SuppressionEntry]:
        """Every matching entry, fetched page by page so memory stays flat (exports)."""
        return paged(self, account, reason=reason, contains=contains, page=page)

    def count(self, account: str | None = None) -> int:
        with self._lock:
            if account is None:
                row = self.conn.execute("SELECT count(*) FROM suppression").fetchone()
            else:
                row = self.conn.execute(
                    "SELECT count(*) FROM suppression WHERE account = ?", (account,)).fetchone()
        return int(row[0])

    # -- bulk ---------------------------------------------------------------------------

    def import_entries(self, account: str,
                       entries: Iterable[tuple[str, Reason, float | None]]) -> int:
        """Upsert in transactions of IMPORT_BATCH rows; returns how many were new.

        Within a batch the last row for an address wins. The caller validates rows
        (address_problem, parse_reason) to report them with line numbers; this raises
        ValueError on a bad one, after committing the batches before it.
        """
        return in_batches(entries, lambda batch: self._import_batch(account, batch))

    def _import_batch(self, account: str, batch: dict[str, tuple[Reason, float]]) -> int:
        # Sorted keys turn random B-tree inserts into mostly sequential ones: each
        # page is visited once per batch instead of once per row.
        keys = sorted(batch)
        with self.transaction() as conn:
            existing = 0
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start:start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                existing += conn.execute(
                    "SELECT count(*) FROM suppression"  # noqa: S608 - only ? marks
                    f" WHERE account = ? AND address IN ({marks})",
                    (account, *chunk)).fetchone()[0]
            conn.executemany(_UPSERT, ((account, key, *batch[key], None, None)
                                       for key in keys))
        return len(keys) - int(existing)


def checked_key(address: str, reason: str) -> str:
    """The key an entry for `address` is stored under; ValueError naming what is wrong
    with the address or the reason."""
    problem = address_problem(address)
    if problem is not None:
        raise ValueError(problem)
    if reason not in REASONS:
        raise ValueError(f"reason must be BOUNCE or COMPLAINT, not {reason!r}")
    return normalise(address)


def by_key(addresses: Sequence[str]) -> dict[str, builtins.list[str]]:
    """A lookup's addresses by the key each is stored under (several may share one)."""
    wanted: dict[str, builtins.list[str]] = {}
    for address in addresses:
        wanted.setdefault(normalise(address), []).append(address)
    return wanted


def paged(store: SuppressionStore, account: str | None, *, reason: Reason | None,
          contains: str | None, page: int) -> Iterator[SuppressionEntry]:
    """Every entry store.list() matches, a page at a time (keyset paging)."""
    after: tuple[str, str] | None = None
    while True:
        rows = store.list(account, reason=reason, limit=page, after=after, contains=contains)
        yield from rows
        if len(rows) < page:
            return
        after = (rows[-1].account, rows[-1].address)


def in_batches(entries: Iterable[tuple[str, Reason, float | None]],
               write: Callable[[dict[str, tuple[Reason, float]]], int]) -> int:
    """An import's entries checked, normalised and handed to `write` IMPORT_BATCH at a
    time (the last entry for an address in a batch wins); the sum of what `write`
    says was new. A bad entry raises ValueError after the batches before it."""
    now = time.time()
    new = 0
    batch: dict[str, tuple[Reason, float]] = {}
    for address, reason, created_at in entries:
        if reason not in REASONS:
            raise ValueError(f"reason must be BOUNCE or COMPLAINT, not {reason!r}")
        if "@" not in address:
            raise ValueError(f"{address!r} is not an email address (no @)")
        batch[normalise(address)] = (reason, now if created_at is None else created_at)
        if len(batch) >= IMPORT_BATCH:
            new += write(batch)
            batch = {}
    if batch:
        new += write(batch)
    return new


# Re-adding updates the reason and time, as SES's PutSuppressedDestination does.
_UPSERT = (
    "INSERT INTO suppression (account, address, reason, created_at, source_message_id,"
    " diagnostic) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (account, address) DO UPDATE SET reason = excluded.reason,"
    " created_at = excluded.created_at, source_message_id = excluded.source_message_id,"
    " diagnostic = excluded.diagnostic"
)


def _entry(row: tuple[object, ...]) -> SuppressionEntry:
    return SuppressionEntry(
        account=str(row[0]), address=str(row[1]), reason=cast(Reason, row[2]),
        created_at=float(cast(float, row[3])),
        source_message_id=None if row[4] is None else str(row[4]),
        diagnostic=None if row[5] is None else str(row[5]),
    )
