"""SMTP layer benchmark: smtprelay's own SMTP session against aiosmtpd, in one run.

Starts (a) aiosmtpd 1.4 in its own process: a Controller with STARTTLS required, AUTH
required and offered only after STARTTLS (auth_required, auth_require_tls), an
authenticator that accepts one user, and a handler that stores nothing; and (b)
smtprelay (`RelayProcess`:
STARTTLS + AUTH, spool with fsync, delivery held). Both use a self-signed certificate
made at run time (`tls_context.ensure_self_signed`, EC P-256) and the same TLS settings
(`tls_context.server_context`). Then bench/submit_load.py drives the same load against
each, cell by cell and interleaved, R times: messages/s, p50/p99 and the server
process's CPU seconds per message; medians and the ratio smtprelay/aiosmtpd.

Before the load, a correctness probe: messages whose body holds an SMTP smuggling
ending (`\\n.\\n` and relatives) followed by `MAIL FROM`, sent to smtprelay and to an
in-process aiosmtpd that records what it receives; and an implicit-TLS aiosmtpd
listener, to show that it never offers AUTH there.

    .venv/bin/python bench/smtp_layer.py     # ~3 min; --repeats, --sessions, --sizes,
                                             # --total, --duration, --loop, --no-load
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import secrets
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    RelayProcess,
    exit_on_sigterm,
    free_port,
    median,
    python_env,
    run_load,
    stop_process,
    wait_for_banner,
    write_result,
)
from bench.run_submit import cpu_seconds
from bench.submit_load import Client, SMTPReplyError
from smtprelay.infra import tls as tls_context

# --- aiosmtpd, the comparison server -----------------------------------------------


class NullHandler:
    """Accepts every message and keeps none of it: the cost of the SMTP layer alone."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok"


@dataclass
class RecordingHandler:
    """Keeps every accepted message's content (the probe reads them back)."""

    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(bytes(envelope.original_content or b""))
        return "250 2.0.0 Ok"


def one_user(user: str, password: str) -> Any:
    """An aiosmtpd authenticator that accepts `user` with `password` and no one else."""
    from aiosmtpd.smtp import AuthResult, LoginPassword

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and secrets.compare_digest(auth_data.login, user.encode())
              and secrets.compare_digest(auth_data.password, password.encode()))
        return AuthResult(success=ok, handled=False)

    return authenticate


def aiosmtpd_controller(handler: object, port: int, tls: ssl.SSLContext, user: str,
                        password: str, *, implicit_tls: bool = False,
                        auth_required: bool = True,
                        loop: asyncio.AbstractEventLoop | None = None) -> Any:
    """A not yet started aiosmtpd Controller; STARTTLS unless `implicit_tls`."""
    from aiosmtpd.controller import Controller

    tls_kwargs: dict[str, Any] = (
        {"ssl_context": tls} if implicit_tls
        else {"tls_context": tls, "require_starttls": True})
    return Controller(handler, hostname="127.0.0.1", port=port, loop=loop,
                      server_hostname="aiosmtpd.bench.test", auth_required=auth_required,
                      auth_require_tls=True, authenticator=one_user(user, password),
                      **tls_kwargs)


def serve_aiosmtpd(args: argparse.Namespace) -> int:
    """The child process: aiosmtpd with NullHandler until SIGTERM."""
    # Blocked before the Controller's thread starts, so that thread inherits the mask
    # and sigwait below is the one place the signal is taken.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    loop: asyncio.AbstractEventLoop | None = None
    if args.loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    tls = tls_context.server_context(Path(args.cert), Path(args.key))
    controller = aiosmtpd_controller(NullHandler(), args.port, tls, args.user,
                                     args.password, loop=loop)
    controller.start()
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        controller.stop()
    return 0


class AiosmtpdProcess:
    """serve_aiosmtpd() in a child process, so its CPU time is its own."""

    def __init__(self, cert: Path, key: Path, loop: str) -> None:
        self.port = free_port()
        self.user = "bench"
        self.password = secrets.token_hex(12)
        self.cmd = [sys.executable, __file__, "--serve-aiosmtpd", f"--port={self.port}",
                    f"--cert={cert}", f"--key={key}", f"--user={self.user}",
                    f"--password={self.password}", f"--loop={loop}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AiosmtpdProcess:
        self.proc = subprocess.Popen(self.cmd, env=python_env())
        try:
            wait_for_banner(self.port)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, grace=20)
        self.proc = None


# --- correctness probe ----------------------------------------------------------------

# Endings that some MTAs take for <CRLF>.<CRLF>: a server that does, or that passes them
# on to one that does, turns the text after them into a second message (SMTP smuggling).
# The last one has no dot: a bare LF that ends nothing, to show what strictness costs.
ENDINGS = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\r\n.\r", b"\n"]
SMUGGLED = (b"MAIL FROM:<smuggled@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n")


def probe_message(tag: str, ending: bytes) -> bytes:
    """A message as an attacker sends it (no dot-stuffing), with its final <CRLF>.<CRLF>."""
    head = (f"From: probe@example.com\r\nTo: rcpt@example.net\r\nSubject: probe {tag}\r\n"
            f"Message-ID: <probe.{tag}@example.com>\r\n\r\n").encode()
    return head + b"first body" + ending + SMUGGLED + b".\r\n"


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_session(port: int, *, implicit_tls: bool = False) -> tuple[Client, str]:
    """Connected, TLS on (STARTTLS unless `implicit_tls`), EHLO sent; and its reply."""
    ctx = client_context()
    if implicit_tls:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    await client.reply("banner", "2")
    if not implicit_tls:
        await client.command(b"EHLO probe.example.com\r\n", "ehlo", "2")
        await client.command(b"STARTTLS\r\n", "starttls", "2")
        await writer.start_tls(ctx, server_hostname="127.0.0.1")
    ehlo = await client.command(b"EHLO probe.example.com\r\n", "ehlo", "2")
    return client, ehlo


async def close_session(client: Client) -> None:
    client.writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(client.writer.wait_closed(), 2)


def auth_plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


def code_of(reply: str) -> str:
    return reply.rstrip().rpartition("\n")[2][:3]


async def send_raw(port: int, user: str, password: str, data: bytes) -> list[str]:
    """One transaction with `data` written as is after DATA's 354, then QUIT; every reply
    read after the data, until QUIT's: one per message the server saw in it."""
    client, _ = await open_session(port)
    try:
        await client.command(auth_plain(user, password), "auth", "2")
        await client.command(b"MAIL FROM:<probe@example.com>\r\n", "mail", "2")
        await client.command(b"RCPT TO:<rcpt@example.net>\r\n", "rcpt", "2")
        await client.command(b"DATA\r\n", "data", "3")
        client.writer.write(data + b"QUIT\r\n")
        replies: list[str] = []
        while not replies or code_of(replies[-1]) != "221":
            try:
                reply = await asyncio.wait_for(client.reply("after", ""), 10)
            except (SMTPReplyError, TimeoutError):
                break
            replies.append(reply.rstrip().rpartition("\n")[2])
        return replies
    finally:
        await close_session(client)


def stored_between(message: bytes) -> str:
    """What a stored probe message holds between the first body and the smuggled MAIL."""
    start = message.find(b"first body")
    end = message.find(b"MAIL FROM:<smuggled", start)
    if start < 0 or end < 0:
        return "?"
    return repr(message[start + len(b"first body"):end])[1:]


def relay_stored(relay: RelayProcess, tag: str) -> list[bytes]:
    """Bodies in the relay's spool whose Subject names `tag`."""
    with contextlib.closing(sqlite3.connect(f"file:{relay.spool_path}?mode=ro",
                                            uri=True, timeout=10)) as db:
        rows = db.execute("SELECT data FROM bodies WHERE instr(data, ?) > 0",
                          (f"Subject: probe {tag}\r\n".encode(),)).fetchall()
    return [bytes(row[0]) for row in rows]


def describe(replies: list[str], stored: list[bytes]) -> str:
    codes = " ".join(code_of(r) for r in replies) or "none"
    if not stored:
        return f"replies {codes}; nothing stored"
    kept = ", ".join(stored_between(m) for m in stored)
    return f"replies {codes}; {len(stored)} stored, holding {kept}"


async def smuggling_probe(relay: RelayProcess, relay_user: str, relay_password: str,
                          tls: ssl.SSLContext) -> list[dict[str, str]]:
    user, password = "probe", secrets.token_hex(8)
    recorder = RecordingHandler()
    controller = aiosmtpd_controller(recorder, free_port(), tls, user, password)
    controller.start()
    rows = []
    try:
        for i, ending in enumerate(ENDINGS):
            tag = f"e{i}"
            data = probe_message(tag, ending)
            relay_replies = await send_raw(relay.submission_port, relay_user,
                                           relay_password, data)
            before = len(recorder.messages)
            aio_replies = await send_raw(controller.port, user, password, data)
            rows.append({
                "ending": repr(ending)[1:],
                "smtprelay": describe(relay_replies, relay_stored(relay, tag)),
                "aiosmtpd": describe(aio_replies, recorder.messages[before:]),
            })
    finally:
        controller.stop()
    return rows


async def transcript(port: int, lines: list[bytes], *, implicit_tls: bool) -> list[str]:
    """EHLO's AUTH line (or its absence) and the reply to each of `lines`, in order."""
    client, ehlo = await open_session(port, implicit_tls=implicit_tls)
    try:
        auth = [ln[4:].strip() for ln in ehlo.splitlines() if ln[4:].upper().startswith("AUTH")]
        out = [f"EHLO: {auth[0] if auth else 'no AUTH offered'}"]
        for line in lines:
            reply = await client.command(line, "probe", "")
            shown = line.split(b" ")[0].decode() if line.startswith(b"AUTH") else \
                line.decode().strip()[:24]
            out.append(f"{shown} -> {reply.rstrip().rpartition(chr(10))[2]}")
        return out
    finally:
        await close_session(client)


async def implicit_tls_probe(relay: RelayProcess, relay_user: str, relay_password: str,
                             tls: ssl.SSLContext) -> dict[str, list[str]]:
    user, password = "probe", secrets.token_hex(8)
    envelope = [b"MAIL FROM:<probe@example.com>\r\n", b"RCPT TO:<rcpt@example.net>\r\n",
                b"DATA\r\n", b"Subject: unauthenticated\r\n\r\nhello\r\n.\r\n"]
    out: dict[str, list[str]] = {}
    for auth_required in (True, False):
        controller = aiosmtpd_controller(NullHandler(), free_port(), tls, user, password,
                                         implicit_tls=True, auth_required=auth_required)
        controller.start()
        try:
            lines = [auth_plain(user, password), *envelope]
            if auth_required:
                lines = lines[:2]  # MAIL is refused, so RCPT and DATA show nothing more
            out[f"aiosmtpd implicit TLS, auth_required={auth_required}"] = await transcript(
                controller.port, lines, implicit_tls=True)
        finally:
            controller.stop()
    out["smtprelay implicit TLS"] = await transcript(
        relay.submissions_port, [auth_plain(relay_user, relay_password), envelope[0]],
        implicit_tls=True)
    return out


# --- the load ---------------------------------------------------------------------------


def measured_load(port: int, user: str, password: str, pid: int, sessions: int, size: int,
                  args: argparse.Namespace, total: int | None = None) -> dict[str, Any]:
    """submit_load.py's summary plus the server process's CPU seconds per accepted message."""
    cpu = cpu_seconds(pid)
    result = run_load(port, user, password, sessions=sessions, size=size,
                      messages_per_session=args.messages_per_session,
                      total=total or args.total, duration=args.duration)
    used = cpu_seconds(pid) - cpu
    result["cpu_ms_per_msg"] = round(used / result["accepted"] * 1000, 3) \
        if result["accepted"] else None
    return result


def summarise(runs: list[dict[str, Any]], cells: list[tuple[int, int]]) -> list[dict[str, Any]]:
    table = []
    for sessions, size in cells:
        row: dict[str, Any] = {"sessions": sessions, "size": size}
        for name in ("smtprelay", "aiosmtpd"):
            cell = [r for r in runs if r["target"] == name and r["sessions"] == sessions
                    and r["size_arg"] == size]
            row[name] = {key: median([r[key] for r in cell])
                         for key in ("msgs_per_s", "p50_ms", "p99_ms", "cpu_ms_per_msg")}
            row[name]["errors"] = sum(sum(r["errors"].values()) for r in cell)
        relay, aio = row["smtprelay"], row["aiosmtpd"]
        if aio["msgs_per_s"]:
            row["ratio"] = round(relay["msgs_per_s"] / aio["msgs_per_s"], 2)
        if aio["cpu_ms_per_msg"]:
            row["cpu_ratio"] = round(relay["cpu_ms_per_msg"] / aio["cpu_ms_per_msg"], 2)
        table.append(row)
    return table


def print_report(args: argparse.Namespace, probe: list[dict[str, str]],
                 implicit: dict[str, list[str]], table: list[dict[str, Any]]) -> None:
    print("\nSMTP smuggling probe: 'first body' + ENDING + 'MAIL FROM:<smuggled@...>' "
          "RCPT, DATA, a second message, then <CRLF>.<CRLF> and QUIT; replies read after "
          "the data, and what each server stored between 'first body' and 'MAIL FROM'")
    for row in probe:
        print(f"  {row['ending']:>10}  smtprelay: {row['smtprelay']}")
        print(f"  {'':>10}  aiosmtpd:  {row['aiosmtpd']}")
    print("\nimplicit-TLS listeners (auth_require_tls=True, aiosmtpd's default):")
    for name, lines in implicit.items():
        print(f"  {name}: " + "; ".join(lines))
    if not table:
        return
    print(f"\nmedians of {args.repeats} runs, {args.messages_per_session} messages/session, "
          f"STARTTLS + AUTH PLAIN; smtprelay spools with fsync, aiosmtpd stores nothing "
          f"(loop: {args.loop}); CPU = server process, ms per accepted message")
    print(f"{'sessions':>8} {'size':>5} | {'smtprelay msg/s':>15} {'p99':>6} {'CPU':>5} | "
          f"{'aiosmtpd msg/s':>14} {'p99':>6} {'CPU':>5} | {'ratio':>5} {'CPU ratio':>9}")
    for row in table:
        relay, aio = row["smtprelay"], row["aiosmtpd"]
        print(f"{row['sessions']:>8} {row['size'] // 1024:>3}KB | {relay['msgs_per_s']:>15} "
              f"{relay['p99_ms']:>6} {relay['cpu_ms_per_msg']:>5} | {aio['msgs_per_s']:>14} "
              f"{aio['p99_ms']:>6} {aio['cpu_ms_per_msg']:>5} | {row.get('ratio', '-'):>5} "
              f"{row.get('cpu_ratio', '-'):>9}")
    errors = {name: sum(row[name]["errors"] for row in table) for name in ("smtprelay",
                                                                            "aiosmtpd")}
    print(f"errors: {errors}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, nargs="+", default=[10, 50])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 51200])
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--total", type=int, default=2000, help="messages per cell and run")
    p.add_argument("--duration", type=float, default=10.0, help="time bound per cell and run")
    # The same loop as smtprelay's by default, so the loop is not a difference. aiosmtpd's
    # STARTTLS is asyncio's pure-Python SSLProtocol on either loop; its CPU per message
    # came out the same on both (README), and its rate varied more between runs than
    # between loops.
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="aiosmtpd's event loop (default uvloop, as smtprelay's; asyncio is "
                        "aiosmtpd's own default)")
    p.add_argument("--no-load", action="store_true", help="the correctness probe only")
    # The child process's own options (serve_aiosmtpd), not for the command line.
    p.add_argument("--serve-aiosmtpd", action="store_true", help=argparse.SUPPRESS)
    for name in ("--port", "--cert", "--key", "--user", "--password"):
        p.add_argument(name, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # aiosmtpd 1.4 logs a warning on every successful AUTH about its own use of a
    # deprecated attribute; unconfigured, each one is a write to stderr that would be
    # charged to aiosmtpd's CPU and fill the report. A deployment would set a level too.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    if args.serve_aiosmtpd:
        args.port = int(args.port)
        return serve_aiosmtpd(args)
    exit_on_sigterm()

    tmp = Path(tempfile.mkdtemp(prefix="smtp-layer-bench-", dir="/tmp"))
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    tls_context.ensure_self_signed(cert, key, "aiosmtpd.bench.test")
    tls = tls_context.server_context(cert, key)
    relay = RelayProcess(limits={"max_connections": 5000, "max_connections_per_ip": 5000})
    aio = AiosmtpdProcess(cert, key, args.loop)
    cells = [(s, z) for z in args.sizes for s in args.sessions]
    runs: list[dict[str, Any]] = []
    # Both cores are shared with the generator and whatever else runs here: the load
    # average says how much of the spread between runs is other people's work.
    load_before = os.getloadavg()[0]
    try:
        relay.start()
        relay_user, relay_password = relay.credential()
        # The probe runs first, while the relay's spool holds only what it sends.
        probe = asyncio.run(smuggling_probe(relay, relay_user, relay_password, tls))
        implicit = asyncio.run(implicit_tls_probe(relay, relay_user, relay_password, tls))
        if not args.no_load:
            aio.start()
            targets = {"smtprelay": (relay.submission_port, relay_user, relay_password,
                                     relay.pid),
                       "aiosmtpd": (aio.port, aio.user, aio.password, aio.pid)}
            # Warm-up: the relay's first AUTH costs a slow hash, its first writes grow
            # the spool; both servers' code paths get imported and cached.
            for port, user, password, pid in targets.values():
                measured_load(port, user, password, pid, 10, 2048, args, total=300)
            for rep in range(args.repeats):
                # Alternate which server goes first, so drift hits both alike.
                order = list(targets) if rep % 2 == 0 else list(reversed(targets))
                for sessions, size in cells:
                    for name in order:
                        result = measured_load(*targets[name], sessions, size, args)
                        result.update(target=name, repeat=rep, size_arg=size)
                        runs.append(result)
                        print(f"[{rep + 1}/{args.repeats}] {name:9} {sessions:3} sessions "
                              f"{size // 1024:3} KB: {result['msgs_per_s']:7.1f} msg/s "
                              f"p99 {result['p99_ms']} ms CPU {result['cpu_ms_per_msg']} "
                              f"ms/msg errors {result['errors'] or '-'}", flush=True)
    finally:
        aio.stop()
        relay.stop()
        for path in (cert, key):
            path.unlink(missing_ok=True)
        tmp.rmdir()

    table = summarise(runs, cells) if runs else []
    load_after = os.getloadavg()[0]
    print_report(args, probe, implicit, table)
    print(f"1-minute load average: {load_before:.1f} before, {load_after:.1f} after")
    path = write_result("smtp-layer", {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                       "args": vars(args) | {"password": None},
                                       "probe": probe, "implicit_tls": implicit,
                                       "table": table, "runs": runs,
                                       "loadavg": [load_before, load_after]})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
