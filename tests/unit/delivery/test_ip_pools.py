"""Choosing a transaction's source address (delivery.ip_pools): the set's pool, turns
among its addresses, the warm-up caps per provider and in total, where the overflow
goes (warmed or wait), give-backs, and the next day's caps. The counters are the local
backend's (their contract on both backends: tests/unit/state/test_warmup_counters.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtprelay.config import Config
from smtprelay.delivery.ip_pools import (
    SENDING_DEFERRAL,
    Source,
    SourceChooser,
    Wait,
    export_metrics,
    unbindable,
)
from smtprelay.delivery.model import RecipientResult, Verdict
from smtprelay.delivery.retry import delay_type
from smtprelay.state.api import StateUnavailable
from smtprelay.state.warmup import DAY, LocalWarmup
from tests.support import base_config
from tests.unit.delivery.kit import WallClock, has_sample, queued, sample

GMAIL = "gmail-smtp-in.l.google.com"
YAHOO = "mta5.am0.yahoodns.net"
PLAIN = "mx.example.net"  # no mailbox provider's
NOON = 20_000 * DAY + 43_200.0  # a UTC day number 20000, at noon
# Day 1 of this table: 3 in all, 2 to one provider; day 2: 6 and 4.
TABLE = {"schedule": "custom", "days": 2, "table": [
    {"day": 1, "total": 3, "per_provider": 2}, {"day": 2, "total": 6, "per_provider": 4}]}


def config(tmp_path: Path, pools: dict[str, Any], **sets: Any) -> Config:
    return Config.model_validate(base_config(
        tmp_path, ip_pools=pools, delivery={"mode": "mx"},
        configuration_sets={"transactional": {}, **sets}))


def pool(*addresses: dict[str, Any], overflow: str = "warmed",
         warmup: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"addresses": list(addresses), "overflow": overflow, "warmup": warmup or TABLE}


def new(address: str) -> dict[str, Any]:
    return {"address": address, "helo": f"o{address.rsplit('.', 1)[1]}.relay.test"}


def warm(address: str) -> dict[str, Any]:
    return {**new(address), "warm": True}


def chooser() -> tuple[SourceChooser, LocalWarmup, WallClock]:
    counters = LocalWarmup()
    clock = WallClock(NOON)
    return SourceChooser(counters, clock=clock), counters, clock


async def picks(sources: SourceChooser, cfg: Config, host: str, times: int,
                set_name: str = "bulk") -> list[str]:
    found = []
    for _ in range(times):
        picked = await sources.choose(cfg, queued(configuration_set=set_name), host, 1)
        found.append(picked.address if isinstance(picked, Source) else "wait")
    return found


async def test_a_set_without_a_pool_leaves_the_source_to_the_host(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    assert await sources.choose(cfg, queued(configuration_set="transactional"), GMAIL,
                                1) is None
    assert await sources.choose(cfg, queued(), GMAIL, 1) is None
    picked = await sources.choose(cfg, queued(configuration_set="bulk"), GMAIL, 1)
    assert isinstance(picked, Source)
    assert (picked.pool, picked.address, picked.helo, picked.provider) == (
        "bulk", "192.0.2.1", "o1.relay.test", "google")


async def test_the_relay_wide_pool_applies_to_sets_that_name_none(tmp_path: Path) -> None:
    cfg = Config.model_validate(base_config(
        tmp_path, ip_pools={"main": pool(warm("192.0.2.9"))},
        delivery={"mode": "mx", "ip_pool": "main"}))
    sources, _, _ = chooser()
    picked = await sources.choose(cfg, queued(configuration_set="transactional"), PLAIN, 1)
    assert isinstance(picked, Source) and picked.address == "192.0.2.9"


async def test_addresses_take_turns(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(warm("192.0.2.1"), warm("192.0.2.2"),
                                         warm("192.0.2.3"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, counters, _ = chooser()
    assert await picks(sources, cfg, GMAIL, 6) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"] * 2
    # Warm addresses are counted too (for the reports), without a cap.
    counted = await counters.counts(20_000, ["192.0.2.1"])
    assert counted[0].sent == {"google": 2}


async def test_an_address_with_an_open_session_to_the_destination_goes_first(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(warm("192.0.2.1"), warm("192.0.2.2"),
                                         warm("192.0.2.3"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    open_from = {"192.0.2.3"}
    chosen = []
    for _ in range(3):
        picked = await sources.choose(cfg, queued(configuration_set="bulk"), GMAIL, 1,
                                      reusable=lambda address: address in open_from)
        assert isinstance(picked, Source)
        chosen.append(picked.address)
    assert chosen == ["192.0.2.3"] * 3
    # With no session open anywhere, the turns go on where they were.
    picked = await sources.choose(cfg, queued(configuration_set="bulk"), GMAIL, 1,
                                  reusable=lambda address: False)
    assert isinstance(picked, Source) and picked.address == "192.0.2.1"


async def test_a_day_holds_its_provider_cap_and_its_total_then_waits(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    assert await picks(sources, cfg, GMAIL, 3) == ["192.0.2.1", "192.0.2.1", "wait"]
    assert await picks(sources, cfg, YAHOO, 2) == ["192.0.2.1", "wait"]  # total of 3
    assert await picks(sources, cfg, PLAIN, 1) == ["wait"]
    waited = await sources.choose(cfg, queued(configuration_set="bulk"), PLAIN, 1)
    assert isinstance(waited, Wait)
    # Until the next UTC day (+1 s); the scheduler caps it at retry.max_interval.
    assert waited.retry_after == pytest.approx(43_201.0)
    [result] = waited.results(["a@example.net"])
    assert (result.verdict, result.code, result.status) == (Verdict.DEFERRED, None, "4.7.0")
    assert result.diagnostic.startswith("x-local; IP pool bulk: every address is at today's")
    assert delay_type(result) == SENDING_DEFERRAL == "SendingDeferral"


async def test_overflow_warmed_goes_to_a_warm_address_of_the_pool(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"), warm("192.0.2.2"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    # Turns: .1 .2 .1 .2 .1 .2; the third turn of .1 is over gmail's 2 and goes to .2.
    assert await picks(sources, cfg, GMAIL, 6) == [
        "192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2", "192.0.2.2", "192.0.2.2"]


async def test_overflow_wait_leaves_the_warm_address_its_own_share(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"), warm("192.0.2.2"),
                                         new("192.0.2.3"), overflow="wait")},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    # Turns .1 .2 .3 repeated: each new address sends 2 to gmail; a turn of a full one
    # goes to the other new address while it has room, never to the warm .2.
    assert await picks(sources, cfg, GMAIL, 9) == [
        "192.0.2.1", "192.0.2.2", "192.0.2.3",
        "192.0.2.1", "192.0.2.2", "192.0.2.3",
        "wait", "192.0.2.2", "wait"]


async def test_overflow_wait_moves_to_another_new_address_with_room(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"), new("192.0.2.2"),
                                         overflow="wait")},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, counters, _ = chooser()
    await counters.set_start_day("192.0.2.2", 20_000 - 1)  # day 2: gmail 4
    assert await picks(sources, cfg, GMAIL, 6) == [
        "192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2", "192.0.2.2", "192.0.2.2"]
    assert await picks(sources, cfg, GMAIL, 1) == ["wait"]


async def test_the_next_day_the_caps_rise_and_the_counts_start_again(
        tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, clock = chooser()
    assert await picks(sources, cfg, GMAIL, 3) == ["192.0.2.1"] * 2 + ["wait"]
    clock.set(NOON + DAY)  # day 2 of the table: 4 to gmail
    assert await picks(sources, cfg, GMAIL, 5) == ["192.0.2.1"] * 4 + ["wait"]
    clock.set(NOON + 2 * DAY)  # day 3: past days 2, warm
    assert await picks(sources, cfg, GMAIL, 20) == ["192.0.2.1"] * 20
    [status] = await sources.report(cfg)
    assert (status.day, status.percentage, status.caps, status.sent) == (
        3, 100, None, {"google": 20})


async def test_what_did_not_leave_is_given_back(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, counters, _ = chooser()
    picked = await sources.choose(cfg, queued(configuration_set="bulk"), GMAIL, 2)
    assert isinstance(picked, Source) and picked.count == 2
    unsent = RecipientResult("a@example.net", Verdict.DEFERRED, None, "4.4.1",
                             "smtp; 421 4.4.1 connect failed")
    await sources.settle(picked, [unsent, unsent])
    assert (await counters.counts(20_000, ["192.0.2.1"]))[0].total == 0
    picked = await sources.choose(cfg, queued(configuration_set="bulk"), GMAIL, 2)
    assert isinstance(picked, Source)
    sent = RecipientResult("a@example.net", Verdict.BOUNCED, 550, "5.1.1", "smtp; 550 no",
                           outgoing_ip="192.0.2.1")
    await sources.settle(picked, [sent, unsent])  # the 5xx reached gmail: it counts
    assert (await counters.counts(20_000, ["192.0.2.1"]))[0].total == 1
    await sources.settle(picked, None)  # an exception: nothing is known to have left
    assert (await counters.counts(20_000, ["192.0.2.1"]))[0].total == 0


async def test_unavailable_counters_defer_rather_than_skip_the_cap(tmp_path: Path) -> None:
    class Down(LocalWarmup):
        async def start_day(self, address: str, today: int) -> int:
            raise StateUnavailable("redis: gone")

    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    picked = await SourceChooser(Down()).choose(cfg, queued(configuration_set="bulk"),
                                                GMAIL, 1)
    assert isinstance(picked, Wait) and "cannot be read" in picked.reason


async def test_the_warmup_gauges_follow_the_report(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("192.0.2.1"), warm("192.0.2.2"))},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    await picks(sources, cfg, GMAIL, 2)
    await picks(sources, cfg, PLAIN, 1)
    export_metrics(await sources.report(cfg))
    new_address = {"pool": "bulk", "address": "192.0.2.1"}
    assert sample("smtprelay_warmup_percentage", new_address) == 0
    assert sample("smtprelay_warmup_day", new_address) == 1
    assert sample("smtprelay_warmup_cap_today", {**new_address, "scope": "total"}) == 3
    assert sample("smtprelay_warmup_cap_today", {**new_address, "scope": "per_provider"}) == 2
    assert sample("smtprelay_warmup_sent_today", {**new_address, "provider": "google"}) == 1
    assert sample("smtprelay_warmup_sent_today", {**new_address, "provider": "other"}) == 1
    warm_address = {"pool": "bulk", "address": "192.0.2.2"}
    assert sample("smtprelay_warmup_percentage", warm_address) == 100
    assert not has_sample("smtprelay_warmup_cap_today", {**warm_address, "scope": "total"})
    # An address taken out of the configuration leaves the gauges.
    export_metrics([p for p in await sources.report(cfg) if p.address != "192.0.2.2"])
    assert not has_sample("smtprelay_warmup_percentage", warm_address)


def test_addresses_the_host_cannot_send_from_are_named(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(new("127.0.1.2"), new("192.0.2.1"))})
    [problem] = unbindable(cfg)
    assert problem.startswith("ip_pools.bulk.addresses[1].address: cannot send from "
                              "192.0.2.1 (")
    assert "ip addr add 192.0.2.1/32 dev IFACE" in problem


async def test_the_source_is_of_an_ip_version_the_destination_has(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"bulk": pool(warm("192.0.2.1"), warm("192.0.2.2"),
                                         {"address": "2001:db8::1", "helo": "o6.relay.test",
                                          "warm": True})},
                 bulk={"delivery": {"ip_pool": "bulk"}})
    sources, _, _ = chooser()
    message = queued(configuration_set="bulk")
    only_v6 = [await sources.choose(cfg, message, PLAIN, 1, {6}) for _ in range(2)]
    assert [s.address for s in only_v6 if isinstance(s, Source)] == ["2001:db8::1"] * 2
    only_v4 = [await sources.choose(cfg, message, PLAIN, 1, {4}) for _ in range(2)]
    assert sorted(s.address for s in only_v4 if isinstance(s, Source)) == [
        "192.0.2.1", "192.0.2.2"]
    v4_pool = config(tmp_path, {"bulk": pool(warm("192.0.2.1"))},
                     bulk={"delivery": {"ip_pool": "bulk"}})
    waited = await sources.choose(v4_pool, message, PLAIN, 1, {6})
    assert isinstance(waited, Wait) and waited.retry_after is None
    assert waited.reason == ("IP pool bulk has no IPv6 address, and the destination's hosts "
                             "have only IPv6 addresses; add one to ip_pools.bulk.addresses")
