"""The reputation guard: bounce and complaint rates per configuration set and account,
warnings, and automatic pauses, as SES's reputation metrics and sending pauses.

Every `reputation.check_interval` the guard reads the set statistics
(smtprelay.spool.set_stats) over the last `reputation.window`, per configuration set and per
account, and judges each:

- bounce rate = permanent bounces / (deliveries + permanent bounces), complaint rate =
  complaints / deliveries, SES's definitions (transient bounces, suppression-list
  refusals and mailbox simulator mail are not in them);
- below `minimum_volume` deliveries + permanent bounces there is no verdict: SES
  judges a "representative volume", and three bounces out of ten messages are not one;
- each rate is ``ok`` below its `warning` threshold, ``warning`` (SES: "under review")
  from it, ``paused`` from its `pause` threshold (SES defaults: bounce 5% / 10%,
  complaint 0.1% / 0.5%).

Each change of state is logged (one line) and counted
(``smtprelay_reputation_transitions_total``); ``smtprelay_reputation_state`` and
``smtprelay_reputation_rate`` show the current ones. A set reaching ``paused`` is
paused (smtprelay.policy.pauses, reason ``reputation``, the rate and threshold in the
detail): its new mail gets ``554 5.7.1 Sending paused for this configuration set``.
An account reaching it is paused as a whole (``554 5.7.1 Sending paused for this
account``), since an account's mail may be spread over sets none of which is bad
enough alone (and mail without a set can be stopped no other way). Mail without a
configuration set is judged as the pseudo-set "(none)" but never paused as a set.

Only an operator lifts a pause (``smtprelay sets resume``, ``smtprelay accounts
resume``, the admin API). Then, as SES "adjust[s] our calculations to only consider
bounces received after your changes were implemented", the guard judges that set or
account only on counters from the first whole hour after the resume (the counters are
hourly; SQLite keeps the resume time, so a restart does not forget it): a resumed set
is not paused again by the same old bounces, and gets at most an hour of grace
before new ones count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from smtprelay.config import ConfigSource, RateThresholds, ReputationConfig
from smtprelay.infra import metrics
from smtprelay.policy.pauses import AlreadyPaused, PausedSets
from smtprelay.spool import set_stats

log = logging.getLogger("smtprelay.reputation")

GUARD = "reputation-guard"  # the `by` of its pauses
SCOPES = ("set", "account")
METRICS = ("bounce", "complaint")


class State(StrEnum):
    OK = "ok"
    WARNING = "warning"
    PAUSED = "paused"


_LEVEL = {State.OK: 0, State.WARNING: 1, State.PAUSED: 2}


def level(rate: float | None, thresholds: RateThresholds) -> State:
    if rate is None:
        return State.OK
    if rate >= thresholds.pause:
        return State.PAUSED
    if rate >= thresholds.warning:
        return State.WARNING
    return State.OK


@dataclass(frozen=True, slots=True)
class Judgement:
    """One scope's rates over the window and the state each puts it in."""

    scope: str  # "set" or "account"
    name: str  # set key ("" for mail without a set) or account
    volume: int  # deliveries + permanent bounces counted
    representative: bool  # volume >= minimum_volume: the states mean something
    bounce_rate: float | None
    complaint_rate: float | None
    bounce: State
    complaint: State
    since: float  # start of the counting (window start, or the hour after a resume)

    @property
    def state(self) -> State:
        return max(self.bounce, self.complaint, key=_LEVEL.__getitem__)

    def rate(self, metric: str) -> float | None:
        return self.bounce_rate if metric == "bounce" else self.complaint_rate

    def state_of(self, metric: str) -> State:
        return self.bounce if metric == "bounce" else self.complaint

    def as_json(self) -> dict[str, Any]:
        return {"state": str(self.state), "bounce": str(self.bounce),
                "complaint": str(self.complaint), "bounce_rate": self.bounce_rate,
                "complaint_rate": self.complaint_rate, "volume": self.volume,
                "representative": self.representative, "since": self.since}


def judge(scope: str, name: str, counts: set_stats.Counts, config: ReputationConfig,
          since: float) -> Judgement:
    volume = counts[set_stats.Kind.DELIVERY] + counts[set_stats.Kind.BOUNCE]
    representative = volume >= config.minimum_volume
    bounce_rate, complaint_rate = counts.bounce_rate, counts.complaint_rate
    return Judgement(
        scope=scope, name=name, volume=volume, representative=representative,
        bounce_rate=bounce_rate, complaint_rate=complaint_rate,
        bounce=level(bounce_rate, config.bounce) if representative else State.OK,
        complaint=level(complaint_rate, config.complaint) if representative else State.OK,
        since=since)


def judge_all(spool_totals: Callable[..., dict[str, set_stats.Counts]],
              resumes: dict[tuple[str, str], float], config: ReputationConfig,
              now: float) -> list[Judgement]:
    """Every set and account with counters in the window (blocking: SQLite reads).

    `spool_totals` is a set_stats.Counters' set_totals; `resumes` the pause store's resume times.
    """
    window = set_stats.Window.ending(now, config.window)
    found: list[Judgement] = []
    for scope, by in (("set", "configuration_set"), ("account", "account")):
        for name, counts in spool_totals(window, by=by).items():
            since = window.since
            resumed = resumes.get((scope, name))
            if resumed is not None and set_stats.hour_of(resumed) >= window.first_hour:
                first = set_stats.hour_of(resumed) + 1
                since = float(first * set_stats.HOUR)
                counts = set_stats.Counts()
                if first <= window.last_hour:
                    narrowed = set_stats.Window(window.seconds, first, window.last_hour)
                    counts = spool_totals(narrowed, by=by, **{by: name}).get(
                        name, set_stats.Counts())
            found.append(judge(scope, name, counts, config, since))
    return found


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{100 * rate:.2f}%"


def label(scope: str, name: str) -> str:
    return set_stats.set_label(name) if scope == "set" else name


class ReputationGuard:
    """The background task; `judgements` holds the last check's verdicts."""

    def __init__(self, counters: set_stats.Counters, pauses: PausedSets, live: ConfigSource,
                 clock: Callable[[], float] = time.time) -> None:
        # The spool's own counters, or with store: redis the whole cluster's
        # (spool.cluster_stats), so a complaint on one node counts on every node.
        self._counters = counters
        self._pauses = pauses
        self._live = live
        self._clock = clock
        self._states: dict[tuple[str, str, str], State] = {}
        self.judgements: dict[tuple[str, str], Judgement] = {}

    def state_of(self, scope: str, name: str) -> Judgement | None:
        return self.judgements.get((scope, name))

    async def run(self) -> None:
        """Check forever (a task the daemon cancels at stop)."""
        failing = False
        while True:
            await asyncio.sleep(self._live.config.reputation.check_interval)
            try:
                await self.check()
            except Exception as exc:
                if not failing:
                    log.error("reputation check failed (pauses stay as they are): %s", exc)
                failing = True
            else:
                if failing:
                    log.info("reputation checks work again")
                failing = False

    async def check(self) -> list[Judgement]:
        config = self._live.config.reputation
        if not config.enabled:
            return []
        now = self._clock()
        store = self._pauses.store
        judgements = await asyncio.to_thread(
            lambda: judge_all(self._counters.set_totals, store.resumes(), config, now))
        seen = {(j.scope, j.name) for j in judgements}
        # Scopes whose counters left the window: back to ok, through the same path.
        for scope, name in {(s, n) for s, n, _ in self._states} - seen:
            judgements.append(judge(scope, name, set_stats.Counts(), config, now))
        for judgement in judgements:
            await self._apply(judgement, config)
        self.judgements = {(j.scope, j.name): j for j in judgements}
        return judgements

    async def _apply(self, j: Judgement, config: ReputationConfig) -> None:
        for metric in METRICS:
            key = (j.scope, j.name, metric)
            old = self._states.get(key, State.OK)
            new = j.state_of(metric)
            metrics.REPUTATION_STATE.labels(scope=j.scope, name=j.name, metric=metric).set(
                _LEVEL[new])
            rate = j.rate(metric)
            if j.representative and rate is not None:
                metrics.REPUTATION_RATE.labels(scope=j.scope, name=j.name,
                                               metric=metric).set(rate)
            if new is State.OK and old is State.OK:
                self._states.pop(key, None)  # keep only the scopes worth remembering
                continue
            self._states[key] = new
            if new is old:
                continue
            thresholds: RateThresholds = getattr(config, metric)
            log.warning(
                "reputation %s=%s %s rate %s: %s -> %s (warning %s, pause %s, volume %d "
                "since %s)", j.scope, label(j.scope, j.name), metric, _percent(rate), old,
                new, _percent(thresholds.warning), _percent(thresholds.pause), j.volume,
                time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(j.since)))
            metrics.REPUTATION_TRANSITIONS.labels(scope=j.scope, metric=metric,
                                                  state=str(new)).inc()
            if new is State.PAUSED:
                await self._pause(j, metric, rate, thresholds, config)

    async def _pause(self, j: Judgement, metric: str, rate: float | None,
                     thresholds: RateThresholds, config: ReputationConfig) -> None:
        detail = (f"{metric} rate {_percent(rate)} reached the pause threshold "
                  f"{_percent(thresholds.pause)} ({j.volume} deliveries and hard bounces "
                  f"since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(j.since))})")
        try:
            if j.scope == "set":
                if not config.pause_sets or j.name == set_stats.NO_SET or j.name in self._pauses:
                    return
                await asyncio.to_thread(self._pauses.pause, j.name, reason="reputation",
                                        detail=detail, by=GUARD)
            else:
                if not config.pause_accounts or j.name in self._pauses.accounts:
                    return
                await asyncio.to_thread(self._pauses.pause_account, j.name,
                                        reason="reputation", detail=detail, by=GUARD)
        except AlreadyPaused:
            return
        except Exception as exc:
            log.error("reputation: could not pause %s %s: %s", j.scope,
                      label(j.scope, j.name), exc)
