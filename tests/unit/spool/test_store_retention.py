"""Finished messages: marked when their last recipient turns final, purged after keep_finished."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from smtprelay.spool.model import (
    Envelope,
    NewMessage,
    Outcome,
    RecipientState,
    RecipientUpdate,
)
from smtprelay.spool.store import Spool


def _message(message_id: str, rcpts: tuple[str, ...], suppressed: dict[int, str] | None = None,
             at: float = 1000.0) -> NewMessage:
    return NewMessage(message_id=message_id, envelope=Envelope("a@example.com", rcpts),
                      data=b"Subject: x\r\n\r\nbody\r\n", account="acme", configuration_set=None,
                      received_at=at, client_ip="127.0.0.1", client_helo="h", auth_user=None,
                      listener="submission", suppressed=suppressed or {})


def _finished(path: Path) -> dict[str, float | None]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT id, finished_at FROM messages").fetchall())
    finally:
        conn.close()


def test_finished_messages_are_marked_and_purged_with_their_outcomes(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path / "spool.db")
        await asyncio.to_thread(spool.open)
        try:
            await spool.enqueue(_message("m1", ("x@a.test", "y@a.test")))
            await spool.enqueue(_message("m2", ("z@a.test",), suppressed={0: "BOUNCE"}))
            await spool.enqueue(_message("m3", ("w@a.test",)))
            await spool.claim_due(2000.0, 10)
            delivered = Outcome(message_id="m1", index=0, kind="delivery", at=2000.0)
            await spool.record("m1", [RecipientUpdate(0, RecipientState.DELIVERED, 2000.0, "ok",
                                                      outcomes=(delivered,))])
            # One of two recipients final: not finished yet.
            assert _finished(spool.path)["m1"] is None
            await spool.record("m1", [RecipientUpdate(1, RecipientState.DELIVERED, 2001.0, "ok")])
            await spool.record("m3", [RecipientUpdate(0, RecipientState.DEFERRED, 2001.0,
                                                      "451", next_attempt=3000.0)])
            marks = _finished(spool.path)
            assert marks == {"m1": 2001.0, "m2": 1000.0, "m3": None}
            # Finished messages keep their header section only; pending ones all of it.
            conn = sqlite3.connect(spool.path)
            bodies = dict(conn.execute("SELECT message_id, data FROM bodies").fetchall())
            conn.close()
            assert bodies == {"m1": b"Subject: x\r\n\r\n", "m2": b"Subject: x\r\n\r\n",
                              "m3": b"Subject: x\r\n\r\nbody\r\n"}
            assert await spool.purge_finished(before=1500.0) == 1  # only m2 is that old
            assert await spool.purge_finished(before=5000.0) == 1  # m1; m3 is pending
            assert set(_finished(spool.path)) == {"m3"}
            conn = sqlite3.connect(spool.path)
            assert conn.execute("SELECT COUNT(*) FROM outcomes").fetchone() == (0,)
            assert conn.execute("SELECT COUNT(*) FROM bodies").fetchone() == (1,)
            assert conn.execute("SELECT COUNT(*) FROM recipients").fetchone() == (1,)
            conn.close()
        finally:
            await asyncio.to_thread(spool.close)

    asyncio.run(run())
