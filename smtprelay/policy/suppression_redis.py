"""The suppression list in Redis (`store: {backend: redis}`): one list for every node, so
a bounce recorded on one node stops the next message to that address on any other.

Per account, the entries are a hash (normalised address -> JSON of the rest) and their
addresses a sorted set (policy.redis_entries), so listings page by (account, address) as
the local store's do. The accounts with entries are a set. Writes are MULTI/EXEC
transactions, so a listing never sees an address without its entry for long.

Entries must survive a Redis restart (the operators' guide says how: appendonly yes,
appendfsync everysec). A blocking client, like the SQLite store's connection: the
daemon calls it from threads, the CLI directly.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import redis
import redis.asyncio as aioredis

from smtprelay.policy.redis_entries import AddressEntries, RedisStore
from smtprelay.policy.suppression import (
    Reason,
    SuppressionEntry,
    by_key,
    checked_key,
    in_batches,
    normalise,
    paged,
)
from smtprelay.state.redis import Pipelined


class RedisSuppressionStore(RedisStore):
    # The acceptance path's look-up goes through an asyncio client, batched with the
    # other messages' (state.redis.Pipelined): a blocking call from a thread cost about
    # twice the Python of the whole SQLite look-up (bench/run_submit.py --redis).
    looks_up_on_loop = True

    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:") -> None:
        super().__init__(client, prefix)
        self._by_account = AddressEntries(client, prefix, "suppression")
        self._on_loop: Pipelined | None = None

    def _entries(self, account: str) -> str:
        return self._by_account.entries(account)

    def _index(self, account: str) -> str:
        return self._by_account.index(account)

    @property
    def _accounts(self) -> str:
        return f"{self._prefix}suppression:accounts"

    # -- the acceptance path ---------------------------------------------------------

    def lookup(self, account: str, addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        wanted = by_key(addresses)
        if not wanted:
            return {}
        keys = builtins.list(wanted)
        return _found(account, wanted, keys, self._by_account.get_many(account, keys))

    async def lookup_on_loop(self, account: str,
                             addresses: Sequence[str]) -> dict[str, SuppressionEntry]:
        wanted = by_key(addresses)
        if not wanted:
            return {}
        if self.url is None:  # made on a client rather than a URL (tests)
            return await asyncio.to_thread(self.lookup, account, addresses)
        if self._on_loop is None:
            # Made in the loop that uses it (an asyncio client belongs to one loop).
            self._on_loop = Pipelined(aioredis.Redis.from_url(
                self.url, socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout))
        keys = builtins.list(wanted)
        values = await self._on_loop.command("suppression lookup", "HMGET",
                                             self._entries(account), *keys)
        return _found(account, wanted, keys, cast(list[bytes | None], values))

    async def close_on_loop(self) -> None:
        if self._on_loop is not None:
            await self._on_loop.close()
            self._on_loop = None

    # -- single entries ----------------------------------------------------------------

    def add(self, account: str, address: str, reason: Reason, *,
            source_message_id: str | None = None, created_at: float | None = None,
            diagnostic: str | None = None) -> bool:
        key = checked_key(address, reason)
        when = time.time() if created_at is None else created_at
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._entries(account), key,
                      _value(reason, when, source_message_id, diagnostic))
            pipe.zadd(self._index(account), {key: 0})
            pipe.sadd(self._accounts, account)
            added = pipe.execute()[0]
        return bool(added)

    def remove(self, account: str, address: str) -> bool:
        return self._by_account.remove(account, normalise(address))

    def get(self, account: str, address: str) -> SuppressionEntry | None:
        key = normalise(address)
        value = self._by_account.get(account, key)
        return None if value is None else _entry(account, key, value)

    # -- listings -----------------------------------------------------------------------

    def _accounts_sorted(self) -> builtins.list[str]:
        members = cast(set[bytes], self._redis.smembers(self._accounts))
        return sorted(m.decode("utf-8", "surrogateescape") for m in members)

    def list(self, account: str | None = None, *, reason: Reason | None = None,
             limit: int | None = None, after: tuple[str, str] | None = None,
             contains: str | None = None,
             prefix: str | None = None) -> builtins.list[SuppressionEntry]:
        accounts = [account] if account is not None else self._accounts_sorted()
        wanted = None if limit is None else max(0, limit)
        found: builtins.list[SuppressionEntry] = []
        needle = contains.lower() if contains else None
        if wanted == 0:
            return found
        for name in accounts:
            if after is not None and name < after[0]:
                continue
            start = "-"
            if after is not None and name == after[0]:
                start = "(" + after[1]
            if prefix and (start == "-" or prefix > start[1:]):
                start = "[" + prefix
            end = "[" + prefix + "\U0010ffff" if prefix else "+"
            for address, value in self._by_account.scan(name, start, end):
                if prefix and not address.startswith(prefix):
                    continue
                if needle is not None and needle not in address.lower():
                    continue
                entry = _entry(name, address, value)
                if reason is not None and entry.reason != reason:
                    continue
                found.append(entry)
                if wanted is not None and len(found) >= wanted:
                    return found
        return found

    def iterate(self, account: str | None = None, *, reason: Reason | None = None,
                contains: str | None = None, page: int = 5000) -> Iterator[SuppressionEntry]:
        """Every matching entry, page by page so memory stays flat (exports)."""
        return paged(self, account, reason=reason, contains=contains, page=page)

    def count(self, account: str | None = None) -> int:
        accounts = [account] if account is not None else self._accounts_sorted()
        with self._redis.pipeline(transaction=False) as pipe:
            for name in accounts:
                pipe.hlen(self._entries(name))
            return sum(int(n) for n in pipe.execute())

    # -- bulk ---------------------------------------------------------------------------

    def import_entries(self, account: str,
                       entries: Iterable[tuple[str, Reason, float | None]]) -> int:
        """Upsert in transactions of IMPORT_BATCH entries; returns how many were new."""
        return in_batches(entries, lambda batch: self._import_batch(account, batch))

    def _import_batch(self, account: str, batch: dict[str, tuple[Reason, float]]) -> int:
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hlen(self._entries(account))
            pipe.hset(self._entries(account), mapping={
                key: _value(reason, when, None, None) for key, (reason, when) in batch.items()})
            pipe.zadd(self._index(account), dict.fromkeys(batch, 0))
            pipe.sadd(self._accounts, account)
            pipe.hlen(self._entries(account))
            results = pipe.execute()
        # The hash's size before and after, in one transaction: the new addresses.
        return int(results[-1]) - int(results[0])


def _found(account: str, wanted: dict[str, list[str]], keys: Sequence[str],
           values: Sequence[bytes | None]) -> dict[str, SuppressionEntry]:
    found: dict[str, SuppressionEntry] = {}
    for key, value in zip(keys, values, strict=True):
        if value is not None:
            entry = _entry(account, key, value)
            for original in wanted[key]:
                found[original] = entry
    return found


def _value(reason: Reason, created_at: float, source_message_id: str | None,
           diagnostic: str | None) -> str:
    return json.dumps([reason, created_at, source_message_id, diagnostic],
                      ensure_ascii=False, separators=(",", ":"))


def _entry(account: str, address: str, value: bytes) -> SuppressionEntry:
    reason, created_at, source, diagnostic = cast(builtins.list[Any], json.loads(value))
    return SuppressionEntry(account=account, address=address, reason=cast(Reason, reason),
                            created_at=float(created_at), source_message_id=source,
                            diagnostic=diagnostic)
