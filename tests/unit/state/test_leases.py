"""Outbound connection leases in Redis (state.leases), on a real redis-server
(tests/redis_server.py): the limit holds for several nodes, a lease nobody renews
expires, renewal keeps one, release and cancellation leave nothing behind, and with
Redis away a node keeps delivering under its share of the limit until Redis is back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
import redis.asyncio as aioredis

from smtprelay.delivery.pool import ConnectionPool
from smtprelay.state import nodes
from smtprelay.state.leases import Lease, RedisLeases
from tests.redis_server import RedisServer

SLOT = "example.net"
KEY = "smtprelay:lease:{example.net}"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_url, socket_timeout=1,
                                         socket_connect_timeout=1)
    yield connection
    await connection.aclose()


def node(client: aioredis.Redis, name: str, ttl: float = 30.0) -> RedisLeases:
    return RedisLeases(client, node=name, prefix="smtprelay:", ttl=ttl)


async def holders(client: aioredis.Redis) -> list[str]:
    return sorted(m.decode() for m in cast(list[bytes], await client.zrange(KEY, 0, -1)))


async def eventually(check: Callable[[], object], timeout: float) -> None:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_the_limit_holds_across_nodes(client: aioredis.Redis) -> None:
    a, b = node(client, "a"), node(client, "b")
    granted = [await a.try_acquire(SLOT, 4) for _ in range(3)]
    granted += [await b.try_acquire(SLOT, 4) for _ in range(2)]
    assert [g is not None for g in granted] == [True, True, True, True, False]
    assert await a.try_acquire(SLOT, 4) is None
    assert await b.try_acquire("other.example", 4) is not None  # a slot of its own
    members = await holders(client)
    assert len(members) == 4 and sum(m.startswith("a:") for m in members) == 3
    assert (a.held, b.held) == (3, 2)


async def test_release_frees_the_lease(client: aioredis.Redis) -> None:
    a, b = node(client, "a"), node(client, "b")
    first = await a.try_acquire(SLOT, 1)
    assert first is not None and await b.try_acquire(SLOT, 1) is None
    await a.release(first)
    assert await holders(client) == [] and a.held == 0
    assert await b.try_acquire(SLOT, 1) is not None


async def test_a_lease_nobody_renews_expires_and_renewal_keeps_one(
        client: aioredis.Redis) -> None:
    renewed, dead, other = node(client, "a", ttl=0.6), node(client, "b", ttl=0.6), \
        node(client, "c")
    assert await renewed.try_acquire(SLOT, 2) is not None
    assert await dead.try_acquire(SLOT, 2) is not None
    assert await other.try_acquire(SLOT, 2) is None
    started = time.monotonic()
    got: list[Lease | None] = []
    while not got or got[-1] is None:  # bounded by the assertion on the time
        await renewed.renew()
        got.append(await other.try_acquire(SLOT, 2))
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.1)
    # The dead node's lease went at its TTL; the renewed one stayed (well past its
    # own TTL), so the slot is full again.
    assert 0.5 <= time.monotonic() - started < 2.0
    while time.monotonic() - started < 2.0:
        await renewed.renew()
        await asyncio.sleep(0.1)
    assert [m.split(":")[0] for m in await holders(client)] == ["a", "c"]
    assert await dead.try_acquire(SLOT, 2) is None
    await asyncio.sleep(0.7)  # a stops renewing: its lease goes too
    assert await dead.try_acquire(SLOT, 2) is not None
    # The key lasts as long as its longest lease: a slot nobody uses leaves nothing.
    assert 25_000 < await client.pttl(KEY) <= 30_000


async def test_cancelled_asks_leave_no_lease(client: aioredis.Redis) -> None:
    """Cancelled at every point of the script's round trip, an ask leaves nothing in
    Redis once its cleanup has run (the script may have granted without our reading
    the answer)."""
    a = node(client, "a")
    for turns in range(12):
        task = asyncio.create_task(a.try_acquire(SLOT, 100))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        try:
            lease = await task
        except asyncio.CancelledError:
            continue
        assert lease is not None  # finished before the cancel: a lease to give back
        await a.release(lease)
    await a.close()
    assert await holders(client) == [] and a.held == 0


async def test_a_pool_cancelled_while_waiting_for_a_lease_leaks_none(
        client: aioredis.Redis) -> None:
    a, b = node(client, "a"), node(client, "b")
    for _ in range(2):
        assert await b.try_acquire(SLOT, 2) is not None
    pool = ConnectionPool(max_connections=10, max_per_domain=2, leases=a)
    waiting = asyncio.create_task(pool.reserve(SLOT, 2))
    await asyncio.sleep(0.4)  # a few asks, with the backoff between them
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await pool.close()
    await a.close()
    assert [m.split(":")[0] for m in await holders(client)] == ["b", "b"]
    assert pool.open_count == 0 and a.held == 0
    # Once b gives one back, the waiter of a pool gets it.
    pool = ConnectionPool(max_connections=10, max_per_domain=2, leases=a)
    waiting = asyncio.create_task(pool.reserve(SLOT, 2))
    await asyncio.sleep(0.1)
    await b.release(Lease(SLOT, (await holders(client))[0], 2))
    lease = await asyncio.wait_for(waiting, 2)
    assert lease is not None and lease.member.startswith("a:")
    await pool.unreserve(lease)
    await pool.close()
    assert [m.split(":")[0] for m in await holders(client)] == ["b"]


async def test_redis_away_gives_a_local_share_and_leasing_resumes_by_itself(
        caplog: pytest.LogCaptureFixture) -> None:
    own = RedisServer().start()
    connection = aioredis.Redis.from_url(own.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        for name in ("a", "b", "c"):  # three live nodes
            await nodes.beat(connection, "smtprelay:", name, {})
        a = node(connection, "a")
        await a.renew()  # counts the live nodes
        held = [await a.try_acquire(SLOT, 7) for _ in range(3)]
        own.crash()
        caplog.set_level(logging.INFO, logger="smtprelay.state")
        # 7 // 3 nodes: this node's share is 2, and it holds 3: nothing more, and
        # its connections close as their transactions end until it is down to 2.
        assert await a.try_acquire(SLOT, 7) is None
        assert a.local_only and a.held == 3
        assert held[0] is not None and not a.keep(held[0])
        await a.release(held.pop())
        assert a.keep(held[0])
        assert await a.try_acquire(SLOT, 7) is None
        await a.release(held.pop())
        more = [await a.try_acquire(SLOT, 7) for _ in range(2)]
        assert [m is not None for m in more] == [True, False]
        assert await a.try_acquire("small.example", 2) is not None  # at least 1
        assert await a.try_acquire("small.example", 2) is None
        await a.renew()  # still away: nothing changes, nothing more logged
        assert [r.getMessage()[:28] for r in caplog.records
                if r.getMessage().startswith("leases: redis")] == \
            ["leases: redis not answering "]
        own.start()  # empty: it kept nothing
        # The renewal task finds it back and writes what the node holds.
        runner = asyncio.create_task(a.run())
        try:
            await eventually(lambda: not a.local_only, timeout=5)
        finally:
            runner.cancel()
        assert len(await holders(connection)) == 2  # written back
        assert caplog.records[-1].getMessage().startswith("leases: redis answers again")
        assert await a.try_acquire(SLOT, 7) is not None  # from Redis again: 3 of 7
        for lease in [*held, *more]:
            if lease is not None:
                await a.release(lease)
        assert len(await holders(connection)) == 1  # the one just granted
    finally:
        await connection.aclose()
        own.stop()
