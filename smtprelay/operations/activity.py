"""What the relay has been doing lately, for the operator's console: per-minute series
of accepted, delivered, deferred, bounced and complained recipients, the queue's depth,
and the busiest destinations.

Blocking (SQLite reads of the spool): call through a thread. The series come from the
spool's per-minute totals (spool.set_stats, `minute_stats`, fed by the same
increments as the hourly statistics, so they count the same things); with store:
redis they are this node's, where the hourly statistics are the cluster's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from smtprelay.spool import set_stats
from smtprelay.spool.store import DestinationFigures

# Each series of the charts and the counters it sums (set_stats.Kind values).
SERIES: dict[str, tuple[str, ...]] = {
    "accepted": ("send",),
    "delivered": ("delivery",),
    "deferred": ("delivery_delay",),
    "bounced": ("bounce", "bounce_transient", "bounce_undetermined"),
    "complained": ("complaint",),
}
_REMOTE_HOST = re.compile(r"^\s*([^\s\[]+)")


class Figures(Protocol):
    def minute_totals(self, since: float) -> list[tuple[int, str, int]]: ...

    def destinations(self, since: float, limit: int) -> list[DestinationFigures]: ...

    def pending_count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Series:
    """One value per minute from `start` (unix seconds, a whole minute), oldest first."""

    start: int
    step: int
    values: Mapping[str, tuple[int, ...]]  # SERIES' names

    def total(self, name: str) -> int:
        return sum(self.values[name])

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "step": self.step,
                "series": {name: list(values) for name, values in self.values.items()}}


def minute_series(figures: Figures, now: float, seconds: float) -> Series:
    """The last `seconds` (at most a day) as per-minute counts, the current minute last."""
    seconds = min(seconds, set_stats.DAY)
    minute = set_stats.MINUTE
    last = int(now // minute)
    first = last - int(seconds // minute) + 1
    kinds = {kind: name for name, members in SERIES.items() for kind in members}
    values = {name: [0] * (last - first + 1) for name in SERIES}
    for at, kind, count in figures.minute_totals(first * minute):
        name = kinds.get(kind)
        if name is not None and first <= at <= last:
            values[name][at - first] += count
    return Series(first * minute, minute, {n: tuple(v) for n, v in values.items()})


@dataclass(frozen=True, slots=True)
class Destination:
    figures: DestinationFigures
    provider: str | None  # by the MX host of its latest attempt (delivery.providers)
    connections: int | None  # delivery sessions in use to it now (None: not known here)

    def as_json(self) -> dict[str, Any]:
        f = self.figures
        return {"domain": f.domain, "provider": self.provider, "waiting": f.waiting,
                "deferred": f.deferred, "delivered": f.delivered, "bounced": f.bounced,
                "delayed": f.delayed, "connections": self.connections,
                "last_remote": f.last_remote, "last_error": f.last_error,
                "last_error_at": f.last_error_at}


def remote_host(remote_mta: str | None) -> str | None:
    """The host name of "mx1.example.net [192.0.2.1]"."""
    if not remote_mta:
        return None
    match = _REMOTE_HOST.match(remote_mta)
    return match.group(1) if match else None


def destinations(figures: Figures, now: float, seconds: float, limit: int, *,
                 provider_of: Callable[[str], str | None],
                 connections: Callable[[str], int] | None = None) -> list[Destination]:
    """The busiest recipient domains: mail waiting now and attempts in the last
    `seconds`, each with its provider and (from the daemon's pool) its sessions."""
    found = []
    for row in figures.destinations(now - seconds, limit):
        host = remote_host(row.last_remote)
        found.append(Destination(row, provider_of(host) if host else None,
                                 connections(row.domain) if connections else None))
    return found
