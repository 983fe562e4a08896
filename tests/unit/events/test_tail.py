"""The live tail's fan-out: filters, the recent events, slow viewers losing events
rather than holding up the spool, and the end of every stream at close."""

from __future__ import annotations

import asyncio

from smtprelay.events.tail import (
    KEEPALIVE,
    Dropped,
    EventTail,
    TailClosed,
    TailFilter,
    follow,
)
from smtprelay.spool.model import Envelope, EventRecord, NewMessage


def record(n: int, kind: str = "Delivery", configuration_set: str | None = "t") -> EventRecord:
    return EventRecord(event_id=f"e{n}", message_id=f"m{n}", type=kind,
                       configuration_set=configuration_set, at=1_700_000_000.0 + n,
                       detail={"recipients": [f"r{n}@example.net"]})


def test_filters_by_type_and_set_and_keeps_recent_events() -> None:
    tail = EventTail(recent=3)
    tail.publish([record(1), record(2, "Bounce"), record(3, configuration_set=None),
                  record(4, "Send", "other")])
    assert [e.event_id for e in tail.recent(TailFilter())] == ["e2", "e3", "e4"]
    assert [e.event_id for e in tail.recent(TailFilter.of(types=["Bounce"]))] == ["e2"]
    assert [e.event_id for e in tail.recent(TailFilter.of(sets=[""]))] == ["e3"]
    assert [e.event_id for e in tail.recent(TailFilter.of(sets=["t", "other"]), 1)] == ["e4"]
    assert tail.recent(TailFilter(), 0) == []


def test_an_event_names_its_envelope_when_the_message_was_seen() -> None:
    tail = EventTail()
    message = NewMessage(message_id="m1", data=b"", account="a",
                         envelope=Envelope("s@example.com", ("r@example.net",)),
                         configuration_set="t", received_at=0.0, client_ip="127.0.0.1",
                         client_helo="h", auth_user=None, listener="submission")
    tail.publish([record(1, "Send")], message)
    tail.publish([record(1, "Delivery"), record(2)])
    first, later, unknown = (e.as_json() for e in tail.recent(TailFilter()))
    assert first["mail"] == later["mail"] == {"source": "s@example.com",
                                              "destination": ["r@example.net"]}
    assert "mail" not in unknown
    assert later["delivery"] == {"recipients": ["r1@example.net"]}
    assert first["timestamp"].endswith("Z") and first["eventType"] == "Send"


async def test_a_slow_viewer_loses_events_and_is_told_publishing_never_waits() -> None:
    tail = EventTail(viewer_queue=2)
    with tail.watch(TailFilter()) as slow:
        tail.publish([record(n) for n in range(5)])  # returns at once: 3 do not fit
        assert slow.dropped == 3
        first = await slow.next(1)
        assert first is not None and first.event_id == "e0"
        assert slow.take_dropped() == 3 and slow.take_dropped() == 0
    assert tail.viewers == 0


async def test_follow_gives_recent_then_new_events_keepalives_and_ends_at_close() -> None:
    tail = EventTail(viewer_queue=1)
    tail.publish([record(1)])
    seen: list[object] = []

    async def watch() -> None:
        async for item in follow(tail, TailFilter(), recent=5, keep_going=True,
                                 keepalive=0.05):
            seen.append(item)
            if item is KEEPALIVE and len(seen) == 2:
                tail.publish([record(2), record(3)])  # one fits, one is lost
            if len(seen) > 10:
                tail.close()

    await asyncio.wait_for(watch(), 5)
    assert [getattr(i, "event_id", i) for i in seen[:2]] == ["e1", None]
    assert Dropped(1) in seen and any(getattr(i, "event_id", "") == "e2" for i in seen)
    with tail.watch(TailFilter()) as late:  # closed: a new viewer ends at once
        try:
            await late.next(1)
            raise AssertionError("a closed tail gave an event")
        except TailClosed:
            pass
