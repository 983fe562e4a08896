"""The nodes of a cluster (`store: {backend: redis}`): each writes a heartbeat into Redis
every HEARTBEAT seconds, and `smtprelay cluster status` (and anything else that asks)
lists them with their queues and rates.

A heartbeat is a key per node that expires after NODE_TTL: a node that stops writing
(killed, cut off) shows as gone without anyone cleaning up, and the set of names keeps
it listed until `forget` so an operator sees that it went.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any, cast

import redis
import redis.asyncio as aioredis

HEARTBEAT = 2.0  # seconds between a node's heartbeats
NODE_TTL = 10  # seconds a heartbeat counts for


def _names(prefix: str) -> str:
    return f"{prefix}nodes"


def _key(prefix: str, node: str) -> str:
    return f"{prefix}node:{node}"


class AcceptedRate:
    """Messages accepted per minute, from a running count sampled at each heartbeat."""

    def __init__(self) -> None:
        self.count = 0
        self._samples: deque[tuple[float, int]] = deque()

    def per_minute(self, now: float) -> float:
        self._samples.append((now, self.count))
        while self._samples and self._samples[0][0] < now - 60:
            self._samples.popleft()
        first_at, first = self._samples[0]
        span = max(now - first_at, 1.0)
        return round((self.count - first) * 60 / span, 1)


async def beat(client: aioredis.Redis, prefix: str, node: str,
               status: dict[str, Any]) -> None:
    """Write this node's heartbeat (`status`: what `cluster status` shows of it)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(_key(prefix, node), json.dumps({**status, "node": node, "at": time.time()}),
                 ex=NODE_TTL)
        pipe.sadd(_names(prefix), node)
        await pipe.execute()


async def alive(client: aioredis.Redis, prefix: str) -> int:
    """How many nodes have a live heartbeat."""
    names = cast(set[bytes], await client.smembers(_names(prefix)))
    if not names:
        return 0
    return int(await client.exists(*(_key(prefix, n.decode()) for n in names)))


def nodes(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every node that ever beat (until forgotten), by name; `alive` False for one whose
    heartbeat expired."""
    names = sorted(n.decode() for n in cast(set[bytes], client.smembers(_names(prefix))))
    if not names:
        return []
    beats = cast(list[bytes | None], client.mget([_key(prefix, n) for n in names]))
    found: list[dict[str, Any]] = []
    for name, value in zip(names, beats, strict=True):
        if value is None:
            found.append({"node": name, "alive": False})
        else:
            found.append({**json.loads(value), "node": name, "alive": True})
    return found


def forget(client: redis.Redis, prefix: str, node: str) -> bool:
    """Drop a gone node from the listing; False if it was not listed."""
    client.delete(_key(prefix, node))
    return bool(client.srem(_names(prefix), node))
