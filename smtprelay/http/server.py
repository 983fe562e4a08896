"""aiohttp server: tracking routes, the admin API, health, readiness, Prometheus metrics and
the SNS subscription confirmations of notification webhooks (smtprelay.http.sns).

The same application answers on every address of ``http.listen`` (plain HTTP) and
``http.tls_listen`` (HTTPS, a certificate per tracking domain chosen by SNI).

The HTTP side faces the internet once tracking is on, so the protocol limits are
tight: a header line may be 8 KB, a request line 16 KB (a tracking token is at most
8 KB, and a longer one must still get the tracking 404, not a parser error), at
most 100 header fields, 64 KB of body; a client must send a whole request head
within ``http.read_timeout`` of connecting (or of the previous response), so a
client trickling bytes (slowloris) holds a socket for that long at most.

The web console (smtprelay.http.console) answers under ``/console/`` (and ``/`` sends
there) whenever the admin API is on.

Everything under ``/api/`` belongs to the admin API (smtprelay.http.admin): it is
checked for the bearer token before routing, so an unknown admin path without a
token is a 401 like any other; with no admin secret configured it is a 404.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from smtprelay.auth.authenticator import lockout_policy
from smtprelay.config import Config, parse_host_port
from smtprelay.events.model import EngagementSink
from smtprelay.events.subscriptions import Confirmer
from smtprelay.http import admin_auth, proxied
from smtprelay.http.admin import AdminAPI, AdminServices, is_admin_path
from smtprelay.http.console import Console
from smtprelay.http.forward import ROUTE_NAME, Forwarder, peer_from_worker
from smtprelay.http.ses import SesApi
from smtprelay.http.sns import SubscriptionConfirmations
from smtprelay.http.tracking import TRACKING_HEADERS, Tracking
from smtprelay.infra import metrics, tls
from smtprelay.infra.proxy_protocol import ProxiedServer
from smtprelay.transform import tokens
from smtprelay.transform.keys import KeySource

log = logging.getLogger("smtprelay.http")

MAX_FIELD_SIZE = 8192
MAX_LINE_SIZE = 16384
MAX_HEADERS = 100
MAX_BODY = 65536


class _ProtocolLog(logging.Logger):
    """aiohttp's protocol logger: one line per malformed request instead of a traceback.

    A bad request line, a huge header or TLS bytes on the plain port is the client's
    doing and arrives by the thousand from scanners: worth one info line each, not an
    ERROR with a stack trace. Anything else (a bug in a handler) keeps its traceback.
    """

    def __init__(self) -> None:
        super().__init__("smtprelay.http.protocol")
        self.parent = log

    def exception(self, msg: object, *args: object, exc_info: Any = True,
                  **kwargs: Any) -> None:
        error = sys.exc_info()[1] if exc_info is True else exc_info
        if isinstance(error, HttpProcessingError):
            detail = _without_tokens(" ".join(str(error).split()))[:200]
            self.info("%s: %s", str(msg) % args if args else msg, detail)
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


# A request line aiohttp quotes in its error: the target's path after a route prefix
# (/c/, /o/, /u/, /api/...) and any query may hold a tracking token or an address.
_TARGET = re.compile(r"(\b(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE)\s+"
                     r"/?[^/\s?']{0,16}/?)[^\s']*")


def _without_tokens(text: str) -> str:
    """aiohttp's error text with the request target cut after its first path segment."""
    return _TARGET.sub(lambda m: m.group(1) + "…", text)


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """smtprelay_http_requests_total by route pattern: the token never becomes a label.
    A request a worker passes to the supervisor is counted there, by its route."""
    route_info = request.match_info.route
    if route_info.name == ROUTE_NAME:
        return await handler(request)
    resource = route_info.resource
    route = resource.canonical if resource is not None else "other"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        metrics.HTTP_REQUESTS.labels(route, str(exc.status)).inc()
        raise
    except Exception:
        metrics.HTTP_REQUESTS.labels(route, "500").inc()
        raise
    metrics.HTTP_REQUESTS.labels(route, str(response.status)).inc()
    return response


async def _default_headers(_request: web.Request, response: web.StreamResponse) -> None:
    # Every answer, the router's own 404 and 405 included; handlers may say otherwise.
    for name, value in TRACKING_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def _client(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The client's address where the socket's peer is not the client: behind a load
    balancer the one its PROXY header named (smtprelay.http.proxied); for a request a
    worker passed on over the Unix socket (smtprelay.http.forward) the one the worker
    saw. First of the middlewares, so that everything after sees it."""
    remote = proxied.client_of(request) or peer_from_worker(request)
    if remote is not None:
        request = request.clone(remote=remote)
    return await handler(request)


class _NoKeys:
    keyring = tokens.KeyRing()


Inherited = Sequence[tuple[socket.socket, bool]]  # listening sockets, and whether TLS


def bind_listeners(config: Config) -> list[tuple[socket.socket, bool]]:
    """The sockets of ``http.listen`` and ``http.tls_listen``, bound and listening, for
    worker processes to serve (HTTPServer's `sockets`)."""
    bound: list[tuple[socket.socket, bool]] = []
    try:
        for key, entries, secure in (("http.listen", config.http.listen, False),
                                     ("http.tls_listen", config.http.tls_listen, True)):
            for entry in entries:
                host, port = parse_host_port(entry)
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                try:
                    sock = socket.create_server((host, port), family=family, backlog=1024)
                except OSError as exc:
                    reason = os.strerror(exc.errno) if exc.errno else str(exc)
                    raise OSError(exc.errno, f"{key}: cannot listen on {entry}: {reason}"
                                  ) from None
                sock.setblocking(False)
                bound.append((sock, secure))
    except BaseException:
        for sock, _ in bound:
            sock.close()
        raise
    return bound


def _address(bound: tuple[str, int], secure: bool) -> str:
    """A listening address as the log names it."""
    return f"{'https://' if secure else ''}{bound[0]}:{bound[1]}"


class HTTPServer:
    def __init__(self, config: Config, ready: Callable[[], str | None], *,
                 keys: KeySource | None = None,
                 sink: EngagementSink | None = None,
                 admin: AdminServices | None = None,
                 confirmer: Confirmer | None = None,
                 worker_metrics: Path | None = None,
                 sockets: Inherited | None = None,
                 internal: Path | None = None,
                 forward: Forwarder | None = None,
                 ses: SesApi | None = None) -> None:
        """`config`: the configuration at start (`http` and the tracking domains need a
        restart); `ready` says why the relay is not ready (None: it is), for /readyz;
        `keys` are the tracking keys in force, which verify tracking tokens
        (None: every token is refused); `sink` records engagements (None: pages and
        redirects work, nothing is recorded, unsubscribing answers 503); `admin` is what
        the admin API works on (None, or no secret in http.admin_token_env's variable:
        no admin API); `confirmer` takes the SNS subscription confirmations of
        notification webhooks (GET /sns/confirm; None: no such route); `worker_metrics`
        is where worker processes write theirs (server.workers), added to /metrics.

        With `server.workers` above 1: `sockets` are listening sockets to serve instead
        of binding ``http.listen`` and ``http.tls_listen`` (a worker's, inherited; the
        supervisor's is empty); `internal` is a Unix socket to serve too, where the
        workers pass on what they do not answer; `forward` (a worker's) does that
        passing, and the server then answers only the tracking routes and /healthz
        itself, and the SES API (`ses`, on its own pipeline)."""
        self._config = config
        self._sockets = sockets
        self._internal = internal
        self._forward = forward
        self._ses = ses
        self._worker_metrics = worker_metrics
        self._ready = ready
        self.tracking = Tracking(config, keys if keys is not None else _NoKeys(), sink)
        self.admin: AdminAPI | None = None
        self.console: Console | None = None
        self.sns = SubscriptionConfirmations(confirmer) if confirmer is not None else None
        env = config.http.admin_token_env
        secret = admin_auth.secret_from_env(env)
        if admin is not None and secret is not None:
            # Wrong tokens lock a client address out of both, as for SMTP AUTH.
            failures = admin_auth.FailedTokens(lockout_policy(config))
            self.admin = AdminAPI(secret, admin, [str(n) for n in config.http.trusted_proxies],
                                  failures=failures)
            # The web console: the same services, behind a login with the same secret.
            self.console = Console(secret, admin, config.http, sesv1=config.api.sesv1,
                                   failures=failures)
        elif admin is not None and env:
            log.warning("http.admin_token_env: the variable %s is unset or empty, so the "
                        "admin API is off; set it in the daemon's environment and restart",
                        env)
        self._runner: web.AppRunner | None = None
        # With http.proxy_protocol: the sockets bound here (none are inherited), and
        # the accept loops that read the PROXY headers on them.
        self._owned: list[tuple[socket.socket, bool]] = []
        self._proxied: list[ProxiedServer] = []
        # SNI: server name -> context; "" is the fallback (the relay's own certificate).
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.bound: list[tuple[str, int]] = []
        self.bound_tls: list[tuple[str, int]] = []

    def _app(self) -> web.Application:
        admin = self.admin

        @web.middleware
        async def admin_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
            resource = request.match_info.route.resource
            if not is_admin_path(request.path) and not (
                    resource is not None and is_admin_path(resource.canonical)):
                return await handler(request)
            if admin is None:
                raise web.HTTPNotFound()
            return await admin.handle(request, handler)

        if self._forward is not None:
            # A worker's: what it answers itself, and the rest to the supervisor.
            app = web.Application(middlewares=[_client, _count], client_max_size=MAX_BODY)
            app.on_response_prepare.append(_default_headers)
            app.router.add_get("/healthz", self._healthz)
            self.tracking.add_routes(app)
            if self._ses is not None:
                self._ses.add_routes(app)
            self._forward.add_route(app)
            return app
        app = web.Application(middlewares=[_client, _count, admin_gate],
                              client_max_size=MAX_BODY)
        app.on_response_prepare.append(_default_headers)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self.tracking.add_routes(app)
        if self.sns is not None:
            self.sns.add_routes(app)
        if admin is not None:
            admin.add_routes(app)
        if self.console is not None:
            self.console.add_routes(app)
        if self._ses is not None:
            self._ses.add_routes(app)
        return app

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = metrics.exposition(self._worker_metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        why = self._ready()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    # --- TLS ---------------------------------------------------------------------------

    def _load_contexts(self) -> dict[str, ssl.SSLContext]:
        """One context per tracking domain with a certificate, and the relay's as fallback."""
        cfg = self._config
        contexts: dict[str, ssl.SSLContext] = {}
        for domain, settings in cfg.tracking_domains.items():
            if settings.cert_file is None or settings.key_file is None:
                continue
            try:
                ctx = tls.server_context(settings.cert_file, settings.key_file,
                                         cfg.tls.profile)
            except tls.TLSSetupError as exc:
                raise tls.TLSSetupError(f"tracking_domains.{domain}: {exc}") from None
            contexts[domain.partition(":")[0]] = ctx
        if cfg.tls.generate_self_signed:
            tls.ensure_self_signed(cfg.cert_path, cfg.key_path, cfg.server.hostname)
        if cfg.cert_path.is_file() and cfg.key_path.is_file():
            contexts[""] = tls.server_context(cfg.cert_path, cfg.key_path, cfg.tls.profile)
        missing = [d for d in cfg.tracking_domains if d.partition(":")[0] not in contexts]
        if missing and "" not in contexts:
            log.warning("http.tls_listen: no certificate for %s and no relay certificate "
                        "(tls.cert_file) to fall back on; TLS handshakes for them fail",
                        ", ".join(missing))
        for ctx in contexts.values():
            ctx.set_alpn_protocols(["http/1.1"])
        # Recorded once every file loaded, so a failed reload leaves the values of the
        # certificates still in use. (The tracking domains cannot change: this server
        # keeps the configuration it started with.)
        for domain, settings in cfg.tracking_domains.items():
            if settings.cert_file is not None and settings.key_file is not None:
                tls.record_expiry(f"tracking_domains.{domain}.cert_file", settings.cert_file)
        if "" in contexts:
            tls.record_expiry("tls.cert_file", cfg.cert_path)
        return contexts

    def _sni(self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
             _ctx: ssl.SSLContext) -> int | None:
        """Pick the certificate by the name the client asked for (SNI), else the relay's."""
        name = (server_name or "").lower().rstrip(".")
        ctx = self._contexts.get(name) or self._contexts.get("")
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = ctx
        return None

    def _listening_context(self) -> ssl.SSLContext:
        # The callback swaps in the chosen context on every handshake, so this one
        # only needs the protocol settings, and reloading certificates needs no new socket.
        # It must have them all: OpenSSL keeps the versions, suites and groups of the
        # context a connection was accepted on, and takes only the certificate from the
        # one the callback picks.
        fallback = self._contexts.get("")
        if fallback is not None:
            listening = fallback
        else:
            listening = tls.protocol_context(self._config.tls.profile)
        listening.sni_callback = self._sni
        return listening

    async def reload_certificates(self) -> None:
        """Load the tracking domains' certificates again; new handshakes use them."""
        try:
            contexts = await asyncio.to_thread(self._load_contexts)
        except tls.TLSSetupError as exc:
            log.error("http tls reload failed, keeping the old certificates: %s", exc)
            return
        self._contexts = contexts

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        http = self._config.http
        await self.tracking.load_files()
        if http.tls_listen:
            self._contexts = await asyncio.to_thread(self._load_contexts)
        self._runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False,
            keepalive_timeout=http.read_timeout, max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE, max_headers=MAX_HEADERS, logger=_ProtocolLog())
        await self._runner.setup()
        if self._forward is not None:
            await self._forward.start()
        if self._internal is not None:
            self._internal.unlink(missing_ok=True)  # a crashed run's
            await web.UnixSite(self._runner, str(self._internal)).start()
            self._internal.chmod(0o600)
        sockets = self._sockets
        if sockets is None and http.proxy_protocol:
            # The header must be read from the socket before aiohttp has it, so the
            # sockets are served as a worker's are, by our own accept loops.
            sockets = self._owned = bind_listeners(self._config)
        if sockets is not None:
            listening = self._listening_context() if http.tls_listen else None
            for sock, secure in sockets:
                await self._serve(sock, listening if secure else None)
                (self.bound_tls if secure else self.bound).append(sock.getsockname()[:2])
            if sockets:
                log.info("http %s %s", "serving" if self._sockets else "listening on",
                         self._where())
            return
        for entry in http.listen:
            self.bound.extend(await self._site(entry, None, "http.listen"))
        if http.tls_listen:
            listening = self._listening_context()
            for entry in http.tls_listen:
                self.bound_tls.extend(await self._site(entry, listening, "http.tls_listen"))
        log.info("http listening on %s", self._where())

    def _where(self) -> str:
        return ", ".join([_address(b, False) for b in self.bound]
                         + [_address(b, True) for b in self.bound_tls])

    async def _serve(self, sock: socket.socket, ctx: ssl.SSLContext | None) -> None:
        """Serve a listening socket bound elsewhere (a worker's, or _owned)."""
        assert self._runner is not None and self._runner.server is not None
        if not self._config.http.proxy_protocol:
            await web.SockSite(self._runner, sock, ssl_context=ctx).start()
            return
        self._proxied.append(proxied.serve(
            sock, self._runner.server, self._config.http, ctx,
            _address(sock.getsockname()[:2], ctx is not None)))

    async def _site(self, entry: str, ctx: ssl.SSLContext | None,
                    key: str) -> list[tuple[str, int]]:
        assert self._runner is not None
        host, port = parse_host_port(entry)
        site = web.TCPSite(self._runner, host, port, ssl_context=ctx, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(exc.errno, f"{key}: cannot listen on {entry}: {reason}") from None
        # aiohttp exposes no public bound address; port 0 needs the real one.
        server = getattr(site, "_server", None)
        return [sock.getsockname()[:2] for sock in getattr(server, "sockets", None) or ()]

    async def stop(self) -> None:
        if self.console is not None:
            await self.console.stop()
        # New connections stop before the runner closes those it serves.
        for server in self._proxied:
            server.close()
        for server in self._proxied:
            await server.wait_closed()
        self._proxied.clear()
        for sock, _ in self._owned:
            sock.close()
        self._owned = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._forward is not None:
            await self._forward.stop()
        if self._internal is not None:
            self._internal.unlink(missing_ok=True)
