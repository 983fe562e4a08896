"""Quotas on the real SQLite usage store: token bucket, rolling 24 hours, restarts."""

from __future__ import annotations

from pathlib import Path

from smtprelay.app.live import Live
from smtprelay.config import load_config
from smtprelay.mail import replies as R
from smtprelay.policy.quota import Quotas, SQLiteUsageStore
from tests.support import base_config, write_config


def config_with(tmp_path: Path, **account: object) -> object:
    cfg = base_config(tmp_path / "var")
    cfg["accounts"]["acme"].update(account)
    return load_config(write_config(tmp_path / "c.yaml", cfg)).config


def test_rate_bucket_allows_a_burst_then_refills(tmp_path: Path) -> None:
    config = config_with(tmp_path, quota={"max_send_rate": 14, "max_24h_send": 1000})
    store = SQLiteUsageStore(tmp_path / "state.db")
    store.open()
    now = [1_000_000.0]
    quotas = Quotas(Live(config), store, clock=lambda: now[0])  # type: ignore[arg-type]
    results = [quotas.reserve("acme") for _ in range(20)]
    assert results[:14] == [None] * 14
    assert results[14:] == [R.RATE_EXCEEDED] * 6
    now[0] += 0.5  # half a second refills 7
    assert [quotas.reserve("acme") for _ in range(8)] == [None] * 7 + [R.RATE_EXCEEDED]
    quotas.release("acme", 2)  # a failed transaction gives its recipients back
    assert quotas.reserve("acme") is None
    store.close()


def test_daily_quota_counts_committed_and_pending_and_survives_restart(tmp_path: Path) -> None:
    config = config_with(tmp_path, quota={"max_send_rate": 1000, "max_24h_send": 10})
    store = SQLiteUsageStore(tmp_path / "state.db")
    store.open()
    now = [2_000_000.0]
    quotas = Quotas(Live(config), store, clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(6):
        assert quotas.reserve("acme") is None
    quotas.commit("acme", 6)
    for _ in range(4):
        assert quotas.reserve("acme") is None  # pending, not yet committed
    assert quotas.reserve("acme") is R.DAILY_QUOTA_EXCEEDED
    quotas.release("acme", 4)
    assert quotas.sent_last_24h("acme") == 6
    store.close()

    store = SQLiteUsageStore(tmp_path / "state.db")
    store.open()
    restarted = Quotas(Live(config), store, clock=lambda: now[0])  # type: ignore[arg-type]
    restarted.load()
    assert restarted.sent_last_24h("acme") == 6
    assert [restarted.reserve("acme") for _ in range(5)] == [None] * 4 + [
        R.DAILY_QUOTA_EXCEEDED]
    now[0] += 86400 + 120  # a day later the old minutes have rolled out of the window
    assert restarted.reserve("acme") is None
    assert restarted.sent_last_24h("acme") == 0
    store.close()


def test_sandbox_defaults_and_unlimited_accounts(tmp_path: Path) -> None:
    config = config_with(tmp_path, sandbox=True)
    store = SQLiteUsageStore(tmp_path / "state.db")
    store.open()
    quotas = Quotas(Live(config), store, clock=lambda: 5.0)  # type: ignore[arg-type]
    assert quotas.reserve("acme") is None
    assert quotas.reserve("acme") is R.RATE_EXCEEDED  # 1 per second in the sandbox
    for _ in range(1000):
        assert quotas.reserve("other") is None  # no quota configured: unlimited
    quotas.commit("other", 1000)
    assert quotas.sent_last_24h("other") == 1000
    store.close()


def test_usage_reaches_disk_within_the_flush_interval_without_a_clean_close(
        tmp_path: Path) -> None:
    import sqlite3
    import time

    from smtprelay.policy.quota import usage_since

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
