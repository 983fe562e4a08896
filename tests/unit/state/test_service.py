"""The state service over real socketpairs: workers share one bucket, one 24-hour count
and one connection count, and what a worker held is given back when its stream dies."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from smtprelay.state.api import ConnectionRefusal, SendLimits, SendVerdict, StateUnavailable
from smtprelay.state.channel import ChannelClient, ChannelServer
from smtprelay.state.local import LocalState
from smtprelay.state.service import Holdings, StateClient, serve_state


class StateServer(ChannelServer[Holdings]):
    """The supervisor's side: a channel serving one LocalState."""

    def __init__(self, state: LocalState) -> None:
        super().__init__(Holdings)
        self.state = state
        serve_state(self, state)

LIMITS = SendLimits(max_send_rate=10, burst=10, max_24h_send=15)


clients: list[ChannelClient] = []


async def connect(server: StateServer,
                  name: str) -> tuple[StateClient, asyncio.StreamWriter]:
    """A worker's end and the supervisor's, as the supervisor makes them."""
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=theirs)
    server.serve(reader, writer, name)
    client_reader, client_writer = await asyncio.open_connection(sock=ours)
    channel = ChannelClient(client_reader, client_writer)
    clients.append(channel)
    return StateClient(channel), client_writer


@pytest.fixture
async def served() -> AsyncIterator[StateServer]:
    server = StateServer(LocalState(clock=lambda: 1_000.0))
    yield server
    for channel in clients:
        await channel.close()
    clients.clear()
    await server.close()


@pytest.fixture
async def workers(served: StateServer) -> AsyncIterator[tuple[StateClient, StateClient]]:
    first, _ = await connect(served, "worker 0")
    second, _ = await connect(served, "worker 1")
    yield first, second


async def test_two_workers_share_one_bucket_and_one_day(
        workers: tuple[StateClient, StateClient]) -> None:
    first, second = workers
    # A burst spread over both workers gets the bucket's 10, no more.
    verdicts = await asyncio.gather(*(client.reserve_send("acme", 1, 1, LIMITS)
                                      for client in (first, second) * 6))
    assert verdicts.count(SendVerdict.OK) == 10
    assert verdicts.count(SendVerdict.RATE) == 2
    for client in (first, second):
        await client.settle_send("acme", 5, 5, sent=True, limits=LIMITS)
    assert await first.sent_last_24h("acme") == await second.sent_last_24h("acme") == 10


async def test_connection_limits_hold_across_workers(
        served: StateServer, workers: tuple[StateClient, StateClient]) -> None:
    first, second = workers
    assert await first.open_connection("10.0.0.1", 100, 2) is None
    assert await second.open_connection("10.0.0.1", 100, 2) is None
    assert await second.open_connection("10.0.0.1", 100, 2) is ConnectionRefusal.PER_IP
    # A worker cannot close another's connection.
    await first.close_connection("10.0.0.2")
    assert served.state.connections == 2


async def test_a_dead_workers_holdings_are_given_back(served: StateServer) -> None:
    dead, dead_end = await connect(served, "worker 0")
    alive, _ = await connect(served, "worker 1")
    assert await dead.open_connection("10.0.0.1", 100, 1) is None
    assert await dead.reserve_send("acme", 10, 10, LIMITS) is SendVerdict.OK
    assert await alive.open_connection("10.0.0.1", 100, 1) is ConnectionRefusal.PER_IP
    assert await alive.reserve_send("acme", 1, 1, LIMITS) is SendVerdict.RATE
    dead_end.transport.abort()  # its socket closes, as at a kill -9

    async def given_back() -> None:
        while served.state.connections:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(given_back(), 5)
    assert await alive.open_connection("10.0.0.1", 100, 1) is None
    # The held 10 went back to the 24 hours and the bucket: nothing was sent.
    assert await alive.reserve_send("acme", 10, 10, LIMITS) is SendVerdict.OK
    assert await alive.sent_last_24h("acme") == 0
    with pytest.raises(StateUnavailable):
        await dead.open_connection("10.0.0.1", 100, 1)


async def test_a_call_in_flight_when_the_service_goes_fails_temporarily() -> None:
    ours, theirs = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=ours)
    channel = ChannelClient(reader, writer)
    client = StateClient(channel)
    pending = asyncio.ensure_future(client.auth_locked_for("10.0.0.1", "alice"))
    await asyncio.sleep(0)
    theirs.close()  # the supervisor died without answering
    with pytest.raises(StateUnavailable, match="went away"):
        await asyncio.wait_for(pending, 5)
    await channel.close()


async def test_an_unknown_operation_is_refused_and_the_stream_goes_on(
        served: StateServer) -> None:
    client, _ = await connect(served, "worker 0")
    with pytest.raises(StateUnavailable, match="unknown operation"):
        await clients[-1].call("load")
    assert await client.auth_locked_for("10.0.0.1", None) == 0
