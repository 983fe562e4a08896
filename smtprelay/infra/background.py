"""A task that works in rounds: after each it sleeps until woken or a timeout passes.

The scheduler, the event publisher's destinations and the feedback processor all
work this way: they poll a database, so an idle poll bounds how late work done by
another process (the CLI) is noticed, and a wake() from this process starts the next
round at once instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("smtprelay")

# A round that raises is logged and tried again after this long, so a bug in one
# component can neither end its task silently nor spin the loop.
ERROR_PAUSE = 1.0


class BackgroundLoop:
    """Runs `round` in a task: each call returns how long to sleep before the next (0:
    go on at once, after letting other tasks run; None: until woken)."""

    def __init__(self, name: str, round: Callable[[], Awaitable[float | None]]) -> None:
        self.name = name
        self._round = round
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """True once stop() was called: a round may end early."""
        return self._stopping

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Start the next round now (from the event loop's thread)."""
        self._wake.set()

    async def stop(self, *, finish_round: bool = False) -> None:
        """Cancel the task; with `finish_round`, let the round under way end first."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if finish_round:
            self._wake.set()
            await task
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                pause = await self._round()
            except Exception:
                log.exception("%s: a round failed; trying again in %.0f s", self.name,
                              ERROR_PAUSE)
                pause = ERROR_PAUSE
            if self._stopping:
                break
            if pause is not None and pause <= 0:
                await asyncio.sleep(0)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()
