"""Sending statistics: counts and rates per configuration set and per account over a
window, and the overview `smtprelay stats` prints (quotas, suppression, spool,
pauses and the reputation guard's verdicts beside them).

Blocking (SQLite reads). The counters come from a `Counters`: the CLI's
`queue.SpoolConnection` or the daemon's `queue.DaemonSpool`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from smtprelay.config import Config, QuotaConfig
from smtprelay.operations import pauses as pause_ops
from smtprelay.operations.errors import NoStatistics
from smtprelay.policy import quota, reputation
from smtprelay.policy.pauses import PauseStore
from smtprelay.policy.reputation import Judgement
from smtprelay.policy.suppression import SuppressionStore
from smtprelay.spool import set_stats
from smtprelay.spool.set_stats import Counters, Counts, Window
from smtprelay.state import usage


class SpoolFigures(Counters, Protocol):
    def recipient_states(self) -> dict[str, dict[str, int]]: ...


@dataclass(frozen=True, slots=True)
class SetCounts:
    key: str  # the set's name; set_stats.NO_SET for mail sent without one
    counts: Counts

    @property
    def configuration_set(self) -> str | None:
        """The name, None for mail sent without a set (as the JSON says it)."""
        return None if self.key == set_stats.NO_SET else self.key


@dataclass(frozen=True, slots=True)
class Report:
    window: Window
    sets: tuple[SetCounts, ...]  # every configured set and every set counted, by name
    accounts: tuple[tuple[str, Counts], ...]  # every account counted, by name

    @property
    def total(self) -> Counts:
        return set_stats.merge(s.counts for s in self.sets)


def report(counters: Counters, config: Config, window: Window) -> Report:
    by_set = counters.set_totals(window)
    by_account = counters.set_totals(window, by="account")
    keys = sorted(set(config.configuration_sets) | set(by_set))
    return Report(window, tuple(SetCounts(key, by_set.get(key, Counts())) for key in keys),
                  tuple((name, by_account[name]) for name in sorted(by_account)))


def set_report(counters: Counters, config: Config, name: str, window: Window) -> Counts:
    """One set's counts: NoStatistics if it is neither configured nor counted."""
    found = counters.set_totals(window, configuration_set=name)
    if name not in found and name not in config.configuration_sets:
        raise NoStatistics("set", name, config.configuration_sets)
    return found.get(name, Counts())


# -- the overview ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountFigures:
    name: str
    sandbox: bool
    sent_24h: int  # recipients counted against the quota over the last 24 hours
    quota: QuotaConfig | None  # the one in force (None: unlimited)
    suppressed: int  # addresses on its suppression list
    spool: Mapping[str, int]  # recipient state -> how many, of its spooled messages
    counts: Counts  # over the report's window
    reputation: Judgement
    target: pause_ops.Target  # paused or not


@dataclass(frozen=True, slots=True)
class SetFigures:
    counts: SetCounts
    reputation: Judgement
    target: pause_ops.Target


@dataclass(frozen=True, slots=True)
class Overview:
    window: Window
    accounts: tuple[AccountFigures, ...]  # the configured accounts
    sets: tuple[SetFigures, ...]  # as Report.sets


def overview(config: Config, spool: SpoolFigures, pauses: PauseStore,
             suppression: SuppressionStore, *, now: float, seconds: float,
             counters: Counters | None = None) -> Overview:
    """`counters`: where the statistics come from, when not from `spool` (the
    cluster's, with store: redis)."""
    counted_by: Counters = spool if counters is None else counters
    state = sqlite3.connect(config.state_path)
    try:
        sent = usage.usage_since(state, now - usage.WINDOW)
    finally:
        state.close()
    queued = spool.recipient_states()
    window = Window.last_hours(now, seconds)
    counted = report(counted_by, config, window)
    by_account = dict(counted.accounts)
    # The reputation guard's verdicts, made the way the daemon makes them (over
    # reputation.window, which `seconds` does not change).
    verdicts = {(j.scope, j.name): j for j in reputation.judge_all(
        counted_by.set_totals, pauses.resumes(), config.reputation, now)}

    def verdict(scope: str, name: str) -> Judgement:
        return verdicts.get((scope, name)) or reputation.judge(
            scope, name, Counts(), config.reputation, now)

    paused_sets, paused_accounts = pauses.all("set"), pauses.all("account")
    accounts = tuple(
        AccountFigures(
            name=name, sandbox=account.sandbox, sent_24h=sent.get(name, 0),
            quota=quota.effective_quota(config, name), suppressed=suppression.count(name),
            spool=queued.get(name, {}), counts=by_account.get(name, Counts()),
            reputation=verdict("account", name),
            target=pause_ops.target(config, "account", name, paused_accounts.get(name)))
        for name, account in config.accounts.items())
    sets = tuple(
        SetFigures(row, verdict("set", row.key),
                   pause_ops.target(config, "set", row.key, paused_sets.get(row.key)))
        for row in counted.sets)
    return Overview(window, accounts, sets)
