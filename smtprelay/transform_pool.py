"""Tracking transforms in worker processes, off the event loop and out of its GIL.

Rewriting the links of a 50 KB newsletter is ~3-4 ms of pure Python. Inline it holds
the event loop that many milliseconds per message; in a thread it holds the GIL just
the same, so every other session still waits. Worker processes run it truly in
parallel: the loop only pickles the message across a pipe (~0.1 ms for 50 KB).

Only messages the configuration set really transforms (click or open tracking, or
one-click unsubscribe) come here; the rest take the inline fast path, which costs
microseconds. Each call carries the tracking key ring (a few hundred bytes), so a key
rotation (SIGHUP) needs nothing from the workers: the next message is signed with
the new key.

A worker that dies (killed by the OOM killer, say) breaks the whole pool: the
messages it was working on are refused with 451 (the client sends them again, nothing
is lost), and a fresh pool takes the next ones. A message that found the pool already
broken is retried once on the fresh pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import os
from concurrent.futures.process import BrokenProcessPool

from smtprelay import tokens, transforms
from smtprelay.config import ConfigurationSetConfig

log = logging.getLogger("smtprelay.transforms")


class TransformUnavailable(RuntimeError):
    """The worker died while the message was in it: answer 451, the client retries."""


def worker_count(setting: int | str) -> int:
    """`server.transform_workers`: "auto" is one per core up to 4, none on one core."""
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        return 0 if cores < 2 else min(4, cores)
    return int(setting)


def _apply(keyring: tokens.KeyRing, data: bytes, message_id: str, recipient_count: int,
           issued_at: float, settings: ConfigurationSetConfig | None) -> transforms.Result:
    return transforms.Transformer(keyring).apply(
        data, message_id=message_id, recipient_count=recipient_count, issued_at=issued_at,
        settings=settings)


class TransformPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # forkserver, not fork: the relay has threads (SQLite writer, DKIM), and a
            # forked copy of a process with threads can hang on a lock held mid-fork.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("forkserver"))
        return self._executor

    def _replace_broken(self, broken: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._executor is broken:
            log.error("a transform worker process died; starting a new pool of %d",
                      self.workers)
            self._executor = None
            broken.shutdown(wait=False, cancel_futures=True)

    async def apply(self, keyring: tokens.KeyRing, data: bytes, *, message_id: str,
                    recipient_count: int, issued_at: float,
                    settings: ConfigurationSetConfig | None) -> transforms.Result:
        """transforms.Transformer(keyring).apply(...) in a worker process.

        DuplicateOpenTracker comes back as raised by the worker; TransformUnavailable
        when the worker died with the message."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._pool()
            try:
                future = pool.submit(_apply, keyring, data, message_id, recipient_count,
                                     issued_at, settings)
            except (BrokenProcessPool, RuntimeError):
                # Broken before this message got in (or shut down by a reload): it is
                # safe to try once more on a fresh pool.
                self._replace_broken(pool)
                if attempt == 2:
                    raise TransformUnavailable("the transform pool cannot start") from None
                continue
            try:
                return await asyncio.wrap_future(future, loop=loop)
            except BrokenProcessPool:
                self._replace_broken(pool)
                raise TransformUnavailable("the transform worker died") from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Let the workers finish what they hold, then stop them (runs in a thread)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=False)
