"""What a worker process's HTTP server does not answer itself: handed to the supervisor.

With `server.workers` above 1 every worker serves the HTTP listeners on the inherited
sockets (app.workers). Clicks, opens, unsubscribes and /healthz are answered there;
everything else (the admin API, /metrics, /readyz, SNS confirmations) needs what only
the supervisor has (the spool's writer, the publisher, every worker's metrics), so the
worker passes the request on, as a reverse proxy would, over the supervisor's Unix
socket (`internal_socket`), and streams the answer back.

The supervisor must still see who asked (the admin API logs it and checks trusted
proxies): the worker sends the socket peer in PEER_HEADER, which the supervisor
believes only on that Unix socket (`peer_from_worker`), never from the network.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

log = logging.getLogger("smtprelay.http.forward")

PEER_HEADER = "X-Smtprelay-Worker-Peer"
ROUTE_NAME = "forward-to-supervisor"
# Hop-by-hop fields (RFC 9110 7.6.1) are the connection's, not the request's; Server
# and Date are written by whichever server answers the client.
_REQUEST_DROPS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                            "transfer-encoding", "upgrade", "proxy-authorization",
                            PEER_HEADER.lower()})
_RESPONSE_DROPS = frozenset({"connection", "keep-alive", "transfer-encoding", "trailer",
                             "upgrade", "server", "date", "content-length"})


def internal_socket(data_dir: Path) -> Path:
    """Where the supervisor's HTTP server listens for its workers."""
    return data_dir / "http.sock"


def peer_from_worker(request: web.Request) -> str | None:
    """The client address a worker forwarded, when `request` came over the Unix socket;
    None for a request from the network (whatever its headers say)."""
    if request.transport is None:
        return None
    if not isinstance(request.transport.get_extra_info("sockname"), str):
        return None  # TCP: a (host, port) tuple; a Unix socket's name is a path
    return request.headers.get(PEER_HEADER)


class Forwarder:
    """The worker's catch-all route: the request to the supervisor, its answer back."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def add_route(self, app: web.Application) -> None:
        # Last: the worker's own routes (tracking, /healthz) match first.
        app.router.add_route("*", "/{tail:.*}", self._handle, name=ROUTE_NAME)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self._path)), auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout,
                                          sock_read=self._timeout))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in request.headers.items()
            if name.lower() not in _REQUEST_DROPS)
        headers[PEER_HEADER] = request.remote or ""
        # The target as the client wrote it: percent-encoding is the supervisor's to read.
        url = URL("http://supervisor" + request.raw_path, encoded=True)
        response: web.StreamResponse | None = None
        try:
            async with self._session.request(
                    request.method, url, headers=headers, allow_redirects=False,
                    data=request.content if request.body_exists else None,
                    skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding",
                                       "Content-Type")) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for name, value in upstream.headers.items():
                    if name.lower() not in _RESPONSE_DROPS:
                        response.headers.add(name, value)
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(65536):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The method and path are the client's: the log formatter escapes control
            # characters in every line (infra.logs.escape_controls).
            if response is not None and response.prepared:
                # Cut in the middle of the answer: the client must not take it whole.
                log.warning("%s %s: the supervisor's answer broke off (%s)",
                            request.method, request.path, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            log.error("%s %s could not be passed to the supervisor (%s): %s",
                      request.method, request.path, self._path, exc)
            return web.Response(status=503, text="The relay is not answering this right "
                                "now; try again in a moment.\n", headers={"Retry-After": "5"})
