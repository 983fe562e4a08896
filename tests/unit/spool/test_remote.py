"""Acceptance through the supervisor's spool, over real socketpairs: two workers'
messages are durable when enqueue returns and share the writer's commits; a full
disk and a gone supervisor are the errors the pipeline already answers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtprelay.db.writer import DiskFullError
from smtprelay.spool import remote
from smtprelay.spool.model import Envelope, NewMessage, new_message_id
from smtprelay.spool.remote import RemoteSpool
from smtprelay.spool.store import Spool, SpoolError, SpoolFullError, get_message, open_for_cli
from smtprelay.state.channel import ChannelClient, ChannelServer


def new_message(n: int) -> NewMessage:
    return NewMessage(
        message_id=new_message_id(), data=b"From: a@example.com\r\n\r\nmessage %d\r\n" % n,
        account="acme", envelope=Envelope("a@example.com", ("b@example.net",)),
        configuration_set=None, received_at=time.time(), client_ip="127.0.0.1",
        client_helo="c", auth_user="u", listener="submission")


class Supervisor:
    def __init__(self, spool: Spool) -> None:
        self.server: ChannelServer[str] = ChannelServer(lambda name: name)
        remote.serve_spool(self.server, spool)
        self.channels: list[ChannelClient] = []

    async def worker(self) -> tuple[RemoteSpool, ChannelClient]:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=theirs)
        self.server.serve(reader, writer, f"worker {len(self.channels)}")
        client_reader, client_writer = await asyncio.open_connection(sock=ours)
        channel = ChannelClient(client_reader, client_writer, remote.ERRORS)
        self.channels.append(channel)
        return RemoteSpool(channel), channel


@pytest.fixture
async def supervisor(tmp_path: Path) -> AsyncIterator[Supervisor]:
    spool = Spool(tmp_path / "spool.db")
    await asyncio.to_thread(spool.open)
    served = Supervisor(spool)
    yield served
    for channel in served.channels:
        await channel.close()
    await served.server.close()
    await asyncio.to_thread(spool.close)


async def test_messages_of_two_workers_are_durable_when_enqueue_returns(
        supervisor: Supervisor, tmp_path: Path) -> None:
    first, _ = await supervisor.worker()
    second, _ = await supervisor.worker()
    messages = [new_message(n) for n in range(40)]
    await asyncio.gather(*(spool.enqueue(message) for spool, message
                           in zip((first, second) * 20, messages, strict=True)))
    conn = open_for_cli(tmp_path / "spool.db")
    try:
        assert all(get_message(conn, m.message_id) is not None for m in messages)
    finally:
        conn.close()


async def test_a_full_disk_is_a_spool_full_error_in_the_worker(
        supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch) -> None:
    worker, _ = await supervisor.worker()

    async def full(_: Spool, message: NewMessage) -> None:
        raise DiskFullError("database or disk is full")

    monkeypatch.setattr(Spool, "enqueue", full)
    with pytest.raises(SpoolFullError, match="disk is full"):
        await worker.enqueue(new_message(1))


async def test_a_gone_supervisor_is_a_spool_error_never_an_acknowledgement(
        supervisor: Supervisor) -> None:
    worker, _ = await supervisor.worker()
    await supervisor.server.close()  # the supervisor's end goes away
    with pytest.raises(SpoolError, match="went away"):
        await asyncio.wait_for(worker.enqueue(new_message(2)), 5)
