"""A reload reaches a worker process only once it can take it: SIGHUP's default action
ends a process, and a worker installs its handler while it starts, before it says it
is ready. A worker still starting gets its SIGHUP when it says so."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from smtprelay.app.workers import WorkerSet
from smtprelay.state.channel import ChannelServer

# A stand-in for a worker: the default SIGHUP action until told to start, then a
# handler that says "reloaded", as a worker's does once it is ready.
STAND_IN = """
import signal, sys
sys.stdin.readline()
signal.signal(signal.SIGHUP, lambda *_: print("reloaded", flush=True))
print("handler installed", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
async def stand_in() -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STAND_IN, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    yield process
    if process.returncode is None:
        process.kill()
    await process.wait()


def worker_set(process: asyncio.subprocess.Process) -> WorkerSet:
    workers = WorkerSet(1, "smtprelay.yaml", {}, ChannelServer(lambda name: name))
    workers._processes[0] = process  # started by the test, not by _spawn
    return workers


async def say(process: asyncio.subprocess.Process, line: bytes) -> bytes:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line)
    await process.stdin.drain()
    return await asyncio.wait_for(process.stdout.readline(), 10)


async def test_a_worker_still_starting_gets_the_reload_once_it_is_ready(
        stand_in: asyncio.subprocess.Process) -> None:
    workers = worker_set(stand_in)
    workers.reload()  # before the worker's handler: a SIGHUP now would end it
    assert await say(stand_in, b"start\n") == b"handler installed\n"
    assert stand_in.returncode is None
    await workers._worker_ready(None, (0, stand_in.pid))  # what its channel call does
    assert stand_in.stdout is not None
    assert await asyncio.wait_for(stand_in.stdout.readline(), 10) == b"reloaded\n"
    assert stand_in.returncode is None


async def test_a_ready_worker_gets_the_reload_at_once(
        stand_in: asyncio.subprocess.Process) -> None:
    workers = worker_set(stand_in)
    assert await say(stand_in, b"start\n") == b"handler installed\n"
    await workers._worker_ready(None, (0, stand_in.pid))
    workers.reload()
    assert stand_in.stdout is not None
    assert await asyncio.wait_for(stand_in.stdout.readline(), 10) == b"reloaded\n"
