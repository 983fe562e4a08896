"""What the Redis stores of entries by address share (`store: {backend: redis}`): the
suppression list (an account's entries) and the contacts (a list's).

A name's entries are a hash (normalised address -> the rest, encoded by the store) and
their addresses a sorted set with every score 0, which Redis orders by bytes, as
SQLite's BINARY collation orders the local stores' keys: listings page by address the
same way on both backends. Both keys carry the name as their hash tag, so a Redis
Cluster keeps them on one shard and a transaction or script may touch both.

A blocking client, like the SQLite stores' connections: the daemon calls it from
threads, the CLI directly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Self, cast

import redis

from smtprelay.state.redis import blocking_client

# Addresses read from an index at a time by a listing.
SCAN_CHUNK = 1000


class RedisStore:
    """A store on one blocking client, its keys under `prefix`."""

    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:") -> None:
        self._redis = client
        self._prefix = prefix
        # Where an asyncio client for the same server comes from (from_url's).
        self.url: str | None = None
        self.timeout = 2.0

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "smtprelay:", timeout: float = 2.0) -> Self:
        store = cls(blocking_client(url, timeout), prefix)
        store.url, store.timeout = url, timeout
        return store

    def open(self) -> None:
        """Nothing to open: the client connects on first use (as the SQLite stores have
        it, for callers that open and close stores alike)."""

    def close(self) -> None:
        self._redis.close()


class AddressEntries:
    """The hash and index of each name of one kind ("suppression", "contacts")."""

    def __init__(self, client: redis.Redis, prefix: str, kind: str) -> None:
        self._redis = client
        self._base = f"{prefix}{kind}"

    def entries(self, name: str) -> str:
        return f"{self._base}:{{{name}}}:entries"

    def index(self, name: str) -> str:
        return f"{self._base}:{{{name}}}:index"

    def get(self, name: str, key: str) -> bytes | None:
        return cast(bytes | None, self._redis.hget(self.entries(name), key))

    def get_many(self, name: str, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return cast(list[bytes | None], self._redis.hmget(self.entries(name), list(keys)))

    def remove(self, name: str, key: str) -> bool:
        """Take an entry and its place in the index away, in one transaction."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.entries(name), key)
            pipe.zrem(self.index(name), key)
            removed = pipe.execute()[0]
        return bool(removed)

    def count(self, name: str) -> int:
        return int(self._redis.hlen(self.entries(name)))

    def scan(self, name: str, start: str = "-", end: str = "+") -> Iterator[tuple[str, bytes]]:
        """(address, value) in address order from `start` to `end` (ZRANGEBYLEX bounds:
        "(" after, "[" from, "-" and "+" the ends), read SCAN_CHUNK at a time; a caller
        that stops early reads no more."""
        while True:
            chunk = cast(list[bytes], self._redis.zrangebylex(
                self.index(name), start, end, start=0, num=SCAN_CHUNK))
            if not chunk:
                return
            addresses = [a.decode("utf-8", "surrogateescape") for a in chunk]
            for address, value in zip(addresses, self.get_many(name, addresses), strict=True):
                if value is not None:  # else removed between the two reads
                    yield address, value
            if len(chunk) < SCAN_CHUNK:
                return
            start = "(" + addresses[-1]
