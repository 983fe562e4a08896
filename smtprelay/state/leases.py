"""Leases on outbound connection slots, so that a per-destination connection limit
(delivery.max_connections_per_domain; a smarthost's max_connections) holds for a
cluster, not per node.

A receiver counts open TCP connections, and the delivery pool keeps finished sessions
open for the next message, so a lease is held for as long as the connection it
allowed is open, in use or idle, and given back when it closes. On one node the
pool's own semaphore is the limit and nothing here is used.

In Redis each slot is a sorted set of its holders: member "node:unique id", score
the time (Redis's clock, TIME inside the script) at which the lease expires. Taking
one drops the expired members and adds ours if fewer than the limit are left; giving
it back is ZREM; every TTL/3 the node renews all it holds in one pipeline. A node
that dies (kill -9, cut off) stops renewing, and its leases are free again within
the TTL.

Redis unreachable: deliveries go on under a conservative local limit, the slot's
limit divided by the nodes last seen alive (their heartbeats, state.nodes), at least
1, so together the nodes stay near the limit without asking anyone. The renewal task
keeps knocking, and when Redis answers it writes every lease the node holds (those
granted meanwhile too, as their connections are open) and leasing resumes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smtprelay.infra import metrics
from smtprelay.state import nodes

log = logging.getLogger("smtprelay.state")

LEASE_TTL = 30.0  # seconds, store.lease_ttl's default
# While Redis is away it is asked again this often (at most), so leasing resumes
# within about a heartbeat of its return.
_PROBE_EVERY = nodes.HEARTBEAT

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# The slot's key outlives its longest lease, so a slot nobody uses leaves nothing.
_KEEP_KEY = """
local function keep(key, ttl)
  local ms = math.ceil(ttl * 1000)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end
"""

# KEYS: the slot's holders (zset). ARGV: limit, ttl, member. 1 when granted.
_ACQUIRE = _NOW + _KEEP_KEY + """
local limit, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
keep(KEYS[1], ttl)
return 1
"""

# KEYS: the slot's holders. ARGV: ttl, members... Upserts: a lease that expired in
# Redis (an outage longer than the TTL, a Redis restarted empty) or was granted
# locally meanwhile is written again, as its connection is open.
_RENEW = _NOW + _KEEP_KEY + """
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
keep(KEYS[1], ttl)
return #ARGV - 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    slot: str
    member: str  # unique in the cluster: the node's name and a random id
    limit: int  # the slot's limit when it was granted


class Leases(Protocol):
    async def try_acquire(self, slot: str, limit: int) -> Lease | None:
        """One of `slot`'s `limit` leases, or None when all are held (the caller
        waits, or closes one of its own idle connections to the slot)."""

    async def release(self, lease: Lease) -> None:
        """Give back a lease whose connection closed (or never opened)."""

    def keep(self, lease: Lease) -> bool:
        """Whether the lease's connection may stay open for the next message: not
        while it is over the node's share of the slot (Redis away), so a node that
        held more than its share comes down to it as its transactions end."""


class RedisLeases:
    """Leases in Redis for the nodes of a cluster (see the module's note). `run()` is
    the node's renewal task."""

    def __init__(self, client: aioredis.Redis, *, node: str, prefix: str,
                 ttl: float = LEASE_TTL) -> None:
        self._redis = client
        self._node = node
        self._prefix = prefix
        self.ttl = ttl
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._held: dict[str, set[str]] = {}  # slot -> members this node holds
        # A renewal and a release of the same member must not cross (a late renewal
        # would bring the released lease back until its TTL).
        self._writing = asyncio.Lock()
        self._local_only = False  # Redis away: the conservative local limit applies
        self._alive = 1  # nodes with a heartbeat, as last seen
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ figures

    @property
    def held(self) -> int:
        return sum(len(members) for members in self._held.values())

    def held_for(self, slot: str) -> int:
        return len(self._held.get(slot, ()))

    @property
    def local_only(self) -> bool:
        return self._local_only

    def local_limit(self, limit: int) -> int:
        """A slot's limit while Redis is away: this node's share of it."""
        return max(1, limit // max(1, self._alive))

    # ------------------------------------------------------------------ leases

    def _key(self, slot: str) -> str:
        # The slot as hash tag: a Redis Cluster keeps the key on one shard.
        return f"{self._prefix}lease:{{{slot}}}"

    async def try_acquire(self, slot: str, limit: int) -> Lease | None:
        lease = Lease(slot, f"{self._node}:{uuid.uuid4().hex}", limit)
        if self._local_only:
            return self._grant_locally(lease, limit)
        try:
            granted = await self._acquire(keys=[self._key(slot)],
                                          args=[limit, repr(self.ttl), lease.member])
        except asyncio.CancelledError:
            # The script may have run without our reading its answer: take back
            # whatever it may have granted, or it would count until its TTL.
            self._in_background(self._remove(lease))
            raise
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return self._grant_locally(lease, limit)
        if not granted:
            return None
        self._hold(lease)
        return lease

    async def release(self, lease: Lease) -> None:
        members = self._held.get(lease.slot)
        if members is not None:
            members.discard(lease.member)
            if not members:
                del self._held[lease.slot]
        metrics.OUTBOUND_LEASES.set(self.held)
        await self._remove(lease)

    def keep(self, lease: Lease) -> bool:
        return not self._local_only or \
            self.held_for(lease.slot) <= self.local_limit(lease.limit)

    def _hold(self, lease: Lease) -> None:
        self._held.setdefault(lease.slot, set()).add(lease.member)
        metrics.OUTBOUND_LEASES.set(self.held)

    def _grant_locally(self, lease: Lease, limit: int) -> Lease | None:
        if self.held_for(lease.slot) >= self.local_limit(limit):
            return None
        self._hold(lease)
        return lease

    async def _remove(self, lease: Lease) -> None:
        async with self._writing:
            try:
                await self._redis.zrem(self._key(lease.slot), lease.member)
            except (RedisError, OSError) as exc:
                # It expires by itself within the TTL.
                log.debug("leases: %s of %s not given back: %s", lease.member, lease.slot,
                          exc)

    # ------------------------------------------------------------------ renewal

    async def run(self) -> None:
        """Renew every lease this node holds every TTL/3 (while Redis is away, try
        again every few seconds); cancel to stop."""
        while True:
            await self.renew()
            await asyncio.sleep(min(self.ttl / 3, _PROBE_EVERY) if self._local_only
                                else self.ttl / 3)

    async def renew(self) -> None:
        """One renewal of every held lease, with the count of live nodes for the
        local limit; leaves or enters the local-only mode as Redis answers."""
        async with self._writing:
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for slot, members in self._held.items():
                        await self._renew(keys=[self._key(slot)],
                                          args=[repr(self.ttl), *members], client=pipe)
                    await pipe.execute()
                alive = await nodes.alive(self._redis, self._prefix)
            except (RedisError, OSError) as exc:
                self._lost(exc)
                return
        if max(1, alive) != self._alive:
            self._alive = max(1, alive)
            log.info("leases: %d nodes alive; while redis is away each takes 1/%d of "
                     "a destination's connection limit", self._alive, self._alive)
        if self._local_only:
            self._local_only = False
            log.warning("leases: redis answers again; connection limits are shared "
                        "again (%d leases held written back)", self.held)

    def _lost(self, exc: Exception) -> None:
        if not self._local_only:
            self._local_only = True
            log.error("leases: redis not answering (%s); delivering under local "
                      "connection limits (each slot's limit / %d nodes) until it is back",
                      exc, self._alive)

    # ------------------------------------------------------------------ stopping

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for the last releases (the caller closes the client)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=5)
