"""Submission load generator: N concurrent SMTP sessions (STARTTLS or implicit TLS + AUTH
PLAIN), M messages per session, until a message count or a time limit is reached.

A minimal client on raw asyncio streams (uvloop when installed) keeps the generator
light: it shares the machine's cores with the server it measures. MAIL, RCPT and DATA
are pipelined (RFC 2920, both smtprelay and Postfix offer PIPELINING). Latency is
timed from writing the end-of-data dot to reading the reply to it.

    python bench/submit_load.py --port 2587 --user U --password P --sessions 50 --size 2048
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class SMTPReplyError(Exception):
    def __init__(self, stage: str, code: str, text: str) -> None:
        super().__init__(f"{stage}: {code} {text}")
        self.stage = stage
        self.code = code


@dataclass
class Stats:
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    sent: int = 0  # messages started, over all sessions: picks the next recipient
    # (wall-clock time the 250 was read, its last line), kept only for --reply-log
    replies: list[tuple[float, str]] = field(default_factory=list)


def make_message(size: int, sender: str, recipient: str) -> bytes:
    """A message of about `size` bytes; no line starts with a dot, so no stuffing."""
    head = (f"From: {sender}\r\nTo: {recipient}\r\nSubject: load test\r\n"
            f"Message-ID: <bench.{time.time_ns()}@example.com>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    full, rest = divmod(max(len(line), size - len(head)), len(line))
    tail = b"x" * (rest - 2) + b"\r\n" if rest >= 2 else b""
    return head + line * full + tail


def read_message(path: str) -> bytes:
    """A prepared message from a file, ready for DATA: CRLF line ends, dot-stuffed."""
    with open(path, "rb") as f:
        data = re.sub(rb"\r?\n", b"\r\n", f.read())
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data)


class Client:
    """One SMTP session on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def reply(self, stage: str, expect: str) -> str:
        """Read one (possibly multi-line) reply; raise unless its code starts with expect."""
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise SMTPReplyError(stage, "eof", "connection closed")
            lines.append(line)
            if line[3:4] != b"-":
                break
        code = line[:3].decode("ascii", "replace")
        if not code.startswith(expect):
            raise SMTPReplyError(stage, code, b"".join(lines).decode(errors="replace").strip())
        return b"".join(lines).decode(errors="replace")

    async def command(self, data: bytes, stage: str, expect: str) -> str:
        self.writer.write(data)
        return await self.reply(stage, expect)


async def _session(args: argparse.Namespace, ctx: ssl.SSLContext, auth: bytes, body: bytes,
                   count: int, stats: Stats) -> None:
    host, port = args.host, args.port
    if args.implicit_tls:
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                       server_hostname=host)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    client = Client(reader, writer)
    try:
        await client.reply("banner", "2")
        if not args.implicit_tls:
            await client.command(b"EHLO load.example.com\r\n", "ehlo", "2")
            await client.command(b"STARTTLS\r\n", "starttls", "2")
            await writer.start_tls(ctx, server_hostname=host)
        await client.command(b"EHLO load.example.com\r\n", "ehlo", "2")
        await client.command(b"AUTH PLAIN " + auth + b"\r\n", "auth", "2")
        # One envelope per recipient, used in turn across all sessions, so that with
        # `--recipient` given 10 times each address gets every 10th message.
        envelopes = [(f"MAIL FROM:<{args.sender}> SIZE={len(body)}\r\n"
                      f"RCPT TO:<{rcpt}>\r\nDATA\r\n").encode() for rcpt in args.recipient]
        for _ in range(count):
            writer.write(envelopes[stats.sent % len(envelopes)])
            stats.sent += 1
            await client.reply("mail", "2")
            await client.reply("rcpt", "2")
            await client.reply("data", "3")
            writer.write(body)
            await writer.drain()
            started = time.perf_counter()
            writer.write(b".\r\n")
            reply = await client.reply("dot", "2")
            stats.latencies.append(time.perf_counter() - started)
            stats.accepted += 1
            if args.reply_log:
                stats.replies.append((time.time(), reply.rstrip().rpartition("\n")[2]))
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 2)
        except (TimeoutError, OSError, ssl.SSLError):
            pass


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    auth = base64.b64encode(f"\0{args.user}\0{args.password}".encode())
    body = (read_message(args.message_file) if args.message_file
            else make_message(args.size, args.sender, args.recipient[0]))
    stats = Stats()
    claimed = 0
    deadline = time.monotonic() + args.duration

    async def worker() -> None:
        nonlocal claimed
        while claimed < args.total and time.monotonic() < deadline:
            count = min(args.messages_per_session, args.total - claimed)
            claimed += count
            stats.sessions += 1
            try:
                await asyncio.wait_for(_session(args, ctx, auth, body, count, stats),
                                       args.session_timeout)
            except SMTPReplyError as exc:
                stats.errors[f"{exc.stage}:{exc.code}"] += 1
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                stats.errors[f"net:{type(exc).__name__}"] += 1
            # A failed session's unsent messages are not claimed again: the run
            # stays bounded even against a server that refuses everything.

    started_at = time.time()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.sessions)))
    elapsed = time.perf_counter() - started
    lat = sorted(stats.latencies)

    def pct(p: float) -> float | None:
        if not lat:
            return None
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 2)

    return {
        "host": args.host, "port": args.port, "implicit_tls": args.implicit_tls,
        "sessions": args.sessions, "messages_per_session": args.messages_per_session,
        "size": len(body), "accepted": stats.accepted, "elapsed_s": round(elapsed, 3),
        "started_at": round(started_at, 6),
        "msgs_per_s": round(stats.accepted / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100),
        "smtp_sessions": stats.sessions, "errors": dict(stats.errors),
        "replies": stats.replies,  # main() writes them to --reply-log, never prints them
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--implicit-tls", action="store_true",
                   help="TLS from the first byte (port 465 style) instead of STARTTLS")
    p.add_argument("--sessions", type=int, default=10, help="concurrent SMTP sessions")
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--size", type=int, default=2048, help="message size in bytes")
    p.add_argument("--message-file", metavar="PATH",
                   help="send this file (its headers and body, as is; line ends made CRLF "
                        "and dot-stuffed) as every message instead of one of --size bytes")
    p.add_argument("--total", type=int, default=2000, help="stop after this many messages")
    p.add_argument("--duration", type=float, default=30.0,
                   help="stop starting sessions after this many seconds")
    p.add_argument("--session-timeout", type=float, default=60.0)
    p.add_argument("--sender", default="bench@example.com")
    p.add_argument("--recipient", action="append",
                   help="envelope recipient (default rcpt@example.net); repeat it to send "
                        "each message to the next one in turn")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="event loop of the generator (uvloop when installed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--reply-log", metavar="PATH",
                   help="write one line per accepted message: the epoch time its 250 was "
                        "read, a tab, and the 250's last line (it names the queue id)")
    args = p.parse_args(argv)
    args.recipient = args.recipient or ["rcpt@example.net"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        uvloop = None
    if uvloop is not None and args.loop == "uvloop":
        result = uvloop.run(run_load(args))
    else:
        result = asyncio.run(run_load(args))
    replies = result.pop("replies")
    if args.reply_log:
        with open(args.reply_log, "w", encoding="utf-8") as out:
            out.writelines(f"{at:.6f}\t{text}\n" for at, text in replies)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['accepted']} accepted in {result['elapsed_s']} s: "
              f"{result['msgs_per_s']} msg/s, p50 {result['p50_ms']} ms, "
              f"p99 {result['p99_ms']} ms, errors {result['errors'] or 'none'}")
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
