"""The spool as worker processes see it: acceptance hands each message to the
supervisor, the spool's one writer, and waits until it is durable there.

One writer for every worker keeps group commit sharing its fsyncs among all of their
messages and the queue one queue (docs/design.md, "Every core"). What crosses the
channel is the NewMessage as the pipeline made it; the supervisor's answer comes after
its commit, so a worker's 250 still means "on disk". A spool that is full or failing
is the same SpoolFullError or SpoolError in the worker, so the replies (452, 451) are
the pipeline's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from smtprelay.spool import set_stats
from smtprelay.spool.model import EventRecord, NewMessage
from smtprelay.spool.store import Spool, SpoolError, SpoolFullError
from smtprelay.state.api import StateUnavailable
from smtprelay.state.channel import ChannelClient, ChannelServer

Context = TypeVar("Context")
ERRORS = {"spool_full": SpoolFullError, "spool": SpoolError}


def serve_spool(server: ChannelServer[Context], spool: Spool,
                on_spooled: Callable[[], None] = lambda: None) -> None:
    """Register the spool's acceptance operations on `server`; `on_spooled` after each
    message is durable (the scheduler's wake-up)."""

    async def enqueue(_: Context, args: tuple[Any, ...]) -> object:
        (message,) = args
        await spool.enqueue(message)
        on_spooled()
        return None

    async def count_later(_: Context, args: tuple[Any, ...]) -> object:
        (counts,) = args
        spool.count_later(counts)
        return None

    async def record_unsent(_: Context, args: tuple[Any, ...]) -> object:
        record, events = args
        await spool.record_unsent(record, events)
        return None

    server.register("enqueue", enqueue)
    server.register("record_unsent", record_unsent)
    server.register("count_later", count_later)
    # Most specific first: a full disk is a SpoolError too.
    server.error_kind("spool_full", SpoolFullError)
    server.error_kind("spool", SpoolError)


class RemoteSpool:
    """What the acceptance pipeline needs of the spool, through the supervisor."""

    def __init__(self, channel: ChannelClient) -> None:
        self._channel = channel

    async def enqueue(self, message: NewMessage) -> None:
        """Return once the message is durable in the supervisor's spool; SpoolError
        (or SpoolFullError) otherwise, also when the supervisor cannot be asked."""
        try:
            await self._channel.call("enqueue", message)
        except StateUnavailable as exc:
            raise SpoolError(str(exc)) from exc

    async def record_unsent(self, record: NewMessage, events: tuple[EventRecord, ...]
                            ) -> None:
        try:
            await self._channel.call("record_unsent", record, events)
        except StateUnavailable as exc:
            raise SpoolError(str(exc)) from exc

    def count_later(self, counts: set_stats.Bump) -> None:
        """Counted in the supervisor's next commit; nobody waits for it."""
        self._channel.post("count_later", counts)
