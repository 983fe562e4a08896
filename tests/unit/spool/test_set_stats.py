"""Per-set statistics on a real spool: what each write counts, windows, rates, purging."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from smtprelay.delivery.notify_sender import DSN_LISTENER
from smtprelay.spool import set_stats
from smtprelay.spool.model import (
    Envelope,
    EventRecord,
    MessageAttributes,
    NewMessage,
    Outcome,
    RecipientState,
    RecipientUpdate,
    Tracking,
    new_message_id,
)
from smtprelay.spool.set_stats import HOUR, Counts, Kind, Window
from smtprelay.spool.store import Spool, migrate, open_for_cli

NOW = time.time()


def new_message(rcpts: int = 1, *, configuration_set: str | None = "news",
                account: str = "acme", suppressed: dict[int, str] | None = None,
                tracked: bool = False, listener: str = "submission",
                at: float = NOW) -> NewMessage:
    return NewMessage(
        message_id=new_message_id(at), data=b"Subject: x\r\n\r\nbody\r\n", account=account,
        envelope=Envelope(mail_from="a@example.com",
                          recipients=tuple(f"r{n}@example.net" for n in range(rcpts))),
        configuration_set=configuration_set, received_at=at, client_ip="127.0.0.1",
        client_helo="client.test", auth_user="u", listener=listener,
        attrs=MessageAttributes(tracking=Tracking(links=1, open=True, unsubscribe=False))
        if tracked else MessageAttributes(),
        suppressed=suppressed or {})


def update(index: int, kind: str, *, bounce_type: str | None = None,
           at: float = NOW) -> RecipientUpdate:
    state = {"delivery": RecipientState.DELIVERED, "bounce": RecipientState.BOUNCED,
             "delay": RecipientState.DEFERRED}[kind]
    return RecipientUpdate(index=index, state=state, at=at, reply="x",
                           next_attempt=at + 60 if kind == "delay" else None,
                           outcomes=(Outcome(message_id="", index=index, kind=kind, at=at,
                                             bounce_type=bounce_type),))


async def record_engagement(spool: Spool, message_id: str, kind: str, at: float,
                            machine: bool, event: Callable[[set_stats.Engaged],
                                                           EventRecord | None]
                            ) -> set_stats.Engaged | None:
    """One open or click through Spool.record_engagements."""
    [engaged] = await spool.record_engagements(
        [set_stats.Hit(message_id, kind, at, machine)], lambda _, e: event(e))
    return engaged


def day(spool: Spool, now: float = NOW) -> dict[str, Counts]:
    return spool.set_totals(Window.ending(now))


async def test_acceptance_counts_recipients_and_suppressed_ones(spool: Spool) -> None:
    await spool.enqueue(new_message(3, suppressed={1: "BOUNCE"}))
    await spool.enqueue(new_message(2, configuration_set=None))
    await spool.enqueue(new_message(4, listener=DSN_LISTENER))  # the relay's own bounce
    found = day(spool)
    assert found["news"][Kind.SEND] == 3 and found["news"][Kind.SUPPRESSED] == 1
    assert found[set_stats.NO_SET][Kind.SEND] == 2  # mail without a set: the pseudo-set
    assert set_stats.set_label(set_stats.NO_SET) == "(none)"
    assert sum(c[Kind.SEND] for c in found.values()) == 5  # the DSN is not counted
    assert DSN_LISTENER in set_stats.UNCOUNTED_LISTENERS


async def test_attempt_results_are_counted_with_them(spool: Spool) -> None:
    message = new_message(5)
    await spool.enqueue(message)
    await spool.record(message.message_id, [
        update(0, "delivery"), update(1, "delivery"), update(2, "bounce", bounce_type="Permanent"),
        update(3, "bounce", bounce_type="Transient"), update(4, "delay")])
    counts = day(spool)["news"]
    assert counts[Kind.DELIVERY] == 2 and counts[Kind.BOUNCE] == 1
    assert counts[Kind.BOUNCE_TRANSIENT] == 1 and counts[Kind.DELIVERY_DELAY] == 1
    # A deferral without a delay record counts nothing (and reads nothing).
    await spool.record(message.message_id, [RecipientUpdate(
        index=4, state=RecipientState.DEFERRED, at=NOW, reply="451", next_attempt=NOW + 60)])
    assert day(spool)["news"] == counts


async def test_a_failed_write_counts_nothing(spool: Spool) -> None:
    message = new_message(2)
    await spool.enqueue(message)
    with pytest.raises(Exception):  # noqa: B017 - the duplicate id is refused
        await spool.enqueue(message)
    assert day(spool)["news"][Kind.SEND] == 2


async def test_opens_and_clicks_count_totals_unique_and_machine(spool: Spool) -> None:
    tracked = new_message(tracked=True)
    await spool.enqueue(tracked)
    made: list[set_stats.Engaged] = []

    def no_event(engaged: set_stats.Engaged) -> EventRecord | None:
        made.append(engaged)
        return None

    mid = tracked.message_id
    await record_engagement(spool, mid, "open", NOW, True, no_event)  # a proxy's prefetch
    await record_engagement(spool, mid, "open", NOW, False, no_event)  # the person
    await record_engagement(spool, mid, "open", NOW, False, no_event)  # again
    await record_engagement(spool, mid, "click", NOW, False, no_event)
    unknown = await record_engagement(spool, "nope", "click", NOW, False, no_event)
    assert unknown is None
    counts = day(spool)["news"]
    assert (counts[Kind.OPEN], counts[Kind.OPEN_UNIQUE], counts[Kind.OPEN_MACHINE]) == (3, 1, 1)
    assert (counts[Kind.CLICK], counts[Kind.CLICK_UNIQUE], counts[Kind.CLICK_MACHINE]) == \
        (1, 1, 0)
    assert made[0] == set_stats.Engaged("acme", "news")


async def test_a_batch_counts_what_the_same_hits_one_by_one_count(spool: Spool) -> None:
    """Issue 17: opens and clicks are written in batches; within one, the first
    person's open still counts as unique once, a machine's never, an unknown message
    counts nothing, and every set gets its own counters."""
    news, other = new_message(tracked=True), new_message(tracked=True, configuration_set=None)
    await spool.enqueue(news)
    await spool.enqueue(other)
    hits = [set_stats.Hit(news.message_id, "open", NOW, True),
            set_stats.Hit(news.message_id, "open", NOW, False),
            set_stats.Hit("nope", "click", NOW, False),
            set_stats.Hit(news.message_id, "open", NOW, False),
            set_stats.Hit(other.message_id, "click", NOW, False),
            set_stats.Hit(news.message_id, "click", NOW, False),
            set_stats.Hit(other.message_id, "click", NOW, False)]
    asked: list[int] = []

    def event(index: int, engaged: set_stats.Engaged) -> EventRecord | None:
        asked.append(index)
        return None

    engaged = await spool.record_engagements(hits, event)
    assert engaged[2] is None and asked == [0, 1, 3, 4, 5, 6]
    assert engaged[4] == set_stats.Engaged("acme", None)
    counts = day(spool)
    assert (counts["news"][Kind.OPEN], counts["news"][Kind.OPEN_UNIQUE],
            counts["news"][Kind.OPEN_MACHINE]) == (3, 1, 1)
    assert (counts["news"][Kind.CLICK], counts["news"][Kind.CLICK_UNIQUE]) == (1, 1)
    assert (counts[set_stats.NO_SET][Kind.CLICK],
            counts[set_stats.NO_SET][Kind.CLICK_UNIQUE]) == (2, 1)
    # The next batch knows the firsts the last one recorded.
    await spool.record_engagements(hits[:2], event)
    assert day(spool)["news"][Kind.OPEN_UNIQUE] == 1


def test_rates_follow_ses_and_are_none_without_volume() -> None:
    counts = Counts({"delivery": 90, "bounce": 10, "bounce_transient": 50, "complaint": 1,
                     "open_unique": 45, "click_unique": 9, "suppressed": 500})
    assert counts.bounce_rate == pytest.approx(0.10)  # transient and suppressed left out
    assert counts.complaint_rate == pytest.approx(1 / 90)
    assert counts.open_rate == pytest.approx(0.5)
    assert counts.click_rate == pytest.approx(0.1)
    empty = Counts()
    assert (empty.bounce_rate, empty.complaint_rate, empty.open_rate,
            empty.click_rate) == (None, None, None, None)
    assert Counts({"bounce": 3}).bounce_rate == 1.0
    assert Counts({"bounce": 3}).complaint_rate is None
    shown = counts.as_json()
    assert set(shown["counts"]) == {str(k) for k in Kind}
    assert shown["rates"]["bounce"] == pytest.approx(0.10)


async def test_windows_are_whole_hours_and_old_hours_drop_out(spool: Spool) -> None:
    hour_start = (int(NOW) // HOUR) * HOUR
    for hours_ago in (0, 1, 23, 24, 25, 48):
        await spool.enqueue(new_message(at=hour_start + 10 - hours_ago * HOUR))
    now = hour_start + 1800.0
    window = Window.ending(now, 24 * HOUR)
    assert (window.since, window.until) == (hour_start - 24 * HOUR, hour_start + HOUR)
    assert spool.set_totals(window)["news"][Kind.SEND] == 4  # 0, 1, 23 and 24 hours ago
    assert spool.set_totals(Window.ending(now, HOUR))["news"][Kind.SEND] == 2
    # Purging keeps every hour from the cut on.
    await spool.purge_stats(hour_start - 24 * HOUR, tracked_before=0)
    assert spool.set_totals(Window.ending(now, 15 * 86400))["news"][Kind.SEND] == 4


async def test_totals_by_account_and_for_one_set(spool: Spool) -> None:
    await spool.enqueue(new_message(2, account="acme"))
    await spool.enqueue(new_message(3, account="other"))
    await spool.enqueue(new_message(1, account="other", configuration_set="alerts"))
    window = Window.ending(NOW)
    by_account = spool.set_totals(window, by="account")
    assert by_account["acme"][Kind.SEND] == 2 and by_account["other"][Kind.SEND] == 4
    assert list(spool.set_totals(window, configuration_set="alerts")) == ["alerts"]
    assert spool.set_totals(window, account="other")["news"][Kind.SEND] == 3
    assert set_stats.merge(spool.set_totals(window).values())[Kind.SEND] == 6
    with pytest.raises(ValueError):
        spool.set_totals(window, by="hour")


async def test_counted_later_for_refusals(spool: Spool) -> None:
    spool.count_later(set_stats.Bump("acme", "news", NOW, {Kind.REJECT: 1}))
    await spool.retry(None, NOW)  # any later write: the count went in before it
    assert day(spool)["news"][Kind.REJECT] == 1


async def test_tracked_messages_are_purged_after_the_tracking_window(spool: Spool) -> None:
    old = new_message(tracked=True, at=NOW - 100 * 86400)
    await spool.enqueue(old)
    assert await spool.purge_stats(NOW - set_stats.RETENTION, NOW - 60 * 86400) == 1
    assert await record_engagement(spool, old.message_id, "open", NOW, False,
                                   lambda _: None) is None


def test_a_spool_from_before_the_statistics_reads_as_empty(tmp_path: Path) -> None:
    from smtprelay.spool.store import _MIGRATIONS

    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    migrate(conn, _MIGRATIONS[:4])
    assert set_stats.totals(conn, Window.ending(NOW)) == {}
    conn.close()
    upgraded = open_for_cli(tmp_path / "old.db")  # the CLI upgrades it
    assert set_stats.totals(upgraded, Window.ending(NOW)) == {}
    upgraded.close()


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400.0), ("90m", 5400.0),
                                               ("7d", 604800.0), ("30d", 15 * 86400.0)])
def test_parse_window(text: str, seconds: float) -> None:
    assert set_stats.parse_window(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "-1h", "soon", "1y", "1.5.h"])
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        set_stats.parse_window(text)


def test_last_hours_is_as_many_hour_buckets_as_asked() -> None:
    hour_start = (int(NOW) // HOUR) * HOUR
    now = hour_start + 1800.0
    one = Window.last_hours(now, HOUR)
    assert (one.since, one.until) == (hour_start, hour_start + HOUR)
    day = Window.last_hours(now, 24 * HOUR)
    assert day.last_hour - day.first_hour + 1 == 24
    assert Window.last_hours(now, 90 * 60).first_hour == one.first_hour - 1
