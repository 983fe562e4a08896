"""The SharedState contract, run against every backend: the local one and Redis (a real
redis-server, tests/redis_server.py). Then what only Redis has to get right: several
nodes on one bucket, a dead node's held recipients, the 24-hour window, an outage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from smtprelay.state.api import (
    ConnectionRefusal,
    LockoutPolicy,
    SendLimits,
    SendVerdict,
    SharedState,
    StateUnavailable,
)
from smtprelay.state.local import LocalState
from smtprelay.state.redis import PENDING_STALE, RedisState
from tests.redis_server import RedisServer
from tests.support import free_port

OK, RATE, DAILY = SendVerdict.OK, SendVerdict.RATE, SendVerdict.DAILY
SLOW = SendLimits(max_send_rate=0.001, burst=3, max_24h_send=1000)
POLICY = LockoutPolicy(per_ip=3, per_user=2, per_user_everywhere=4, min_addresses=3,
                       window=60, lockout=100)


@pytest.fixture(params=["local", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[SharedState]:
    if request.param == "local":
        yield LocalState()
        return
    state = RedisState.from_url(request.getfixturevalue("redis_url"), node="node-a")
    yield state
    await state.close()


async def test_the_rate_bucket_refuses_past_its_burst_and_takes_back_unsent(
        backend: SharedState) -> None:
    assert [await backend.reserve_send("acme", 1, 1, SLOW) for _ in range(4)] == \
        [OK, OK, OK, RATE]
    await backend.settle_send("acme", 1, 1, sent=False, limits=SLOW)  # given back
    assert await backend.reserve_send("acme", 1, 1, SLOW) is OK
    assert await backend.reserve_send("other", 2, 2, SLOW) is OK  # its own bucket


async def test_the_24_hours_count_held_and_sent_recipients(backend: SharedState) -> None:
    limits = SendLimits(max_send_rate=1000, burst=1000, max_24h_send=5)
    assert await backend.reserve_send("acme", 3, 3, limits) is OK
    assert await backend.reserve_send("acme", 3, 3, limits) is DAILY  # 3 held + 3 > 5
    await backend.settle_send("acme", 3, 3, sent=True, limits=limits)
    assert await backend.sent_last_24h("acme") == 3
    assert await backend.reserve_send("acme", 2, 2, limits) is OK
    assert await backend.reserve_send("acme", 1, 1, limits) is DAILY
    await backend.settle_send("acme", 2, 2, sent=False, limits=limits)  # not sent
    assert await backend.sent_last_24h("acme") == 3
    assert await backend.reserve_send("acme", 2, 2, limits) is OK
    # Without limits nothing is refused, and what is sent still counts.
    assert await backend.reserve_send("free", 10_000, 10_000, None) is OK
    await backend.settle_send("free", 10_000, 10_000, sent=True, limits=None)
    assert await backend.sent_last_24h("free") == 10_000
    assert await backend.sent_last_24h("nobody") == 0


async def test_lockout_per_address_pair_and_user_everywhere(backend: SharedState) -> None:
    for _ in range(2):
        await backend.auth_failure("10.0.0.1", "alice", POLICY)
    # The pair locks (per_user 2); alice elsewhere and bob here may still try.
    assert 99 < await backend.auth_locked_for("10.0.0.1", "alice") <= 100
    assert await backend.auth_locked_for("10.0.0.2", "alice") == 0
    assert await backend.auth_locked_for("10.0.0.1", "bob") == 0
    await backend.auth_failure("10.0.0.1", None, POLICY)  # the address's third
    assert 99 < await backend.auth_locked_for("10.0.0.1", "bob") <= 100
    # A success clears its own pair, never the address's count.
    await backend.auth_failure("10.0.0.5", "carol", POLICY)
    await backend.auth_success("10.0.0.5", "carol")
    await backend.auth_failure("10.0.0.5", "carol", POLICY)
    assert await backend.auth_locked_for("10.0.0.5", "carol") == 0
    # The user everywhere: 4 failures from at least 3 addresses, one each from 3
    # addresses not enough, the fourth (from a 4th) locks dave for everyone.
    for address in ("10.1.0.1", "10.1.0.2", "10.1.0.3"):
        await backend.auth_failure(address, "dave", POLICY)
    assert await backend.auth_locked_for("10.9.9.9", "dave") == 0
    await backend.auth_failure("10.1.0.4", "dave", POLICY)
    assert await backend.auth_locked_for("10.9.9.9", "dave") > 99


async def test_four_failures_from_one_address_do_not_lock_the_user_everywhere(
        backend: SharedState) -> None:
    lenient = LockoutPolicy(per_ip=100, per_user=100, per_user_everywhere=4,
                            min_addresses=3, window=60, lockout=100)
    for _ in range(6):
        await backend.auth_failure("10.0.0.1", "erin", lenient)
    assert await backend.auth_locked_for("10.0.0.2", "erin") == 0


async def test_connections_are_counted_in_total_and_per_address(
        backend: SharedState) -> None:
    assert await backend.open_connection("10.0.0.1", 3, 2) is None
    assert await backend.open_connection("10.0.0.1", 3, 2) is None
    assert await backend.open_connection("10.0.0.1", 3, 2) is ConnectionRefusal.PER_IP
    assert await backend.open_connection("10.0.0.2", 3, 2) is None
    assert await backend.open_connection("10.0.0.3", 3, 2) is ConnectionRefusal.TOTAL
    await backend.close_connection("10.0.0.1")
    # A refused one was never counted, so one close frees one place.
    assert await backend.open_connection("10.0.0.3", 3, 2) is None
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        await backend.close_connection(ip)
    assert await backend.open_connection("10.0.0.4", 1, 1) is None  # all closed


async def test_lockout_limits_come_with_each_failure(backend: SharedState) -> None:
    strict = LockoutPolicy(per_ip=2, per_user=2, per_user_everywhere=100, min_addresses=5,
                           window=60, lockout=100)
    await backend.auth_failure("10.0.0.1", "alice", strict)
    assert await backend.auth_locked_for("10.0.0.1", "alice") == 0
    await backend.auth_failure("10.0.0.1", "alice", strict)
    assert 99 < await backend.auth_locked_for("10.0.0.1", "bob") <= 100  # the address
    assert await backend.auth_locked_for("10.0.0.9", "alice") == 0  # alice elsewhere
    await backend.auth_success("10.0.0.9", "alice")


# -- Redis only ------------------------------------------------------------------------


async def test_nodes_share_one_bucket_and_one_24_hours(redis_url: str) -> None:
    nodes = [RedisState.from_url(redis_url, node=f"node-{n}") for n in range(3)]
    try:
        limits = SendLimits(max_send_rate=0.001, burst=6, max_24h_send=1000)
        verdicts = await asyncio.gather(*(nodes[n % 3].reserve_send("acme", 1, 1, limits)
                                          for n in range(12)))
        assert verdicts.count(OK) == 6 and verdicts.count(RATE) == 6
        for n in range(6):
            await nodes[n % 3].settle_send("acme", 1, 1, sent=True, limits=limits)
        assert [await node.sent_last_24h("acme") for node in nodes] == [6, 6, 6]
    finally:
        for node in nodes:
            await node.close()


async def test_a_dead_nodes_held_recipients_stop_counting(redis_server: RedisServer,
                                                          redis_url: str) -> None:
    limits = SendLimits(max_send_rate=1000, burst=1000, max_24h_send=10)
    dead, alive = (RedisState.from_url(redis_url, node=n) for n in ("dead", "alive"))
    try:
        assert await dead.reserve_send("acme", 8, 8, limits) is OK  # then it died
        assert await alive.reserve_send("acme", 5, 5, limits) is DAILY
        # Its last change, moved back past PENDING_STALE (Redis's clock cannot be).
        key = "smtprelay:account:{acme}:pending_at"
        redis_server.cli("HSET", key, "dead", str(time.time() - PENDING_STALE - 5))
        assert await alive.reserve_send("acme", 5, 5, limits) is OK
    finally:
        await dead.close()
        await alive.close()


async def test_minutes_past_the_window_leave_the_count(redis_server: RedisServer,
                                                       redis_url: str) -> None:
    state = RedisState.from_url(redis_url, node="n")
    try:
        await state.reserve_send("acme", 2, 2, None)
        await state.settle_send("acme", 2, 2, sent=True, limits=None)
        old = int((time.time() - 25 * 3600) // 60)  # a minute 25 hours ago
        redis_server.cli("ZADD", "smtprelay:account:{acme}:minutes", str(old), str(old))
        redis_server.cli("HSET", "smtprelay:account:{acme}:counts", f"m{old}", "7")
        redis_server.cli("HINCRBY", "smtprelay:account:{acme}:counts", "total", "7")
        assert await state.sent_last_24h("acme") == 2
        counts = redis_server.cli("HGETALL", "smtprelay:account:{acme}:counts").stdout
        assert f"m{old}" not in counts
    finally:
        await state.close()


async def test_redis_down_is_state_unavailable_never_a_verdict() -> None:
    state = RedisState.from_url(f"redis://127.0.0.1:{free_port()}/0", node="n",
                                timeout=0.5)
    try:
        for call in (state.reserve_send("acme", 1, 1, SLOW),
                     state.settle_send("acme", 1, 1, sent=True, limits=SLOW),
                     state.sent_last_24h("acme"), state.auth_locked_for("10.0.0.1", "a"),
                     state.auth_failure("10.0.0.1", "a", POLICY),
                     state.auth_success("10.0.0.1", "a")):
            with pytest.raises(StateUnavailable, match="redis"):
                await call
    finally:
        await state.close()


def test_a_redis_password_never_reaches_the_log() -> None:
    from smtprelay.state.redis import redacted

    assert redacted("redis://relay:s3cret@10.0.0.5:6380/2") == "redis://relay:***@10.0.0.5:6380/2"
    assert redacted("rediss://:s3cret@[2001:db8::5]/0") == "rediss://:***@[2001:db8::5]/0"
    assert redacted("redis://10.0.0.5:6379/0") == "redis://10.0.0.5:6379/0"


def test_redis_scripts_are_loaded_again_after_a_script_flush(redis_url: str) -> None:
    """A Redis restarted empty (or SCRIPT FLUSH) answers NOSCRIPT to the batched
    EVALSHA: the script is loaded and the call made again, no error reaches the caller."""
    async def run() -> list[SendVerdict]:
        state = RedisState.from_url(redis_url, node="n1")
        try:
            first = await state.reserve_send("acme", 1, 1, SLOW)
            await redis.asyncio.Redis.from_url(redis_url).script_flush()
            again = await asyncio.gather(*(state.reserve_send("acme", 1, 1, SLOW)
                                           for _ in range(2)))
            return [first, *again]
        finally:
            await state.close()

    assert asyncio.run(run()) == [SendVerdict.OK] * 3  # SLOW's burst
