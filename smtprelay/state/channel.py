"""Calls between the supervisor and its worker processes over one socketpair per worker.

The supervisor registers operations (async functions) on a ChannelServer; each worker's
ChannelClient calls them by name and awaits the answer, many calls in flight at once.
Per stream the server keeps a context object the operations may note things in (what
that worker holds), and runs every closing hook with it when the stream ends, as it
does when the worker dies.

The wire: a 4-byte big-endian length, then a pickled tuple; a request is (id, name,
args), an answer (id, ok, value), where a failed call's value is (kind, text): `kind`
names the error class the client raises (as registered on both ends), so a spool
that is full is a SpoolFullError in the worker too. Pickle is safe here: both ends are
this relay's own processes, and a socketpair is reachable by no one else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from smtprelay.state.api import StateUnavailable

log = logging.getLogger("smtprelay.state")

_LENGTH = struct.Struct("!I")
# Messages cross as one frame (the spool's enqueue): the largest message and room.
MAX_FRAME = 1 << 30
UNAVAILABLE = "unavailable"

Context = TypeVar("Context")
Operation = Callable[[Context, tuple[Any, ...]], Awaitable[object]]


async def read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(_LENGTH.size)
    (size,) = _LENGTH.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"a channel frame of {size} bytes")
    # Our own processes at both ends of a socketpair (see the module's docstring).
    return pickle.loads(await reader.readexactly(size))  # noqa: S301


def frame(value: object) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class ChannelServer(Generic[Context]):
    """Answers each worker's calls; `new_context` makes a stream's context, and each
    closing hook gets it when the stream ends."""

    def __init__(self, new_context: Callable[[str], Context]) -> None:
        self._new_context = new_context
        self._operations: dict[str, Operation[Context]] = {}
        # Error classes an operation may raise on purpose, by the kind the client knows.
        self._kinds: dict[type[BaseException], str] = {}
        self._closing: list[Callable[[Context], None]] = []
        self._streams: set[asyncio.Task[None]] = set()

    def register(self, name: str, operation: Operation[Context]) -> None:
        self._operations[name] = operation

    def error_kind(self, kind: str, error: type[BaseException]) -> None:
        self._kinds[error] = kind

    def on_close(self, hook: Callable[[Context], None]) -> None:
        self._closing.append(hook)

    def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._serve(reader, writer, name))
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)
        return task

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()
        if self._streams:
            await asyncio.wait(list(self._streams), timeout=5)

    def _kind(self, exc: BaseException) -> str:
        for error, kind in self._kinds.items():
            if isinstance(exc, error):
                return kind
        return UNAVAILABLE

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     name: str) -> None:
        context = self._new_context(name)
        calls: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    request_id, operation_name, args = await read_frame(reader)
                except (asyncio.IncompleteReadError, OSError):
                    return
                operation = self._operations.get(operation_name)
                if operation is None:
                    writer.write(frame((request_id, False, (
                        UNAVAILABLE, f"unknown operation {operation_name!r}"))))
                    continue
                # Each call runs on its own, so a slow one (a spool commit) does not
                # hold up the quick ones behind it.
                call = asyncio.create_task(self._answer(
                    writer, request_id, operation_name, operation, context, args, name))
                calls.add(call)
                call.add_done_callback(calls.discard)
        except (ValueError, pickle.UnpicklingError) as exc:
            log.error("the channel from %s is broken (%s); closing it", name, exc)
        finally:
            if calls:
                await asyncio.wait(list(calls), timeout=30)
            for hook in self._closing:
                hook(context)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, request_id: int, operation_name: str,
                      operation: Operation[Context], context: Context,
                      args: tuple[Any, ...], name: str) -> None:
        try:
            answer = (request_id, True, await operation(context, args))
        except Exception as exc:
            kind = self._kind(exc)
            if kind == UNAVAILABLE:
                log.error("operation %s from %s failed: %r", operation_name, name, exc)
            answer = (request_id, False, (kind, str(exc)))
        if not writer.is_closing():
            writer.write(frame(answer))


class ChannelClient:
    """Calls the supervisor's operations; `errors` maps the server's error kinds to the
    classes raised here (any other failure is StateUnavailable)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 errors: Mapping[str, Callable[[str], Exception]] | None = None) -> None:
        self._reader = reader
        self._writer = writer
        self._errors = dict(errors or {})
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._broken: str | None = None
        self._posted: set[asyncio.Task[None]] = set()
        self._answers = asyncio.create_task(self._read_answers())

    async def close(self) -> None:
        self._writer.close()
        self._answers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._answers

    async def closed(self) -> None:
        """Return when the channel has closed (the supervisor went away, or close())."""
        await asyncio.wait([self._answers])

    async def _read_answers(self) -> None:
        try:
            while True:
                request_id, ok, value = await read_frame(self._reader)
                waiting = self._waiting.pop(request_id, None)
                if waiting is None or waiting.done():
                    continue
                if ok:
                    waiting.set_result(value)
                    continue
                kind, text = value
                error = self._errors.get(kind)
                waiting.set_exception(error(text) if error is not None else StateUnavailable(
                    f"the supervisor failed: {text}"))
        except (asyncio.IncompleteReadError, OSError, ValueError,
                pickle.UnpicklingError) as exc:
            self._broken = f"the supervisor went away ({exc!r})"
        finally:
            if self._broken is None:
                self._broken = "the channel was closed"
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(StateUnavailable(self._broken))
            self._waiting.clear()

    def post(self, operation: str, *args: object) -> None:
        """Call without waiting: a failure is logged, never raised (counts that may be
        lost with a dying supervisor)."""
        async def posted() -> None:
            try:
                await self.call(operation, *args)
            except Exception as exc:
                log.error("%s not done: %s", operation, exc)

        task = asyncio.ensure_future(posted())
        self._posted.add(task)
        task.add_done_callback(self._posted.discard)

    async def call(self, operation: str, *args: object) -> Any:
        if self._broken is not None:
            raise StateUnavailable(self._broken)
        self._next_id += 1
        request_id = self._next_id
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            self._writer.write(frame((request_id, operation, args)))
        except (OSError, RuntimeError) as exc:
            self._waiting.pop(request_id, None)
            raise StateUnavailable(f"the supervisor went away ({exc!r})") from exc
        return await answer
