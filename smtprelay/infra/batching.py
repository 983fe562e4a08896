"""Group calls: what arrives while one call is under way goes together in the next.

Group commit for anything that is cheaper per item in bulk (one spool write for many
clicks, one channel message for a worker's clicks): the first item starts a call at
the next turn of the loop, so items added in the same turn join it; items that come
while it runs wait for the next one, which starts as soon as it is done. Every caller
returns when the call that took its item has finished, and never sees its failure:
`call` is expected to log what it loses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

log = logging.getLogger("smtprelay")

T = TypeVar("T")


class GroupCall(Generic[T]):
    def __init__(self, call: Callable[[list[T]], Awaitable[None]]) -> None:
        self._call = call
        self._items: list[T] = []
        self._done: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    async def add(self, item: T) -> None:
        """Return once the call that took `item` has finished."""
        await self.add_all((item,))

    async def add_all(self, items: Iterable[T]) -> None:
        """Return once the call that took `items` has finished (they go in one call)."""
        before = len(self._items)
        self._items.extend(items)
        if len(self._items) == before:
            return  # nothing to wait for
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        done = self._done
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run())
        # Shielded: a caller that goes away (a client hung up) must not cancel the
        # call the others wait for.
        await asyncio.shield(done)

    async def _run(self) -> None:
        while self._items:
            items, done = self._items, self._done
            self._items, self._done = [], None
            try:
                await self._call(items)
            except Exception:
                # A bug, since `call` logs what it expects to fail: the items after
                # these must still be called.
                log.exception("a group call of %d items failed", len(items))
            finally:
                if done is not None and not done.done():
                    done.set_result(None)
