"""The shared parts' own ceiling: how many messages per second the supervisor's one spool
writer takes, and how many shared-state operations per second it answers, fed by N
worker processes over the real channel (docs/design.md, "Every core").

Nothing else runs: no SMTP, no TLS, no policy. Each worker process (this script with
--worker, started with one end of a socketpair) keeps --in-flight calls going for
--seconds; the supervisor (this process) serves them with a real Spool (SQLite WAL,
synchronous=FULL, group commit) in a temp directory on the same disk as /tmp, and a
LocalState. Cells: enqueue of 2 KB and 50 KB messages, and reserve_send + settle_send
pairs (two state operations each); --repeats times, interleaved; medians.

    .venv/bin/python bench/shared_ceiling.py [--workers 8] [--seconds 5] [--repeats 3]

Read with the machine in mind: on 2 cores the 8 feeders and the supervisor share the
cores, so the figures are a floor for the supervisor's ceiling, not the ceiling itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import write_result
from smtprelay.spool import remote
from smtprelay.spool.model import Envelope, NewMessage, new_message_id
from smtprelay.spool.remote import RemoteSpool
from smtprelay.spool.store import Spool
from smtprelay.state.api import SendLimits
from smtprelay.state.channel import ChannelClient, ChannelServer
from smtprelay.state.local import LocalState
from smtprelay.state.service import Holdings, StateClient, serve_state

CELLS = ("enqueue_2k", "enqueue_50k", "state_pairs")
UNLIMITED = SendLimits(max_send_rate=1e9, burst=10**9, max_24h_send=10**12)


def _message(size: int, n: int) -> NewMessage:
    body = (b"From: a@example.com\r\nTo: b@example.net\r\nSubject: ceiling %d\r\n\r\n" % n
            + b"x" * 76 + b"\r\n") * max(1, size // 140)
    return NewMessage(
        message_id=new_message_id(), data=body[:size], account="acme",
        envelope=Envelope("a@example.com", ("b@example.net",)), configuration_set=None,
        received_at=time.time(), client_ip="127.0.0.1", client_helo="bench",
        auth_user="u", listener="submission")


async def _feed(fd: int, cell: str, seconds: float, in_flight: int) -> int:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    channel = ChannelClient(reader, writer, remote.ERRORS)
    spool, state = RemoteSpool(channel), StateClient(channel)
    size = 2048 if cell == "enqueue_2k" else 51200
    done = 0
    deadline = time.monotonic() + seconds

    async def one_stream(stream: int) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < deadline:
            if cell == "state_pairs":
                await state.reserve_send(f"acct{stream % 4}", 1, 1, UNLIMITED)
                await state.settle_send(f"acct{stream % 4}", 1, 1, sent=True,
                                        limits=UNLIMITED)
            else:
                await spool.enqueue(_message(size, n))
            n += 1
            done += 1

    await asyncio.gather(*(one_stream(i) for i in range(in_flight)))
    await channel.close()
    return done


def worker_main(fd: int, cell: str, seconds: float, in_flight: int) -> None:
    done = asyncio.run(_feed(fd, cell, seconds, in_flight))
    print(json.dumps({"done": done}), flush=True)


async def _serve_cell(directory: Path, cell: str, workers: int, seconds: float,
                      in_flight: int) -> dict[str, float]:
    spool = Spool(directory / "spool.db")
    await asyncio.to_thread(spool.open)
    server: ChannelServer[Holdings] = ChannelServer(Holdings)
    serve_state(server, LocalState())
    remote.serve_spool(server, spool)
    processes = []
    for index in range(workers):
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        server.serve(reader, writer, f"feeder {index}")
        processes.append(await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", str(theirs.fileno()), cell, str(seconds),
            str(in_flight), pass_fds=[theirs.fileno()], stdout=subprocess.PIPE))
        theirs.close()
    cpu_before = time.process_time()
    started = time.monotonic()
    outputs = [await p.communicate() for p in processes]
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    await server.close()
    await asyncio.to_thread(spool.close)
    done = sum(json.loads(out)["done"] for out, _ in outputs)
    operations = done * (2 if cell == "state_pairs" else 1)
    return {"per_second": operations / elapsed,
            "supervisor_cpu_us_per_op": cpu / operations * 1e6 if operations else 0.0}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=8,
                        help="calls each worker keeps going at once")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {cell: [] for cell in CELLS}
    for _ in range(args.repeats):
        for cell in CELLS:
            with tempfile.TemporaryDirectory(prefix="smtprelay-ceiling-") as directory:
                results[cell].append(asyncio.run(_serve_cell(
                    Path(directory), cell, args.workers, args.seconds, args.in_flight)))
    summary: dict[str, Any] = {"workers": args.workers, "in_flight": args.in_flight,
                               "seconds": args.seconds, "cores": os.cpu_count()}
    print(f"{args.workers} feeders x {args.in_flight} in flight, {args.seconds:.0f} s, "
          f"{args.repeats} repeats, {os.cpu_count()} cores; medians")
    for cell in CELLS:
        rates = [r["per_second"] for r in results[cell]]
        cpu = [r["supervisor_cpu_us_per_op"] for r in results[cell]]
        summary[cell] = {"per_second": statistics.median(rates),
                         "supervisor_cpu_us_per_op": statistics.median(cpu),
                         "runs": rates}
        unit = "state operations/s" if cell == "state_pairs" else "messages/s"
        print(f"  {cell:<12} {statistics.median(rates):>9.0f} {unit:<19} supervisor CPU "
              f"{statistics.median(cpu):>6.0f} µs per operation")
    print(f"results: {write_result('shared_ceiling', summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
