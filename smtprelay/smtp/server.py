"""SMTP listeners: accept connections, enforce connection limits, run sessions, drain on stop.

Submission listeners hand messages to the pipeline; feedback listeners (``role:
feedback``) hand reports to the feedback handler, with ``feedback.max_message_size``
as their size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Container, Mapping
from typing import Protocol

from smtprelay.auth.authenticator import Authenticator
from smtprelay.config import Config, ConfigSource, Derived, ListenerConfig
from smtprelay.infra import metrics
from smtprelay.infra.proxy_protocol import Client, ProxiedServer, unmapped
from smtprelay.mail import replies as R
from smtprelay.smtp.session import ListenerSettings, PeerGate, Session
from smtprelay.state.api import ConnectionRefusal, SharedState, StateUnavailable
from smtprelay.state.local import LocalState
from smtprelay.submission.seam import SubmissionHandler

log = logging.getLogger("smtprelay.smtp")

_BACKLOG = 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedNetworks:
    """Maps a client address to the account whose trusted_networks hold it."""

    def __init__(self, config: Config) -> None:
        self._networks: list[tuple[IPNetwork, str]] = [
            (ipaddress.ip_network(net, strict=False), name)
            for name, account in config.accounts.items()
            for net in account.trusted_networks
        ]

    def account_for(self, ip: str) -> str | None:
        if not self._networks:
            return None
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for network, account in self._networks:
            if address in network:
                return account
        return None


async def _refuse(writer: asyncio.StreamWriter, reply: R.Reply) -> None:
    """Say why in a 421-style greeting and hang up."""
    with contextlib.suppress(Exception):
        writer.write(reply.render())
        async with asyncio.timeout(5):
            await writer.drain()
    writer.close()


def bind(listener: ListenerConfig) -> socket.socket:
    """The listening socket of `listener` (OSError as the system refused it)."""
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    sock = socket.create_server((listener.address, listener.port), family=family,
                                backlog=_BACKLOG, reuse_port=False)
    sock.setblocking(False)
    return sock


class ServerSource(ConfigSource, Protocol):
    """What the listeners read, swapped by a reload: the configuration (accounts' trusted
    networks at once; listeners and limits need a restart, so a reload keeps them) and
    the relay's TLS context (None: no listener uses TLS)."""

    @property
    def tls_context(self) -> ssl.SSLContext | None: ...


class FeedbackHandler(SubmissionHandler, PeerGate, Protocol):
    """The feedback listener's handler: it takes reports and limits each client
    (smtprelay.feedback.listener)."""


class SMTPServer:
    def __init__(
        self,
        live: ServerSource,
        authenticator: Authenticator,
        handler: SubmissionHandler,
        feedback: FeedbackHandler | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self._live = live
        self._shared: SharedState = shared if shared is not None else LocalState()
        self._auth = authenticator
        self._handler = handler
        self._feedback = feedback
        self._trusted = Derived(live, TrustedNetworks)
        self._servers: list[tuple[ListenerConfig, asyncio.Server | ProxiedServer]] = []
        self._sessions: dict[asyncio.Task[None], Session] = {}

    @property
    def _config(self) -> Config:
        return self._live.config

    def _tls_context(self) -> ssl.SSLContext | None:
        return self._live.tls_context

    @property
    def bound(self) -> dict[str, list[tuple[str, int]]]:
        """Listener name to the addresses it listens on (port 0 in the config resolved)."""
        result: dict[str, list[tuple[str, int]]] = {}
        for listener, server in self._servers:
            result[listener.name] = [s.getsockname()[:2] for s in server.sockets]
        return result

    async def start(self, roles: Container[str] | None = None,
                    sockets: Mapping[str, socket.socket] | None = None) -> None:
        """Serve the listeners of `roles` (None: all), each on its socket in `sockets`
        (bound by the supervisor, for worker processes), else on one bound here."""
        for listener in self._config.listeners:
            if roles is not None and listener.role not in roles:
                continue
            bound = (sockets or {}).get(listener.name)
            self._servers.append((listener, await self._listen(listener, bound)))
            log.info("listening name=%s address=%s port=%s tls=%s", listener.name,
                     listener.address, self.bound[listener.name][0][1], listener.tls)

    async def _listen(self, listener: ListenerConfig, bound: socket.socket | None = None
                      ) -> asyncio.Server | ProxiedServer:
        limits = self._config.limits
        handler: SubmissionHandler = self._handler
        gate: PeerGate | None = None
        if listener.role == "feedback":
            if self._feedback is None:
                raise RuntimeError(f"listeners.{listener.name}: role feedback, but the "
                                   "daemon started no feedback handler")
            handler = gate = self._feedback
            limits = limits.model_copy(
                update={"max_message_size": self._config.feedback.max_message_size})
        settings = ListenerSettings(listener=listener, hostname=self._config.server.hostname,
                                    limits=limits, tls_context=self._tls_context, gate=gate)
        implicit = listener.tls == "implicit"

        async def on_connection(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter,
                                client: tuple[str, int] | None = None) -> None:
            await self._serve(reader, writer, settings, handler, client)

        try:
            sock = bound if bound is not None else bind(listener)
            if listener.proxy_protocol:
                loop = asyncio.get_running_loop()

                def session(client: Client) -> asyncio.StreamReaderProtocol:
                    async def connected(reader: asyncio.StreamReader,
                                        writer: asyncio.StreamWriter) -> None:
                        await on_connection(reader, writer, client)

                    # As asyncio.start_server makes them: the protocol runs `connected`
                    # as the session's task, and its writer knows it is the server's
                    # side (STARTTLS).
                    return asyncio.StreamReaderProtocol(
                        asyncio.StreamReader(limit=2 ** 16, loop=loop), connected, loop=loop)

                return ProxiedServer(
                    sock, session, trusted=listener.trusted_proxies,
                    tls=self._implicit_context() if implicit else None,
                    handshake_timeout=self._config.limits.tls_handshake_timeout,
                    listener=listener.name,
                    setting=f"listeners.{listener.name}.trusted_proxies",
                    refusals=metrics.CONNECTIONS_REFUSED)
            # Implicit TLS must be the transport's from the first byte: a client sends
            # its ClientHello at once, and bytes read before a later start_tls() would
            # be lost to the plain stream and stall the handshake.
            return await asyncio.start_server(
                on_connection, sock=sock,
                ssl=self._implicit_context() if implicit else None, backlog=_BACKLOG,
                ssl_handshake_timeout=self._config.limits.tls_handshake_timeout if implicit
                else None,
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(
                exc.errno,
                f"listeners.{listener.name}: cannot listen on {listener.address} port "
                f"{listener.port}: {reason}",
            ) from None

    def _implicit_context(self) -> ssl.SSLContext:
        """The current context, with an SNI hook that swaps in a reloaded one (SIGHUP)."""
        current = self._tls_context()
        if current is None:
            raise RuntimeError("implicit TLS listener without a TLS context")

        def pick(ssl_object: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            latest = self._tls_context()
            if latest is not None and latest is not current:
                ssl_object.context = latest

        current.sni_callback = pick  # type: ignore[assignment]
        return current

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     settings: ListenerSettings, handler: SubmissionHandler,
                     client: tuple[str, int] | None = None) -> None:
        """`client`: who a load balancer said the client is (PROXY protocol)."""
        peer = client or writer.get_extra_info("peername") or ("?", 0)
        ip = unmapped(str(peer[0]))
        name = settings.listener.name
        limits = self._config.limits
        # Counted across every worker process (smtprelay.state).
        try:
            refusal = await self._shared.open_connection(ip, limits.max_connections,
                                                         limits.max_connections_per_ip)
        except StateUnavailable as exc:
            metrics.CONNECTIONS_REFUSED.labels(reason="state_unavailable").inc()
            log.error("refused connection client=%s listener=%s: %s", ip, name, exc)
            await _refuse(writer, R.SERVICE_UNAVAILABLE)
            return
        if refusal is not None:
            metrics.CONNECTIONS_REFUSED.labels(reason=refusal.value).inc()
            log.warning("refused connection client=%s listener=%s reason=%s", ip, name,
                        refusal.value)
            await _refuse(writer, R.SHUTTING_DOWN if refusal is ConnectionRefusal.DRAINING
                          else R.TOO_MANY_CONNECTIONS)
            return
        gate = settings.gate
        gated = gate.connect(ip) if gate is not None else None
        if gated is not None:
            with contextlib.suppress(StateUnavailable):
                await self._shared.close_connection(ip)
            metrics.CONNECTIONS_REFUSED.labels(reason="listener_per_ip").inc()
            await _refuse(writer, gated)
            return
        metrics.CONNECTIONS_OPEN.labels(listener=name).inc()
        metrics.CONNECTIONS_TOTAL.labels(listener=name).inc()
        task = asyncio.current_task()
        assert task is not None
        try:
            await self._run_session(reader, writer, settings, handler, ip, peer, task)
        finally:
            if gate is not None:
                gate.disconnect(ip)
            with contextlib.suppress(StateUnavailable):  # the backend gives it back
                await self._shared.close_connection(ip)
            metrics.CONNECTIONS_OPEN.labels(listener=name).dec()
            # No wait_closed(): a TLS peer that never answers close_notify would hold
            # the task (and a shutdown) for nothing; the transport finishes on its own.
            writer.close()

    async def _run_session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           settings: ListenerSettings, handler: SubmissionHandler, ip: str,
                           peer: tuple[str, int], task: asyncio.Task[None]) -> None:
        trusted = (self._trusted().account_for(ip) if settings.listener.role == "submission"
                   else None)
        session = Session(reader, writer, settings, self._auth, handler, trusted,
                          (ip, int(peer[1])))
        self._sessions[task] = session
        try:
            await session.run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("session=%s client=%s crashed", session.id, ip)
        finally:
            del self._sessions[task]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def stop(self, grace: float = 30.0) -> None:
        """Stop listening, end idle sessions at once and busy ones after their command."""
        for _, server in self._servers:
            server.close()
        for task, session in list(self._sessions.items()):
            session.closing = True
            if session.idle:
                task.cancel()
        if self._sessions:
            _, pending = await asyncio.wait(list(self._sessions), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for _, server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
