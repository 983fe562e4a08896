"""The warm-up schedule of an IP pool's addresses: each day's caps, and the progress SES
reports as WarmupPercentage and WarmupStatus.

Warm-up is time-based, as SES's automatic warm-up is ("the warm-up percentage steadily
increases ... independently from your sending volume"): day 1 is the first day the
address sent (UTC), and the caps of day N hold whatever was sent before. From day
`days` + 1 on the address is warm (DONE) and uncapped.

The standard schedule is a 30-day ramp (STANDARD_TOTALS, for the address's whole
day), stretched or squeezed to `warmup.days`: it starts at 200 recipients a day with
at most 40% (per_provider_share) to any one mailbox provider, so a provider such as
Gmail sees about 80 on day 1; it doubles for the first days, as mailbox providers'
guidance for new IPs does (a few hundred a day to start, doubling while complaints
and blocks stay low), then grows by steps to 750,000 a day on the last day. Counts
are per day, not per hour; docs/ip-pools.md has the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from smtprelay.config import WarmupConfig

# Recipients per day for day 1..30 of the standard schedule.
STANDARD_TOTALS: tuple[int, ...] = (
    200, 400, 800, 1_500, 2_500, 4_000, 6_000, 9_000, 13_000, 18_000,
    25_000, 33_000, 42_000, 52_000, 65_000, 80_000, 100_000, 120_000, 145_000, 170_000,
    200_000, 235_000, 270_000, 310_000, 350_000, 400_000, 450_000, 500_000, 600_000, 750_000,
)


class WarmupStatus(StrEnum):
    IN_PROGRESS = "IN_PROGRESS"
    DONE = "DONE"


@dataclass(frozen=True, slots=True)
class Caps:
    """One day's caps of one address: recipients in all, and to any one provider."""

    total: int
    per_provider: int


def caps_on(warmup: WarmupConfig, day: int, *, warm: bool = False) -> Caps | None:
    """The caps of warm-up day `day` (1 is the first); None: the address is warm."""
    if warm or warmup.schedule == "none" or day > warmup.days:
        return None
    day = max(day, 1)
    per_provider: int | None = None
    if warmup.schedule == "custom":
        step = [s for s in warmup.table if s.day <= day][-1]
        total, per_provider = step.total, step.per_provider
    else:
        last = len(STANDARD_TOTALS) - 1
        index = 0 if warmup.days == 1 else round((day - 1) * last / (warmup.days - 1))
        total = STANDARD_TOTALS[min(index, last)]
    if per_provider is None:
        per_provider = max(1, int(total * warmup.per_provider_share))
    return Caps(total=total, per_provider=min(per_provider, total))


def warmup_day(start_day: int | None, today: int) -> int:
    """Day N of the warm-up (1 on its first day; 1 before it started)."""
    return 1 if start_day is None else max(1, today - start_day + 1)


def percentage(warmup: WarmupConfig, day: int, *, warm: bool = False) -> int:
    """SES's WarmupPercentage: how far through the warm-up the address is, 0 on day 1,
    100 once it is done."""
    if warm or warmup.schedule == "none" or day > warmup.days:
        return 100
    return min(99, (day - 1) * 100 // warmup.days)


@dataclass(frozen=True, slots=True)
class Progress:
    """An address's warm-up as `smtprelay stats`, the admin API and metrics show it."""

    pool: str
    address: str
    helo: str
    started: int | None  # UTC day number of day 1; None before the first delivery
    day: int
    percentage: int
    status: WarmupStatus
    caps: Caps | None  # today's; None when warm
    sent: dict[str, int] = field(default_factory=dict)  # provider ("" none) -> today

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())


def progress(pool: str, address: str, helo: str, warmup: WarmupConfig, *, warm: bool,
             started: int | None, today: int, sent: dict[str, int]) -> Progress:
    day = warmup_day(started, today)
    caps = caps_on(warmup, day, warm=warm)
    return Progress(pool=pool, address=address, helo=helo, started=started, day=day,
                    percentage=percentage(warmup, day, warm=warm),
                    status=WarmupStatus.DONE if caps is None else WarmupStatus.IN_PROGRESS,
                    caps=caps, sent=dict(sent))
