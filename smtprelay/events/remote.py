"""Opens, clicks and unsubscribes as worker processes record them: through the supervisor.

A worker's HTTP server answers the tracking routes (smtprelay.http.forward says what it
passes on). What it saw goes to the supervisor's EngagementRecorder over the worker's
channel, a batch per message (what came while the last was on its way), so every
worker's clicks join the recorder's batches and share the spool's group commit; the
answer comes once the batch is durable, as in one process.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from smtprelay.events.engagement import EngagementRecorder
from smtprelay.events.model import Engagement
from smtprelay.infra.batching import GroupCall
from smtprelay.state.api import StateUnavailable
from smtprelay.state.channel import ChannelClient, ChannelServer

log = logging.getLogger("smtprelay.events")

Context = TypeVar("Context")


def serve_engagements(server: ChannelServer[Context], recorder: EngagementRecorder) -> None:
    """Register the recorder's operations on `server`."""

    async def engaged(_: Context, args: tuple[Any, ...]) -> object:
        (engagements,) = args
        # Into the recorder's batches with every other worker's, answered together.
        await recorder.engaged_all(engagements)
        return None

    async def unsubscribe(_: Context, args: tuple[Any, ...]) -> object:
        (engagement,) = args
        return await recorder.unsubscribe(engagement)

    server.register("engaged", engaged)
    server.register("unsubscribe", unsubscribe)


class RemoteEngagements:
    """An EngagementSink in a worker: the supervisor's recorder over the channel."""

    def __init__(self, channel: ChannelClient) -> None:
        self._channel = channel
        # The clicks that come while one call is under way go in the next: one channel
        # message (and one answer) for many.
        self._batches: GroupCall[Engagement] = GroupCall(self._send)

    async def engaged(self, engagement: Engagement) -> None:
        await self._batches.add(engagement)

    async def _send(self, engagements: list[Engagement]) -> None:
        try:
            await self._channel.call("engaged", engagements)
        except StateUnavailable as exc:
            # The people still get their redirects and pixels; the events are lost.
            log.error("%d opens and clicks not recorded (msg=%s ...): %s", len(engagements),
                      engagements[0].payload.message_id, exc)

    async def unsubscribe(self, engagement: Engagement) -> bool:
        try:
            return bool(await self._channel.call("unsubscribe", engagement))
        except StateUnavailable as exc:
            log.error("msg=%s unsubscribe not recorded: %s", engagement.payload.message_id,
                      exc)
            return False
