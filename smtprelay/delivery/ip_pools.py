"""Which source address a transaction leaves from: its configuration set's IP pool
(`configuration_sets.<set>.delivery.ip_pool`, else `delivery.ip_pool`), one address of
it, within that address's warm-up caps for the destination's mailbox provider.

Per pool the addresses take turns (round robin), so each gets an even share of the
pool's traffic. An address still warming up takes its turn only while it is within
today's caps (delivery.warmup); when it is not, the pool's `overflow` says who takes
the transaction instead:

- warmed: the next address of the pool, in turn, that has room (a warm one always has);
- wait: the next address that is itself still warming up and has room; a warm address
  keeps its own share and no more, and when none has room the transaction waits: its
  recipients are deferred (SES's SendingDeferral) until a new day's caps let them go.
  Held back by the relay itself, never bounced for the cap.

Each check against the caps is also the count (state.warmup's `take`), one atomic step
in either backend. What a transaction took and did not send (no connection could be
made) is given back.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from smtprelay.config import Config, IpPoolConfig, PoolAddressConfig
from smtprelay.delivery.client import ClientSettings
from smtprelay.delivery.model import Destination, RecipientResult, Verdict
from smtprelay.delivery.providers import Providers, bundled
from smtprelay.delivery.warmup import Progress, caps_on, progress, warmup_day
from smtprelay.infra import metrics
from smtprelay.spool.model import QueuedMessage
from smtprelay.state.api import StateUnavailable
from smtprelay.state.warmup import DAY, NO_PROVIDER, WarmupCounters, day_of

log = logging.getLogger("smtprelay.delivery")

SENDING_DEFERRAL = "SendingDeferral"


@dataclass(frozen=True, slots=True)
class Source:
    """The address a transaction leaves from, and what it counted there."""

    pool: str
    address: str
    helo: str
    provider: str  # NO_PROVIDER for a destination no provider's table names
    count: int  # recipients counted against the address's day
    day: int  # the UTC day they were counted on

    def settings(self, base: ClientSettings) -> ClientSettings:
        return dataclasses.replace(base, source_address=self.address, helo=self.helo)


@dataclass(frozen=True, slots=True)
class Wait:
    """No address of the pool may send this transaction now."""

    pool: str
    reason: str
    # Seconds (the scheduler caps it at delivery.retry.max_interval); None: the usual
    # backoff.
    retry_after: float | None

    def results(self, recipients: Sequence[str]) -> list[RecipientResult]:
        return [RecipientResult(recipient=r, verdict=Verdict.DEFERRED, code=None,
                                status="4.7.0", diagnostic=f"x-local; {self.reason}",
                                retry_after=self.retry_after, delay_type=SENDING_DEFERRAL)
                for r in recipients]


def ip_version(address: str) -> int:
    """4 or 6, for an address already known to be one (a validated pool address, an
    address from an A or AAAA record): asked several times per transaction, so not
    parsed again (ipaddress took a third of an IP pool's cost per transaction)."""
    return 6 if ":" in address else 4


def pool_of(config: Config, configuration_set: str | None) -> str | None:
    """The name of the pool mail of this set leaves from, or None (no pool)."""
    if configuration_set is not None:
        found = config.configuration_sets.get(configuration_set)
        if found is not None and found.delivery.ip_pool is not None:
            return found.delivery.ip_pool
    return config.delivery.ip_pool


class SourceChooser:
    def __init__(self, counters: WarmupCounters, *,
                 providers: Callable[[], Providers] = bundled,
                 clock: Callable[[], float] = time.time) -> None:
        self._counters = counters
        self._providers = providers
        self._clock = clock
        self._turn: dict[str, int] = {}  # pool -> the address whose turn is next

    @property
    def counters(self) -> WarmupCounters:
        return self._counters

    def today(self) -> int:
        return day_of(self._clock())

    async def choose(self, config: Config, message: QueuedMessage, mx_host: str,
                     recipients: int, families: Collection[int] = (4, 6),
                     reusable: Callable[[str], bool] | None = None
                     ) -> Source | Wait | None:
        """The source for a transaction of `recipients` to `mx_host` (the first MX, whose
        name says the mailbox provider), among the pool's addresses of the IP versions
        the destination has (`families`); None: the message's set uses no pool.

        The addresses take turns, except that one with a cached session to the
        destination (`reusable(address)`) goes first: turning a message away from a
        session that is open would make every address open its own sessions to every
        destination, each carrying half the mail (more handshakes, fewer messages per
        session, which receivers watch too)."""
        name = pool_of(config, message.configuration_set)
        if name is None:
            return None
        pool = config.ip_pools.get(name)
        if pool is None:  # the configuration's validator says it exists
            return None
        usable = [a for a in pool.addresses if ip_version(a.address) in families]
        if not usable:
            wanted = " or ".join(f"IPv{f}" for f in sorted(families))
            return Wait(name, f"IP pool {name} has no {wanted} address, and the "
                              f"destination's hosts have only {wanted} addresses; add one "
                              f"to ip_pools.{name}.addresses", retry_after=None)
        provider = self._providers().provider_of(mx_host) or NO_PROVIDER
        now = self._clock()
        today = day_of(now)
        count = len(usable)
        first = self._turn.get(name, 0) % count
        self._turn[name] = (first + 1) % count
        if reusable is not None:
            open_from = next((offset for offset in range(count)
                              if reusable(usable[(first + offset) % count].address)), None)
            if open_from is not None:
                first = (first + open_from) % count
        try:
            for offset in range(count):
                entry = usable[(first + offset) % count]
                source = await self._try(name, pool, entry, provider, recipients, today,
                                         own_turn=offset == 0)
                if source is not None:
                    return source
        except StateUnavailable as exc:
            log.warning("pool %s: warm-up counters unavailable (%s); deferring", name, exc)
            return Wait(name, f"IP pool {name}: the warm-up counters cannot be read "
                              f"({exc}); trying again shortly", retry_after=60.0)
        wait = (today + 1) * DAY - now
        log.info("pool %s: every address at its warm-up cap for %s; waiting %.0f s", name,
                 provider or "this destination", wait)
        return Wait(name, f"IP pool {name}: every address is at today's warm-up cap for "
                          f"{provider or 'its total'}; held back until the caps allow it",
                    retry_after=wait + 1.0)

    async def for_transaction(self, config: Config, message: QueuedMessage,
                              destinations: tuple[Destination, ...], recipients: int,
                              reusable: Callable[[str], bool] | None = None
                              ) -> tuple[Source | Wait | None, tuple[Destination, ...]]:
        """The source of a transaction to `destinations` (resolved, in order) and those
        of them it can reach: the first MX host's name says the mailbox provider whose
        caps it counts against, the hosts' addresses which IP versions can reach them."""
        picked = await self.choose(config, message, destinations[0].host, recipients,
                                   {ip_version(d.address) for d in destinations},
                                   reusable)
        if not isinstance(picked, Source):
            return picked, destinations
        family = ip_version(picked.address)
        return picked, tuple(d for d in destinations if ip_version(d.address) == family)

    async def _try(self, name: str, pool: IpPoolConfig, entry: PoolAddressConfig,
                   provider: str, recipients: int, today: int, *,
                   own_turn: bool) -> Source | None:
        warmup = pool.warmup
        if entry.warm or warmup.schedule == "none":
            caps = None
        else:
            started = await self._counters.start_day(entry.address, today)
            caps = caps_on(warmup, warmup_day(started, today))
        if caps is None:
            if not own_turn and pool.overflow == "wait":
                return None  # a warm address takes its own share only
            await self._counters.add(today, entry.address, provider, recipients)
        elif not await self._counters.take(today, entry.address, provider, recipients,
                                           caps.per_provider, caps.total):
            return None
        return Source(name, entry.address, entry.helo, provider, recipients, today)

    async def settle(self, source: Source, results: Sequence[RecipientResult] | None) -> None:
        """Give back what was counted and never left the address (results None: the
        attempt ended with an exception)."""
        unsent = len([r for r in results if r.outgoing_ip is None]) \
            if results is not None else source.count
        if not unsent:
            return
        try:
            await self._counters.add(source.day, source.address, source.provider, -unsent)
        except StateUnavailable as exc:
            log.warning("pool %s: %d recipients not given back to %s's warm-up count: %s",
                        source.pool, unsent, source.address, exc)

    async def report(self, config: Config) -> list[Progress]:
        """Every pool address's warm-up progress today."""
        today = self.today()
        found: list[Progress] = []
        for name, pool in config.ip_pools.items():
            counts = await self._counters.counts(today, [a.address for a in pool.addresses])
            found.extend(
                progress(name, entry.address, entry.helo, pool.warmup, warm=entry.warm,
                         started=counted.start_day, today=today, sent=counted.sent)
                for entry, counted in zip(pool.addresses, counts, strict=True))
        return found


def export_metrics(found: Sequence[Progress]) -> None:
    """Set the warm-up gauges to `found` (every address of every pool in force: an
    address taken out of the configuration leaves the gauges)."""
    for gauge in (metrics.WARMUP_PERCENTAGE, metrics.WARMUP_DAY, metrics.WARMUP_CAP,
                  metrics.WARMUP_SENT_TODAY):
        gauge.clear()
    for item in found:
        metrics.WARMUP_PERCENTAGE.labels(pool=item.pool, address=item.address).set(
            item.percentage)
        metrics.WARMUP_DAY.labels(pool=item.pool, address=item.address).set(item.day)
        if item.caps is not None:
            metrics.WARMUP_CAP.labels(pool=item.pool, address=item.address,
                                      scope="total").set(item.caps.total)
            metrics.WARMUP_CAP.labels(pool=item.pool, address=item.address,
                                      scope="per_provider").set(item.caps.per_provider)
        for provider, count in item.sent.items():
            metrics.WARMUP_SENT_TODAY.labels(pool=item.pool, address=item.address,
                                             provider=provider or "other").set(count)


def unbindable(config: Config) -> list[str]:
    """A line per pool address this host cannot send from (not configured on an
    interface), naming its key and what to do; blocking (socket calls), at start-up.

    Mail that would leave from such an address waits (every connection from it fails)
    rather than bouncing, so the daemon says so loudly instead of refusing to start:
    `check-config` may run on another machine than `serve`."""
    found: list[str] = []
    for name, pool in config.ip_pools.items():
        for index, entry in enumerate(pool.addresses):
            family = socket.AF_INET6 if ":" in entry.address else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_STREAM) as probe:
                    probe.bind((entry.address, 0))
            except OSError as exc:
                found.append(
                    f"ip_pools.{name}.addresses[{index}].address: cannot send from "
                    f"{entry.address} ({exc.strerror or exc}); add it to an interface "
                    f"(ip addr add {entry.address}/{128 if family == socket.AF_INET6 else 32}"
                    " dev IFACE) or remove it from the pool: mail given its turn waits")
    return found
