"""A hard bounce whose suppression entry cannot be written now (the cluster's Redis is
away) is kept on disk and written once the store answers: never left off the list."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from smtprelay.app.live import Live
from smtprelay.config import load_config
from smtprelay.feedback.recorder import FeedbackRecorder
from smtprelay.policy.suppression import Suppress
from smtprelay.policy.suppression_redis import RedisSuppressionStore
from smtprelay.spool.store import Spool
from tests.redis_server import RedisServer
from tests.support import base_config, write_config


async def test_entries_wait_on_disk_while_redis_is_away(
        tmp_path: Path, spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = load_config(write_config(tmp_path / "c.yaml", base_config(tmp_path / "var")))
    server = RedisServer().start()
    store = RedisSuppressionStore.from_url(server.url, timeout=0.5)
    held = tmp_path / "held.ndjson"
    recorder = FeedbackRecorder(spool, store, Live(config.config), pending=held)
    bounce = Suppress("acme", "gone@example.net", "BOUNCE", "01a2-x", 1_700_000_000.0,
                      None, "550 5.1.1 no such user")
    try:
        port = server.port
        server.stop()
        await recorder.suppress_or_hold([bounce])  # no exception: kept
        assert held.exists() and b"gone@example.net" in held.read_bytes()
        assert "1 entries (gone@example.net) held in" in caplog.text
        runner = asyncio.create_task(recorder.run(every=0.05))
        for _ in range(200):  # bounded: a round against the Redis still away
            if "held suppression entries wait on" in caplog.text:
                break
            await asyncio.sleep(0.05)
        assert held.exists() and "held suppression entries wait on" in caplog.text
        back = RedisServer()
        back.port = port
        back.start()
        try:
            for _ in range(200):  # bounded: the next round after Redis is back
                if not held.exists():
                    break
                await asyncio.sleep(0.05)
            assert not held.exists()
            entry = store.get("acme", "gone@example.net")
            assert entry is not None and entry.diagnostic == "550 5.1.1 no such user"
            assert entry.source_message_id == "01a2-x"
        finally:
            runner.cancel()
            back.stop()
    finally:
        store.close()
        server.stop()
