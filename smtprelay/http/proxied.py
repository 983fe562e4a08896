"""The HTTP listeners behind a load balancer (`http.proxy_protocol`): the PROXY header of
each connection is read by infra.proxy_protocol.ProxiedServer before aiohttp sees a
byte (and before the TLS handshake of a tls_listen socket), and the client it names is
the request's `remote` from then on (`client_of`, used by the server's middleware), so
everything that reads the client's address (machine detection, engagement events,
the admin API's log lines, the address a worker passes to the supervisor) sees it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiohttp import web

from smtprelay.config import HTTPConfig
from smtprelay.infra import metrics
from smtprelay.infra.proxy_protocol import Client, ProxiedServer


class _Connection(asyncio.Protocol):
    """aiohttp's protocol for one connection, every call passed to it as it is, with the
    client the header named. aiohttp takes request.remote from the transport's peer,
    and neither asyncio's nor uvloop's transports can be told another; but this is
    the transport's protocol, which a request reaches through its transport."""

    def __init__(self, handler: asyncio.Protocol, client: Client) -> None:
        self.handler = handler
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.handler.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


def client_of(request: web.Request) -> str | None:
    """The address the PROXY header of the request's connection named; None for a
    connection that had none (a listener without proxy_protocol, the Unix socket)."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol.client[0] if isinstance(protocol, _Connection) else None


def serve(sock: socket.socket, server: web.Server, config: HTTPConfig,
          tls: ssl.SSLContext | None, listener: str) -> ProxiedServer:
    """Serve `server` (an AppRunner's) on the listening socket `sock`, every connection
    behind a PROXY header from one of http.trusted_proxies, then TLS with `tls`."""
    return ProxiedServer(
        sock, lambda client: _Connection(server(), client), trusted=config.trusted_proxies,
        # The handshake is part of what a client must get done within read_timeout.
        tls=tls, handshake_timeout=config.read_timeout, listener=listener,
        setting="http.trusted_proxies", refusals=metrics.HTTP_CONNECTIONS_REFUSED)
