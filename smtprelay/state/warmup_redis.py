"""Warm-up counters in Redis (`store: {backend: redis}`): every node of a cluster
counts against the same daily caps of an address.

- Start days: one hash, address -> UTC day number (HSETNX on first use).
- Counts: a hash per day and address, provider -> recipients and TOTAL_FIELD, kept a
  few days past their day. `take` is one Lua script on that one key, so the check
  against both caps and the count are one atomic step (and a Redis Cluster has the
  key on one shard). A failover to a replica a moment behind may lose the last
  moment's counts, letting an address send that much more on that day.

Any Redis error is StateUnavailable: the delivery defers and tries again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smtprelay.state.api import StateUnavailable
from smtprelay.state.warmup import NO_PROVIDER, AddressCounts

TOTAL_FIELD = "\x00total"  # not a provider name (those come from YAML keys)
_KEEP = 3 * 86400

# KEYS: the day's counts of the address. ARGV: provider, count, provider cap (-1:
# none), total cap (-1: none), keep seconds. 1 when counted.
_TAKE = """
local provider, count = ARGV[1], tonumber(ARGV[2])
local provider_cap, total_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local total = tonumber(redis.call('HGET', KEYS[1], '""" + TOTAL_FIELD + """') or '0')
if total_cap >= 0 and total + count > total_cap then
  return 0
end
if provider_cap >= 0 and provider ~= '' then
  local sent = tonumber(redis.call('HGET', KEYS[1], provider) or '0')
  if sent + count > provider_cap then
    return 0
  end
end
redis.call('HINCRBY', KEYS[1], provider, count)
redis.call('HINCRBY', KEYS[1], '""" + TOTAL_FIELD + """', count)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
"""

# KEYS: as _TAKE. ARGV: provider, count (negative gives back), keep seconds. Never
# below zero.
_ADD = """
local provider, count = ARGV[1], tonumber(ARGV[2])
local sent = tonumber(redis.call('HGET', KEYS[1], provider) or '0')
local change = math.max(count, -sent)
redis.call('HINCRBY', KEYS[1], provider, change)
redis.call('HINCRBY', KEYS[1], '""" + TOTAL_FIELD + """', change)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return change
"""

# KEYS: the start days. ARGV: address, today. The start day, set to today if unset.
_START = """
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
"""


def started_key(prefix: str) -> str:
    return f"{prefix}warmup:started"


def sent_key(prefix: str, day: int, address: str) -> str:
    return f"{prefix}warmup:sent:{day}:{address}"


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _counts(address: str, start: Any, fields: dict[Any, Any]) -> AddressCounts:
    sent = {_decode(k): int(v) for k, v in fields.items()}
    sent.pop(TOTAL_FIELD, None)
    return AddressCounts(address, None if start is None else int(start),
                         {p: n for p, n in sent.items() if n})


class RedisWarmup:
    """WarmupCounters in Redis, on a state's server and key prefix."""

    def __init__(self, client: aioredis.Redis, prefix: str = "smtprelay:",
                 keep: int = _KEEP) -> None:
        self._redis = client
        self._prefix = prefix
        self._keep = keep
        self._take = client.register_script(_TAKE)
        self._add = client.register_script(_ADD)
        self._start = client.register_script(_START)

    async def _run(self, what: str, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: warm-up {what}: {exc}") from exc

    async def start_day(self, address: str, today: int) -> int:
        return int(await self._run("start day", self._start(
            keys=[started_key(self._prefix)], args=[address, today])))

    async def set_start_day(self, address: str, day: int) -> None:
        await self._run("start day", self._redis.hset(started_key(self._prefix), address,
                                                      str(day)))

    async def take(self, today: int, address: str, provider: str, count: int,
                   provider_cap: int | None, total_cap: int | None) -> bool:
        granted = await self._run("count", self._take(
            keys=[sent_key(self._prefix, today, address)],
            args=[provider or NO_PROVIDER, count,
                  -1 if provider_cap is None else provider_cap,
                  -1 if total_cap is None else total_cap, self._keep]))
        return bool(int(granted))

    async def add(self, today: int, address: str, provider: str, count: int) -> None:
        await self._run("count", self._add(keys=[sent_key(self._prefix, today, address)],
                                           args=[provider or NO_PROVIDER, count, self._keep]))

    async def counts(self, today: int, addresses: Iterable[str]) -> list[AddressCounts]:
        wanted = list(addresses)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(started_key(self._prefix))
            for address in wanted:
                pipe.hgetall(sent_key(self._prefix, today, address))
            answers = await self._run("report", pipe.execute())
        starts = {_decode(k): v for k, v in answers[0].items()}
        return [_counts(address, starts.get(address), fields)
                for address, fields in zip(wanted, answers[1:], strict=True)]


def read_counts(client: redis.Redis, prefix: str, today: int,
                addresses: Iterable[str]) -> list[AddressCounts]:
    """The cluster's counts for `smtprelay stats` (a blocking client)."""
    wanted = list(addresses)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(started_key(prefix))
        for address in wanted:
            pipe.hgetall(sent_key(prefix, today, address))
        answers = pipe.execute()
    except (RedisError, OSError) as exc:
        raise StateUnavailable(f"redis: warm-up report: {exc}") from exc
    starts = {_decode(k): v for k, v in answers[0].items()}
    return [_counts(address, starts.get(address), fields)
            for address, fields in zip(wanted, answers[1:], strict=True)]
