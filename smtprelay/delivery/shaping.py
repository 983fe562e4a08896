"""Traffic shaping: how fast, and whether, to send to a provider or a destination domain.

Two kinds of limit are kept here, beside the pool's sessions-in-use per domain:

- Per mailbox provider and source address (a `Lane`): the provider's limits from the
  table (`delivery.providers`), counted for each of our outgoing addresses apart,
  because that is how a provider judges a sender. `connections` and
  `messages_per_connection` are applied by the pool (a group limit and a cap on a
  session's transactions); `per_minute` and `per_hour` here. The provider's reply
  rules adjust the lane: `throttle` multiplies its limits by a factor for a while,
  `suspend` stops it, every transaction for it deferring at once with SES's
  DeliveryDelay type `SendingDeferral`.
- Per recipient domain (`delivery.destinations.<domain>`): messages per second,
  minute and hour.

A rate is a sliding window: at most N transactions started in any span of the window's
length, counted in 60 slices per window (so memory is bounded whatever N is, and a
slice is counted until the whole of it has left the window: the limit is never
exceeded, at the price of up to 1/60 of the rate). A transaction that would exceed a
limit waits its turn if that is at most MAX_WAIT away (bookings are first come, first
served, so waiters do not overtake each other), and is otherwise deferred with a retry
time when there will be room.

The state is this process's: in a cluster each node applies the limits to its own
sessions. Per source address that is exact, as source addresses belong to one node;
a per-domain rate is each node's share, so divide the wanted total by the nodes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from prometheus_client import Gauge

from smtprelay.config import DestinationConfig
from smtprelay.delivery.model import RecipientResult, Verdict
from smtprelay.delivery.providers import Limits, Provider, Providers, Rule, bundled
from smtprelay.infra import metrics

log = logging.getLogger("smtprelay.delivery")

# SES's DeliveryDelay delayType when the sending side holds a message back.
SENDING_DEFERRAL = "SendingDeferral"
# The status of our own deferrals (RFC 3463: mail system congestion).
DEFERRAL_STATUS = "4.4.5"
# A transaction waits for room at most this long; beyond, it is deferred.
MAX_WAIT = 2.0
# Throttles compound, down to this share of the limits.
MIN_FACTOR = 0.125
# Slices per sliding window.
SLICES = 60
# What a limit's metrics and logs call the host's own address (source None).
DEFAULT_SOURCE = "default"
_QUOTED_REPLY = 200  # characters of the reply that tripped a rule, in diagnostics

Reason = Literal["suspended", "provider_rate", "domain_rate"]


def source_label(source: str | None) -> str:
    return DEFAULT_SOURCE if source is None else source


class Window:
    """At most `limit` bookings in any span of `span` seconds, bookings in time order."""

    __slots__ = ("_last", "_slices", "_total", "_width", "limit", "span")

    def __init__(self, limit: int, span: float) -> None:
        self.limit = limit
        self.span = span
        self._width = span / SLICES
        # [slice index, when the whole slice has left the window, bookings in it]
        self._slices: deque[list[float]] = deque()
        self._total = 0
        self._last = float("-inf")

    def has_room(self, now: float) -> bool:
        """Whether a booking at `now` fits: earliest(now, now) == now, the usual answer
        when no limit is near, found without walking the slices."""
        if self._last > now:
            return False
        self._forget_left(now)
        return self._total < self.limit

    def _forget_left(self, base: float) -> None:
        # Time only moves on and bookings come in order: what has left the window
        # at `base` is gone for every later question.
        slices = self._slices
        while slices and slices[0][1] <= base:
            self._total -= int(slices.popleft()[2])

    def earliest(self, now: float, at: float) -> float:
        """The earliest time, not before `at` nor the last booking, with room for one
        more booking. Nothing is booked."""
        base = max(now, self._last)
        self._forget_left(base)
        at = max(at, base)
        total = self._total
        for _, leaves, count in self._slices:
            if leaves <= at:
                total -= int(count)
                continue
            if total < self.limit:
                break
            total -= int(count)
            at = leaves
        return at

    def book(self, at: float) -> None:
        """Count a transaction started at `at` (from earliest(): not before the last)."""
        width = self._width
        index = int(at // width)
        if (index + 1) * width <= at:  # float rounding put `at` in the slice before
            index += 1
        slices = self._slices
        if slices and slices[-1][0] == index:
            slices[-1][2] += 1
        else:
            slices.append([index, (index + 1) * width + self.span, 1])
        self._total += 1
        self._last = at


def _windows(kept: dict[str, Window], limits: Mapping[str, int | None],
             spans: Mapping[str, float], factor: float = 1.0) -> list[Window]:
    """`kept`'s windows made to agree with `limits` (a reload may change them; the
    counts are kept)."""
    for key, span in spans.items():
        limit = limits.get(key)
        if limit is None:
            kept.pop(key, None)
            continue
        window = kept.get(key)
        if window is None:
            window = kept[key] = Window(limit, span)
        window.limit = max(1, int(limit * factor))
    return list(kept.values())


_PROVIDER_SPANS = {"per_minute": 60.0, "per_hour": 3600.0}
_DOMAIN_SPANS = {"per_second": 1.0, "per_minute": 60.0, "per_hour": 3600.0}


class Lane:
    """One provider for one source address: its windows, throttle and suspension."""

    def __init__(self, provider: Provider, source: str | None) -> None:
        self.provider = provider  # replaced when a reload changes the table
        self.source = source
        self.label = source_label(source)
        # The pool's group key: sessions to this provider from this address.
        self.group = ("provider", provider.name, source)
        self._windows: dict[str, Window] = {}
        # The windows as last made, and for what: remade when a reload or a throttle
        # changes the limits, not for every transaction.
        self._made: tuple[Provider, float, list[Window]] | None = None
        self.transactions = metrics.PROVIDER_TRANSACTIONS.labels(provider=provider.name)
        self.suspended_until = 0.0
        self.suspended_by = ""
        self.factor = 1.0
        self.throttled_until = 0.0
        self.throttled_by = ""
        self.suspension_timer: asyncio.TimerHandle | None = None
        self.throttle_timer: asyncio.TimerHandle | None = None

    @property
    def connections(self) -> int | None:
        limit = self.provider.limits.connections
        return None if limit is None else max(1, int(limit * self.factor))

    @property
    def messages_per_connection(self) -> int | None:
        return self.provider.limits.messages_per_connection

    def windows(self) -> list[Window]:
        made = self._made
        if made is not None and made[0] is self.provider and made[1] == self.factor:
            return made[2]
        limits = self.provider.limits
        windows = _windows(self._windows, {"per_minute": limits.per_minute,
                                           "per_hour": limits.per_hour},
                           _PROVIDER_SPANS, self.factor)
        self._made = (self.provider, self.factor, windows)
        return windows


@dataclass(frozen=True, slots=True)
class Deferral:
    """A transaction held back by the relay: every recipient deferred alike."""

    reason: Reason
    retry_after: float
    diagnostic: str

    def results(self, recipients: Sequence[str]) -> list[RecipientResult]:
        return [RecipientResult(recipient=r, verdict=Verdict.DEFERRED, code=None,
                                status=DEFERRAL_STATUS, diagnostic=self.diagnostic,
                                retry_after=self.retry_after, delay_type=SENDING_DEFERRAL)
                for r in recipients]


@dataclass(frozen=True, slots=True)
class LaneState:
    """One lane as operators see it (the console's Delivery page)."""

    provider: str
    source: str  # the source address, or DEFAULT_SOURCE for the host's own
    limits: Limits  # the provider's, as configured
    # Seconds left of a suspension (0: not suspended) and the rule and reply that
    # started it.
    suspended_for: float
    suspended_by: str
    # Seconds left of a throttle (0: not throttled), the share of the limits in force
    # meanwhile, and the rule and reply that last lowered it.
    throttled_for: float
    factor: float
    throttled_by: str
    # The limits in force now (the configured ones times `factor`).
    connections: int | None
    per_minute: int | None
    per_hour: int | None


@dataclass(frozen=True, slots=True)
class ShapingState:
    """A read-only copy of a Shaper's state: nothing in it changes the shaper."""

    enabled: bool
    table: Providers  # the provider table in force (the bundled one with the operator's)
    destinations: Mapping[str, DestinationConfig]  # delivery.destinations in force
    lanes: tuple[LaneState, ...]  # every provider and source address sent to so far


class Shaper:
    """The lanes and the per-domain windows of one process."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._table = bundled()
        self.enabled = True
        self._destinations: Mapping[str, DestinationConfig] = {}
        self._lanes: dict[tuple[str, str | None], Lane] = {}
        self._domain_windows: dict[str, dict[str, Window]] = {}
        self._domain_made: dict[str, tuple[DestinationConfig, list[Window]]] = {}

    # ---------------------------------------------------------------- configuration

    def configure(self, *, enabled: bool, destinations: Mapping[str, DestinationConfig],
                  table: Providers | None = None) -> None:
        """Apply (a reload of) the configuration; what was counted is kept."""
        self.enabled = enabled
        self._destinations = destinations
        for domain in [d for d in self._domain_windows if d not in destinations]:
            del self._domain_windows[domain]
        self._domain_made.clear()
        if table is not None:
            self.use_table(table)

    def use_table(self, table: Providers) -> None:
        self._table = table
        for key, lane in list(self._lanes.items()):
            provider = table.get(key[0])
            if provider is None:
                del self._lanes[key]  # gone from the table: its limits are too
            else:
                lane.provider = provider

    @property
    def table(self) -> Providers:
        return self._table

    def snapshot(self) -> ShapingState:
        """What is limited, suspended and throttled now, for display (the lanes as
        suspended() and the windows see them)."""
        now = self._clock()
        lanes = []
        for lane in sorted(self._lanes.values(),
                           key=lambda lane: (lane.provider.name, lane.label)):
            suspended = max(0.0, lane.suspended_until - now)
            throttled = lane.factor < 1.0  # until its timer restores the limits
            limits = lane.provider.limits
            lanes.append(LaneState(
                provider=lane.provider.name, source=lane.label, limits=limits,
                suspended_for=suspended, suspended_by=lane.suspended_by if suspended else "",
                throttled_for=max(0.0, lane.throttled_until - now) if throttled else 0.0,
                factor=lane.factor, throttled_by=lane.throttled_by if throttled else "",
                connections=lane.connections,
                per_minute=_scaled(limits.per_minute, lane.factor),
                per_hour=_scaled(limits.per_hour, lane.factor)))
        return ShapingState(enabled=self.enabled, table=self._table,
                            destinations=self._destinations, lanes=tuple(lanes))

    # ---------------------------------------------------------------- admission

    def lane(self, mx_host: str, source: str | None) -> Lane | None:
        """The lane of the provider `mx_host` belongs to, for `source`; None when
        shaping is off or the host is no provider's."""
        if not self.enabled:
            return None
        name = self._table.provider_of(mx_host)
        if name is None:
            return None
        lane = self._lanes.get((name, source))
        if lane is None:
            provider = self._table.get(name)
            assert provider is not None
            lane = self._lanes[(name, source)] = Lane(provider, source)
        return lane

    def suspended(self, lane: Lane | None) -> Deferral | None:
        """A deferral when `lane` is suspended now."""
        if lane is None:
            return None
        left = lane.suspended_until - self._clock()
        if left <= 0:
            return None
        metrics.SHAPING_DEFERRALS.labels(reason="suspended").inc()
        return Deferral("suspended", left, (
            f"x-local; sending to {lane.provider.name} from {lane.label} is suspended for "
            f"{left:.0f}s more ({lane.suspended_by})"))

    async def admit(self, domain: str, lane: Lane | None) -> Deferral | None:
        """Wait for room under the domain's and the lane's rates (at most MAX_WAIT) and
        book the transaction; or a deferral until there will be room."""
        if lane is not None:
            lane.transactions.inc()
        domain_windows = self._windows_of(domain)
        lane_windows = lane.windows() if lane is not None else []
        if not domain_windows and not lane_windows:
            return None
        now = self._clock()
        if (all(window.has_room(now) for window in domain_windows)
                and all(window.has_room(now) for window in lane_windows)):
            for window in (*domain_windows, *lane_windows):
                window.book(now)
            return None
        at, bound = now, ""
        for _ in range(8):  # each window's answer may push another's: a few rounds agree
            moved = False
            for kind, windows in (("domain", domain_windows), ("provider", lane_windows)):
                for window in windows:
                    later = window.earliest(now, at)
                    if later > at:
                        at, bound, moved = later, kind, True
            if not moved:
                break
        wait = at - now
        if wait > MAX_WAIT:
            # Spread the retries of what is held back, so they do not all come back at
            # the moment there is room for one.
            retry = wait * self._rng.uniform(1.0, 1.25)
            if bound == "domain":
                metrics.SHAPING_DEFERRALS.labels(reason="domain_rate").inc()
                text = f"the rate limit of {domain} (delivery.destinations.{domain})"
                return Deferral("domain_rate", retry, f"x-local; {text} is reached; room in "
                                f"{wait:.0f}s")
            assert lane is not None
            metrics.SHAPING_DEFERRALS.labels(reason="provider_rate").inc()
            return Deferral("provider_rate", retry, (
                f"x-local; the rate limit of {lane.provider.name} for {lane.label} is "
                f"reached; room in {wait:.0f}s"))
        for window in (*domain_windows, *lane_windows):
            window.book(at)
        if wait > 0:
            metrics.SHAPING_WAITS.inc()
            await asyncio.sleep(wait)
        return None

    def _windows_of(self, domain: str) -> list[Window]:
        limits = self._destinations.get(domain)
        if limits is None:
            return []
        made = self._domain_made.get(domain)
        if made is not None and made[0] is limits:
            return made[1]
        windows = _windows(self._domain_windows.setdefault(domain, {}), {
            "per_second": limits.per_second, "per_minute": limits.per_minute,
            "per_hour": limits.per_hour}, _DOMAIN_SPANS)
        self._domain_made[domain] = (limits, windows)
        return windows

    # ---------------------------------------------------------------- replies

    def observe(self, lane: Lane, code: int | None, status: str, diagnostic: str) -> bool:
        """Apply the first of the lane's rules the reply matches; True when the lane is
        suspended now."""
        for rule in lane.provider.rules:
            if rule.matches(code, status, diagnostic):
                self._apply(lane, rule, diagnostic)
                break
        return lane.suspended_until > self._clock()

    def after(self, lane: Lane | None, results: list[RecipientResult]) -> list[RecipientResult]:
        """A transaction's results seen by the lane's rules. When they suspend the lane,
        its deferred recipients wait for the end of the suspension."""
        if lane is None or not lane.provider.rules:
            return results
        seen: set[tuple[int, str]] = set()
        for result in results:
            if result.verdict is Verdict.DELIVERED or result.code is None:
                continue
            reply = (result.code, result.diagnostic)
            if reply not in seen:
                seen.add(reply)
                self.observe(lane, result.code, result.status, result.diagnostic)
        return self.held_back(lane, results)

    def held_back(self, lane: Lane | None,
                  results: list[RecipientResult]) -> list[RecipientResult]:
        """`results` with their deferred recipients waiting for the end of the lane's
        suspension, if it is suspended."""
        if lane is None:
            return results
        left = lane.suspended_until - self._clock()
        if left <= 0:
            return results
        return [replace(r, retry_after=max(r.retry_after or 0.0, left))
                if r.verdict is Verdict.DEFERRED else r for r in results]

    def _apply(self, lane: Lane, rule: Rule, diagnostic: str) -> None:
        provider, source = lane.provider.name, lane.label
        metrics.SHAPING_RULE_HITS.labels(provider=provider, rule=rule.name,
                                         action=rule.action).inc()
        if rule.action == "ignore":
            return
        now = self._clock()
        until = now + rule.duration
        quoted = diagnostic if len(diagnostic) <= _QUOTED_REPLY else (
            diagnostic[:_QUOTED_REPLY] + "...")
        if rule.action == "suspend":
            if until <= lane.suspended_until:
                return  # already suspended for longer
            starting = lane.suspended_until <= now
            lane.suspended_until = until
            lane.suspended_by = f"rule {rule.name}: {quoted}"
            metrics.PROVIDER_SUSPENDED.labels(provider=provider, source=source).set(1)
            if starting:
                log.warning("shaping provider=%s source=%s suspended for %.0fs by rule %s: %s",
                            provider, source, rule.duration, rule.name, quoted)
            lane.suspension_timer = self._timer(lane.suspension_timer, rule.duration,
                                               self._suspension_over, lane)
            return
        lane.factor = max(MIN_FACTOR, lane.factor * rule.factor)
        lane.throttled_until = max(lane.throttled_until, until)
        lane.throttled_by = f"rule {rule.name}: {quoted}"
        metrics.PROVIDER_THROTTLE.labels(provider=provider, source=source).set(lane.factor)
        log.warning("shaping provider=%s source=%s throttled to %.0f%% of its limits for "
                    "%.0fs by rule %s: %s", provider, source, lane.factor * 100,
                    lane.throttled_until - now, rule.name, quoted)
        lane.throttle_timer = self._timer(lane.throttle_timer, lane.throttled_until - now,
                                         self._throttle_over, lane)

    @staticmethod
    def _timer(old: asyncio.TimerHandle | None, delay: float,
               callback: Callable[[Lane], None], lane: Lane) -> asyncio.TimerHandle:
        if old is not None:
            old.cancel()
        return asyncio.get_running_loop().call_later(delay, callback, lane)

    def _suspension_over(self, lane: Lane) -> None:
        lane.suspension_timer = None
        log.info("shaping provider=%s source=%s suspension ended", lane.provider.name,
                 lane.label)
        _forget(metrics.PROVIDER_SUSPENDED, lane.provider.name, lane.label)

    def _throttle_over(self, lane: Lane) -> None:
        lane.throttle_timer = None
        lane.factor = 1.0
        log.info("shaping provider=%s source=%s throttle ended", lane.provider.name,
                 lane.label)
        _forget(metrics.PROVIDER_THROTTLE, lane.provider.name, lane.label)


def _scaled(limit: int | None, factor: float) -> int | None:
    # As the lane's windows and group limit apply a throttle: at least 1.
    return None if limit is None else max(1, int(limit * factor))


def _forget(gauge: Gauge, *labels: str) -> None:
    # Only lanes held back keep a series: label sets stay few.
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
