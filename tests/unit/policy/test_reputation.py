"""The reputation guard's judgement and state machine, on a real spool and pause store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.app.live import Live
from smtprelay.config import Config, ReputationConfig
from smtprelay.policy.pauses import PausedSets, SQLitePauseStore
from smtprelay.policy.reputation import ReputationGuard, State, judge
from smtprelay.spool import set_stats
from smtprelay.spool.set_stats import Kind
from smtprelay.spool.store import Spool

NOW = 1_700_000_000.0
CONFIG = ReputationConfig(minimum_volume=20)


def counts(**values: int) -> set_stats.Counts:
    return set_stats.Counts({str(Kind(k)): v for k, v in values.items()})


def test_rates_map_to_states_with_ses_thresholds() -> None:
    assert judge("set", "a", counts(delivery=96, bounce=4), CONFIG, 0).bounce is State.OK
    assert judge("set", "a", counts(delivery=95, bounce=5), CONFIG, 0).bounce is State.WARNING
    assert judge("set", "a", counts(delivery=90, bounce=10), CONFIG, 0).bounce is State.PAUSED
    complaint = judge("set", "a", counts(delivery=1000, complaint=5), CONFIG, 0)
    assert complaint.complaint is State.PAUSED and complaint.state is State.PAUSED
    assert judge("set", "a", counts(delivery=1000, complaint=1), CONFIG,
                 0).complaint is State.WARNING


def test_below_the_minimum_volume_there_is_no_verdict() -> None:
    small = judge("set", "a", counts(delivery=1, bounce=9), CONFIG, 0)
    assert small.bounce_rate == 0.9 and not small.representative
    assert small.state is State.OK
    # Transient bounces are not volume.
    assert not judge("set", "a", counts(delivery=10, bounce_transient=50), CONFIG,
                     0).representative


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Spool, PausedSets]]:
    spool = Spool(tmp_path / "spool.db")
    spool.open()
    store = SQLitePauseStore(tmp_path / "state.db")
    store.open()
    try:
        yield spool, PausedSets(store)
    finally:
        store.close()
        spool.close()


def add(spool: Spool, account: str, set_name: str | None, at: float, **values: int) -> None:
    bump = set_stats.Bump(account, set_name, at, {Kind(k): v for k, v in values.items()})
    asyncio.run(spool.add_events((), counts=(bump,)))


def make_guard(spool: Spool, pauses: PausedSets, clock: list[float],
               **reputation: object) -> ReputationGuard:
    config = Config.model_validate({
        "listeners": [{"name": "s", "port": 0}],
        "reputation": {"minimum_volume": 20, **reputation}})
    return ReputationGuard(spool, pauses, Live(config), clock=lambda: clock[0])


def test_a_set_over_the_pause_threshold_is_paused_once_and_logged(
        world: tuple[Spool, PausedSets], caplog: pytest.LogCaptureFixture) -> None:
    spool, pauses = world
    clock = [NOW]
    guard = make_guard(spool, pauses, clock, pause_accounts=False)
    add(spool, "acme", "news", NOW, delivery=90, bounce=10)
    add(spool, "acme", "ok", NOW, delivery=1000)
    caplog.set_level(logging.INFO, "smtprelay.reputation")
    asyncio.run(guard.check())
    assert "news" in pauses and "ok" not in pauses
    assert pauses["news"].reason == "reputation" and "10.00%" in pauses["news"].detail
    assert "reputation set=news bounce rate 10.00%: ok -> paused" in caplog.text
    caplog.clear()
    asyncio.run(guard.check())  # no transition: nothing logged, no second pause
    assert "->" not in caplog.text
    # The account: 10 in 1100, 0.9%: ok; pause_accounts false anyway.
    assert guard.state_of("account", "acme").state is State.OK  # type: ignore[union-attr]


def test_a_resumed_set_is_judged_only_after_the_resume(
        world: tuple[Spool, PausedSets], caplog: pytest.LogCaptureFixture) -> None:
    spool, pauses = world
    clock = [NOW]
    guard = make_guard(spool, pauses, clock)
    add(spool, "acme", "news", NOW, delivery=80, bounce=20)
    asyncio.run(guard.check())
    assert "news" in pauses and "acme" in pauses.accounts  # the account is all "news"
    pauses.store.resume("news", now=NOW + 30)  # as the CLI does, at the test's time
    pauses.store.resume("acme", scope="account", now=NOW + 30)
    pauses.refresh()
    caplog.set_level(logging.INFO, "smtprelay.reputation")
    clock[0] = NOW + 60
    asyncio.run(guard.check())
    assert "news" not in pauses and "acme" not in pauses.accounts
    assert "reputation set=news bounce rate -: paused -> ok" in caplog.text
    # New bounces count from the next whole hour on.
    later = (set_stats.hour_of(NOW) + 1) * set_stats.HOUR + 10.0
    add(spool, "acme", "news", later, delivery=10, bounce=15)
    clock[0] = later + 1
    asyncio.run(guard.check())
    assert "news" in pauses


def test_account_pause_refuses_all_its_mail_and_survives_a_new_view(
        world: tuple[Spool, PausedSets]) -> None:
    _, pauses = world
    pauses.pause_account("acme", reason="reputation", by="test")
    fresh = PausedSets(pauses.store)
    fresh.refresh()
    assert "acme" in fresh.accounts and "acme" not in fresh
    assert pauses.store.resume("acme", scope="account") is not None
    assert ("account", "acme") in pauses.store.resumes()
