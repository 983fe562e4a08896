"""The redis_stream event destination: each event is added to a Redis stream (XADD),
for consumers that read it with consumer groups (docs/events.md).

An entry's fields: ``event`` (the SES JSON, or the notification JSON with format:
notification, exactly the line a file destination writes), ``type`` (SES eventType),
``configuration_set`` and ``event_id`` (the relay's, for a consumer to drop a repeat:
after a failure part way through a batch the publisher adds the rest again). The
stream is trimmed to about `max_length` entries (MAXLEN ~), so a consumer that stops
reading cannot fill Redis; a batch goes in one pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from smtprelay.config import EventDestinationConfig
from smtprelay.spool.outbox import StoredEvent
from smtprelay.state.redis import redacted


class StreamDestination:
    def __init__(self, settings: EventDestinationConfig, configuration_set: str) -> None:
        assert settings.url is not None  # the configuration's validator says so
        self._settings = settings
        self._set = configuration_set
        self._redis = aioredis.Redis.from_url(settings.url, socket_timeout=settings.timeout,
                                              socket_connect_timeout=settings.timeout)
        self.shown_url = f"{redacted(settings.url)} stream {settings.stream}"

    async def add(self, events: Sequence[StoredEvent], lines: Sequence[bytes]) -> None:
        """Add `events` (rendered as `lines`) in order; a Redis error raises, and the
        publisher retries the batch from the first event it has not confirmed."""
        if not events:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for event, line in zip(events, lines, strict=True):
                pipe.xadd(self._settings.stream,
                          {"event": line.rstrip(b"\n"), "type": event.type,
                           "configuration_set": self._set, "event_id": event.event_id},
                          maxlen=self._settings.max_length, approximate=True)
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()
