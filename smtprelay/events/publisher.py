"""Event publication: from the outbox to each configuration set's destinations.

Every destination (``configuration_sets.<set>.event_destinations[]``) reads the outbox
from its own saved position, takes the events of its set and types, hands them over,
and only then saves its new position: an event is published at least once, in order,
whatever crashes in between (a crash after the write and before the save repeats the
last batch; receivers drop repeats by the event id). A destination that fails keeps
its position and is retried with backoff; the others go on. Events every destination
has passed are deleted.

A destination added while the relay runs starts with the events made after that
(as with SES, nothing is replayed); a removed one stops holding events back.

Destinations: ``file`` (NDJSON, one SES record per line, fsync per batch, rotated by
size). Written in a thread: the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from smtprelay import metrics
from smtprelay.config import Config, EventDestinationConfig
from smtprelay.events.outbox import StoredEvent
from smtprelay.safeio import fsync_dir
from smtprelay.spool.store import Spool

log = logging.getLogger("smtprelay.events")

_BATCH = 500
_IDLE = 1.0  # seconds between looks at the outbox when there is nothing new
_BACKOFF_FIRST = 1.0
_BACKOFF_MAX = 300.0


@dataclass(frozen=True, slots=True)
class _Target:
    key: str  # "<set>/<destination>", the saved position's name
    configuration_set: str
    settings: EventDestinationConfig


def targets(config: Config) -> list[_Target]:
    return [_Target(f"{set_name}/{dest.name}", set_name, dest)
            for set_name, settings in config.configuration_sets.items()
            for dest in settings.event_destinations if dest.enabled]


class FileDestination:
    """Appends NDJSON; rotates to path.1 ... path.<keep> when the file reaches max_size."""

    def __init__(self, settings: EventDestinationConfig) -> None:
        assert settings.path is not None
        self.path: Path = settings.path
        self.max_size = settings.max_size
        self.keep = settings.keep

    def write(self, lines: list[bytes]) -> None:
        """Durably append `lines` (each a complete record with its newline)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size >= self.max_size:
            self._rotate()

    def _rotate(self) -> None:
        if self.keep == 0:
            os.replace(self.path, self.path.with_name(self.path.name + ".old"))
            os.unlink(self.path.with_name(self.path.name + ".old"))
        else:
            for index in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        fsync_dir(self.path.parent)
        log.info("events file rotated path=%s", self.path)


class Publisher:
    def __init__(self, spool: Spool, config: Config) -> None:
        self._spool = spool
        self._config = config
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    async def start(self) -> None:
        """Give new destinations their starting position, then publish in the background."""
        await self._place_new_destinations()
        self._task = asyncio.create_task(self._run(), name="events")

    def update_config(self, config: Config) -> None:
        self._config = config
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # One last pass, so a clean stop leaves nothing unpublished that could go now.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.publish_once(), 10)

    async def _place_new_destinations(self, current: dict[str, int] | None = None) -> bool:
        """Start destinations without a saved position at the outbox's end; True if any."""
        if current is None:
            current = await asyncio.to_thread(self._spool.cursors)
        missing = [t.key for t in targets(self._config) if t.key not in current]
        if missing:
            latest = await asyncio.to_thread(self._spool.last_event_id)
            await self._spool.advance_cursors(
                {key: latest for key in missing}, keep={t.key for t in targets(self._config)})
        return bool(missing)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                busy = await self.publish_once()
            except Exception as exc:
                log.error("event publication failed: %s", exc)
                busy = False
            if not busy:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_IDLE):
                        await self._wake.wait()

    async def publish_once(self) -> bool:
        """One batch per destination; True when some destination has more waiting."""
        all_targets = targets(self._config)
        positions = await asyncio.to_thread(self._spool.cursors)
        if await self._place_new_destinations(positions):
            positions = await asyncio.to_thread(self._spool.cursors)
        moved: dict[str, int] = {}
        more = False
        now = time.monotonic()
        for target in all_targets:
            if self._retry_at.get(target.key, 0.0) > now:
                continue
            start = positions[target.key]
            batch = await asyncio.to_thread(self._spool.events_after, start, _BATCH)
            if not batch:
                continue
            more = more or len(batch) == _BATCH
            wanted = [e for e in batch if e.configuration_set == target.configuration_set
                      and target.settings.wants(e.type)]
            try:
                if wanted:
                    await self._deliver(target, wanted)
            except Exception as exc:
                self._failed(target, exc)
                continue
            self._backoff.pop(target.key, None)
            self._retry_at.pop(target.key, None)
            moved[target.key] = batch[-1].id
            for event in wanted:
                metrics.EVENTS_PUBLISHED.labels(type=event.type,
                                                configuration_set=target.configuration_set,
                                                destination=target.settings.name).inc()
        if moved or positions.keys() - {t.key for t in all_targets}:
            await self._spool.advance_cursors(moved, keep={t.key for t in all_targets})
        depth = await asyncio.to_thread(self._spool.event_backlog)
        metrics.EVENT_OUTBOX_DEPTH.set(depth)
        return more

    async def _deliver(self, target: _Target, events: list[StoredEvent]) -> None:
        settings = target.settings
        if settings.type == "file":
            lines = [event.to_json() + b"\n" for event in events]
            await asyncio.to_thread(FileDestination(settings).write, lines)
        else:  # pragma: no cover - the config admits no other type yet
            raise ValueError(f"unknown destination type {settings.type!r}")

    def _failed(self, target: _Target, exc: Exception) -> None:
        delay = min(_BACKOFF_MAX, self._backoff.get(target.key, _BACKOFF_FIRST / 2) * 2)
        self._backoff[target.key] = delay
        self._retry_at[target.key] = time.monotonic() + delay
        metrics.EVENT_PUBLISH_FAILURES.labels(destination=target.key).inc()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        where = f" ({target.settings.path})" if target.settings.path else ""
        log.error("events destination configuration_sets.%s.event_destinations[%s]%s "
                  "failed, retrying in %.0fs: %s", target.configuration_set,
                  target.settings.name, where, delay, reason)
