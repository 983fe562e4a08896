"""Per-set statistics of a whole cluster (`store: {backend: redis}`): each node copies
its own hourly counters (smtprelay.spool.set_stats) into Redis, and the reputation
guard, the admin API's statistics and `smtprelay stats` on any node read the sum.

Why a copy rather than counting in Redis: the counters are written in the same SQLite
transaction as what they count, so a crash never leaves the two apart; counting in
Redis as well would add a round trip to every one of those transactions and could
count twice when a transaction is retried. A copy of absolute values can never count
twice, and a Redis that lost them (restart, failover) gets them back from the nodes'
spools at once (each node notices its marker key gone) and in any case at the next
full copy (FULL_EVERY), for every hour the spools keep.

Layout: a hash per hour, ``stats:<hour>``, field ``<node>\\t<set>\\t<account>\\t<kind>``
holding that node's count, expiring with set_stats.RETENTION. A node copies the
counters that changed every MIRROR_EVERY seconds, so another node sees a complaint
within about that long (plus its guard's check_interval). A node that is gone keeps
its counts until they expire: its mail was sent and its complaints happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis

from smtprelay.config import Config
from smtprelay.spool import set_stats
from smtprelay.spool.set_stats import Counts, Row, Window
from smtprelay.state.redis import blocking_client

log = logging.getLogger("smtprelay.cluster")

MIRROR_EVERY = 1.0
FULL_EVERY = 60.0  # seconds between copies of every kept hour, not only the changed
_SEP = "\t"  # names are configuration names (config.check_name): never a tab


def _key(prefix: str, hour: int) -> str:
    return f"{prefix}stats:{hour}"


class ClusterCounters:
    """set_totals over every node's counters (blocking: call through a thread)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def of(cls, config: Config) -> ClusterCounters | None:
        """The cluster's counters for `config`'s store; None when it is one node."""
        store = config.store
        if store.backend != "redis" or store.url is None:
            return None
        return cls(blocking_client(store.url, store.timeout), store.key_prefix)

    def close(self) -> None:
        self._redis.close()

    def set_totals(self, window: Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, Counts]:
        with self._redis.pipeline(transaction=False) as pipe:
            for hour in range(window.first_hour, window.last_hour + 1):
                pipe.hgetall(_key(self._prefix, hour))
            hours: list[dict[bytes, bytes]] = pipe.execute()
        return set_stats.group(_fields(hours), by=by, configuration_set=configuration_set,
                               account=account)


def _fields(hours: list[dict[bytes, bytes]]) -> Iterator[tuple[str, str, str, int]]:
    for fields in hours:
        for field, value in fields.items():
            _node, set_name, account, kind = field.decode().split(_SEP)
            yield set_name, account, kind, int(value)


class StatsMirror:
    """Copies this node's counters into Redis (a task the daemon runs and cancels)."""

    def __init__(self, client: redis.Redis, prefix: str, node: str,
                 rows_since: Callable[[int], list[Row]],
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._prefix = prefix
        self._node = node
        self._rows_since = rows_since  # Spool.set_stats_since
        self._clock = clock
        self._marker = f"{prefix}stats:copied:{node}"
        self._copied: dict[tuple[int, str, str, str], int] = {}
        self._full_at = float("-inf")

    def copy(self) -> int:
        """Copy what changed since the last copy (everything kept, every FULL_EVERY
        seconds); returns how many counters were written. Blocking."""
        now = self._clock()
        # A Redis that restarted empty, or failed over to a replica behind, has lost
        # this node's marker: copy everything now rather than at the next full copy.
        full = now - self._full_at >= FULL_EVERY or not self._redis.exists(self._marker)
        # Nearly every counter grows in the hour it happens in, so between full copies
        # the last two hours are enough; one bumped in an older hour (a report dated
        # earlier) reaches the cluster with the next full copy.
        first = set_stats.hour_of(now - (set_stats.RETENTION if full else set_stats.HOUR))
        changed: dict[int, dict[Any, int]] = {}  # redis-py's mapping wants Any keys
        seen: dict[tuple[int, str, str, str], int] = {}
        for hour, set_name, account, kind, count in self._rows_since(first):
            key = (hour, set_name, account, kind)
            seen[key] = count
            if full or self._copied.get(key) != count:
                field = _SEP.join((self._node, set_name, account, kind))
                changed.setdefault(hour, {})[field] = count
        if changed:
            with self._redis.pipeline(transaction=False) as pipe:
                for hour, fields in changed.items():
                    pipe.hset(_key(self._prefix, hour), mapping=fields)
                    pipe.expireat(_key(self._prefix, hour),
                                  int((hour + 1) * set_stats.HOUR + set_stats.RETENTION))
                pipe.execute()
        if full:
            self._redis.set(self._marker, repr(now))
            self._copied = seen
            self._full_at = now
        else:
            self._copied.update(seen)
        return sum(len(fields) for fields in changed.values())

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.to_thread(self.copy)
            except (redis.RedisError, OSError) as exc:
                if not failing:
                    log.warning("statistics: cannot copy this node's counters to redis "
                                "(other nodes' reputation checks miss them until it "
                                "works): %s", exc)
                failing = True
                self._full_at = float("-inf")  # copy everything once it works again
            else:
                if failing:
                    log.info("statistics: copying this node's counters to redis again")
                failing = False
            await asyncio.sleep(MIRROR_EVERY)
