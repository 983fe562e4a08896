"""aiohttp server for /metrics, /healthz and /readyz on the addresses in http.listen."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from smtprelay.config import parse_host_port

log = logging.getLogger("smtprelay.http")


class HTTPServer:
    def __init__(self, listen: list[str], ready: Callable[[], bool]) -> None:
        self._listen = listen
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.bound: list[tuple[str, int]] = []

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        for entry in self._listen:
            host, port = parse_host_port(entry)
            site = web.TCPSite(self._runner, host, port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise OSError(exc.errno, f"http.listen: cannot listen on {entry}: {reason}"
                              ) from None
            # aiohttp exposes no public bound address; port 0 needs the real one.
            server = getattr(site, "_server", None)
            for sock in getattr(server, "sockets", None) or ():
                self.bound.append(sock.getsockname()[:2])
        log.info("http listening on %s", ", ".join(f"{h}:{p}" for h, p in self.bound))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
