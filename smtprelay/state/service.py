"""The shared state served to worker processes: the supervisor's backend (LocalState, or
RedisState for a node of a cluster), and what each worker calls it through
(state.channel), implementing SharedState.

Per worker stream the service keeps what that worker holds: connections it counted
and send reservations it has not settled. When a worker dies its stream closes and
the service gives all of that back, so a `kill -9` of a worker leaves no connection
counted and no quota held for ever. A call costs ~40 µs of CPU on each side.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from smtprelay.state.api import (
    ConnectionRefusal,
    LockoutPolicy,
    SendLimits,
    SendVerdict,
    SharedState,
    StateUnavailable,
)
from smtprelay.state.channel import ChannelClient, ChannelServer

log = logging.getLogger("smtprelay.state")


class Holdings:
    """What one worker holds in the shared state, to give back if it dies."""

    def __init__(self, name: str) -> None:
        self.name = name
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


def serve_state(server: ChannelServer[Holdings], state: SharedState) -> None:
    """Register the SharedState operations of `state` (the local backend, or Redis
    with a node's workers behind one connection) on `server`."""

    async def reserve_send(held: Holdings, args: tuple[Any, ...]) -> object:
        account, recipients, daily, limits = args
        verdict = await state.reserve_send(account, recipients, daily, limits)
        if verdict is SendVerdict.OK:
            held.reserved(account, recipients, daily, limits)
        return verdict

    async def settle_send(held: Holdings, args: tuple[Any, ...]) -> object:
        account, recipients, daily, sent, limits = args
        held.settled(account, recipients, daily)
        await state.settle_send(account, recipients, daily, sent=sent, limits=limits)
        return None

    async def open_connection(held: Holdings, args: tuple[Any, ...]) -> object:
        ip, max_total, max_per_ip = args
        refusal = await state.open_connection(ip, max_total, max_per_ip)
        if refusal is None:
            held.connections[ip] += 1
        return refusal

    async def close_connection(held: Holdings, args: tuple[Any, ...]) -> object:
        (ip,) = args
        if held.connections[ip] > 0:  # only what this worker counted
            held.connections[ip] -= 1
            await state.close_connection(ip)
        return None

    async def sent_last_24h(_: Holdings, args: tuple[Any, ...]) -> object:
        return await state.sent_last_24h(*args)

    async def auth_locked_for(_: Holdings, args: tuple[Any, ...]) -> object:
        return await state.auth_locked_for(*args)

    async def auth_failure(_: Holdings, args: tuple[Any, ...]) -> object:
        await state.auth_failure(*args)
        return None

    async def auth_success(_: Holdings, args: tuple[Any, ...]) -> object:
        await state.auth_success(*args)
        return None

    for operation in (reserve_send, settle_send, open_connection, close_connection,
                      sent_last_24h, auth_locked_for, auth_failure, auth_success):
        server.register(operation.__name__, operation)

    async def give_back(held: Holdings) -> None:
        given = 0
        for ip, count in held.connections.items():
            for _ in range(count):
                await state.close_connection(ip)
                given += 1
        for account, (recipients, daily, limits) in held.sends.items():
            try:
                await state.settle_send(account, recipients, daily, sent=False,
                                        limits=limits)
            except StateUnavailable as exc:
                log.error("state: %s's reservation for %s not given back: %s",
                          held.name, account, exc)
        if given or held.sends:
            log.warning("state: %s went away holding %d connections and reservations "
                        "for %d accounts; given back", held.name, given, len(held.sends))

    tasks: set[asyncio.Task[None]] = set()

    def on_close(held: Holdings) -> None:
        task = asyncio.ensure_future(give_back(held))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server.on_close(on_close)


class StateClient:
    """SharedState through a worker's channel to the supervisor."""

    def __init__(self, channel: ChannelClient) -> None:
        self._channel = channel

    async def reserve_send(self, account: str, recipients: int, daily: int,
                           limits: SendLimits | None) -> SendVerdict:
        verdict: SendVerdict = await self._channel.call("reserve_send", account, recipients,
                                                        daily, limits)
        return verdict

    async def settle_send(self, account: str, recipients: int, daily: int, *, sent: bool,
                          limits: SendLimits | None) -> None:
        await self._channel.call("settle_send", account, recipients, daily, sent, limits)

    async def sent_last_24h(self, account: str) -> int:
        count: int = await self._channel.call("sent_last_24h", account)
        return count

    async def auth_locked_for(self, ip: str, username: str | None) -> float:
        wait: float = await self._channel.call("auth_locked_for", ip, username)
        return wait

    async def auth_failure(self, ip: str, username: str | None,
                           policy: LockoutPolicy) -> None:
        await self._channel.call("auth_failure", ip, username, policy)

    async def auth_success(self, ip: str, username: str) -> None:
        await self._channel.call("auth_success", ip, username)

    async def open_connection(self, ip: str, max_total: int,
                              max_per_ip: int) -> ConnectionRefusal | None:
        refusal: ConnectionRefusal | None = await self._channel.call(
            "open_connection", ip, max_total, max_per_ip)
        return refusal

    async def close_connection(self, ip: str) -> None:
        await self._channel.call("close_connection", ip)
