"""The warm-up schedule (delivery.warmup): each day's caps, SES's WarmupPercentage and
WarmupStatus, for the standard ramp and a custom table."""

from __future__ import annotations

import itertools
import re

import pytest
from pydantic import ValidationError

from smtprelay.config import WarmupConfig
from smtprelay.delivery.warmup import (
    STANDARD_TOTALS,
    Caps,
    WarmupStatus,
    caps_on,
    percentage,
    progress,
    warmup_day,
)


def test_the_standard_ramp_starts_small_rises_every_day_and_ends_uncapped() -> None:
    standard = WarmupConfig()
    assert (standard.schedule, standard.days) == ("standard", 30)
    assert caps_on(standard, 1) == Caps(total=200, per_provider=80)
    assert caps_on(standard, 2) == Caps(total=400, per_provider=160)
    totals = [caps.total for day in range(1, 31) if (caps := caps_on(standard, day))]
    assert totals == list(STANDARD_TOTALS)
    assert all(b > a for a, b in itertools.pairwise(totals))
    # Roughly doubling at first, then growing by steps.
    assert totals[1] == 2 * totals[0] and totals[2] == 2 * totals[1]
    assert caps_on(standard, 31) is None and caps_on(standard, 400) is None
    assert caps_on(standard, 1, warm=True) is None


def test_the_standard_ramp_stretches_to_the_days_configured() -> None:
    short = WarmupConfig(days=10)
    assert caps_on(short, 1) == caps_on(WarmupConfig(), 1)
    assert caps_on(short, 10) == Caps(total=STANDARD_TOTALS[-1],
                                      per_provider=int(STANDARD_TOTALS[-1] * 0.4))
    assert caps_on(short, 11) is None
    long = WarmupConfig(days=45, per_provider_share=0.5)
    totals = [c.total for d in range(1, 46) if (c := caps_on(long, d))]
    assert totals == sorted(totals) and totals[0] == 200 and totals[-1] == 750_000
    assert caps_on(long, 1) == Caps(total=200, per_provider=100)
    assert caps_on(WarmupConfig(days=1), 1) == Caps(total=200, per_provider=80)


def test_a_custom_table_holds_each_step_until_the_next() -> None:
    custom = WarmupConfig(schedule="custom", days=5, table=[
        {"day": 1, "total": 50, "per_provider": 10}, {"day": 3, "total": 500}])
    assert caps_on(custom, 1) == caps_on(custom, 2) == Caps(total=50, per_provider=10)
    assert caps_on(custom, 3) == caps_on(custom, 5) == Caps(total=500, per_provider=200)
    assert caps_on(custom, 6) is None
    assert caps_on(WarmupConfig(schedule="none"), 1) is None


@pytest.mark.parametrize(("settings", "problem"), [
    ({"schedule": "custom"}, "schedule custom needs table"),
    ({"schedule": "custom", "table": [{"day": 2, "total": 5}]}, "the first step must be day 1"),
    ({"schedule": "custom", "table": [{"day": 1, "total": 5}, {"day": 1, "total": 9}]},
     "increasing"),
    ({"schedule": "custom", "days": 3, "table": [{"day": 1, "total": 5},
                                                  {"day": 4, "total": 9}]},
     "after the warm-up's last day"),
    ({"schedule": "custom", "table": [{"day": 1, "total": 5, "per_provider": 6}]},
     "per_provider (6) is above total (5)"),
    ({"table": [{"day": 1, "total": 5}]}, "only read with schedule: custom"),
])
def test_bad_schedules_are_refused(settings: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(problem)):
        WarmupConfig.model_validate(settings)


def test_percentage_and_status_are_time_based_as_ses_says() -> None:
    standard = WarmupConfig()
    assert warmup_day(None, 100) == 1  # not started: day 1 when it starts
    assert warmup_day(100, 100) == 1 and warmup_day(100, 101) == 2
    assert [percentage(standard, d) for d in (1, 2, 16, 30, 31)] == [0, 3, 50, 96, 100]
    assert percentage(standard, 1, warm=True) == 100
    started = progress("bulk", "192.0.2.1", "a.example", standard, warm=False, started=90,
                       today=100, sent={"google": 3, "": 2})
    assert (started.day, started.percentage, started.status) == (11, 33,
                                                                  WarmupStatus.IN_PROGRESS)
    assert started.caps == caps_on(standard, 11) and started.sent_total == 5
    done = progress("bulk", "192.0.2.1", "a.example", standard, warm=False, started=60,
                    today=100, sent={})
    assert (done.day, done.percentage, done.status, done.caps) == (41, 100,
                                                                   WarmupStatus.DONE, None)
