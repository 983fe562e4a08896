"""The warm-up counters' contract on both backends (state.warmup, state.warmup_redis):
both caps checked and counted in one step, give-backs, start days; and that the local
backend's counts and start days survive a restart through the state database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from smtprelay.state.redis import RedisState
from smtprelay.state.warmup import (
    NO_PROVIDER,
    LocalWarmup,
    SQLiteWarmupStore,
    WarmupCounters,
    read_counts,
)
from smtprelay.state.warmup_redis import read_counts as read_redis_counts

DAY = 20_000  # a UTC day number


@pytest.fixture(params=["local", "redis"])
async def counters(request: pytest.FixtureRequest) -> AsyncIterator[WarmupCounters]:
    if request.param == "local":
        yield LocalWarmup()
        return
    state = RedisState.from_url(request.getfixturevalue("redis_url"), node="node-a")
    yield state.warmup()
    await state.close()


async def test_take_holds_the_provider_cap_and_the_total(counters: WarmupCounters) -> None:
    take = counters.take
    assert await take(DAY, "192.0.2.1", "gmail", 2, 3, 5)
    assert await take(DAY, "192.0.2.1", "gmail", 1, 3, 5)
    assert not await take(DAY, "192.0.2.1", "gmail", 1, 3, 5)  # gmail's 3 are used
    assert await take(DAY, "192.0.2.1", "yahoo", 1, 3, 5)
    assert not await take(DAY, "192.0.2.1", "yahoo", 2, 3, 5)  # 4 + 2 > the total of 5
    # Destinations of no provider count in the total only.
    assert await take(DAY, "192.0.2.1", NO_PROVIDER, 1, 3, 5)
    assert not await take(DAY, "192.0.2.1", NO_PROVIDER, 1, 3, 5)
    # Another address: counts of its own.
    assert await take(DAY, "192.0.2.2", "gmail", 3, 3, 5)
    [first, second] = await counters.counts(DAY, ["192.0.2.1", "192.0.2.2"])
    assert first.sent == {"gmail": 3, "yahoo": 1, NO_PROVIDER: 1} and first.total == 5
    assert second.sent == {"gmail": 3}
    # The next day starts from nothing.
    assert await take(DAY + 1, "192.0.2.1", "gmail", 3, 3, 5)
    assert (await counters.counts(DAY + 1, ["192.0.2.1"]))[0].sent == {"gmail": 3}


async def test_give_back_frees_room_and_never_goes_below_zero(
        counters: WarmupCounters) -> None:
    assert await counters.take(DAY, "192.0.2.1", "gmail", 3, 3, 10)
    await counters.add(DAY, "192.0.2.1", "gmail", -2)
    assert await counters.take(DAY, "192.0.2.1", "gmail", 2, 3, 10)
    await counters.add(DAY, "192.0.2.1", "gmail", -10)
    [counted] = await counters.counts(DAY, ["192.0.2.1"])
    assert counted.sent == {} and counted.total == 0
    await counters.add(DAY, "192.0.2.1", "gmail", 7)  # uncapped: a warm address
    assert (await counters.counts(DAY, ["192.0.2.1"]))[0].total == 7


async def test_takes_at_once_never_pass_the_cap(counters: WarmupCounters) -> None:
    granted = await asyncio.gather(*(counters.take(DAY, "192.0.2.1", "gmail", 1, 7, 100)
                                     for _ in range(20)))
    assert granted.count(True) == 7


async def test_start_day_is_set_on_first_use_and_kept(counters: WarmupCounters) -> None:
    assert (await counters.counts(DAY, ["192.0.2.1"]))[0].start_day is None
    assert await counters.start_day("192.0.2.1", DAY) == DAY
    assert await counters.start_day("192.0.2.1", DAY + 3) == DAY  # not moved by later use
    await counters.set_start_day("192.0.2.1", DAY - 1)  # an operator: day 2 today
    assert await counters.start_day("192.0.2.1", DAY) == DAY - 1
    assert (await counters.counts(DAY, ["192.0.2.1"]))[0].start_day == DAY - 1


async def test_local_counts_and_start_days_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteWarmupStore(path, flush_interval=3600)
    store.open()
    counters = LocalWarmup(store)
    counters.load(DAY)
    assert await counters.start_day("192.0.2.1", DAY - 1) == DAY - 1
    assert await counters.take(DAY, "192.0.2.1", "gmail", 4, 5, 10)
    assert await counters.take(DAY, "192.0.2.1", NO_PROVIDER, 1, 5, 10)
    await counters.add(DAY, "192.0.2.1", "gmail", -1)
    assert await counters.take(DAY - 1, "192.0.2.1", "gmail", 5, 5, 10)  # yesterday's
    store.close()  # flushes what the hour-long interval had not

    # What `smtprelay stats` reads, with the daemon stopped.
    [saved] = read_counts(path, DAY, ["192.0.2.1"])
    assert saved.start_day == DAY - 1 and saved.sent == {"gmail": 3, NO_PROVIDER: 1}

    store = SQLiteWarmupStore(path)
    store.open()
    again = LocalWarmup(store)
    await asyncio.to_thread(again.load, DAY)
    try:
        [counted] = await again.counts(DAY, ["192.0.2.1"])
        assert counted.start_day == DAY - 1 and counted.sent == {"gmail": 3, NO_PROVIDER: 1}
        assert await again.take(DAY, "192.0.2.1", "gmail", 2, 5, 10)
        assert not await again.take(DAY, "192.0.2.1", "gmail", 1, 5, 10)  # 5 of 5 again
    finally:
        store.close()


def test_read_counts_of_a_relay_that_never_ran(tmp_path: Path) -> None:
    [counted] = read_counts(tmp_path / "state.db", DAY, ["192.0.2.1"])
    assert counted.start_day is None and counted.sent == {}


async def test_the_cli_reads_the_clusters_counts(redis_url: str) -> None:
    state = RedisState.from_url(redis_url, node="node-a")
    counters = state.warmup()
    try:
        await counters.start_day("192.0.2.1", DAY)
        assert await counters.take(DAY, "192.0.2.1", "microsoft", 2, 5, 10)
    finally:
        await state.close()
    client = redis.Redis.from_url(redis_url)
    try:
        [counted] = read_redis_counts(client, "smtprelay:", DAY, ["192.0.2.1"])
    finally:
        client.close()
    assert counted.start_day == DAY and counted.sent == {"microsoft": 2}
