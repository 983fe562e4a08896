"""Memory per idle SMTP connection in smtprelay.

For each kind of connection a fresh `smtprelay serve` is started; its RSS is read,
N connections are opened and left idle after EHLO (implicit TLS on the submissions
port; plaintext on the STARTTLS port, before STARTTLS), RSS is read again, and the
difference is divided by the number of connections that got their EHLO reply.
Connections come from several 127.0.0.x source addresses; the config raises
limits.max_connections and max_connections_per_ip so none is refused.

    /tmp/venv/bin/python bench/idle_memory.py --connections 1000
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    RelayProcess,
    exit_on_sigterm,
    proc_status,
    raise_nofile,
    write_result,
)

_SOURCES = 8  # 127.0.0.1 .. 127.0.0.8


async def _open_idle(port: int, tls: bool, count: int, setup_timeout: float,
                     ) -> tuple[list[asyncio.StreamWriter], int]:
    """Open `count` sessions, each stopped after its EHLO reply; returns writers, failures."""
    ctx: ssl.SSLContext | None = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    writers: list[asyncio.StreamWriter] = []
    failures = 0
    # Handshakes a few at a time: the point is idle memory, not a connection storm.
    gate = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        nonlocal failures
        async with gate:
            writer = None
            try:
                async with asyncio.timeout(setup_timeout):
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if tls else None,
                        local_addr=(f"127.0.0.{i % _SOURCES + 1}", 0))
                    banner = await reader.readline()
                    writer.write(b"EHLO idle.example.com\r\n")
                    while True:
                        line = await reader.readline()
                        if not line or line[3:4] != b"-":
                            break
                    if not banner.startswith(b"220") or not line.startswith(b"250"):
                        raise ConnectionError(f"unexpected {banner!r} / {line!r}")
                writers.append(writer)
            except (OSError, TimeoutError, ssl.SSLError, ConnectionError):
                failures += 1
                if writer is not None:
                    writer.close()

    await asyncio.gather(*(one(i) for i in range(count)))
    return writers, failures


async def measure(kind: str, count: int, setup_timeout: float, settle: float) -> dict[str, Any]:
    relay = RelayProcess(limits={"max_connections": count + 1000,
                                 "max_connections_per_ip": count + 1000,
                                 "idle_timeout": "600s"})
    relay.start()
    try:
        tls = kind == "implicit-tls"
        port = relay.submissions_port if tls else relay.submission_port
        # Warm the code paths (TLS, session objects) so the baseline includes them.
        warm, _ = await _open_idle(port, tls, 20, setup_timeout)
        for writer in warm:
            writer.close()
        await asyncio.sleep(settle)
        before = proc_status(relay.pid, "VmRSS")
        started = time.monotonic()
        writers, failures = await _open_idle(port, tls, count, setup_timeout)
        opened_in = time.monotonic() - started
        await asyncio.sleep(settle)
        after = proc_status(relay.pid, "VmRSS")
        peak = proc_status(relay.pid, "VmHWM")
        for writer in writers:
            writer.close()
        idle = len(writers)
        return {
            "kind": kind, "requested": count, "idle_connections": idle, "failures": failures,
            "open_seconds": round(opened_in, 2), "rss_before_kib": before,
            "rss_after_kib": after, "peak_rss_kib": peak,
            "kib_per_connection": round((after - before) / idle, 1) if idle else None,
        }
    finally:
        relay.stop()


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for kind in args.kinds:
        result = await measure(kind, args.connections, args.timeout, args.settle)
        print(f"{kind:13} {result['idle_connections']:5} idle ({result['failures']} failed) "
              f"RSS {result['rss_before_kib'] / 1024:.1f} -> {result['rss_after_kib'] / 1024:.1f}"
              f" MiB: {result['kib_per_connection']} KiB per connection", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--kinds", nargs="+", choices=("implicit-tls", "plain"),
                   default=["implicit-tls", "plain"])
    p.add_argument("--timeout", type=float, default=5.0, help="per connection setup")
    p.add_argument("--settle", type=float, default=2.0, help="seconds before reading RSS")
    args = p.parse_args(argv)
    exit_on_sigterm()
    # Both ends hold every connection open: the client here and the relay, which
    # inherits this limit.
    limit = raise_nofile(args.connections * 2 + 256)
    if limit < args.connections + 64:
        print(f"RLIMIT_NOFILE is {limit}, too low for {args.connections} connections",
              file=sys.stderr)
        return 1
    try:
        import uvloop
    except ImportError:
        results = asyncio.run(main_async(args))
    else:
        results = uvloop.run(main_async(args))
    path = write_result("idle-memory", {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                        "results": results})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
