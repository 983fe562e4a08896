"""aiohttp behind a PROXY header on asyncio's own event loop (the daemon's uvloop is
tested end to end, tests/e2e/test_http_proxy_protocol.py): a request finds the client
the header named, over plain HTTP and over TLS, and a connection it did not come
through has none."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

from aiohttp import web

from smtprelay.config import HTTPConfig
from smtprelay.http import proxied
from smtprelay.infra import tls
from smtprelay.infra.proxy_protocol import ProxiedServer
from tests.support import client_context
from tests.unit.infra.test_proxy_protocol import v2_tcp4


async def _named(request: web.Request) -> web.Response:
    return web.Response(text=str(proxied.client_of(request)))


async def _ask(port: int, header: bytes, ctx: ssl.SSLContext | None) -> bytes:
    """Send `header` in clear, then a request (over TLS with `ctx`); the answer's body."""
    sock = socket.create_connection(("127.0.0.1", port), 10)
    sock.sendall(header)
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=ctx, server_hostname="relay.test" if ctx else None)
    writer.write(b"GET / HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    return answer.partition(b"\r\n\r\n")[2]


async def test_the_request_sees_the_client_the_header_named(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/", _named)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    tls.ensure_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "relay.test")
    context = tls.server_context(tmp_path / "c.pem", tmp_path / "k.pem")
    config = HTTPConfig(proxy_protocol=True, trusted_proxies=["127.0.0.1/32"])
    servers: list[ProxiedServer] = []
    for ctx in (None, context):
        sock = socket.create_server(("127.0.0.1", 0))
        sock.setblocking(False)
        servers.append(proxied.serve(sock, runner.server, config, ctx, "test"))
    plain, secure = (s.sockets[0].getsockname()[1] for s in servers)
    try:
        assert await _ask(plain, b"PROXY TCP4 203.0.113.7 127.0.0.1 1 80\r\n",
                          None) == b"203.0.113.7"
        assert await _ask(secure, v2_tcp4("198.51.100.9", 2), client_context()) == \
            b"198.51.100.9"
        # No header on a plain aiohttp site: nobody was named.
        direct = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, direct).start()
        assert await _ask(direct.getsockname()[1], b"", None) == b"None"
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        await runner.cleanup()
