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
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from smtprelay.db import sqlite
from smtprelay.infra import metrics

log = logging.getLogger("smtprelay.pauses")

Scope = Literal["set", "account"]
Reason = Literal["manual", "reputation"]
REASONS: tuple[Reason, ...] = ("manual", "reputation")
REFRESH_SECONDS = 0.5
_WHAT: dict[str, str] = {"set": "configuration set", "account": "account"}
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
    """A pause in force: `name` is the configuration set or the account, as `scope` says."""

    scope: Scope
    name: str
    reason: str  # one of REASONS (a newer smtprelay may write others)
    detail: str
    since: float
    by: str

    @classmethod
    def new(cls, scope: Scope, name: str, reason: str, detail: str, by: str,
            now: float | None) -> Pause:
        """A pause to make (ValueError for an unknown reason; the detail cut to
        MAX_DETAIL characters)."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, not {reason!r}")
        return cls(scope, name, reason, detail[:MAX_DETAIL],
                   time.time() if now is None else now, by)

    def as_json(self) -> dict[str, Any]:
        # The key says what `name` is, so an account's pause never claims to be a set's.
        return {_JSON_KEYS[self.scope]: self.name, "reason": self.reason,
                "detail": self.detail, "since": self.since, "by": self.by}


_JSON_KEYS: dict[str, str] = {"set": "configuration_set", "account": "account"}


def describe(scope: Scope, name: str) -> str:
    """"configuration set 'news'" or "account 'acme'": how messages name a pause's target."""
    return f"{_WHAT[scope]} {name!r}"


class AlreadyPaused(Exception):
    def __init__(self, pause: Pause) -> None:
        super().__init__(f"{describe(pause.scope, pause.name)} is already paused "
                         f"({pause.reason}, by {pause.by})")
        self.pause = pause


class PauseStore(Protocol):
    """Where pauses are kept: the state database, or Redis for a cluster of nodes
    (policy.pauses_redis). Blocking calls; `scope` picks sets (the default) or
    accounts."""

    def pause(self, name: str, *, reason: Reason = "manual", detail: str = "", by: str,
              now: float | None = None, scope: Scope = "set") -> Pause: ...

    def resume(self, name: str, *, scope: Scope = "set",
               now: float | None = None) -> Pause | None: ...

    def get(self, name: str, scope: Scope = "set") -> Pause | None: ...

    def all(self, scope: Scope = "set") -> dict[str, Pause]: ...

    def resumes(self) -> dict[tuple[str, str], float]: ...

    @property
    def where(self) -> str:
        """Where the pauses are, for logs (a file, or a Redis URL without password)."""

    def open(self) -> None: ...

    def close(self) -> None: ...


# scope -> (table, key column); fixed strings, never from input.
_TABLES: dict[str, tuple[str, str]] = {"set": ("set_pauses", "configuration_set"),
                                       "account": ("account_pauses", "account")}


class SQLitePauseStore(sqlite.Store):
    """The paused sets and accounts in the state database (config.state_path);
    blocking calls. `scope` picks sets (the default) or accounts."""

    COMPONENT = "pauses"
    MIGRATIONS = _MIGRATIONS

    @property
    def where(self) -> str:
        return str(self.path)

    def pause(self, name: str, *, reason: Reason = "manual", detail: str = "", by: str,
              now: float | None = None, scope: Scope = "set") -> Pause:
        """Pause a set (or an account); AlreadyPaused (with the pause in force) if it is."""
        pause = Pause.new(scope, name, reason, detail, by, now)
        table, key = _TABLES[scope]
        with self.transaction() as conn:
            existing = self._get(name, scope)
            if existing is None:
                conn.execute(
                    f"INSERT INTO {table} ({key}, reason, detail, since,"  # noqa: S608
                    " paused_by) VALUES (?,?,?,?,?)",
                    (pause.name, pause.reason, pause.detail, pause.since, pause.by))
        if existing is not None:
            raise AlreadyPaused(existing)
        return pause

    def resume(self, name: str, *, scope: Scope = "set",
               now: float | None = None) -> Pause | None:
        """Lift a set's (or account's) pause; the pause lifted, or None if it was not
        paused. A lifted pause's time is remembered for the reputation guard."""
        table, key = _TABLES[scope]
        with self.transaction() as conn:
            existing = self._get(name, scope)
            conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (name,))  # noqa: S608
            if existing is not None:
                conn.execute(
                    "INSERT INTO pause_resumes (scope, name, resumed_at) VALUES (?,?,?)"
                    " ON CONFLICT (scope, name) DO UPDATE SET resumed_at = excluded."
                    "resumed_at", (scope, name, time.time() if now is None else now))
        return existing

    def get(self, name: str, scope: Scope = "set") -> Pause | None:
        with self._lock:
            return self._get(name, scope)

    def _get(self, name: str, scope: Scope = "set") -> Pause | None:
        table, key = _TABLES[scope]
        row = self.conn.execute(
            f"SELECT {key}, reason, detail, since, paused_by FROM {table}"  # noqa: S608
            f" WHERE {key} = ?", (name,)).fetchone()
        return None if row is None else _pause(scope, row)

    def all(self, scope: Scope = "set") -> dict[str, Pause]:
        table, key = _TABLES[scope]
        with self._lock:
            rows = self.conn.execute(
                f"SELECT {key}, reason, detail, since, paused_by FROM {table}"  # noqa: S608
                f" ORDER BY {key}").fetchall()
        return {row[0]: _pause(scope, row) for row in rows}

    def resumes(self) -> dict[tuple[str, str], float]:
        """(scope, name) -> when its last pause was lifted."""
        with self._lock:
            rows = self.conn.execute(
                "SELECT scope, name, resumed_at FROM pause_resumes").fetchall()
        return {(str(row[0]), str(row[1])): float(row[2]) for row in rows}


def _pause(scope: Scope, row: tuple[Any, ...]) -> Pause:
    return Pause(scope=scope, name=str(row[0]), reason=str(row[1]), detail=str(row[2]),
                 since=float(row[3]), by=str(row[4]))


_SCOPES: tuple[Scope, ...] = ("set", "account")


class PausedSets(Mapping[str, Pause]):
    """The daemon's in-memory copy of the paused sets: `name in paused` costs a dict
    lookup. Changes through `pause`/`resume` apply at once; changes by other
    processes (the CLI) when `refresh` next runs (`run` does every REFRESH_SECONDS)."""

    def __init__(self, store: PauseStore) -> None:
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

    def all(self, scope: Scope = "set") -> Mapping[str, Pause]:
        """The pauses in force, from memory: the store's call, so that the operations
        layer takes either."""
        return self._pauses if scope == "set" else self.accounts

    def _replace(self, scope: Scope, pauses: dict[str, Pause]) -> None:
        # One assignment: readers see the old dict or the new, never one half-changed.
        if scope == "set":
            self._pauses = pauses
            metrics.CONFIGURATION_SETS_PAUSED.set(len(pauses))
        else:
            self.accounts = pauses

    def refresh(self) -> None:
        """Read the list again (blocking: call in a thread)."""
        with self._changing:
            for scope in _SCOPES:
                current = self.store.all(scope)
                known = self.all(scope)
                for name in current.keys() - known.keys():
                    pause = current[name]
                    log.info("%s %s paused (%s by %s%s)", _WHAT[scope], name, pause.reason,
                             pause.by, f": {pause.detail}" if pause.detail else "")
                for name in known.keys() - current.keys():
                    log.info("%s %s resumed", _WHAT[scope], name)
                self._replace(scope, current)

    def pause(self, name: str, *, reason: Reason = "manual", detail: str = "", by: str,
              scope: Scope = "set") -> Pause:
        """Blocking (a thread): pause a set (or an account) in the store and here."""
        with self._changing:
            pause = self.store.pause(name, reason=reason, detail=detail, by=by, scope=scope)
            self._replace(scope, {**self.all(scope), name: pause})
        log.info("%s %s paused (%s by %s%s)", _WHAT[scope], name, reason, by,
                 f": {detail}" if detail else "")
        return pause

    def resume(self, name: str, *, scope: Scope = "set") -> Pause | None:
        """Blocking (a thread): lift a set's (or an account's) pause in the store and here."""
        with self._changing:
            lifted = self.store.resume(name, scope=scope)
            self._replace(scope, {k: v for k, v in self.all(scope).items() if k != name})
        if lifted is not None:
            log.info("%s %s resumed", _WHAT[scope], name)
        return lifted

    def pause_account(self, account: str, *, reason: Reason = "manual", detail: str = "",
                      by: str) -> Pause:
        return self.pause(account, reason=reason, detail=detail, by=by, scope="account")

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
                              self.store.where, exc)
                failing = True
            else:
                if failing:
                    log.info("paused configuration sets read again from %s", self.store.where)
                failing = False
