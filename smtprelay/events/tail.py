"""The live tail: every event the spool commits, fanned out to whoever is watching now
(the console's Events page, `smtprelay events tail` through the admin API).

The spool hands each committed batch of events to `EventTail.publish` (Spool.event_tap,
on the event loop's thread, in the supervisor: worker processes hand their messages to
its spool, so every event of the node passes here once). Publishing never waits: each
viewer has a bounded queue, and a viewer that falls behind (a slow browser, a paused
terminal) loses the events that do not fit, counted and told to it, rather than
holding up the spool or using memory without bound. The last RECENT events are kept
so that a new viewer starts with some context.

This is a view, not a destination: it is at most once and in memory only (nothing is
replayed after a restart). Event destinations (smtprelay.events.publisher) are the
durable, at-least-once way to receive events. Only sets that publish events (an
enabled event destination) make events at all, as in SES.

What a viewer gets of each event (`TailEvent.as_json`) is SES's record without its
full ``mail`` object (which is rebuilt from the mail record at publication), with the
message id, configuration set and time beside it, and ``mail.source`` and
``mail.destination`` (the envelope) for messages accepted since the relay started
(the last MESSAGES of them are remembered).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from smtprelay.events.model import EventType
from smtprelay.events.ses import DETAIL_KEYS, iso_timestamp
from smtprelay.spool.model import EventRecord, NewMessage

RECENT = 200  # events kept for a new viewer
MESSAGES = 10_000  # envelopes remembered, so that later events can name them
VIEWER_QUEUE = 1000  # events a viewer may be behind before it loses some
EVENT_TYPES: tuple[str, ...] = tuple(str(t) for t in EventType)


@dataclass(frozen=True, slots=True)
class TailEvent:
    event_id: str
    type: str
    configuration_set: str | None
    message_id: str
    at: float
    detail: dict[str, Any]
    envelope: tuple[str, tuple[str, ...]] | None = None  # (MAIL FROM, recipients)

    @classmethod
    def of(cls, record: EventRecord,
           envelope: tuple[str, tuple[str, ...]] | None = None) -> TailEvent:
        return cls(record.event_id, record.type, record.configuration_set,
                   record.message_id, record.at, record.detail, envelope)

    def as_json(self) -> dict[str, Any]:
        key = DETAIL_KEYS.get(EventType(self.type), "detail") \
            if self.type in EVENT_TYPES else "detail"
        found: dict[str, Any] = {
            "eventType": self.type, "eventId": self.event_id, "messageId": self.message_id,
            "configurationSet": self.configuration_set, "timestamp": iso_timestamp(self.at)}
        if self.envelope is not None:
            found["mail"] = {"source": self.envelope[0],
                             "destination": list(self.envelope[1])}
        found[key] = self.detail
        return found


@dataclass(frozen=True, slots=True)
class TailFilter:
    """Which events a viewer wants: None is any; a set of "" is mail without a set."""

    types: frozenset[str] | None = None
    sets: frozenset[str] | None = None

    @classmethod
    def of(cls, types: Iterable[str] = (), sets: Iterable[str] = ()) -> TailFilter:
        wanted_types = frozenset(t for t in types if t)
        wanted_sets = frozenset(sets)
        return cls(wanted_types or None, wanted_sets or None)

    def wants(self, event: TailEvent) -> bool:
        return ((self.types is None or event.type in self.types)
                and (self.sets is None or (event.configuration_set or "") in self.sets))


class TailClosed(Exception):
    """The relay is stopping: the viewer's stream ends."""


class Viewer:
    """One watcher's bounded queue; `dropped` counts what did not fit."""

    def __init__(self, wanted: TailFilter, size: int) -> None:
        self.wanted = wanted
        self._queue: asyncio.Queue[TailEvent | None] = asyncio.Queue(size)
        self.dropped = 0
        self._unreported = 0
        self._closed = False

    def offer(self, event: TailEvent) -> None:
        if not self.wanted.wants(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            self._unreported += 1

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)  # wakes a waiting next(); a full queue ends anyway

    def take_dropped(self) -> int:
        """Events lost since the last call (to tell the viewer)."""
        lost, self._unreported = self._unreported, 0
        return lost

    async def next(self, quiet: float) -> TailEvent | None:
        """The next event, or None when `quiet` seconds pass without one (time for a
        keep-alive); TailClosed once the tail is closed."""
        if self._closed and self._queue.empty():
            raise TailClosed
        try:
            async with asyncio.timeout(quiet):
                event = await self._queue.get()
        except TimeoutError:
            return None
        if event is None:
            raise TailClosed
        return event


class EventTail:
    """Fan-out of committed events to the viewers (event loop thread only)."""

    def __init__(self, recent: int = RECENT, viewer_queue: int = VIEWER_QUEUE) -> None:
        self._recent: collections.deque[TailEvent] = collections.deque(maxlen=recent)
        self._viewers: set[Viewer] = set()
        self._viewer_queue = viewer_queue
        self._envelopes: collections.OrderedDict[str, tuple[str, tuple[str, ...]]] = \
            collections.OrderedDict()
        self.closed = False

    def publish(self, records: Sequence[EventRecord], message: NewMessage | None = None
                ) -> None:
        """Spool.event_tap: `records` were committed, with `message` if they came with it."""
        if message is not None:
            self._envelopes[message.message_id] = (message.envelope.mail_from,
                                                   message.envelope.recipients)
            if len(self._envelopes) > MESSAGES:
                self._envelopes.popitem(last=False)
        for record in records:
            event = TailEvent.of(record, self._envelopes.get(record.message_id))
            self._recent.append(event)
            for viewer in self._viewers:
                viewer.offer(event)

    def recent(self, wanted: TailFilter, limit: int = RECENT) -> list[TailEvent]:
        """The latest kept events `wanted` takes, oldest first, at most `limit`."""
        found = [event for event in self._recent if wanted.wants(event)]
        return found[-limit:] if limit > 0 else []

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    @contextlib.contextmanager
    def watch(self, wanted: TailFilter) -> Iterator[Viewer]:
        viewer = Viewer(wanted, self._viewer_queue)
        if self.closed:
            viewer.close()
        self._viewers.add(viewer)
        try:
            yield viewer
        finally:
            self._viewers.discard(viewer)

    def close(self) -> None:
        """End every viewer's stream (the relay stops: open streams must not hold the
        HTTP server's shutdown up)."""
        self.closed = True
        for viewer in self._viewers:
            viewer.close()


@dataclass(frozen=True, slots=True)
class Dropped:
    """Events this viewer lost for falling behind since the last notice."""

    count: int


KEEPALIVE = None  # what `follow` yields when nothing happened for a while


async def follow(tail: EventTail, wanted: TailFilter, *, recent: int, keep_going: bool,
                 keepalive: float) -> AsyncIterator[TailEvent | Dropped | None]:
    """The last `recent` kept events, then (with `keep_going`) each new one as it comes,
    a `Dropped` after events were lost, and KEEPALIVE after `keepalive` seconds of
    quiet (so that a dead client is found and proxies keep the stream open). Ends when
    the tail closes."""
    with tail.watch(wanted) as viewer:
        # Watching before the snapshot: an event published in between is in both.
        shown = tail.recent(wanted, recent)
        seen = {event.event_id for event in shown}
        for event in shown:
            yield event
        if not keep_going:
            return
        while True:
            try:
                new = await viewer.next(keepalive)
            except TailClosed:
                return
            lost = viewer.take_dropped()
            if lost:
                yield Dropped(lost)
            if new is None:
                yield KEEPALIVE
            elif new.event_id not in seen:
                yield new
