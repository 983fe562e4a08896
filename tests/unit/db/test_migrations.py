"""Versioned schemas: the state database's stores each migrate their own tables,
databases made before versioning are adopted, and a newer schema is refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from smtprelay.auth.api_keys import SqliteApiKeyStore
from smtprelay.auth.credentials import CredentialStore
from smtprelay.db import sqlite
from smtprelay.db.migrations import SchemaTooNew, migrate
from smtprelay.policy.contacts import SQLiteContactStore
from smtprelay.policy.pauses import SQLitePauseStore
from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.state.usage import SQLiteUsageStore


def versions(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT component, version FROM schema_versions"))


def test_every_store_of_the_state_database_records_its_own_version(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    stores = [CredentialStore(path), SQLiteSuppressionStore(path), SQLitePauseStore(path),
              SQLiteContactStore(path), SqliteApiKeyStore(path, tmp_path / "api-keys.key")]
    for store in stores:
        store.open()
    usage = SQLiteUsageStore(path)
    usage.open()
    usage.close()
    for store in stores:
        store.close()
    assert versions(path) == {"credentials": 1, "suppression": 2, "pauses": 1, "quota": 1,
                              "contacts": 1, "api_keys": 1}


def test_a_state_database_from_before_versioning_is_adopted_with_its_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:  # what an unversioned smtprelay created
        conn.execute("CREATE TABLE suppression (account TEXT NOT NULL, address TEXT NOT NULL,"
                     " reason TEXT NOT NULL CHECK (reason IN ('BOUNCE', 'COMPLAINT')),"
                     " created_at REAL NOT NULL, source_message_id TEXT,"
                     " PRIMARY KEY (account, address)) WITHOUT ROWID")
        conn.execute("INSERT INTO suppression VALUES ('acme', 'gone@example.net', 'BOUNCE',"
                     " 1.0, NULL)")
    store = SQLiteSuppressionStore(path)
    try:
        assert set(store.lookup("acme", ["gone@example.net"])) == {"gone@example.net"}
    finally:
        store.close()
    assert versions(path) == {"suppression": 2}  # adopted, then the diagnostic column added


def test_a_newer_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLitePauseStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_versions SET version = 9 WHERE component = 'pauses'")
    with pytest.raises(SchemaTooNew, match=r"state\.db: the pauses tables are at version 9, "
                                           r"newer than this smtprelay knows \(1\)"):
        SQLitePauseStore(path).open()


def test_two_connections_migrating_at_once_apply_each_script_once(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    # Not idempotent: a script run twice would insert its row twice.
    scripts = ("CREATE TABLE applied (n INTEGER)", "INSERT INTO applied VALUES (2)",
               "INSERT INTO applied VALUES (3)")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn = sqlite.connect(path)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()  # the others must not wait for this one for ever
            return
        try:
            barrier.wait(timeout=30)
            migrate(conn, scripts, database=str(path), component="race")
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sqlite3.connect(path) as conn:
        assert sorted(n for (n,) in conn.execute("SELECT n FROM applied")) == [2, 3]
    assert versions(path) == {"race": 3}


def test_connections_opening_a_new_database_together_all_get_it(tmp_path: Path) -> None:
    """Switching a new file to WAL needs an exclusive lock that SQLite refuses at once,
    busy timeout or not: four connections opening a fresh database together failed one
    of them about once in 25 rounds before connect() waited that out."""
    errors: list[BaseException] = []
    for round_number in range(200):
        path = tmp_path / f"fresh-{round_number}.db"
        barrier = threading.Barrier(4)

        def opener(path: Path = path, barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(timeout=30)
                sqlite.connect(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=opener) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


def test_the_cli_reports_a_newer_state_database_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = tmp_path / "smtprelay.yaml"
    config.write_text(
        "server: {hostname: relay.test, data_dir: " + str(data) + "}\n"
        "listeners: [{name: s, address: 127.0.0.1, port: 2525, tls: none}]\n"
        "accounts: {acme: {identities: [example.com]}}\n", encoding="utf-8")
    store = CredentialStore(data / "state.db")
    store.open()
    store.close()
    with sqlite3.connect(data / "state.db") as conn:
        conn.execute("UPDATE schema_versions SET version = 5 WHERE component = 'credentials'")
    result = subprocess.run([sys.executable, "-m", "smtprelay", "credentials", "list",
                             "-c", str(config)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"smtprelay: {data / 'state.db'}: the credentials tables are at version 5, newer "
        "than this smtprelay knows (1); run the newer smtprelay or restore a backup")
