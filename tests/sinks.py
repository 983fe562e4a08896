"""Receiving MTAs for delivery tests: real SMTP servers on 127.0.0.1 that record and misbehave.

`SmtpSink` is aiosmtpd (a real, independent SMTP server implementation, so the client
is not only tested against our own reading of the RFCs) with a scriptable handler:
per-recipient RCPT replies, a MAIL or end-of-data reply, STARTTLS with a generated
certificate, AUTH PLAIN/LOGIN, EHLO keywords switched off, SIZE, a drop in the middle
of DATA, a stall, or a STARTTLS that answers 220 and then breaks the handshake.
`RawSink` is a bare asyncio server for what an SMTP server library will not do
(e.g. 421 on connect). `closed_port()` gives a port nobody listens on.

Every sink runs in one background thread with its own event loop (`SinkLoop`), listens
on port 0 and records every transaction: envelope, exact bytes and whether TLS was
used. Stopping aborts every connection and releases every stall, so a test that fails
half-way cannot hang the run.

Pytest fixtures: `sinks` (a `SinkFactory`, torn down after the test) and `sink_tls`
(a server SSL context with a self-signed certificate, made once per session).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from smtprelay.delivery.model import Destination
from smtprelay.infra.tls import ensure_self_signed, server_context

T = TypeVar("T")
HOST = "127.0.0.1"
MX_NAME = "mx.sink.test"  # the name sinks are known by in Destinations and certificates
RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def closed_port() -> int:
    """A loopback port with nothing listening: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------- recording

@dataclass(frozen=True)
class Received:
    """One transaction that reached the end of DATA."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes  # as received, dot-unstuffed, without the final "."
    mail_options: tuple[str, ...]
    tls: bool
    tls_version: str | None
    auth_login: str | None
    accepted: bool  # False when the sink answered the final "." with an error
    session: int  # index into Sink.sessions


@dataclass
class SessionLog:
    """One client connection: commands in order and how they arrived."""

    commands: list[str] = field(default_factory=list)  # verbs: EHLO, MAIL, RCPT, DATA...
    mail_pipelined: list[bool] = field(default_factory=list)  # per MAIL: more was waiting
    tls: bool = False


@dataclass
class Script:
    """How an SmtpSink behaves. Defaults: 250 to everything, EHLO with PIPELINING."""

    starttls: bool = False
    implicit_tls: bool = False
    auth: dict[str, str] | None = None  # login -> password; AUTH offered after TLS
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    size: int | None = None  # advertised SIZE (and enforced); None: no SIZE keyword
    mail_reply: str | None = None
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply line
    data_reply: str | None = None  # reply to the final "."
    drop_mid_data: bool = False  # 354, read a little, then reset the connection
    stall_at: Literal["EHLO", "DATA"] | None = None  # never answer EHLO / the final "."
    starttls_failure: Literal["garbage", "close"] | None = None  # 220, then break TLS


# -------------------------------------------------------------------------- thread

class SinkLoop:
    """An event loop in a daemon thread that hosts any number of servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="sinks", daemon=True)
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.release = asyncio.Event()  # set at shutdown: every stall ends
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def track(self, transport: asyncio.BaseTransport) -> None:
        self._transports.add(transport)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def serve(self, factory: Callable[[], asyncio.BaseProtocol],
                    tls: ssl.SSLContext | None, host: str = HOST, port: int = 0) -> int:
        server = await self.loop.create_server(factory, host, port, ssl=tls)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        self.release.set()
        for server in self._servers:
            server.close()
        for transport in list(self._transports):
            with contextlib.suppress(Exception):
                transport.abort()  # type: ignore[attr-defined]
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0.05)  # let connection_lost callbacks and cancellations run
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.call(self._shutdown(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


# ---------------------------------------------------------------------------- sinks

class Sink:
    """What every sink has: a port, a Destination and the record of what it got."""

    def __init__(self, port: int, host: str = HOST) -> None:
        self.port = port
        self.host = host
        self.destination = Destination(host=MX_NAME, address=host, preference=10)
        self._lock = threading.Lock()
        self.sessions: list[SessionLog] = []
        self.transactions: list[Received] = []
        self.events: list[str] = []  # "dropped", "stalled", "tls-broken"...

    @property
    def received(self) -> list[Received]:
        """Transactions the sink accepted (answered 250 to the final ".")."""
        with self._lock:
            return [t for t in self.transactions if t.accepted]

    def new_session(self) -> tuple[int, SessionLog]:
        with self._lock:
            self.sessions.append(SessionLog())
            return len(self.sessions) - 1, self.sessions[-1]

    def record(self, txn: Received) -> None:
        with self._lock:
            self.transactions.append(txn)

    def event(self, what: str) -> None:
        with self._lock:
            self.events.append(what)


class SmtpSink(Sink):
    def __init__(self, port: int, script: Script, host: str = HOST) -> None:
        super().__init__(port, host)
        self.script = script


class _Handler:
    """aiosmtpd handler hooks driven by a Script."""

    def __init__(self, sink: SmtpSink, hosting: SinkLoop) -> None:
        self.sink = sink
        self.script = sink.script
        self.hosting = hosting

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        if self.script.stall_at == "EHLO":
            self.sink.event("stalled")
            await self.hosting.release.wait()
        session.host_name = hostname
        keep = [r for r in responses
                if not (r == "250-8BITMIME" and not self.script.eightbitmime)]
        if self.script.pipelining:
            keep.insert(len(keep) - 1, "250-PIPELINING")
        return keep

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.script.mail_reply:
            return self.script.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.script.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.script.stall_at == "DATA":
            self.sink.event("stalled")
            await self.hosting.release.wait()
        assert isinstance(server, _RecordingSMTP)
        transport = server.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        auth = session.auth_data
        content = envelope.original_content or b""
        self.sink.record(Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=bytes(content),
            mail_options=tuple(envelope.mail_options),
            tls=ssl_object is not None,
            tls_version=ssl_object.version() if ssl_object is not None else None,
            auth_login=auth.login.decode() if isinstance(auth, LoginPassword) else None,
            accepted=self.script.data_reply is None or self.script.data_reply[0] == "2",
            session=server.session_index,
        ))
        return self.script.data_reply or f"250 2.0.0 Ok: queued as {len(self.sink.transactions)}"


class _RecordingSMTP(SMTP):
    """aiosmtpd's server with a command log and the misbehaviours a handler cannot do."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = handler.sink
        self.hosting = handler.hosting
        self.session_index, self.log = self.sink.new_session()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.hosting.track(transport)
        super().connection_made(transport)

    async def smtp_EHLO(self, hostname: str) -> None:
        self.log.commands.append("EHLO")
        await super().smtp_EHLO(hostname)

    async def smtp_HELO(self, hostname: str) -> None:
        self.log.commands.append("HELO")
        await super().smtp_HELO(hostname)

    async def smtp_AUTH(self, arg: str) -> None:
        self.log.commands.append("AUTH")
        await super().smtp_AUTH(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.log.commands.append("MAIL")
        # With PIPELINING the RCPTs were written together with MAIL, so they are
        # already waiting in the reader when MAIL is handled (aiosmtpd peeks the same).
        self.log.mail_pipelined.append(bool(getattr(self._reader, "_buffer", b"")))
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.log.commands.append("RCPT")
        await super().smtp_RCPT(arg)

    async def smtp_RSET(self, arg: str) -> None:
        self.log.commands.append("RSET")
        await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        self.log.commands.append("QUIT")
        await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self.log.commands.append("DATA")
        script = self.sink.script
        assert self.envelope is not None
        if script.drop_mid_data and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.read(64)  # some of the message has arrived
            self.sink.event("dropped")
            assert self.transport is not None
            self.transport.abort()  # type: ignore[attr-defined]
            # Wait for connection_lost to cancel us, rather than read on from the buffer.
            await self.hosting.release.wait()
            return
        await super().smtp_DATA(arg)

    async def smtp_STARTTLS(self, arg: str) -> None:
        self.log.commands.append("STARTTLS")
        failure = self.sink.script.starttls_failure
        if failure is None:
            await super().smtp_STARTTLS(arg)
            if self.transport is not None and self.transport.get_extra_info("ssl_object"):
                self.log.tls = True
            return
        await self.push("220 2.0.0 Ready to start TLS")
        await self._reader.read(1)  # the client's ClientHello has begun to arrive
        self.sink.event("tls-broken")
        if failure == "garbage":
            self._writer.write(b"this is not a TLS ServerHello\r\n")
            with contextlib.suppress(ConnectionError):
                await self._writer.drain()
        assert self.transport is not None
        self.transport.close()


class RawSink(Sink):
    """A bare asyncio server: the handler gets the streams and does anything it likes."""


class SinkFactory:
    """Starts sinks in one SinkLoop; `stop()` tears them all down."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.hosting = SinkLoop()

    def smtp(self, script: Script | None = None, *, host: str = HOST, port: int = 0,
             tls_context: ssl.SSLContext | None = None, **options: Any) -> SmtpSink:
        """A scripted aiosmtpd server; `host`/`port` pick where it listens (delivery tests
        put several MX hosts on 127.0.0.N with one shared port, as delivery.port is one);
        `tls_context` replaces the shared self-signed certificate (TLS policy tests)."""
        script = script or Script(**options)
        sink = SmtpSink(0, script, host)
        hosting = self.hosting
        tls = tls_context or self.tls

        def factory() -> asyncio.BaseProtocol:
            return _RecordingSMTP(
                _Handler(sink, hosting),
                loop=hosting.loop,
                hostname=MX_NAME,
                decode_data=False,
                enable_SMTPUTF8=script.smtputf8,
                data_size_limit=script.size,
                tls_context=tls if script.starttls else None,
                authenticator=_authenticator(script.auth or {}),
                auth_require_tls=not script.implicit_tls,
                auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN")
                                        if m not in script.auth_mechanisms or not script.auth],
                timeout=60,
            )

        sink.port = hosting.call(hosting.serve(factory, tls if script.implicit_tls else None,
                                               host, port))
        return sink

    def raw(self, handler: RawHandler, *, host: str = HOST, port: int = 0) -> RawSink:
        sink = RawSink(0, host)
        hosting = self.hosting

        async def serve() -> int:
            def factory() -> asyncio.BaseProtocol:
                reader = asyncio.StreamReader()

                async def connected(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                    hosting.track(w.transport)
                    sink.new_session()
                    hosting.spawn(_run_raw(handler, r, w))

                return asyncio.StreamReaderProtocol(reader, connected)

            return await hosting.serve(factory, None, host, port)

        sink.port = hosting.call(serve())
        return sink

    def greeting(self, reply: str, *, host: str = HOST, port: int = 0) -> RawSink:
        """A server that answers the connection with `reply` (e.g. a 421) and hangs up."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(reply.encode() + b"\r\n")
            await writer.drain()
            # RFC 5321 3.1: after a 421/554 greeting the server waits for QUIT, or not.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.readline(), 1)
            writer.close()

        return self.raw(handler, host=host, port=port)

    def stop(self) -> None:
        self.hosting.stop()


async def _run_raw(handler: RawHandler, reader: asyncio.StreamReader,
                   writer: asyncio.StreamWriter) -> None:
    try:
        await handler(reader, writer)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


def _authenticator(users: dict[str, str]) -> Callable[..., AuthResult]:
    def check(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
              auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode()
        ok = users.get(login) == auth_data.password.decode() and login in users
        return AuthResult(success=ok, handled=False, auth_data=auth_data)
    return check


# ------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def sink_tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sink-tls")
    ensure_self_signed(directory / "sink-cert.pem", directory / "sink-key.pem", MX_NAME)
    return directory


@pytest.fixture(scope="session")
def sink_tls(sink_tls_dir: Path) -> ssl.SSLContext:
    return server_context(sink_tls_dir / "sink-cert.pem", sink_tls_dir / "sink-key.pem")


@pytest.fixture
def sinks(sink_tls: ssl.SSLContext) -> Iterator[SinkFactory]:
    factory = SinkFactory(sink_tls)
    try:
        yield factory
    finally:
        factory.stop()
