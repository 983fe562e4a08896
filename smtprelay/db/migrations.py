"""Versioned schemas: every database moves forward one numbered script at a time.

Each entry of a migration tuple moves a schema one version on and is never edited
once released; a database newer than the code is refused rather than guessed at.
A database with one owner (the spool, feedback.db) keeps its version in SQLite's
``user_version``. The state database is shared by several stores (credentials, quota
usage, pauses, suppression), each owning its tables, so each keeps its own version
as a row of ``schema_versions`` and migrates without knowing the others.
"""

from __future__ import annotations

import sqlite3


class SchemaTooNew(Exception):
    """The database was written by a newer smtprelay."""


def migrate(conn: sqlite3.Connection, migrations: tuple[str, ...], *, database: str,
            component: str | None = None) -> None:
    """Apply the scripts `conn` has not seen yet, each in its own transaction.

    The version is read inside the transaction that applies the next script, so two
    processes opening the same database at once never apply a script twice.
    """
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _version(conn, component)
            if version > len(migrations):
                what = f"{component} tables" if component else "schema"
                raise SchemaTooNew(
                    f"{database}: the {what} are at version {version}, newer than this "
                    f"smtprelay knows ({len(migrations)}); run the newer smtprelay or "
                    "restore a backup")
            if version == len(migrations):
                conn.execute("COMMIT")
                return
            for statement in filter(str.strip, migrations[version].split(";")):
                conn.execute(statement)
            _set_version(conn, component, version + 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def _version(conn: sqlite3.Connection, component: str | None) -> int:
    if component is None:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY,"
                 " version INTEGER NOT NULL) WITHOUT ROWID")
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?",
                       (component,)).fetchone()
    return 0 if row is None else int(row[0])


def _set_version(conn: sqlite3.Connection, component: str | None, version: int) -> None:
    if component is None:
        conn.execute(f"PRAGMA user_version={int(version)}")
    else:
        conn.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?)"
                     " ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                     (component, version))
