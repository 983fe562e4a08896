"""Statistics for the admin API's /stats and `smtprelay stats`: the same counters,
the same sets, on a spool with counts written as the daemon writes them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from smtprelay.config import Config
from smtprelay.operations import pauses as pause_ops
from smtprelay.operations import stats as ops
from smtprelay.operations.errors import NoStatistics, NotConfigured
from smtprelay.operations.queue import DaemonSpool, SpoolConnection
from smtprelay.policy.pauses import SQLitePauseStore
from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool import set_stats
from smtprelay.spool.store import Spool, open_for_cli

NOW = time.time()


@pytest.fixture
def counted(config: Config) -> Iterator[Spool]:
    """A spool with counts for a configured set, no set, and a set no longer configured."""
    s = Spool(config.spool_path)
    s.open()
    send, delivery, bounce = set_stats.Kind.SEND, set_stats.Kind.DELIVERY, set_stats.Kind.BOUNCE
    for account, name, counts in (("acme", "news", {send: 4, delivery: 3, bounce: 1}),
                                  ("acme", None, {send: 1, delivery: 1}),
                                  ("other", "gone", {send: 2})):
        s.count_later(set_stats.Bump(account, name, NOW, counts))
    s.retry_future(None, NOW).result(10)  # a later write: the counts are in
    yield s
    s.close()


def test_the_report_has_every_configured_set_and_every_set_counted(
        counted: Spool, config: Config) -> None:
    window = set_stats.Window.ending(NOW)
    report = ops.report(DaemonSpool(counted), config, window)
    assert [(s.configuration_set, s.counts["send"]) for s in report.sets] == [
        (None, 1), ("alerts", 0), ("gone", 2), ("news", 4), ("off", 0)]
    assert [(name, counts["send"]) for name, counts in report.accounts] == [
        ("acme", 5), ("other", 2)]
    assert report.total["send"] == 7 and report.total.bounce_rate == 1 / 5
    own = SpoolConnection(open_for_cli(counted.path))
    assert ops.report(own, config, window) == report  # the CLI reads the same
    own.close()


def test_one_set_needs_its_configuration_or_its_counts(counted: Spool, config: Config) -> None:
    window = set_stats.Window.ending(NOW)
    counters = DaemonSpool(counted)
    assert ops.set_report(counters, config, "news", window)["delivery"] == 3
    assert ops.set_report(counters, config, "gone", window)["send"] == 2
    assert ops.set_report(counters, config, "alerts", window) == set_stats.Counts()
    with pytest.raises(NoStatistics) as missing:
        ops.set_report(counters, config, "nope", window)
    assert isinstance(missing.value, NotConfigured)
    assert str(missing.value).endswith("(configuration_sets.nope) and no statistics for it")


def test_the_overview_puts_quota_suppression_spool_and_pauses_beside_the_counts(
        counted: Spool, config: Config) -> None:
    pauses = SQLitePauseStore(config.state_path)
    suppression = SQLiteSuppressionStore(config.state_path)
    pause_ops.pause(pauses, config, "account", "other", detail="", by="cli")
    pause_ops.pause(pauses, config, "set", "news", detail="", by="cli")
    suppression.add("acme", "a@x.test", "BOUNCE")
    own = SpoolConnection(open_for_cli(counted.path))
    found = ops.overview(config, own, pauses, suppression, now=NOW, seconds=set_stats.DAY)
    own.close()
    pauses.close()
    suppression.close()
    acme, other = found.accounts
    assert (acme.name, acme.suppressed, acme.counts["delivery"], acme.target.pause) == (
        "acme", 1, 4, None)
    assert other.target.pause is not None and other.target.pause.as_json()["account"] == "other"
    assert acme.reputation.volume == 5 and not acme.reputation.representative
    by_key = {s.counts.key: s for s in found.sets}
    assert by_key["news"].target.pause is not None
    assert not by_key["gone"].target.configured
    assert by_key["off"].target.sending_enabled is False


def test_a_one_hour_overview_covers_one_hour(counted: Spool, config: Config) -> None:
    pauses = SQLitePauseStore(config.state_path)
    suppression = SQLiteSuppressionStore(config.state_path)
    own = SpoolConnection(open_for_cli(counted.path))
    found = ops.overview(config, own, pauses, suppression, now=NOW, seconds=set_stats.HOUR)
    own.close()
    pauses.close()
    suppression.close()
    assert found.window.until - found.window.since == set_stats.HOUR
