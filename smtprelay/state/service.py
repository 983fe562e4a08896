"""The local backend served to worker processes: one LocalState in the supervisor, and a
client per worker that implements SharedState by asking it.

Each worker holds one stream to the service (a socketpair made by the supervisor
before it starts the worker), and the service keeps, per stream, what that worker
holds: connections it counted and send reservations it has not settled. When a worker
dies, its stream closes and the service gives all of that back, so a `kill -9` of a
worker leaves no connection counted and no quota held for ever.

The wire: a 4-byte big-endian length, then a pickled tuple; a request is (id, method,
args), a reply (id, ok, value), where a failed call's value is the exception's text.
Pickle is safe here: both ends are this relay's own processes, and the socketpair is
never reachable by anyone else. A request costs ~40 µs of CPU on each side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import struct
from collections import Counter
from typing import Any

from smtprelay.state.api import (
    ConnectionRefusal,
    LockoutPolicy,
    SendLimits,
    SendVerdict,
    StateUnavailable,
)
from smtprelay.state.local import LocalState

log = logging.getLogger("smtprelay.state")

_LENGTH = struct.Struct("!I")
_MAX_FRAME = 1 << 20  # requests are small; anything bigger is a bug or garbage
# What a client may call: the SharedState operations, nothing else of LocalState.
_OPERATIONS = frozenset({"reserve_send", "settle_send", "sent_last_24h", "auth_locked_for",
                         "auth_failure", "auth_success", "open_connection",
                         "close_connection"})


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(_LENGTH.size)
    (size,) = _LENGTH.unpack(head)
    if size > _MAX_FRAME:
        raise ValueError(f"a state frame of {size} bytes")
    # Our own processes at both ends of a socketpair (see the module's docstring).
    return pickle.loads(await reader.readexactly(size))  # noqa: S301


def _frame(value: object) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class _Holdings:
    """What one worker holds in the shared state, to give back if it dies."""

    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()
        # account -> (recipients, daily) reserved and not settled, with the limits of
        # the latest reservation (to cap the tokens given back).
        self.sends: dict[str, tuple[int, int, SendLimits | None]] = {}

    def reserved(self, account: str, recipients: int, daily: int,
                 limits: SendLimits | None) -> None:
        held, held_daily, _ = self.sends.get(account, (0, 0, None))
        self.sends[account] = (held + recipients, held_daily + daily, limits)

    def settled(self, account: str, recipients: int, daily: int) -> None:
        held, held_daily, limits = self.sends.get(account, (0, 0, None))
        held, held_daily = max(0, held - recipients), max(0, held_daily - daily)
        if held or held_daily:
            self.sends[account] = (held, held_daily, limits)
        else:
            self.sends.pop(account, None)


class StateServer:
    """Serves one LocalState to every worker's stream."""

    def __init__(self, state: LocalState) -> None:
        self.state = state
        self._clients: set[asyncio.Task[None]] = set()

    def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              name: str) -> asyncio.Task[None]:
        """Answer this worker's stream until it closes, then give back what it held."""
        task = asyncio.create_task(self._serve(reader, writer, name))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)
        return task

    async def close(self) -> None:
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     name: str) -> None:
        holdings = _Holdings()
        try:
            while True:
                try:
                    request_id, method, args = await _read_frame(reader)
                except (asyncio.IncompleteReadError, OSError):
                    return
                try:
                    if method not in _OPERATIONS:
                        raise ValueError(f"unknown state operation {method!r}")
                    value: object = await self._call(holdings, method, args)
                    reply = (request_id, True, value)
                except Exception as exc:
                    log.error("state operation %s from %s failed: %r", method, name, exc)
                    reply = (request_id, False, repr(exc))
                writer.write(_frame(reply))
                # No drain per reply: the worker reads as fast as it asks.
        except (ValueError, pickle.UnpicklingError) as exc:
            log.error("state stream from %s is broken (%s); closing it", name, exc)
        finally:
            self._give_back(holdings, name)
            writer.close()

    async def _call(self, holdings: _Holdings, method: str, args: tuple[Any, ...]) -> object:
        state = self.state
        if method == "reserve_send":
            account, recipients, daily, limits = args
            verdict = state.reserve_now(account, recipients, daily, limits)
            if verdict is SendVerdict.OK:
                holdings.reserved(account, recipients, daily, limits)
            return verdict
        if method == "settle_send":
            account, recipients, daily, sent, limits = args
            holdings.settled(account, recipients, daily)
            state.settle_now(account, recipients, daily, sent=sent, limits=limits)
            return None
        if method == "open_connection":
            refusal = state.open_now(*args)
            if refusal is None:
                holdings.connections[args[0]] += 1
            return refusal
        if method == "close_connection":
            (ip,) = args
            if holdings.connections[ip] > 0:  # only what this worker counted
                holdings.connections[ip] -= 1
                state.close_now(ip)
            return None
        result: object = await getattr(state, method)(*args)
        return result

    def _give_back(self, holdings: _Holdings, name: str) -> None:
        given = 0
        for ip, count in holdings.connections.items():
            for _ in range(count):
                self.state.close_now(ip)
                given += 1
        for account, (recipients, daily, limits) in holdings.sends.items():
            self.state.settle_now(account, recipients, daily, sent=False, limits=limits)
        if given or holdings.sends:
            log.warning("state: %s went away holding %d connections and reservations "
                        "for %d accounts; given back", name, given, len(holdings.sends))


class StateClient:
    """SharedState over a stream to the supervisor's StateServer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._broken: str | None = None
        self._replies = asyncio.create_task(self._read_replies())

    async def close(self) -> None:
        self._writer.close()
        self._replies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replies

    async def _read_replies(self) -> None:
        try:
            while True:
                request_id, ok, value = await _read_frame(self._reader)
                waiting = self._waiting.pop(request_id, None)
                if waiting is None or waiting.done():
                    continue
                if ok:
                    waiting.set_result(value)
                else:
                    waiting.set_exception(StateUnavailable(f"the state service failed: "
                                                           f"{value}"))
        except (asyncio.IncompleteReadError, OSError, ValueError,
                pickle.UnpicklingError) as exc:
            self._broken = f"the state service went away ({exc!r})"
        finally:
            if self._broken is None:
                self._broken = "the state client was closed"
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(StateUnavailable(self._broken))
            self._waiting.clear()

    async def _call(self, method: str, *args: object) -> Any:
        if self._broken is not None:
            raise StateUnavailable(self._broken)
        self._next_id += 1
        request_id = self._next_id
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = reply
        try:
            self._writer.write(_frame((request_id, method, args)))
        except (OSError, RuntimeError) as exc:
            self._waiting.pop(request_id, None)
            raise StateUnavailable(f"the state service went away ({exc!r})") from exc
        return await reply

    # SharedState
    async def reserve_send(self, account: str, recipients: int, daily: int,
                           limits: SendLimits | None) -> SendVerdict:
        verdict: SendVerdict = await self._call("reserve_send", account, recipients, daily,
                                                limits)
        return verdict

    async def settle_send(self, account: str, recipients: int, daily: int, *, sent: bool,
                          limits: SendLimits | None) -> None:
        await self._call("settle_send", account, recipients, daily, sent, limits)

    async def sent_last_24h(self, account: str) -> int:
        count: int = await self._call("sent_last_24h", account)
        return count

    async def auth_locked_for(self, ip: str, username: str | None) -> float:
        wait: float = await self._call("auth_locked_for", ip, username)
        return wait

    async def auth_failure(self, ip: str, username: str | None,
                           policy: LockoutPolicy) -> None:
        await self._call("auth_failure", ip, username, policy)

    async def auth_success(self, ip: str, username: str) -> None:
        await self._call("auth_success", ip, username)

    async def open_connection(self, ip: str, max_total: int,
                              max_per_ip: int) -> ConnectionRefusal | None:
        refusal: ConnectionRefusal | None = await self._call("open_connection", ip,
                                                             max_total, max_per_ip)
        return refusal

    async def close_connection(self, ip: str) -> None:
        await self._call("close_connection", ip)
