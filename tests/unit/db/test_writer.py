"""The group-commit writer (smtprelay.db.writer): one thread, shared commits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from smtprelay.db.writer import GroupCommitWriter

_TABLE = "CREATE TABLE items (value TEXT NOT NULL);"


def _insert(value: str) -> Callable[[sqlite3.Connection], str]:
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO items (value) VALUES (?)", (value,))
        return value
    return work


async def test_a_cancelled_waiter_neither_writes_nor_stops_the_writer(tmp_path: Path) -> None:
    writer = GroupCommitWriter(tmp_path / "w.db", "test")
    writer.start((_TABLE,))
    try:
        running, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            running.set()
            release.wait(10)

        held = writer.submit(hold)
        assert await asyncio.to_thread(running.wait, 10)
        # Queued behind the held batch, then given up on, as a session task that is
        # cancelled while it waits for its commit.
        waiter = asyncio.ensure_future(writer.run(_insert("cancelled")))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        release.set()
        async with asyncio.timeout(10):  # on a dead writer thread this would wait forever
            await asyncio.wrap_future(held)
            assert await writer.run(_insert("after")) == "after"
            rows = await writer.run(
                lambda conn: [r[0] for r in conn.execute("SELECT value FROM items")])
        assert rows == ["after"]
    finally:
        writer.stop()
