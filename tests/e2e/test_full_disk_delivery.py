"""A full disk while delivery results are recorded (issue 16): before, the recipient
stayed `sending` until a restart (then was sent again), and "scheduler could not read
the spool" was logged 20 times a second. Now the results wait in memory until the
spool takes them, and nothing is sent twice. On a real tmpfs (needs root to mount)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from smtprelay.infra import metrics
from tests.e2e.delivery_world import World, wait_for
from tests.support import fill, small_disk

pytestmark = pytest.mark.peer


def test_results_a_full_disk_cannot_take_wait_in_memory_and_nothing_is_sent_twice(
        net: World, tmp_path: Path) -> None:
    release = threading.Event()
    received: list[bytes] = []

    async def mx(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """An MX that holds its reply to the final dot until released."""
        writer.write(b"220 mx.dest.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250 mx.dest.test\r\n")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                received.append(await reader.readuntil(b"\r\n.\r\n"))
                await asyncio.to_thread(release.wait, 30)
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"502 5.5.2 no\r\n")
            await writer.drain()
        writer.close()

    var = tmp_path / "var"  # the relay's data_dir (delivery_world's config)
    with small_disk(var, "16m") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs needs root")
        net.raw_host("dest.test", mx)
        net.start()
        unrecorded = metrics.DELIVERY_RESULTS_UNRECORDED._value.get()
        message_id = net.submit(["a@dest.test"])
        assert wait_for(lambda: received, 15)  # the MX has it and holds the 250
        filler = fill(var)
        release.set()
        assert wait_for(lambda: metrics.DELIVERY_RESULTS_UNRECORDED._value.get() > unrecorded,
                        15)
        assert net.states(message_id) == {"a@dest.test": "sending"}  # held, not retried
        filler.unlink()
        assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
        assert len(received) == 1  # sent once
        net.stop()
