"""The Redis backend: shared state for several relay nodes (`store: {backend: redis}`).

Every operation that decides is one Lua script, so it is one atomic step in Redis
however many nodes and workers call it at once, and every time it reads is Redis's
own (TIME), never a node's clock: nodes whose clocks differ still share one bucket.

What lives where (the issue's "say per piece what a failover may lose"):

- The account's rate bucket (tokens and when they were counted): a hash per account.
  Losing it (a failover to a replica a moment behind) gives back at most a moment's
  tokens, as a restart of one relay does.
- The 24-hour counts: recipients per minute in a hash, the minutes in a sorted set,
  their running total beside them. They may lose the last second on a failover.
- Recipients held by open reservations: per node, with the time of the node's last
  change, so a node that dies holding some stops counting after PENDING_STALE seconds
  instead of shrinking the account's quota for a day.
- AUTH lockout: failures per key in a sorted set over the window, locks as keys that
  expire by themselves.
- Outbound connection leases (state.leases): a sorted set of holders per destination,
  each expiring TTL after its last renewal. A failover may lose them for a moment:
  the next renewal writes them back.
- SMTP connection counts are the node's own (limits.max_connections protects the
  node's sockets and memory), kept in memory as by the local backend.

Any Redis error is StateUnavailable: the caller answers with a temporary reply.
"""

from __future__ import annotations

import asyncio
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from smtprelay.state import nodes
from smtprelay.state.api import (
    ConnectionRefusal,
    LockoutPolicy,
    SendLimits,
    SendVerdict,
    StateUnavailable,
)
from smtprelay.state.leases import LEASE_TTL, RedisLeases
from smtprelay.state.local import LocalState
from smtprelay.state.usage import MINUTE, WINDOW
from smtprelay.state.warmup_redis import RedisWarmup

# A node's held recipients stop counting this long after its last reservation or
# settlement: reservations last from DATA to the spool's commit, seconds.
PENDING_STALE = 600
# Keys of an account nobody sends as expire a little after the 24-hour window.
_KEEP = int(WINDOW) + 3600

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# The 24-hour window's end: minutes older than it leave the counts and their total.
_EXPIRE_MINUTES = f"""
local function expire_minutes(minutes, counts)
  local oldest = math.floor((now - {WINDOW}) / {MINUTE})
  local old = redis.call('ZRANGEBYSCORE', minutes, '-inf', '(' .. oldest)
  if #old > 0 then
    local removed = 0
    for _, minute in ipairs(old) do
      removed = removed + tonumber(redis.call('HGET', counts, 'm' .. minute) or '0')
      redis.call('HDEL', counts, 'm' .. minute)
    end
    redis.call('ZREMRANGEBYSCORE', minutes, '-inf', '(' .. oldest)
    redis.call('HINCRBY', counts, 'total', -removed)
  end
end
"""

# KEYS: rate, minutes (zset), counts (hash: m<minute>, total), pending (hash: node ->
# count), pending_at (hash: node -> time). ARGV: recipients, daily, limited (1/0),
# rate, burst, max_24h, node.
_RESERVE = _NOW + _EXPIRE_MINUTES + f"""
local recipients, daily = tonumber(ARGV[1]), tonumber(ARGV[2])
local node = ARGV[7]
if ARGV[3] == '1' then
  expire_minutes(KEYS[2], KEYS[3])
  local held = 0
  local at = redis.call('HGETALL', KEYS[5])
  for i = 1, #at, 2 do
    if tonumber(at[i + 1]) > now - {PENDING_STALE} then
      held = held + tonumber(redis.call('HGET', KEYS[4], at[i]) or '0')
    else
      redis.call('HDEL', KEYS[4], at[i])
      redis.call('HDEL', KEYS[5], at[i])
    end
  end
  local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
  if daily > 0 and total + held + daily > tonumber(ARGV[6]) then
    return 'daily'
  end
  local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
  local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = burst
  if bucket[1] then
    tokens = math.min(burst, tonumber(bucket[1]) + math.max(0, now - tonumber(bucket[2])) * rate)
  end
  local verdict = 'ok'
  if tokens < recipients then
    verdict = 'rate'
  else
    tokens = tokens - recipients
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[1], {_KEEP})
  if verdict ~= 'ok' then
    return verdict
  end
end
if daily > 0 then
  redis.call('HINCRBY', KEYS[4], node, daily)
  redis.call('HSET', KEYS[5], node, tostring(now))
  redis.call('EXPIRE', KEYS[4], {_KEEP})
  redis.call('EXPIRE', KEYS[5], {_KEEP})
end
return 'ok'
"""

# KEYS as _RESERVE. ARGV: recipients, daily, sent (1/0), limited (1/0), burst, node.
_SETTLE = _NOW + f"""
local recipients, daily = tonumber(ARGV[1]), tonumber(ARGV[2])
local node = ARGV[6]
if daily > 0 then
  local held = tonumber(redis.call('HGET', KEYS[4], node) or '0')
  redis.call('HSET', KEYS[4], node, math.max(0, held - daily))
  redis.call('HSET', KEYS[5], node, tostring(now))
end
if ARGV[3] ~= '1' then
  if ARGV[4] == '1' then
    local tokens = redis.call('HGET', KEYS[1], 'tokens')
    if tokens then
      redis.call('HSET', KEYS[1], 'tokens',
                 tostring(math.min(tonumber(ARGV[5]), tonumber(tokens) + recipients)))
    end
  end
  return 0
end
if daily == 0 then
  return 0
end
local minute = math.floor(now / {MINUTE})
redis.call('ZADD', KEYS[2], minute, minute)
redis.call('HINCRBY', KEYS[3], 'm' .. minute, daily)
redis.call('HINCRBY', KEYS[3], 'total', daily)
redis.call('EXPIRE', KEYS[2], {_KEEP})
redis.call('EXPIRE', KEYS[3], {_KEEP})
return 0
"""

# KEYS: minutes, counts. The total after dropping minutes past the window.
_SENT = _NOW + _EXPIRE_MINUTES + """
expire_minutes(KEYS[1], KEYS[2])
return tonumber(redis.call('HGET', KEYS[2], 'total') or '0')
"""

# One failure in one window. KEYS: failures (zset), lock. ARGV: limit, window, lockout,
# address, min_addresses, a unique member. Returns 1 when it locked.
_FAIL = _NOW + """
local limit, window, lockout = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now, ARGV[4] .. '|' .. ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
if #members < limit then
  return 0
end
local minimum = tonumber(ARGV[5])
if minimum > 1 then
  local seen, distinct = {}, 0
  for _, member in ipairs(members) do
    local address = string.match(member, '^(.*)|[^|]*$')
    if not seen[address] then
      seen[address] = true
      distinct = distinct + 1
    end
  end
  if distinct < minimum then
    return 0
  end
end
redis.call('SET', KEYS[2], '1', 'PX', math.max(1, math.ceil(lockout * 1000)))
redis.call('DEL', KEYS[1])
return 1
"""


def blocking_client(url: str, timeout: float) -> redis.Redis:
    """A client for the stores that are called from threads and the CLI (suppression,
    pauses), with the store's timeout on connecting and on every reply."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def redacted(url: str) -> str:
    """A Redis URL as logs may show it: any password replaced."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class _Call:
    command: tuple[Any, ...]
    script: AsyncScript | None  # an EVALSHA's script, loaded again on NOSCRIPT
    answer: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Pipelined:
    """Commands asked for while one batch is on its way go to Redis together, in the
    next pipeline: one round trip, and one pass of the client's machinery, for the
    reservations, settlements and suppression look-ups of every message in flight
    (redis-py spends about 100 µs of Python per call; bench/run_submit.py --redis).
    Scripts go as EVALSHA straight into the pipeline, since redis-py's own script
    support asks SCRIPT EXISTS first, a round trip per batch; a NOSCRIPT (a Redis
    restarted or flushed) loads the script and runs that call again."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._waiting: list[_Call] = []
        self._sending: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await self._redis.aclose()

    async def script(self, what: str, script: AsyncScript, keys: list[str],
                     args: list[Any]) -> Any:
        return await self._call(what, _Call(("EVALSHA", script.sha, len(keys), *keys, *args),
                                            script))

    async def command(self, what: str, *command: Any) -> Any:
        return await self._call(what, _Call(command, None))

    async def _call(self, what: str, call: _Call) -> Any:
        self._waiting.append(call)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send())
        try:
            # Shielded: a caller that goes away must not cancel the batch of others.
            return await asyncio.shield(call.answer)
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {what}: {exc}") from exc

    async def _send(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                answers = await self._pipeline(batch)
                missing = [c for c, a in zip(batch, answers, strict=True)
                           if isinstance(a, NoScriptError) and c.script is not None]
                if missing:
                    for script in {id(c.script): c.script for c in missing}.values():
                        assert script is not None
                        script.sha = await self._redis.script_load(script.script)
                    for c in missing:
                        assert c.script is not None
                        c.command = ("EVALSHA", c.script.sha, *c.command[2:])
                    again = dict(zip(map(id, missing), await self._pipeline(missing),
                                     strict=True))
                    answers = [again.get(id(c), a) for c, a in zip(batch, answers,
                                                                   strict=True)]
            except (RedisError, OSError) as exc:
                answers = [exc] * len(batch)
            for call, answer in zip(batch, answers, strict=True):
                if call.answer.done():
                    continue
                if isinstance(answer, Exception):
                    call.answer.set_exception(answer)
                else:
                    call.answer.set_result(answer)

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for c in calls:
                pipe.execute_command(*c.command)
            return list(await pipe.execute(raise_on_error=False))


class RedisState:
    """SharedState in Redis, for every node that names the same server and prefix."""

    def __init__(self, client: aioredis.Redis, *, node: str,
                 prefix: str = "smtprelay:") -> None:
        self._redis = client
        self._node = node
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._sent = client.register_script(_SENT)
        self._fail = client.register_script(_FAIL)
        self._batched = Pipelined(client)
        # The node's own SMTP connections (see the module's note).
        self._connections = LocalState()

    @classmethod
    def from_url(cls, url: str, *, node: str, prefix: str = "smtprelay:",
                 timeout: float = 2.0) -> RedisState:
        client = aioredis.Redis.from_url(url, socket_timeout=timeout,
                                         socket_connect_timeout=timeout)
        return cls(client, node=node, prefix=prefix)

    async def close(self) -> None:
        await self._redis.aclose()

    def leases(self, ttl: float = LEASE_TTL) -> RedisLeases:
        """The node's outbound connection leases, on this state's server and prefix."""
        return RedisLeases(self._redis, node=self._node, prefix=self._prefix, ttl=ttl)

    def warmup(self) -> RedisWarmup:
        """The IP pools' warm-up counters, on this state's server and prefix."""
        return RedisWarmup(self._redis, self._prefix)

    async def heartbeat(self, status: dict[str, Any]) -> None:
        """This node's heartbeat, for `smtprelay cluster status` (state.nodes)."""
        await self._run("heartbeat", nodes.beat(self._redis, self._prefix, self._node,
                                                status))

    def _account_keys(self, account: str) -> list[str]:
        # One hash tag per account: a Redis Cluster keeps its keys on one shard, as
        # a script needs.
        base = f"{self._prefix}account:{{{account}}}:"
        return [base + "rate", base + "minutes", base + "counts", base + "pending",
                base + "pending_at"]

    async def _run(self, what: str, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StateUnavailable(f"redis: {what}: {exc}") from exc

    async def reserve_send(self, account: str, recipients: int, daily: int,
                           limits: SendLimits | None) -> SendVerdict:
        args = [recipients, daily, 0 if limits is None else 1,
                repr(limits.max_send_rate) if limits else 0, limits.burst if limits else 0,
                limits.max_24h_send if limits else 0, self._node]
        verdict = await self._batched.script("reserve_send", self._reserve,
                                             self._account_keys(account), args)
        return SendVerdict(verdict.decode() if isinstance(verdict, bytes) else verdict)

    async def settle_send(self, account: str, recipients: int, daily: int, *, sent: bool,
                          limits: SendLimits | None) -> None:
        args = [recipients, daily, int(sent), 0 if limits is None else 1,
                limits.burst if limits else 0, self._node]
        await self._batched.script("settle_send", self._settle, self._account_keys(account),
                                   args)

    async def sent_last_24h(self, account: str) -> int:
        keys = self._account_keys(account)
        return int(await self._run("sent_last_24h", self._sent(keys=keys[1:3])))

    def _lockout_keys(self, kind: str, ip: str, username: str | None) -> list[str]:
        """`kind` "fail" or "lock" keys of the address, the pair and the user. A key's
        failures and its lock share a hash tag: one script touches both, and a Redis
        Cluster keeps them on one shard."""
        keys = [f"{self._prefix}{kind}:{{ip:{ip}}}"]
        if username is not None:
            keys += [f"{self._prefix}{kind}:{{pair:{username}\x00{ip}}}",
                     f"{self._prefix}{kind}:{{user:{username}}}"]
        return keys

    async def auth_locked_for(self, ip: str, username: str | None) -> float:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self._lockout_keys("lock", ip, username):
                pipe.pttl(key)
            remaining = await self._run("auth_locked_for", pipe.execute())
        return max(0.0, *(int(ms) / 1000 for ms in remaining))

    async def auth_failure(self, ip: str, username: str | None,
                           policy: LockoutPolicy) -> None:
        member = uuid.uuid4().hex
        # (limit, the address counted for min_addresses, min_addresses) per window.
        windows = [(policy.per_ip, "", 1)]
        if username is not None:
            windows += [(policy.per_user, "", 1),
                        (policy.per_user_everywhere, ip, policy.min_addresses)]
        keys = zip(self._lockout_keys("fail", ip, username),
                   self._lockout_keys("lock", ip, username), strict=True)
        async with self._redis.pipeline(transaction=False) as pipe:
            for (limit, address, minimum), (failures, lock) in zip(windows, keys, strict=True):
                await self._fail(keys=[failures, lock],
                                 args=[limit, policy.window, policy.lockout, address,
                                       minimum, member], client=pipe)
            await self._run("auth_failure", pipe.execute())

    async def auth_success(self, ip: str, username: str) -> None:
        # The pair's failures only, never the address's.
        await self._run("auth_success", self._redis.delete(
            self._lockout_keys("fail", ip, username)[1]))

    async def open_connection(self, ip: str, max_total: int,
                              max_per_ip: int) -> ConnectionRefusal | None:
        return self._connections.open_now(ip, max_total, max_per_ip)

    async def close_connection(self, ip: str) -> None:
        self._connections.close_now(ip)

    @property
    def connections(self) -> int:
        return self._connections.connections

    @property
    def draining(self) -> bool:
        return self._connections.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._connections.draining = value
