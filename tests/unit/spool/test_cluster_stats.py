"""The cluster's statistics in a real Redis: each node's counters copied as absolute
values, summed on read, never counted twice, restored after Redis loses them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from smtprelay.spool import set_stats
from smtprelay.spool.cluster_stats import ClusterCounters, StatsMirror
from smtprelay.spool.set_stats import Row, Window

NOW = 1_800_000_000.0  # a fixed clock: the rows below sit in its hour
HOUR = set_stats.hour_of(NOW)


class Node:
    """One node's counters as its spool would return them."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.rows: dict[tuple[int, str, str, str], int] = {}
        self.clock = NOW
        self.asked: list[int] = []
        self.mirror = StatsMirror(client, "t:", name, self._since, clock=lambda: self.clock)

    def _since(self, first_hour: int) -> list[Row]:
        self.asked.append(first_hour)
        return [(h, s, a, k, c) for (h, s, a, k), c in self.rows.items() if h >= first_hour]

    def count(self, kind: str, n: int = 1, *, set_name: str = "news", account: str = "acme",
              hour: int = HOUR) -> None:
        key = (hour, set_name, account, kind)
        self.rows[key] = self.rows.get(key, 0) + n


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    found = redis.Redis.from_url(redis_url)
    yield found
    found.close()


def window() -> Window:
    return Window.ending(NOW, set_stats.DAY)


def test_counts_from_every_node_are_summed_per_set_and_per_account(
        client: redis.Redis) -> None:
    a, b = Node(client, "a"), Node(client, "b")
    a.count("delivery", 10)
    b.count("delivery", 5)
    b.count("complaint")
    b.count("delivery", 3, set_name="", account="other")
    a.mirror.copy()
    b.mirror.copy()
    counters = ClusterCounters(client, "t:")
    by_set = counters.set_totals(window())
    assert by_set["news"].values == {"delivery": 15, "complaint": 1}
    assert by_set[set_stats.NO_SET].values == {"delivery": 3}
    by_account = counters.set_totals(window(), by="account")
    assert by_account["acme"].complaint_rate == pytest.approx(1 / 15)
    assert counters.set_totals(window(), configuration_set="news", by="account") == {
        "acme": by_set["news"]}
    assert counters.set_totals(window(), account="nobody") == {}


def test_copying_again_never_counts_twice_and_sends_only_what_changed(
        client: redis.Redis) -> None:
    a = Node(client, "a")
    a.count("delivery", 4)
    a.count("open", 2)
    assert a.mirror.copy() == 2  # the first copy is a full one
    assert a.mirror.copy() == 0  # nothing changed
    a.clock += 1
    a.count("delivery")
    assert a.mirror.copy() == 1  # only the counter that grew
    # Between full copies only the last two hours are read.
    assert a.asked[-1] == set_stats.hour_of(a.clock - set_stats.HOUR)
    counters = ClusterCounters(client, "t:")
    assert counters.set_totals(window())["news"].values == {"delivery": 5, "open": 2}


def test_a_redis_that_lost_the_counters_gets_them_back_at_the_next_copy(
        client: redis.Redis) -> None:
    a = Node(client, "a")
    earlier = HOUR - 5
    a.count("delivery", 7, hour=earlier)
    a.count("bounce", 1)
    a.mirror.copy()
    client.flushall()
    a.clock += 1
    a.mirror.copy()
    counters = ClusterCounters(client, "t:")
    assert counters.set_totals(window())["news"].values == {"delivery": 7, "bounce": 1}
    # A count bumped in an older hour between full copies waits for the next one.
    a.count("delivery", 1, hour=earlier)
    a.clock += 1
    a.mirror.copy()
    assert counters.set_totals(window())["news"].values == {"delivery": 7, "bounce": 1}
    a.clock += 60
    a.mirror.copy()
    assert counters.set_totals(window())["news"].values == {"delivery": 8, "bounce": 1}
    # The hours expire with the spool's retention.
    expected = (earlier + 1) * set_stats.HOUR + set_stats.RETENTION
    assert client.expiretime(f"t:stats:{earlier}") == int(expected)


def test_an_hour_outside_the_window_is_not_read(client: redis.Redis) -> None:
    a = Node(client, "a")
    a.count("complaint", 3, hour=HOUR - 30)
    a.count("delivery", 2)
    a.mirror.copy()
    assert ClusterCounters(client, "t:").set_totals(window())["news"].values == {
        "delivery": 2}
