"""An account's suppression list: add, remove, look up, list, import, export.

Blocking calls on the `SuppressionStore` of the configured store (the daemon's, or
one the CLI opens). Every call names a configured account, or none where a listing
may span them all; the file formats are in `suppression_files`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from smtprelay.config import Config
from smtprelay.operations import paging, suppression_files
from smtprelay.operations.errors import (
    BadAddress,
    BadReason,
    NotSuppressed,
    require_configured,
)
from smtprelay.policy.suppression import (
    REASONS,
    Reason,
    SuppressionEntry,
    SuppressionStore,
    address_problem,
    normalise,
)

# Entries fetched at a time by the listings that go through a whole list, so that a
# million of them never sit in memory at once.
_PAGE = 5000


@dataclass(frozen=True, slots=True)
class Added:
    entry: SuppressionEntry
    created: bool  # False: it was listed, and its reason and time are updated


@dataclass(frozen=True, slots=True)
class Imported:
    new: int
    updated: int


def check_account(config: Config, account: str | None) -> None:
    """NotConfigured unless `account` is None or a configured account."""
    if account is not None:
        require_configured(config, "account", account)


def add(store: SuppressionStore, config: Config, account: str, address: str,
        reason: str | None) -> Added:
    """Suppress `address` for `account` (SES's PutSuppressedDestination): adding a
    listed address again updates its reason and time."""
    check_account(config, account)
    problem = address_problem(address)
    if problem is not None:
        raise BadAddress(problem)
    if reason not in REASONS:
        raise BadReason
    created = store.add(account, address, reason)
    entry = store.get(account, address)
    assert entry is not None  # just written; nothing else removes entries
    return Added(entry, created)


def remove(store: SuppressionStore, config: Config, account: str, address: str) -> str:
    """Take `address` off the list; the address as it was listed (normalised)."""
    check_account(config, account)
    if not store.remove(account, address):
        raise NotSuppressed(account, address)
    return normalise(address)


def get(store: SuppressionStore, config: Config, account: str,
        address: str) -> SuppressionEntry:
    check_account(config, account)
    entry = store.get(account, address)
    if entry is None:
        raise NotSuppressed(account, address)
    return entry


def page(store: SuppressionStore, config: Config, account: str, *,
         reason: Reason | None = None, prefix: str | None = None, limit: int,
         after: str | None = None, since: float | None = None,
         until: float | None = None) -> paging.Page[SuppressionEntry]:
    """A page of an account's list in address order; `prefix` matches the start of
    the listed address (the domain in any case). `since` and `until` (SES's
    StartDate and EndDate) keep the entries last added within them; the store has no
    index by time, so such a page reads at most _PAGE entries and may come back short
    with a cursor."""
    check_account(config, account)

    def fetch(cursor: str | None, n: int) -> list[SuppressionEntry]:
        return store.list(account, reason=reason, limit=n,
                          after=(account, cursor) if cursor is not None else None,
                          prefix=normalise(prefix) if prefix else None)

    if since is None and until is None:
        return paging.page(lambda n: fetch(after, n), limit, key=lambda entry: entry.address)
    return paging.scan(
        fetch, after, limit, key=lambda entry: entry.address,
        keep=lambda entry: (since is None or entry.created_at >= since)
        and (until is None or entry.created_at <= until), budget=max(limit, _PAGE))


def entries(store: SuppressionStore, config: Config, account: str | None, *,
            reason: Reason | None = None, contains: str | None = None,
            limit: int | None = None) -> Iterator[SuppressionEntry]:
    """Every matching entry, by account then address, or the first `limit`; read a
    page at a time. `contains`: a case-insensitive substring of the address."""
    check_account(config, account)
    size = _PAGE if limit is None else max(1, min(limit, _PAGE))
    found = store.iterate(account, reason=reason, contains=contains, page=size)
    return found if limit is None else itertools.islice(found, max(0, limit))


def import_rows(store: SuppressionStore, config: Config, account: str,
                parsed: suppression_files.ParseResult,
                progress: Callable[[int], None] | None = None) -> Imported:
    """Put a parsed file's good rows on the account's list, in transactions of
    IMPORT_BATCH rows; `progress(rows done)` is called after each _PAGE rows (the
    console's progress bar)."""
    check_account(config, account)
    if progress is None:
        new = store.import_entries(account, parsed.rows.values())
        return Imported(new, len(parsed.rows) - new)
    rows = list(parsed.rows.values())
    new = 0
    for start in range(0, len(rows), _PAGE):
        new += store.import_entries(account, rows[start:start + _PAGE])
        progress(min(start + _PAGE, len(rows)))
    return Imported(new, len(rows) - new)


def export(store: SuppressionStore, config: Config, out: IO[str], fmt: str,
           account: str | None, *, reason: Reason | None = None,
           counted: Callable[[Iterator[SuppressionEntry]], Iterator[SuppressionEntry]]
           | None = None) -> int:
    """Write the list (or an account's) as `fmt` ("csv" or "json": NDJSON), in the
    form an import reads; how many entries. CSV has an account column when it
    holds several accounts. `counted` wraps the entries as they are written (a
    progress display)."""
    found = entries(store, config, account, reason=reason)
    if counted is not None:
        found = counted(found)
    if fmt == "csv":
        return suppression_files.write_csv(out, found, with_account=account is None)
    return suppression_files.write_ndjson(out, found)
