"""The IP pools' warm-up as operators see it (`smtprelay stats`, the admin API's
/ip-pools routes): per address the warm-up day, SES's WarmupPercentage and
WarmupStatus, today's caps and what was sent today per mailbox provider; and the one
change operators make, putting an address on a given day of its warm-up.

The daemon answers from its own counters (delivery.ip_pools.SourceChooser); the CLI
reads what the daemon saved: the state database (local backend, saved every second)
or Redis.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from smtprelay.config import Config
from smtprelay.config.ip_pools import MAX_WARMUP_DAYS
from smtprelay.delivery.warmup import Progress, progress
from smtprelay.operations.errors import Invalid, NotFound
from smtprelay.state import warmup as local_counts
from smtprelay.state import warmup_redis
from smtprelay.state.redis import blocking_client
from smtprelay.state.warmup import AddressCounts, WarmupCounters, day_of

OTHER = "other"  # how reports name destinations of no known mailbox provider


class PoolNotFound(NotFound):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.known = tuple(sorted(known))
        super().__init__(f"no IP pool {name!r} in the configuration (ip_pools.{name}); "
                         f"pools: {', '.join(self.known) or 'none'}")


class PoolAddressNotFound(NotFound):
    def __init__(self, name: str, address: str) -> None:
        super().__init__(f"{address} is not an address of IP pool {name!r} "
                         f"(ip_pools.{name}.addresses)")


def progress_of(config: Config, counted: Iterable[AddressCounts], today: int,
                pool: str | None = None) -> list[Progress]:
    """Each configured address's progress (of one pool, or all), from its counts."""
    by_address = {c.address: c for c in counted}
    found: list[Progress] = []
    for name, settings in config.ip_pools.items():
        if pool is not None and name != pool:
            continue
        for entry in settings.addresses:
            counts = by_address.get(entry.address, AddressCounts(entry.address, None))
            found.append(progress(name, entry.address, entry.helo, settings.warmup,
                                  warm=entry.warm, started=counts.start_day, today=today,
                                  sent=counts.sent))
    return found


def check_pool(config: Config, pool: str) -> None:
    if pool not in config.ip_pools:
        raise PoolNotFound(pool, config.ip_pools)


async def report(config: Config, counters: WarmupCounters, *, now: float,
                 pool: str | None = None) -> list[Progress]:
    """The daemon's view: from the counters in use."""
    if pool is not None:
        check_pool(config, pool)
    today = day_of(now)
    addresses = [a.address for name, p in config.ip_pools.items()
                 if pool is None or name == pool for a in p.addresses]
    return progress_of(config, await counters.counts(today, addresses), today, pool)


def read_report(config: Config, *, now: float) -> list[Progress]:
    """The CLI's view: what the daemon saved (blocking)."""
    today = day_of(now)
    addresses = [a.address for p in config.ip_pools.values() for a in p.addresses]
    if not addresses:
        return []
    store = config.store
    if store.backend == "redis":
        assert store.url is not None
        client = blocking_client(store.url, store.timeout)
        try:
            counted = warmup_redis.read_counts(client, store.key_prefix, today, addresses)
        finally:
            client.close()
    else:
        counted = local_counts.read_counts(config.state_path, today, addresses)
    return progress_of(config, counted, today)


async def set_day(config: Config, counters: WarmupCounters, pool: str, address: str,
                  day: int, *, now: float) -> Progress:
    """Put `address` of `pool` on day `day` of its warm-up from today (SES's "Edit warm
    up"): day 1 restarts it; days + 1 ends it."""
    check_pool(config, pool)
    entry = next((a for a in config.ip_pools[pool].addresses if a.address == address), None)
    if entry is None:
        raise PoolAddressNotFound(pool, address)
    if not 1 <= day <= MAX_WARMUP_DAYS + 1:
        raise Invalid(f"day must be from 1 to {MAX_WARMUP_DAYS + 1}")
    today = day_of(now)
    await counters.set_start_day(address, today - day + 1)
    return (await report(config, counters, now=now, pool=pool))[
        [a.address for a in config.ip_pools[pool].addresses].index(address)]


def progress_json(item: Progress) -> dict[str, Any]:
    """One address as the admin API and `stats --json` say it (SES's field names where
    SES has one)."""
    caps = item.caps
    return {
        "Ip": item.address, "Helo": item.helo, "PoolName": item.pool,
        "WarmupStatus": str(item.status), "WarmupPercentage": item.percentage,
        "day": item.day, "started": None if item.started is None else _date(item.started),
        "caps": None if caps is None else {"total": caps.total,
                                           "per_provider": caps.per_provider},
        "sent_today": {"total": item.sent_total,
                       "by_provider": dict(sorted((p or OTHER, n)
                                                  for p, n in item.sent.items()))},
    }


def _date(day: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()
