"""Quotas on the local shared state and the real SQLite usage store: token bucket,
rolling 24 hours, restarts, a message refused whole."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from smtprelay.app.live import Live
from smtprelay.config import Config, load_config
from smtprelay.mail import replies as R
from smtprelay.policy.quota import Quotas
from smtprelay.state.local import LocalState
from smtprelay.state.redis import RedisState
from smtprelay.state.usage import SQLiteUsageStore, usage_since
from tests.redis_server import RedisServer
from tests.support import base_config, free_port, write_config


def config_with(tmp_path: Path, **account: object) -> Config:
    cfg = base_config(tmp_path / "var")
    cfg["accounts"]["acme"].update(account)
    return load_config(write_config(tmp_path / "c.yaml", cfg)).config


async def test_rate_bucket_allows_a_burst_then_refills(tmp_path: Path) -> None:
    config = config_with(tmp_path, quota={"max_send_rate": 14, "max_24h_send": 1000})
    now = [1_000_000.0]
    quotas = Quotas(Live(config), LocalState(clock=lambda: now[0]))
    results = [await quotas.reserve("acme", 1, 1) for _ in range(20)]
    assert results[:14] == [None] * 14
    assert results[14:] == [R.RATE_EXCEEDED] * 6
    now[0] += 0.5  # half a second refills 7
    assert [await quotas.reserve("acme", 1, 1) for _ in range(8)] == [None] * 7 + [
        R.RATE_EXCEEDED]
    # A message that was not spooled gives its recipients back.
    await quotas.settle("acme", 2, 2, sent=False)
    assert await quotas.reserve("acme", 2, 2) is None
    assert await quotas.reserve("acme", 1, 1) is R.RATE_EXCEEDED


async def test_a_message_over_the_rate_is_refused_whole(tmp_path: Path) -> None:
    config = config_with(tmp_path, quota={"max_send_rate": 5, "max_24h_send": 1000})
    quotas = Quotas(Live(config), LocalState(clock=lambda: 7_000.0))
    assert await quotas.reserve("acme", 4, 4) is None
    # Two more do not fit in the one token left: none of them is taken.
    assert await quotas.reserve("acme", 2, 2) is R.RATE_EXCEEDED
    assert await quotas.reserve("acme", 1, 1) is None


async def test_daily_quota_counts_sent_and_held_and_survives_restart(tmp_path: Path) -> None:
    config = config_with(tmp_path, quota={"max_send_rate": 1000, "max_24h_send": 10})
    store = SQLiteUsageStore(tmp_path / "state.db")
    store.open()
    now = [2_000_000.0]
    quotas = Quotas(Live(config), LocalState(store, clock=lambda: now[0]))
    assert await quotas.reserve("acme", 6, 6) is None
    await quotas.settle("acme", 6, 6, sent=True)
    assert await quotas.reserve("acme", 4, 4) is None  # held, not yet settled
    assert await quotas.reserve("acme", 1, 1) is R.DAILY_QUOTA_EXCEEDED
    await quotas.settle("acme", 4, 4, sent=False)
    assert await quotas.sent_last_24h("acme") == 6
    store.close()

    store = SQLiteUsageStore(tmp_path / "state.db")
    store.open()
    state = LocalState(store, clock=lambda: now[0])
    state.load()
    restarted = Quotas(Live(config), state)
    assert await restarted.sent_last_24h("acme") == 6
    assert await restarted.reserve("acme", 5, 5) is R.DAILY_QUOTA_EXCEEDED
    assert await restarted.reserve("acme", 4, 4) is None
    now[0] += 86400 + 120  # a day later the old minutes have rolled out of the window
    assert await restarted.reserve("acme", 1, 1) is None
    assert await restarted.sent_last_24h("acme") == 0
    store.close()


async def test_simulator_recipients_count_against_the_rate_not_the_24_hours(
        tmp_path: Path) -> None:
    config = config_with(tmp_path, quota={"max_send_rate": 100, "max_24h_send": 3})
    quotas = Quotas(Live(config), LocalState(clock=lambda: 9_000.0))
    assert await quotas.reserve("acme", 10, 3) is None
    await quotas.settle("acme", 10, 3, sent=True)
    assert await quotas.sent_last_24h("acme") == 3
    assert await quotas.reserve("acme", 5, 0) is None
    assert await quotas.reserve("acme", 1, 1) is R.DAILY_QUOTA_EXCEEDED


async def test_sandbox_defaults_and_unlimited_accounts(tmp_path: Path) -> None:
    config = config_with(tmp_path, sandbox=True)
    quotas = Quotas(Live(config), LocalState(clock=lambda: 5.0))
    assert await quotas.reserve("acme", 1, 1) is None
    assert await quotas.reserve("acme", 1, 1) is R.RATE_EXCEEDED  # 1/s in the sandbox
    for _ in range(1000):
        assert await quotas.reserve("other", 1, 1) is None  # no quota: unlimited
    await quotas.settle("other", 1000, 1000, sent=True)
    assert await quotas.sent_last_24h("other") == 1000


def test_usage_reaches_disk_within_the_flush_interval_without_a_clean_close(
        tmp_path: Path) -> None:
    import sqlite3
    import time

    store = SQLiteUsageStore(tmp_path / "state.db", flush_interval=0.05)
    store.open()
    minute = int(time.time() // 60)
    for _ in range(500):
        store.add("acme", minute, 1)  # one per accepted recipient, no write each
    conn = sqlite3.connect(tmp_path / "state.db")
    deadline = time.monotonic() + 5
    while usage_since(conn, time.time() - 3600).get("acme") != 500:
        assert time.monotonic() < deadline, "usage never reached the database"
        time.sleep(0.02)
    conn.close()
    store.close()


async def test_settling_later_counts_once_landed_and_drain_waits_for_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The pipeline settles without the client waiting (one round trip less with the
    state in Redis or behind the supervisor); held recipients count meanwhile, and a
    stop drains what is under way before the state goes."""
    config = config_with(tmp_path, quota={"max_send_rate": 100, "max_24h_send": 3})
    state = LocalState()
    quotas = Quotas(Live(config), state)
    assert await quotas.reserve("acme", 2, 2) is None
    quotas.settle_later("acme", 2, 2, sent=True)
    assert await quotas.reserve("acme", 2, 2) is R.DAILY_QUOTA_EXCEEDED  # held or sent
    await quotas.drain()
    assert await quotas.sent_last_24h("acme") == 2

    # A Redis nobody answers on: the settlement is logged, never raised.
    gone = RedisState.from_url(f"redis://127.0.0.1:{free_port()}/0", node="n", timeout=0.5)
    try:
        unreachable = Quotas(Live(config), gone)
        unreachable.settle_later("acme", 1, 1, sent=True)
        await unreachable.drain()
    finally:
        await gone.close()
    assert "quota of account=acme not settled: redis: settle_send" in caplog.text


async def test_a_settlement_held_up_by_an_outage_lands_when_redis_is_back(
        tmp_path: Path) -> None:
    """A sent message's recipients reach the 24-hour count even if Redis was away when
    it was spooled: left held, they would stop counting after PENDING_STALE and the
    account could send them again."""
    config = config_with(tmp_path, quota={"max_send_rate": 100, "max_24h_send": 3})
    server = RedisServer(durable=True).start()
    state = RedisState.from_url(server.url, node="n", timeout=0.5)
    try:
        quotas = Quotas(Live(config), state)
        assert await quotas.reserve("acme", 2, 2) is None
        server.crash()
        quotas.settle_later("acme", 2, 2, sent=True)
        await asyncio.sleep(0.6)  # a try or two fail meanwhile
        server.start()  # on its files: the reservation is still held
        deadline = time.monotonic() + 10
        while await quotas.sent_last_24h("acme") != 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await quotas.drain()
    finally:
        await state.close()
        server.stop()
