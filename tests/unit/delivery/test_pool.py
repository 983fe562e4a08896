"""ConnectionPool with real SMTP sessions (tests/sinks.py) and a clock the test moves.

The pool holds `Connection`s opened against aiosmtpd sinks on loopback, so "closed"
means the sink really saw the QUIT, and "reusable" is the client's own view of a
live socket. Only time is faked: the pool's `clock` (on time.monotonic()'s scale,
since Connection.opened_at is) is moved forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from smtprelay.delivery.client import ClientSettings, Connection
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.state.leases import Lease
from tests.sinks import SinkFactory, SmtpSink
from tests.unit.delivery.kit import MonotonicClock, has_sample, sample, wait_until

ACTIVE = "smtprelay_domain_active_connections"
OPEN = "smtprelay_outbound_connections"


def settings(sink: SmtpSink) -> ClientSettings:
    return ClientSettings(helo="relay.test", port=sink.port, connect_timeout=2.0,
                          command_timeout=2.0)


async def open_session(pool: ConnectionPool, sink: SmtpSink) -> Connection:
    """What the transport does for a new session: count it, then connect."""
    await pool.reserve()
    return await Connection.open(sink.destination, settings(sink))


def quits(sink: SmtpSink) -> int:
    return sum(1 for s in sink.sessions if s.commands and s.commands[-1] == "QUIT")


@pytest.fixture
def clock() -> MonotonicClock:
    return MonotonicClock()


@pytest.fixture
async def pool(clock: MonotonicClock) -> AsyncIterator[ConnectionPool]:
    p = ConnectionPool(max_connections=2, max_per_domain=2, idle_timeout=0.05,
                       max_age=60.0, clock=clock)
    yield p
    await p.close()


async def blocked(task: asyncio.Task[Any], for_seconds: float = 0.05) -> bool:
    """True when `task` is still waiting after a short while."""
    await asyncio.sleep(for_seconds)
    return not task.done()


# ------------------------------------------------------------------ the cache

async def test_released_session_is_taken_again_under_its_key_only(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await open_session(pool, sink)
    await pool.release("key-a", conn)
    assert (pool.open_count, pool.idle_count) == (1, 1)
    assert pool.take_idle("key-b") is None
    assert pool.take_idle("key-a") is conn
    assert (pool.open_count, pool.idle_count) == (1, 0)  # in use again, still counted
    assert pool.take_idle("key-a") is None
    await pool.release("key-a", conn)
    assert len(sink.sessions) == 1


async def test_take_idle_gives_the_most_recently_released_first(
        pool: ConnectionPool, sinks: SinkFactory, clock: MonotonicClock) -> None:
    sink = sinks.smtp()
    first = await open_session(pool, sink)
    second = await open_session(pool, sink)
    await pool.release("k", first)
    clock.advance(0.01)
    await pool.release("k", second)
    assert pool.take_idle("k") is second
    assert pool.take_idle("k") is first


async def test_take_idle_skips_a_session_that_died_and_gives_back_its_place(
        pool: ConnectionPool, sinks: SinkFactory, clock: MonotonicClock) -> None:
    sink = sinks.smtp()
    alive = await open_session(pool, sink)
    dead = await open_session(pool, sink)
    await pool.release("k", alive)
    await pool.release("k", dead)
    await dead.close()  # gone while idle (it is the most recent: tried first)
    assert pool.open_count == 2
    assert pool.take_idle("k") is alive
    assert pool.open_count == 1  # the dead one no longer counts
    assert pool.idle_count == 0
    await pool.release("k", alive)


async def test_release_of_a_broken_session_closes_it_instead_of_caching(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await open_session(pool, sink)
    await conn.close()
    await pool.release("k", conn)
    assert (pool.open_count, pool.idle_count) == (0, 0)
    assert pool.take_idle("k") is None


async def test_forget_closes_a_session_in_use_and_frees_its_place(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await open_session(pool, sink)
    before = sample(OPEN)
    pool.forget(conn)
    assert pool.open_count == 0
    assert sample(OPEN) == before - 1
    assert await wait_until(lambda: quits(sink) == 1)


async def test_unreserve_gives_back_a_place_never_used(pool: ConnectionPool) -> None:
    await pool.reserve()
    await pool.reserve()
    assert pool.open_count == 2
    await pool.unreserve()
    assert pool.open_count == 1
    await pool.unreserve()
    assert pool.open_count == 0


# -------------------------------------------------------------- max_connections

async def test_full_pool_evicts_the_least_recently_used_idle_session(
        pool: ConnectionPool, sinks: SinkFactory, clock: MonotonicClock) -> None:
    old_host, new_host = sinks.smtp(), sinks.smtp()
    old = await open_session(pool, old_host)
    new = await open_session(pool, new_host)
    await pool.release("old", old)
    clock.advance(0.01)
    await pool.release("new", new)
    assert pool.open_count == 2  # the limit

    await asyncio.wait_for(pool.reserve(), 1)  # a third session: no waiting
    assert pool.open_count == 2  # the evicted session's place was handed over
    assert pool.take_idle("old") is None
    assert pool.take_idle("new") is new
    assert await wait_until(lambda: quits(old_host) == 1)
    assert quits(new_host) == 0
    await pool.release("new", new)
    await pool.unreserve()


async def test_full_pool_with_every_session_in_use_waits_for_unreserve(
        pool: ConnectionPool) -> None:
    await pool.reserve()
    await pool.reserve()
    waiter = asyncio.create_task(pool.reserve())
    assert await blocked(waiter)
    await pool.unreserve()
    await asyncio.wait_for(waiter, 1)
    assert pool.open_count == 2


async def test_waiter_gets_the_place_of_a_session_released_to_the_cache(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    a = await open_session(pool, sink)
    b = await open_session(pool, sink)
    waiter = asyncio.create_task(pool.reserve())
    assert await blocked(waiter)
    await pool.release("k", a)  # cached, but the waiter needs the place more
    await asyncio.wait_for(waiter, 1)
    assert pool.open_count == 2
    assert pool.idle_count == 0
    assert await wait_until(lambda: quits(sink) == 1)
    await pool.release("k", b)
    await pool.unreserve()


async def test_waiter_gets_the_place_of_a_broken_session_released(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    a = await open_session(pool, sink)
    await open_session(pool, sink)
    waiter = asyncio.create_task(pool.reserve())
    assert await blocked(waiter)
    await a.close()
    await pool.release("k", a)
    await asyncio.wait_for(waiter, 1)
    assert pool.open_count == 2


async def test_waiter_gets_the_place_of_a_session_forgotten(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    a = await open_session(pool, sink)
    await open_session(pool, sink)
    waiter = asyncio.create_task(pool.reserve())
    assert await blocked(waiter)
    pool.forget(a)  # it broke while in use (the transport's cancellation path)
    assert pool.open_count == 1
    try:
        await asyncio.wait_for(waiter, 0.5)
    finally:
        waiter.cancel()
    assert pool.open_count == 2


async def test_open_sessions_gauge_follows_the_count(
        pool: ConnectionPool, sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await open_session(pool, sink)
    assert sample(OPEN) == 1
    await pool.reserve()
    assert sample(OPEN) == 2
    await pool.unreserve()
    await pool.release("k", conn)  # idle sessions count too
    assert sample(OPEN) == 1
    await pool.close()
    assert sample(OPEN) == 0


# ------------------------------------------------------------------ domain slots

async def test_domain_slots_limit_sessions_in_use_per_domain(pool: ConnectionPool) -> None:
    entered: list[str] = []
    release = asyncio.Event()

    async def use(domain: str, limit: int | None = None) -> None:
        async with pool.domain_slot(domain, limit):
            entered.append(domain)
            await release.wait()

    first = [asyncio.create_task(use("big.test")) for _ in range(2)]
    third = asyncio.create_task(use("big.test"))
    other = asyncio.create_task(use("small.test"))
    await asyncio.sleep(0.05)
    assert sorted(entered) == ["big.test", "big.test", "small.test"]
    assert pool.active("big.test") == 2  # max_per_domain
    assert pool.active("small.test") == 1
    assert not third.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(*first, third, other), 1)
    assert entered.count("big.test") == 3
    assert pool.active("big.test") == 0


async def test_a_slot_is_handed_to_the_waiter_when_one_is_left(pool: ConnectionPool) -> None:
    gate = asyncio.Event()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with pool.domain_slot("d.test", 1):
            order.append(f"in {name}")
            await gate.wait()
            order.append(f"out {name}")

    a = asyncio.create_task(hold("a"))
    await asyncio.sleep(0.01)
    b = asyncio.create_task(hold("b"))
    await asyncio.sleep(0.05)
    assert order == ["in a"]
    gate.set()
    await asyncio.wait_for(asyncio.gather(a, b), 1)
    assert order == ["in a", "out a", "in b", "out b"]


async def test_explicit_limit_overrides_max_per_domain(pool: ConnectionPool) -> None:
    release = asyncio.Event()
    inside = 0

    async def use() -> None:
        nonlocal inside
        async with pool.domain_slot("[smarthost]", 5):
            inside += 1
            await release.wait()

    tasks = [asyncio.create_task(use()) for _ in range(5)]
    await asyncio.sleep(0.05)
    assert inside == 5  # more than max_per_domain=2
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)


async def test_active_gauge_counts_in_use_and_drops_the_label_when_none(
        pool: ConnectionPool) -> None:
    labels = {"domain": "gauge.test"}
    assert not has_sample(ACTIVE, labels)
    async with pool.domain_slot("gauge.test"):
        assert sample(ACTIVE, labels) == 1
        async with pool.domain_slot("gauge.test"):
            assert sample(ACTIVE, labels) == 2
        assert sample(ACTIVE, labels) == 1
    assert not has_sample(ACTIVE, labels)
    assert pool.active("gauge.test") == 0


async def test_slot_is_given_back_when_the_body_raises(pool: ConnectionPool) -> None:
    with pytest.raises(RuntimeError):
        async with pool.domain_slot("boom.test", 1):
            raise RuntimeError("delivery failed")
    assert pool.active("boom.test") == 0
    assert not has_sample(ACTIVE, {"domain": "boom.test"})
    async with asyncio.timeout(1):
        async with pool.domain_slot("boom.test", 1):
            assert pool.active("boom.test") == 1


async def test_cancelled_waiter_takes_no_slot(pool: ConnectionPool) -> None:
    release = asyncio.Event()

    async def hold() -> None:
        async with pool.domain_slot("c.test", 1):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert pool.active("c.test") == 0


# ------------------------------------------------------------------ ageing

async def test_idle_session_is_reaped_after_idle_timeout_on_the_pools_clock(
        pool: ConnectionPool, sinks: SinkFactory, clock: MonotonicClock) -> None:
    sink = sinks.smtp()
    conn = await open_session(pool, sink)
    await pool.release("k", conn)
    # Real time passes (the reaper wakes every idle_timeout=0.05 s) but the pool's clock
    # stands still: the session is not idle long enough yet.
    await asyncio.sleep(0.2)
    assert pool.idle_count == 1
    clock.advance(0.06)
    assert await wait_until(lambda: pool.idle_count == 0)
    assert pool.open_count == 0
    assert pool.take_idle("k") is None
    assert await wait_until(lambda: quits(sink) == 1)


async def test_reaper_keeps_sessions_still_within_idle_timeout(
        sinks: SinkFactory, clock: MonotonicClock) -> None:
    pool = ConnectionPool(max_connections=5, max_per_domain=5, idle_timeout=0.05,
                          max_age=60.0, clock=clock)
    sink = sinks.smtp()
    try:
        old = await open_session(pool, sink)
        young = await open_session(pool, sink)
        await pool.release("old", old)
        clock.advance(0.04)
        await pool.release("young", young)
        clock.advance(0.02)  # old: 0.06 idle, young: 0.02
        assert await wait_until(lambda: pool.idle_count == 1)
        await asyncio.sleep(0.1)
        assert pool.take_idle("old") is None
        assert pool.take_idle("young") is young
        assert pool.open_count == 1
        await pool.release("young", young)
    finally:
        await pool.close()


async def test_session_older_than_max_age_is_closed_on_release(
        sinks: SinkFactory, clock: MonotonicClock) -> None:
    pool = ConnectionPool(max_connections=2, max_per_domain=2, idle_timeout=60.0,
                          max_age=10.0, clock=clock)
    sink = sinks.smtp()
    try:
        conn = await open_session(pool, sink)
        clock.advance(10.5)  # the session was opened a moment after the clock started
        await pool.release("k", conn)
        assert (pool.open_count, pool.idle_count) == (0, 0)
        assert await wait_until(lambda: quits(sink) == 1)
    finally:
        await pool.close()


async def test_cached_session_past_max_age_is_not_taken(
        sinks: SinkFactory, clock: MonotonicClock) -> None:
    pool = ConnectionPool(max_connections=2, max_per_domain=2, idle_timeout=60.0,
                          max_age=10.0, clock=clock)
    sink = sinks.smtp()
    try:
        conn = await open_session(pool, sink)
        clock.advance(5.0)
        await pool.release("k", conn)
        assert pool.idle_count == 1
        clock.advance(5.5)
        assert pool.take_idle("k") is None
        assert pool.open_count == 0
        assert await wait_until(lambda: quits(sink) == 1)
    finally:
        await pool.close()


# ------------------------------------------------------------------ closing

async def test_close_quits_idle_sessions_and_does_not_cache_later_releases(
        sinks: SinkFactory) -> None:
    pool = ConnectionPool(max_connections=3, max_per_domain=3, idle_timeout=60.0)
    sink = sinks.smtp()
    idle_a = await open_session(pool, sink)
    idle_b = await open_session(pool, sink)
    in_use = await open_session(pool, sink)
    await pool.release("a", idle_a)
    await pool.release("b", idle_b)
    await pool.close()
    assert quits(sink) == 2  # close() waited for the QUITs
    assert (pool.open_count, pool.idle_count) == (1, 0)
    assert in_use.reusable
    await pool.release("c", in_use)  # a transaction that ended after close()
    assert (pool.open_count, pool.idle_count) == (0, 0)
    assert pool.take_idle("c") is None
    assert await wait_until(lambda: quits(sink) == 3)


async def test_domain_slots_go_to_waiters_in_arrival_order(pool: ConnectionPool) -> None:
    order: list[int] = []
    release = asyncio.Event()

    async def deliver(n: int) -> None:
        async with pool.domain_slot("busy.test", limit=1):
            order.append(n)
            if n == 0:
                await release.wait()

    first = asyncio.create_task(deliver(0))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(deliver(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0.01)  # all three are queued behind the holder
    release.set()
    latecomer = asyncio.create_task(deliver(4))  # arrives as the slot frees up
    await asyncio.wait_for(asyncio.gather(first, *waiters, latecomer), 2)
    assert order == [0, 1, 2, 3, 4]
    assert pool.active("busy.test") == 0
    assert "busy.test" not in pool._gates  # forgotten once nobody holds or waits


# ------------------------------------------------------------------ cluster leases

class Holders:
    """Leases as a cluster's store keeps them (state.leases.RedisLeases in Redis): one
    set of holders per slot, shared by every node's pool."""

    def __init__(self) -> None:
        self.slots: dict[str, set[str]] = {}
        self._next = 0

    async def try_acquire(self, slot: str, limit: int) -> Lease | None:
        held = self.slots.setdefault(slot, set())
        if len(held) >= limit:
            return None
        self._next += 1
        held.add(str(self._next))
        return Lease(slot, str(self._next), limit)

    async def release(self, lease: Lease) -> None:
        self.slots[lease.slot].discard(lease.member)

    def keep(self, lease: Lease) -> bool:
        return True


async def open_leased(pool: ConnectionPool, sink: SmtpSink, slot: str,
                      limit: int) -> Connection:
    """What the transport does in a cluster: a place and a lease, then connect."""
    lease = await pool.reserve(slot, limit)
    conn = await Connection.open(sink.destination, settings(sink))
    pool.opened(conn, lease)
    return conn


async def test_a_lease_lasts_as_long_as_its_session_in_use_or_idle(
        sinks: SinkFactory, clock: MonotonicClock) -> None:
    holders = Holders()
    pool = ConnectionPool(max_connections=5, max_per_domain=5, idle_timeout=0.05,
                          clock=clock, leases=holders)
    sink = sinks.smtp()
    conn = await open_leased(pool, sink, "example.net", 2)
    await pool.release("k", conn)
    assert len(holders.slots["example.net"]) == 1  # idle, still open: still held
    assert pool.take_idle("k") is conn  # reused without a new lease
    await pool.release("k", conn)
    assert len(holders.slots["example.net"]) == 1
    clock.advance(0.06)  # reaped: closed, and its lease given back
    assert await wait_until(lambda: not holders.slots["example.net"])
    assert await wait_until(lambda: quits(sink) == 1)
    failed = await pool.reserve("example.net", 2)  # a connect that failed
    await pool.unreserve(failed)
    assert await wait_until(lambda: not holders.slots["example.net"])
    await pool.close()


async def test_refused_a_lease_a_node_closes_its_own_idle_session_to_the_slot(
        sinks: SinkFactory) -> None:
    holders = Holders()
    pool = ConnectionPool(max_connections=5, max_per_domain=5, idle_timeout=60,
                          leases=holders)
    other_node = ConnectionPool(max_connections=5, max_per_domain=5, leases=holders)
    sink = sinks.smtp()
    theirs = await open_leased(other_node, sink, "example.net", 2)
    ours = await open_leased(pool, sink, "example.net", 2)
    await pool.release(("other address", "settings"), ours)  # idle under another key
    # The slot is full (one each): our idle session is closed to make room, the other
    # node's is not ours to close.
    lease = await asyncio.wait_for(pool.reserve("example.net", 2), 1)
    assert lease is not None and pool.idle_count == 0 and pool.open_count == 1
    assert await wait_until(lambda: quits(sink) == 1)
    assert holders.slots["example.net"] == {"1", lease.member}
    # Full again, with nothing of ours idle: the next ask waits, and gets the lease the
    # other node gives back.
    waiting = asyncio.create_task(pool.reserve("example.net", 2))
    assert await blocked(waiting, 0.3)
    other_node.forget(theirs)
    assert await asyncio.wait_for(waiting, 1) is not None
    for node in (pool, other_node):
        await node.close()
