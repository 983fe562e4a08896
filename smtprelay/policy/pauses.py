"""Configuration sets paused at run time: the durable list, and the daemon's view of it.

SES lets an operator (and its reputation alarms) stop a configuration set's sending
without touching its definition (PutConfigurationSetSendingOptions); a paused set's
new mail is refused with ``554 5.7.1 Sending paused for this configuration set``
at the end of DATA, exactly as with ``sending_enabled: false`` in the config. Mail
already queued keeps going: the pause is about accepting, like SES's.

A pause records why: ``reason`` is ``manual`` (the admin API or ``smtprelay sets
pause``) or ``reputation`` (the reputation guard: ``detail`` then holds the rate
that tripped it), with ``detail`` (free text), ``since`` and ``by`` (who: "cli",
"api 192.0.2.7", "reputation-guard").

Accounts can be paused too (the reputation guard pauses an account whose own rates
cross the pause threshold, ``smtprelay accounts pause`` an operator): all of the
account's new mail is then refused with ``554 5.7.1 Sending paused for this account``,
whatever its set. Every resume is remembered (``pause_resumes``), so the reputation
guard judges a resumed set or account only on mail counted after it, as SES "only
consider[s] bounces received after your changes were implemented".

`SQLitePauseStore` keeps the list in the state database, shared by the daemon and
the CLI. `PausedSets` is the daemon's copy in memory, which the acceptance path
reads without any I/O; it reloads the (tiny) table every `REFRESH_SECONDS` in a
thread, so a pause made by the CLI in another process takes effect within about a
second, and at once on SIGHUP or when made through the daemon's own admin API.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from smtprelay.db import sqlite
from smtprelay.infra import metrics

log = logging.getLogger("smtprelay.pauses")

Scope = Literal["set", "account"]
Reason = Literal["manual", "reputation"]
REASONS: tuple[Reason, ...] = ("manual", "reputation")
REFRESH_SECONDS = 0.5
MAX_DETAIL = 1000  # characters of free text kept with a pause

# Each entry moves these tables one version on; never edit a released entry. The
# first uses IF NOT EXISTS to adopt databases made before schemas were versioned.
_MIGRATIONS: tuple[str, ...] = ("""
CREATE TABLE IF NOT EXISTS set_pauses (
    configuration_set TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    paused_by TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS account_pauses (
    account TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    paused_by TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pause_resumes (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    resumed_at REAL NOT NULL,
    PRIMARY KEY (scope, name)
) WITHOUT ROWID
""",)


@dataclass(frozen=True, slots=True)
class Pause:
    configuration_set: str
    reason: str  # one of REASONS (a newer smtprelay may write others)
    detail: str
    since: float
    by: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class AlreadyPaused(Exception):
    def __init__(self, pause: Pause, scope: Scope = "set") -> None:
        what = "configuration set" if scope == "set" else "account"
        super().__init__(f"{what} {pause.configuration_set!r} is already paused "
                         f"({pause.reason}, by {pause.by})")
        self.pause = pause


# scope -> (table, key column); fixed strings, never from input.
_TABLES: dict[str, tuple[str, str]] = {"set": ("set_pauses", "configuration_set"),
                                       "account": ("account_pauses", "account")}


class SQLitePauseStore(sqlite.Store):
    """The paused sets and accounts in the state database (config.state_path);
    blocking calls. `scope` picks sets (the default) or accounts."""

    COMPONENT = "pauses"
    MIGRATIONS = _MIGRATIONS

    def pause(self, configuration_set: str, *, reason: Reason = "manual", detail: str = "",
              by: str, now: float | None = None, scope: Scope = "set") -> Pause:
        """Pause a set (or an account); AlreadyPaused (with the pause in force) if it is."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
        pause = Pause(configuration_set, reason, detail[:MAX_DETAIL],
                      time.time() if now is None else now, by)
        table, key = _TABLES[scope]
        with self.transaction() as conn:
            existing = self._get(configuration_set, scope)
            if existing is None:
                conn.execute(
                    f"INSERT INTO {table} ({key}, reason, detail, since,"  # noqa: S608
                    " paused_by) VALUES (?,?,?,?,?)",
                    (pause.configuration_set, pause.reason, pause.detail, pause.since,
                     pause.by))
        if existing is not None:
            raise AlreadyPaused(existing, scope)
        return pause

    def resume(self, configuration_set: str, *, scope: Scope = "set",
               now: float | None = None) -> Pause | None:
        """Lift a set's (or account's) pause; the pause lifted, or None if it was not
        paused. A lifted pause's time is remembered for the reputation guard."""
        table, key = _TABLES[scope]
        with self.transaction() as conn:
            existing = self._get(configuration_set, scope)
            conn.execute(f"DELETE FROM {table} WHERE {key} = ?",  # noqa: S608
                         (configuration_set,))
            if existing is not None:
                conn.execute(
                    "INSERT INTO pause_resumes (scope, name, resumed_at) VALUES (?,?,?)"
                    " ON CONFLICT (scope, name) DO UPDATE SET resumed_at = excluded."
                    "resumed_at", (scope, configuration_set,
                                   time.time() if now is None else now))
        return existing

    def get(self, configuration_set: str, scope: Scope = "set") -> Pause | None:
        with self._lock:
            return self._get(configuration_set, scope)

    def _get(self, configuration_set: str, scope: Scope = "set") -> Pause | None:
        table, key = _TABLES[scope]
        row = self.conn.execute(
            f"SELECT {key}, reason, detail, since, paused_by FROM {table}"  # noqa: S608
            f" WHERE {key} = ?", (configuration_set,)).fetchone()
        return None if row is None else _pause(row)

    def all(self, scope: Scope = "set") -> dict[str, Pause]:
        table, key = _TABLES[scope]
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {key}, reason, detail, since, paused_by FROM {table}"  # noqa: S608
                f" ORDER BY {key}").fetchall()
        return {row[0]: _pause(row) for row in rows}

    def resumes(self) -> dict[tuple[str, str], float]:
        """(scope, name) -> when its last pause was lifted."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT scope, name, resumed_at FROM pause_resumes").fetchall()
        return {(str(row[0]), str(row[1])): float(row[2]) for row in rows}


def _pause(row: tuple[Any, ...]) -> Pause:
    return Pause(configuration_set=str(row[0]), reason=str(row[1]), detail=str(row[2]),
                 since=float(row[3]), by=str(row[4]))


class PausedSets(Mapping[str, Pause]):
    """The daemon's in-memory copy of the paused sets: `name in paused` costs a dict
    lookup. Changes through `pause`/`resume` apply at once; changes by other
    processes (the CLI) when `refresh` next runs (`run` does every REFRESH_SECONDS)."""

    def __init__(self, store: SQLitePauseStore) -> None:
        self.store = store
        self._pauses: dict[str, Pause] = {}
        # The paused accounts (`account in paused.accounts`), kept the same way.
        self.accounts: Mapping[str, Pause] = {}
        # Serialises the threads that change `_pauses` (refreshes, API changes), so a
        # refresh that read the table just before a pause cannot undo it; readers
        # take no lock (they see one dict or the next).
        self._changing = threading.Lock()

    def __getitem__(self, name: str) -> Pause:
        return self._pauses[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pauses)

    def __len__(self) -> int:
        return len(self._pauses)

    def __contains__(self, name: object) -> bool:
        return name in self._pauses

    def refresh(self) -> None:
        """Read the list again (blocking: call in a thread)."""
        with self._changing:
            current = self.store.all()
            for name in current.keys() - self._pauses.keys():
                pause = current[name]
                log.info("configuration set %s paused (%s by %s%s)", name, pause.reason,
                         pause.by, f": {pause.detail}" if pause.detail else "")
            for name in self._pauses.keys() - current.keys():
                log.info("configuration set %s resumed", name)
            self._pauses = current  # one assignment: readers see the old dict or the new
            metrics.CONFIGURATION_SETS_PAUSED.set(len(current))
            accounts = self.store.all("account")
            for name in accounts.keys() - self.accounts.keys():
                pause = accounts[name]
                log.info("account %s paused (%s by %s%s)", name, pause.reason, pause.by,
                         f": {pause.detail}" if pause.detail else "")
            for name in self.accounts.keys() - accounts.keys():
                log.info("account %s resumed", name)
            self.accounts = accounts

    def pause(self, configuration_set: str, *, reason: Reason = "manual", detail: str = "",
              by: str) -> Pause:
        """Blocking (a thread): pause in the store and here."""
        with self._changing:
            pause = self.store.pause(configuration_set, reason=reason, detail=detail, by=by)
            self._pauses = {**self._pauses, configuration_set: pause}
            metrics.CONFIGURATION_SETS_PAUSED.set(len(self._pauses))
        log.info("configuration set %s paused (%s by %s%s)", configuration_set, reason, by,
                 f": {detail}" if detail else "")
        return pause

    def resume(self, configuration_set: str) -> Pause | None:
        """Blocking (a thread): lift the pause in the store and here."""
        with self._changing:
            lifted = self.store.resume(configuration_set)
            self._pauses = {k: v for k, v in self._pauses.items() if k != configuration_set}
            metrics.CONFIGURATION_SETS_PAUSED.set(len(self._pauses))
        if lifted is not None:
            log.info("configuration set %s resumed", configuration_set)
        return lifted

    def pause_account(self, account: str, *, reason: Reason = "manual", detail: str = "",
                      by: str) -> Pause:
        """Blocking (a thread): pause an account's sending in the store and here."""
        with self._changing:
            pause = self.store.pause(account, reason=reason, detail=detail, by=by,
                                     scope="account")
            self.accounts = {**self.accounts, account: pause}
        log.info("account %s paused (%s by %s%s)", account, reason, by,
                 f": {detail}" if detail else "")
        return pause

    def resume_account(self, account: str) -> Pause | None:
        """Blocking (a thread): lift an account's pause in the store and here."""
        with self._changing:
            lifted = self.store.resume(account, scope="account")
            self.accounts = {k: v for k, v in self.accounts.items() if k != account}
        if lifted is not None:
            log.info("account %s resumed", account)
        return lifted

    async def run(self, interval: float = REFRESH_SECONDS) -> None:
        """Refresh forever (a task the daemon cancels at stop)."""
        failing = False
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:
                # Keep the last list: a set paused stays paused rather than sending
                # while the state database is unreadable.
                if not failing:
                    log.error("paused configuration sets not re-read from %s: %s",
                              self.store.path, exc)
                failing = True
            else:
                if failing:
                    log.info("paused configuration sets read again from %s", self.store.path)
                failing = False
