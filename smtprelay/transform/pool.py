"""Tracking transforms and DKIM signing in worker processes, off the event loop and out
of its GIL.

Rewriting the links of a 50 KB newsletter is ~3 ms of pure Python, and DKIM's relaxed
canonicalisation (dkimpy's regexes) holds the GIL too. Inline that holds the event
loop; in a thread it holds the GIL just the same, so every other session still waits.
Worker processes (`smtprelay.transform.worker`) run transform.finish truly in
parallel. The loop talks to them over their stdin and stdout pipes with a
length-prefixed format, so a message costs the relay a write and a read of its bytes:
no pickling of the message and no helper threads.

Messages the configuration set transforms (click or open tracking, one-click
unsubscribe), messages to a contact list and messages to sign come here; the rest
take the inline fast path, which costs microseconds. Each request carries the
tracking key ring (a few hundred bytes) and the DKIM keys (PEM, cached per key set),
so a key rotation or a new DKIM key (SIGHUP) needs nothing from the workers: the next
message is signed with the new key.

A worker takes requests in order; a request goes to an idle worker, or starts one
(up to `server.transform_workers`), or waits behind the fewest unanswered ones. A
worker that dies (killed by the OOM killer, say) fails the messages it held; each is
tried once more on a fresh worker (the transform is a pure function, so a second run
is harmless), and if that one dies too the message is refused with 451: the client
keeps it and sends it again. Nothing is lost either way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import pickle
import sys
from collections.abc import Sequence

from smtprelay.infra.children import child_environment
from smtprelay.transform import dkim, tokens, tracking
from smtprelay.transform import worker as worker_wire
from smtprelay.transform.finish import Finished, FinishFailed
from smtprelay.transform.links import DuplicateOpenTracker

log = logging.getLogger("smtprelay.transforms")

_KEYS_CACHE = 64
_STOP_TIMEOUT = 10.0
# How much of a worker's replies to buffer before pausing the pipe: a few messages'
# worth, so a big message arrives in a few reads rather than many 64 KiB ones.
_READ_BUFFER = 1 << 20

class TransformUnavailable(RuntimeError):
    """The worker died while the message was in it: answer 451, the client retries."""


class _WorkerDied(Exception):
    pass


def worker_count(setting: int | str) -> int:
    """`server.transform_workers`: "auto" is one per core up to 4, none on one core."""
    if setting == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        return 0 if cores < 2 else min(4, cores)
    return int(setting)


_Reply = tuple[int, bytes, bytes]  # status, pickled details, message


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.waiting: collections.deque[asyncio.Future[_Reply]] = collections.deque()
        self.reader: asyncio.Task[None] | None = None

    async def read_replies(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                head = await stdout.readexactly(worker_wire.REPLY.size)
                status, details_size, data_size = worker_wire.REPLY.unpack(head)
                details = await stdout.readexactly(details_size)
                data = await stdout.readexactly(data_size)
                reply = self.waiting.popleft()
                if not reply.done():  # else the session went away meanwhile
                    reply.set_result((status, details, data))
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            while self.waiting:
                reply = self.waiting.popleft()
                if not reply.done():
                    reply.set_exception(_WorkerDied())


class TransformPool:
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._live: list[_Worker] = []
        self._spawning = asyncio.Lock()
        # DKIM keys as requests carry them, by the identity of the Signer's tuple of
        # keys for a domain (the entry keeps it alive, so its id cannot be reused while
        # it is here): a reload makes new tuples, and old entries fall out when full.
        self._keys: collections.OrderedDict[int, tuple[object, bytes]] = \
            collections.OrderedDict()
        self._closed = False

    def pids(self) -> list[int]:
        """The live workers' process ids (for tests and operators' curiosity)."""
        return [worker.process.pid for worker in self._live]

    async def _spawn(self) -> _Worker:
        # -P: -m would put the working directory first on the path, so a relay started
        # inside another checkout (or next to a stray pickle.py) would run that code.
        # Unlike -I it keeps PYTHONPATH and site-packages (infra.children).
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "smtprelay.transform.worker",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=child_environment(),
            limit=_READ_BUFFER)
        worker = _Worker(process)
        worker.reader = asyncio.create_task(self._watch(worker))
        return worker

    async def _watch(self, worker: _Worker) -> None:
        await worker.read_replies()
        # In the same step as its last reply: a worker is in _live exactly while alive.
        with contextlib.suppress(ValueError):
            self._live.remove(worker)
        code = await worker.process.wait()
        if not self._closed:
            log.error("a transform worker process (pid %d) ended with %s; a new one takes "
                      "the next message", worker.process.pid,
                      f"signal {-code}" if code < 0 else f"exit code {code}")

    def _pick(self) -> _Worker | None:
        """An idle worker; else None while there is room for another; else the least busy.

        Workers start on demand, as a ProcessPoolExecutor's do: a relay that tracks one
        message now and then runs one."""
        idle = next((worker for worker in self._live if not worker.waiting), None)
        if idle is not None or len(self._live) < self.workers:
            return idle
        return min(self._live, key=lambda worker: len(worker.waiting))

    async def _worker(self) -> _Worker:
        worker = self._pick()
        if worker is None:
            async with self._spawning:
                worker = self._pick()  # another request may have started one meanwhile
                if worker is None:
                    worker = await self._spawn()
                    self._live.append(worker)
        return worker

    def _keys_blob(self, keys: Sequence[dkim.SigningKey]) -> bytes:
        if not keys:
            return b""
        entry = self._keys.get(id(keys))
        if entry is not None and entry[0] is keys:
            return entry[1]
        blob = worker_wire.keys_blob(keys)
        self._keys[id(keys)] = (keys, blob)
        if len(self._keys) > _KEYS_CACHE:
            self._keys.popitem(last=False)
        return blob

    async def finish(self, keyring: tokens.KeyRing, data: bytes, plan: tracking.Plan | None,
                     keys: Sequence[dkim.SigningKey], *, message_id: str,
                     recipient: int | None, issued_at: float, media_type: str | None = None
                     ) -> Finished:
        """transform.finish.finish(...) in a worker process.

        The Result's `links` is empty: `link_count` says how many were tracked; its
        `data` is `data` itself when nothing changed. DuplicateOpenTracker and
        FinishFailed as the worker raised them; TransformUnavailable when two workers
        in a row died with the message, or the pool is closed."""
        if self._closed:
            raise TransformUnavailable("the transform pool is shut down")
        frame = worker_wire.request(
            message_id, recipient, issued_at,
            pickle.dumps(keyring, protocol=pickle.HIGHEST_PROTOCOL), plan, data,
            self._keys_blob(keys), media_type)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                worker = await self._worker()
            except OSError as exc:
                raise TransformUnavailable(f"cannot start a transform worker: {exc}") \
                    from None
            reply: asyncio.Future[_Reply] = loop.create_future()
            worker.waiting.append(reply)
            stdin = worker.process.stdin
            assert stdin is not None
            try:
                stdin.write(frame)
                await stdin.drain()
                status, details, result = await reply
            except (_WorkerDied, ConnectionError):
                if attempt == 2:
                    raise TransformUnavailable("the transform worker died") from None
                log.warning("msg=%s a transform worker died with the message; trying "
                            "another", message_id)
                continue
            finally:
                if not reply.done():
                    reply.cancel()  # given up on: its reply is dropped on arrival
                elif not reply.cancelled():
                    reply.exception()  # seen here, so asyncio does not report it as lost
            # Pickles from our own worker, over a pipe nobody else holds.
            answer = pickle.loads(details)  # noqa: S301
            if status == worker_wire.DUPLICATE_OPEN_TRACKER:
                raise DuplicateOpenTracker(answer)
            if status != worker_wire.OK:
                stage, detail = answer
                raise FinishFailed(stage, f"in the transform worker: {detail}")
            (link_count, opens_tracked, unsubscribe_url, problems, signatures,
             sign_seconds, algorithms, changed) = answer
            return Finished(tracking.Result(result if changed else data,
                                            opens_tracked=opens_tracked,
                                            unsubscribe_url=unsubscribe_url,
                                            problems=problems, link_count=link_count),
                            signatures, sign_seconds, algorithms)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        """Let the workers finish what they hold (they stop at the end of their input),
        then reap them; a worker still busy after 10 s is killed."""
        self._closed = True
        workers, self._live = self._live, []
        for worker in workers:
            if worker.process.stdin is not None:
                worker.process.stdin.close()
        if workers:
            await asyncio.wait([asyncio.ensure_future(worker.process.wait())
                                for worker in workers], timeout=_STOP_TIMEOUT)
        for worker in workers:
            if worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
                await worker.process.wait()
            if worker.reader is not None:
                await worker.reader
