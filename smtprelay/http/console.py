"""The operator's web console at /console/ (and / when the SES v1 API does not own it).

Server-rendered pages (Jinja2, autoescaped) with a little JavaScript of our own and
uPlot for the charts, every file served from the package: the console fetches
nothing from anywhere else, so it works on a machine without internet, and its
Content-Security-Policy says so to the browser. It is on exactly when the admin API
is (``http.admin_token_env`` names a variable with a secret), on every HTTP listener;
login takes that secret or a signed token (smtprelay.http.console_auth).

Pages: Overview (per-minute charts, queue depth, busiest destinations), Queue
(search, one message's history, retry, delete, hold, release), Sets and accounts
(rates against the reputation thresholds, engagement, pause and resume), Suppression
(search, add, remove, import with progress, export), Delivery (per destination and
provider, the IP pools' warm-up, provider shaping), Events (a live tail). Every action
is the admin API's operation (smtprelay.operations, run in a thread) and is logged
with the client's address, as the admin API logs its own; tokens never are.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import ipaddress
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, cast
from urllib.parse import urlencode

import aiohttp
import jinja2
from aiohttp import web

from smtprelay.config import Config, DestinationConfig, HTTPConfig, IpPoolConfig
from smtprelay.delivery import providers
from smtprelay.delivery.providers import Provider
from smtprelay.delivery.shaping import LaneState
from smtprelay.delivery.warmup import Progress
from smtprelay.events import tail as event_tail
from smtprelay.http import admin_auth, console_auth
from smtprelay.http.admin import AdminServices, keepalive_interval, refusal
from smtprelay.http.console_auth import Session, Sessions
from smtprelay.http.tracking import client_ip, parse_ip
from smtprelay.infra import metrics
from smtprelay.operations import activity, suppression_files
from smtprelay.operations import ip_pools as pool_ops
from smtprelay.operations import pauses as pause_ops
from smtprelay.operations import queue as queue_ops
from smtprelay.operations import stats as stats_ops
from smtprelay.operations import suppression as suppression_ops
from smtprelay.operations.errors import OperationError
from smtprelay.policy import reputation
from smtprelay.policy.pauses import Scope
from smtprelay.policy.suppression import REASONS, Reason
from smtprelay.spool import set_stats
from smtprelay.spool.model import FILTER_STATES, HELD, QueuedMessage
from smtprelay.spool.store import MessageFilter
from smtprelay.state.api import StateUnavailable

log = logging.getLogger("smtprelay.http.console")

ROOT = "/console"
_ASSETS = "console_assets"
STATIC = {  # served name -> content type
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
# Nothing from elsewhere: scripts, styles, images, connections (the live tail) and
# form posts go to this origin only; no framing (clickjacking).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; connect-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "same-origin",
}
PAGE_SIZE = 50
MAX_IMPORT = 64 * 1024 * 1024  # an uploaded suppression file (about a million rows)
_LOGIN_COOKIE_AGE = 600
_NOTICES = {
    "retried": "The message's waiting recipients are due now.",
    "deleted": "The message was deleted from the queue: it is not delivered, no DSN.",
    "held": "The message is held: nothing is tried until it is released.",
    "released": "The message is released: its recipients are due now.",
    "paused": "Paused: new mail is refused with 554 5.7.1; queued mail still goes.",
    "resumed": "Resumed: new mail is accepted again.",
    "added": "The address is on the suppression list.",
    "removed": "The address is off the suppression list.",
}
_QUEUE_ACTIONS = ("retry", "delete", "hold", "release")


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds >= HELD:
        return "held"
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _duration(seconds: float) -> str:
    """A duration as the provider table writes one (30m, 2h, 1d), to the minute from a
    minute on: 45s, 59m, 1h 5m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts)


@dataclass
class ImportJob:
    """A suppression-list import the browser follows (GET …/import/<id>)."""

    id: str
    account: str
    rows: int = 0  # good rows in the file
    done: int = 0
    bad: int = 0
    problems: list[str] = field(default_factory=list)
    state: str = "importing"  # importing, done, failed
    new: int = 0
    updated: int = 0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "account": self.account, "rows": self.rows, "done": self.done,
                "bad": self.bad, "problems": self.problems, "state": self.state,
                "new": self.new, "updated": self.updated, "error": self.error}


Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


class Console:
    def __init__(self, secret: str, services: AdminServices, settings: HTTPConfig, *,
                 sesv1: bool = False, clock: Callable[[], float] = time.time,
                 failures: admin_auth.FailedTokens) -> None:
        self._services = services
        # Wrong tokens per client address, shared with the admin API.
        self.failures = failures
        self._trusted = [ipaddress.ip_network(str(n)) for n in settings.trusted_proxies]
        self.sessions = Sessions(secret, settings.console_session_lifetime, clock)
        self._sesv1 = sesv1  # the SES v1 API answers at "/": no redirect from there
        self._queue = queue_ops.DaemonSpool(services.spool, services.counters)
        self._keepalive = keepalive_interval(settings.read_timeout)
        self._jobs: dict[str, ImportJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._provider_of = services.provider_of or providers.bundled().provider_of
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("smtprelay.http", f"{_ASSETS}/templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True)
        self._env.filters["when"] = _when
        self._env.filters["rate"] = _rate
        self._env.filters["duration"] = _duration
        self._env.filters["num"] = "{:,}".format
        self._env.globals["root"] = ROOT
        folder = resources.files("smtprelay.http").joinpath(f"{_ASSETS}/static")
        self._static = {name: folder.joinpath(name).read_bytes() for name in STATIC}

    @property
    def clock(self) -> Callable[[], float]:
        return self.sessions.clock

    # -- routes ---------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        if not self._sesv1:
            r.add_get("/", self._to_console, allow_head=False)
        r.add_get(ROOT, self._to_console, allow_head=False)
        r.add_get(f"{ROOT}/static/{{name}}", self._file)
        r.add_get(f"{ROOT}/login", self._login_page)
        r.add_post(f"{ROOT}/login", self._login)
        r.add_post(f"{ROOT}/logout", self._change(self._logout))
        r.add_get(f"{ROOT}/", self._page(self._overview))
        r.add_get(f"{ROOT}/queue", self._page(self._queue_page))
        r.add_get(f"{ROOT}/queue/{{message_id}}", self._page(self._message_page))
        r.add_post(f"{ROOT}/queue/{{message_id}}/{{action}}", self._change(self._queue_action))
        r.add_get(f"{ROOT}/sets", self._page(self._sets_page))
        r.add_post(f"{ROOT}/{{scope}}/{{name}}/{{action}}", self._change(self._pause_action))
        r.add_get(f"{ROOT}/suppression", self._page(self._suppression_page))
        r.add_post(f"{ROOT}/suppression/add", self._change(self._suppression_add))
        r.add_post(f"{ROOT}/suppression/remove", self._change(self._suppression_remove))
        r.add_post(f"{ROOT}/suppression/import", self._change(self._suppression_import))
        r.add_get(f"{ROOT}/suppression/import/{{job}}", self._page(self._import_progress))
        r.add_get(f"{ROOT}/suppression/export", self._page(self._suppression_export))
        r.add_get(f"{ROOT}/delivery", self._page(self._delivery_page))
        r.add_get(f"{ROOT}/events", self._page(self._events_page))
        r.add_get(f"{ROOT}/events/stream", self._page(self._events_stream))

    async def stop(self) -> None:
        """Imports still running are cancelled (the rows written so far stay)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the gate: a session for every page, the CSRF token for every change ------------

    def _client(self, request: web.Request) -> str:
        ip = client_ip(parse_ip(request.remote or ""), request.headers.items(), self._trusted)
        return "-" if ip is None else str(ip)

    def _https(self, request: web.Request) -> bool:
        """Whether the browser reached us over HTTPS: directly, or through a trusted
        proxy that says so (X-Forwarded-Proto)."""
        if request.secure:
            return True
        peer = parse_ip(request.remote or "")
        return (peer is not None and any(peer in net for net in self._trusted)
                and request.headers.get("X-Forwarded-Proto", "").lower() == "https")

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.find(request.cookies.get(console_auth.COOKIE))

    def _to_login(self, request: web.Request) -> web.Response:
        target = request.path_qs if request.method == "GET" else f"{ROOT}/"
        return self._redirect(f"{ROOT}/login?{urlencode({'next': target})}")

    @staticmethod
    def _redirect(location: str) -> web.Response:
        return web.Response(status=303, headers={**HEADERS, "Location": location})

    def _page(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            session = self._session(request)
            if session is None:
                return self._to_login(request)
            try:
                return await handler(request, session)
            except OperationError as exc:
                return self._error(request, session, exc)
        return route

    def _change(self, handler: Handler
                ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            session = self._session(request)
            if session is None:
                return self._to_login(request)
            presented = request.headers.get(console_auth.CSRF_HEADER)
            if presented is None and request.content_type in (
                    "application/x-www-form-urlencoded", "multipart/form-data"):
                presented = cast(str | None, (await request.post()).get(console_auth.CSRF_FIELD))
            if not console_auth.same(presented, session.csrf):
                log.warning("console: refused %s %s from %s: no valid CSRF token",
                            request.method, request.path, self._client(request))
                return self._render(request, session, "error.html", status=403,
                                    title="Refused", message="This change came without the "
                                    "page's CSRF token. Reload the page and try again.")
            try:
                return await handler(request, session)
            except OperationError as exc:
                return self._error(request, session, exc)
        return route

    def _error(self, request: web.Request, session: Session,
               exc: OperationError) -> web.Response:
        failure = refusal(exc)
        return self._render(request, session, "error.html", status=failure.status,
                            title="Not done", message=failure.message)

    def _render(self, request: web.Request, session: Session | None, template: str, *,
                status: int = 200, **context: Any) -> web.Response:
        page = self._env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", path=request.path,
            notice=_NOTICES.get(request.query.get("done", "")), **context)
        return web.Response(text=page, status=status, content_type="text/html",
                            charset="utf-8", headers=HEADERS)

    # -- login ------------------------------------------------------------------------------

    async def _to_console(self, _request: web.Request) -> web.Response:
        return self._redirect(f"{ROOT}/")

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC[name],
                            charset="utf-8", headers={
                                "Cache-Control": "private, max-age=3600",
                                "X-Content-Type-Options": "nosniff"})

    def _login_form(self, request: web.Request, *, status: int = 200,
                    error: str | None = None) -> web.Response:
        token = secrets.token_urlsafe(24)
        target = request.query.get("next") or f"{ROOT}/"
        response = self._render(request, None, "login.html", status=status, error=error,
                                title="Log in",
                                login_csrf=token, next=_safe_next(target))
        response.set_cookie(console_auth.LOGIN_COOKIE, token, path=f"{ROOT}/login",
                            max_age=_LOGIN_COOKIE_AGE, httponly=True, samesite="Strict",
                            secure=self._https(request))
        return response

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        if self._session(request) is not None:
            return self._redirect(_safe_next(request.query.get("next") or f"{ROOT}/"))
        return self._login_form(request)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        client = self._client(request)
        presented = form.get(console_auth.CSRF_FIELD)
        expected = request.cookies.get(console_auth.LOGIN_COOKIE)
        if not isinstance(presented, str) or not expected \
                or not console_auth.same(presented, expected):
            log.warning("console: refused a login from %s: no valid login form token",
                        client)
            return self._login_form(request, status=403, error="The login form expired; "
                                    "enter the token again.")
        locked = self.failures.locked_for(client)
        if locked:
            metrics.ADMIN_AUTH_FAILURES.inc()
            log.warning("console: refused a login from %s: locked out for %.0fs more after "
                        "wrong tokens", client, locked)
            response = self._login_form(request, status=429, error=(
                f"Too many wrong tokens from your address: try again in "
                f"{math.ceil(locked / 60)} min."))
            response.headers["Retry-After"] = str(math.ceil(locked))
            return response
        token = form.get("token")
        outcome = self.sessions.login(token if isinstance(token, str) else "", client)
        if not isinstance(outcome, Session):
            metrics.ADMIN_AUTH_FAILURES.inc()
            log.warning("console: refused a login from %s: %s", client, outcome.value)
            if (outcome is not admin_auth.Verdict.MISSING
                    and self.failures.failed(client)):
                log.warning("admin api and console: %s locked out for %.0fs after %d "
                            "wrong tokens (auth.max_failures_per_ip)", client,
                            self.failures.policy.lockout, self.failures.policy.per_ip)
            return self._login_form(request, status=401,
                                    error="That token is not accepted (or has expired).")
        log.info("console: login from %s, session until %s", client, _when(outcome.expires))
        target = form.get("next")
        response = self._redirect(_safe_next(target if isinstance(target, str) else ""))
        response.set_cookie(console_auth.COOKIE, outcome.id, path=ROOT, httponly=True,
                            samesite="Strict", secure=self._https(request),
                            max_age=max(1, int(outcome.expires - self.clock())))
        response.del_cookie(console_auth.LOGIN_COOKIE, path=f"{ROOT}/login")
        return response

    async def _logout(self, request: web.Request, session: Session) -> web.StreamResponse:
        self.sessions.end(session.id)
        log.info("console: logout from %s", self._client(request))
        response = self._redirect(f"{ROOT}/login")
        response.del_cookie(console_auth.COOKIE, path=ROOT)
        return response

    # -- overview ----------------------------------------------------------------------------

    async def _overview(self, request: web.Request, session: Session) -> web.StreamResponse:
        spool = self._services.spool
        now = self.clock()

        def read() -> dict[str, Any]:
            states: dict[str, int] = {}
            for counts in spool.recipient_states().values():
                for state, count in counts.items():
                    states[state] = states.get(state, 0) + count
            return {"hour": activity.minute_series(spool, now, set_stats.HOUR),
                    "day": activity.minute_series(spool, now, set_stats.DAY),
                    "depth": spool.pending_count(), "states": states,
                    "busiest": activity.destinations(
                        spool, now, set_stats.HOUR, 10, provider_of=self._provider_of,
                        connections=self._services.connections)}

        figures = await asyncio.to_thread(read)
        return self._render(request, session, "overview.html", title="Overview",
                            series_names=list(activity.SERIES),
                            hour_json=json.dumps(figures["hour"].as_json()),
                            day_json=json.dumps(figures["day"].as_json()), **figures)

    # -- queue -------------------------------------------------------------------------------

    async def _queue_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        query = request.query
        wanted = query.get("id", "").strip()
        if wanted:
            found = await asyncio.to_thread(self._queue.get, wanted)
            if found is not None:
                return self._redirect(f"{ROOT}/queue/{wanted}")
        state = query.get("state") or None
        filters = MessageFilter(
            account=query.get("account") or None,
            configuration_set=query.get("set") or None,
            state=state if state in FILTER_STATES else None,
            sender=query.get("sender", "").strip()[:320] or None,
            recipient=query.get("recipient", "").strip()[:320] or None,
            domain=query.get("domain", "").strip()[:255] or None)
        page = await asyncio.to_thread(queue_ops.page, self._queue, filters, limit=PAGE_SIZE,
                                       after=query.get("cursor") or None)
        more = None
        if page.next_cursor is not None:
            more = f"{ROOT}/queue?" + urlencode(
                {**{k: v for k, v in query.items() if k != "cursor"},
                 "cursor": page.next_cursor})
        return self._render(request, session, "queue.html", title="Queue", messages=page.items,
                            query=query, states=FILTER_STATES, more=more,
                            missing=wanted or None, summary=_summary)

    async def _message_page(self, request: web.Request,
                            session: Session) -> web.StreamResponse:
        message_id = request.match_info["message_id"]
        spool = self._services.spool
        message = await asyncio.to_thread(queue_ops.show, self._queue, message_id)
        outcomes = await asyncio.to_thread(spool.outcomes, message_id)
        stored = await asyncio.to_thread(spool.message_events, message_id)
        events = [_event_row(e.type, e.at, e.event_id, e.detail) for e in stored]
        known = {e.event_id for e in events}
        tail = self._services.events
        if tail is not None:  # published (gone from the outbox) but still in memory
            events += [_event_row(e.type, e.at, e.event_id, e.detail)
                       for e in tail.recent(event_tail.TailFilter())
                       if e.message_id == message_id and e.event_id not in known]
            events.sort(key=lambda e: e.at)
        return self._render(request, session, "message.html", title=f"Message {message_id}",
                            message=message, outcomes=outcomes, events=events,
                            held=any(r.held for r in message.recipients))

    async def _queue_action(self, request: web.Request,
                            session: Session) -> web.StreamResponse:
        message_id = request.match_info["message_id"]
        action = request.match_info["action"]
        if action not in _QUEUE_ACTIONS:
            raise web.HTTPNotFound()
        now = self.clock()
        if action == "retry":
            count = await asyncio.to_thread(queue_ops.retry, self._queue, message_id, now)
            self._services.wake_scheduler()
        elif action == "delete":
            await asyncio.to_thread(queue_ops.delete, self._queue, message_id)
            count = 1
        elif action == "hold":
            count = await asyncio.to_thread(queue_ops.hold, self._queue, message_id)
        else:
            count = await asyncio.to_thread(queue_ops.release, self._queue, message_id, now)
            self._services.wake_scheduler()
        done = {"retry": "retried", "delete": "deleted", "hold": "held",
                "release": "released"}[action]
        log.info("console: msg=%s %s (%d recipient(s)) by %s", message_id, done, count,
                 self._client(request))
        if action == "delete":
            return self._redirect(f"{ROOT}/queue?done=deleted")
        return self._redirect(f"{ROOT}/queue/{message_id}?done={done}")

    # -- configuration sets and accounts --------------------------------------------------

    async def _sets_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        config = self._services.live.config
        settings = config.reputation
        window = set_stats.Window.ending(self.clock(), settings.window)
        report = await asyncio.to_thread(stats_ops.report, self._queue, config, window)
        by_set = {row.key: row.counts for row in report.sets}
        by_account = dict(report.accounts)

        def rows(scope: Scope, counts: dict[str, set_stats.Counts]) -> list[dict[str, Any]]:
            found = []
            for target in pause_ops.listing(self._services.pauses, config, scope):
                figures = counts.get(target.name, set_stats.Counts())
                judged = self._services.reputation(scope, target.name) or reputation.judge(
                    scope, target.name, figures, settings, window.since)
                found.append({"target": target, "counts": figures, "judged": judged,
                              "opens_human": figures["open"] - figures["open_machine"],
                              "clicks_human": figures["click"] - figures["click_machine"]})
            return found

        return self._render(request, session, "sets.html", title="Sets and accounts",
                            sets=rows("set", by_set), accounts=rows("account", by_account),
                            thresholds=settings, window_hours=settings.window / 3600)

    async def _pause_action(self, request: web.Request,
                            session: Session) -> web.StreamResponse:
        scopes: dict[str, Scope] = {"sets": "set", "accounts": "account"}
        scope = scopes.get(request.match_info["scope"])
        action = request.match_info["action"]
        if scope is None or action not in ("pause", "resume"):
            raise web.HTTPNotFound()
        name = request.match_info["name"]
        config = self._services.live.config
        client = self._client(request)
        if action == "pause":
            form = await request.post()
            reason = form.get("reason")
            await asyncio.to_thread(
                pause_ops.pause, self._services.pauses, config, scope, name,
                detail=reason if isinstance(reason, str) else "", by=f"console {client}")
            log.info("console: %s %s paused by %s", scope, name, client)
            return self._redirect(f"{ROOT}/sets?done=paused")
        await asyncio.to_thread(pause_ops.resume, self._services.pauses, config, scope, name)
        log.info("console: %s %s resumed by %s", scope, name, client)
        return self._redirect(f"{ROOT}/sets?done=resumed")

    # -- suppression list ------------------------------------------------------------------

    def _account_of(self, value: str | None) -> str:
        accounts = list(self._services.live.config.accounts)
        return value if value in accounts else (accounts[0] if accounts else "")

    async def _suppression_page(self, request: web.Request,
                                session: Session) -> web.StreamResponse:
        query = request.query
        config = self._services.live.config
        account = self._account_of(query.get("account"))
        reason = query.get("reason") if query.get("reason") in REASONS else None
        prefix = query.get("prefix", "").strip()[:320] or None
        page = await asyncio.to_thread(
            suppression_ops.page, self._services.suppression, config, account,
            reason=cast(Reason | None, reason), prefix=prefix, limit=PAGE_SIZE,
            after=query.get("cursor") or None) if account else None
        more = None
        if page is not None and page.next_cursor is not None:
            more = f"{ROOT}/suppression?" + urlencode(
                {**{k: v for k, v in query.items() if k != "cursor"},
                 "cursor": page.next_cursor})
        return self._render(request, session, "suppression.html", title="Suppression list",
                            accounts=list(config.accounts), account=account,
                            entries=page.items if page else [], reasons=REASONS,
                            reason=reason or "", prefix=prefix or "", more=more,
                            formats=suppression_files.FORMATS)

    async def _suppression_add(self, request: web.Request,
                               session: Session) -> web.StreamResponse:
        form = await request.post()
        account, address, reason = (str(form.get(k, "")) for k in ("account", "address",
                                                                   "reason"))
        added = await asyncio.to_thread(
            suppression_ops.add, self._services.suppression, self._services.live.config,
            account, address.strip(), reason)
        log.info("console: account=%s suppressed %s reason=%s by %s", account,
                 added.entry.address, added.entry.reason, self._client(request))
        return self._redirect(f"{ROOT}/suppression?"
                              + urlencode({"account": account, "done": "added"}))

    async def _suppression_remove(self, request: web.Request,
                                  session: Session) -> web.StreamResponse:
        form = await request.post()
        account, address = str(form.get("account", "")), str(form.get("address", ""))
        removed = await asyncio.to_thread(
            suppression_ops.remove, self._services.suppression, self._services.live.config,
            account, address)
        log.info("console: account=%s unsuppressed %s by %s", account, removed,
                 self._client(request))
        return self._redirect(f"{ROOT}/suppression?"
                              + urlencode({"account": account, "done": "removed"}))

    async def _suppression_import(self, request: web.Request,
                                  session: Session) -> web.StreamResponse:
        """The file as the request body (the page sends it with fetch, so the browser
        shows the upload's progress); the import runs on, GET …/import/<job> follows it."""
        config = self._services.live.config
        account = request.query.get("account", "")
        suppression_ops.check_account(config, account)
        name = request.query.get("name", "upload")[:200]
        chunks = []
        size = 0
        try:
            async for chunk in request.content.iter_chunked(65536):
                size += len(chunk)
                if size > MAX_IMPORT:
                    return web.json_response(
                        {"error": f"the file is larger than {MAX_IMPORT // 2**20} MiB; "
                                  "split it, or use smtprelay suppression import"},
                        status=413, headers=HEADERS)
                chunks.append(chunk)
        except (ConnectionResetError, aiohttp.ClientPayloadError):
            raise web.HTTPBadRequest(text="incomplete body") from None
        try:
            text = b"".join(chunks).decode("utf-8-sig")
        except UnicodeDecodeError:
            return web.json_response({"error": "the file is not UTF-8 text"}, status=422,
                                     headers=HEADERS)
        job = ImportJob(secrets.token_urlsafe(12), account)
        self._jobs[job.id] = job
        while len(self._jobs) > 20:
            del self._jobs[next(iter(self._jobs))]
        client = self._client(request)
        task = asyncio.create_task(self._run_import(job, text, name, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"job": job.id}, status=202, headers=HEADERS)

    async def _run_import(self, job: ImportJob, text: str, name: str, client: str) -> None:
        config = self._services.live.config

        def work() -> None:
            fmt = suppression_files.guess_format(name, text)
            parsed = (suppression_files.parse_csv if fmt == "csv"
                      else suppression_files.parse_json)(text, name, job.account)
            job.rows, job.bad = len(parsed.rows), parsed.bad
            job.problems = [str(p) for p in parsed.problems[:20]]

            def progress(done: int) -> None:
                job.done = done

            imported = suppression_ops.import_rows(self._services.suppression, config,
                                                   job.account, parsed, progress)
            job.new, job.updated, job.done = imported.new, imported.updated, job.rows

        try:
            await asyncio.to_thread(work)
            job.state = "done"
            log.info("console: account=%s imported %d new, %d updated, %d bad rows from %s "
                     "by %s", job.account, job.new, job.updated, job.bad, name, client)
        except Exception as exc:
            job.state, job.error = "failed", str(exc) or type(exc).__name__
            log.error("console: account=%s import of %s failed: %s", job.account, name, exc)

    async def _import_progress(self, request: web.Request,
                               session: Session) -> web.StreamResponse:
        job = self._jobs.get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "no such import"}, status=404, headers=HEADERS)
        return web.json_response(job.as_json(), headers=HEADERS)

    async def _suppression_export(self, request: web.Request,
                                  session: Session) -> web.StreamResponse:
        config = self._services.live.config
        account = self._account_of(request.query.get("account"))
        fmt = request.query.get("format", "csv")
        if fmt not in suppression_files.FORMATS:
            fmt = "csv"

        def write() -> bytes:
            out = io.StringIO()
            suppression_ops.export(self._services.suppression, config, out, fmt, account)
            return out.getvalue().encode("utf-8")

        body = await asyncio.to_thread(write)
        extension = "csv" if fmt == "csv" else "ndjson"
        return web.Response(body=body, headers={
            **HEADERS, "Content-Type": "text/csv; charset=utf-8" if fmt == "csv"
            else "application/x-ndjson; charset=utf-8",
            "Content-Disposition": f'attachment; filename="suppression-{account}.{extension}"'})

    # -- delivery ------------------------------------------------------------------------------

    async def _delivery_page(self, request: web.Request,
                             session: Session) -> web.StreamResponse:
        found = await asyncio.to_thread(
            activity.destinations, self._services.spool, self.clock(), set_stats.HOUR, 100,
            provider_of=self._provider_of, connections=self._services.connections)
        by_provider: dict[str, dict[str, int]] = {}
        for destination in found:
            name = destination.provider or "(no provider)"
            sums = by_provider.setdefault(name, {"domains": 0, "waiting": 0, "delivered": 0,
                                                 "bounced": 0, "delayed": 0,
                                                 "connections": 0})
            sums["domains"] += 1
            for key in ("waiting", "delivered", "bounced", "delayed"):
                sums[key] += getattr(destination.figures, key)
            sums["connections"] += destination.connections or 0
        pools, pools_error = await self._pools()
        return self._render(request, session, "delivery.html", title="Delivery",
                            destinations=found, providers=sorted(by_provider.items()),
                            connections_known=self._services.connections is not None,
                            pools=pools, pools_error=pools_error, other=pool_ops.OTHER,
                            bundled_origin=providers.BUNDLED,
                            shaping=self._shaping())

    async def _pools(self) -> tuple[list[PoolView], str | None]:
        """Each pool with its addresses' warm-up, as the admin API's /ip-pools reports
        it; or why it cannot be read."""
        config = self._services.live.config
        if not config.ip_pools:
            return [], None
        if self._services.warmup is None:
            return [], "this process keeps no warm-up counters"
        try:
            found = await pool_ops.report(config, self._services.warmup, now=self.clock())
        except StateUnavailable as exc:
            return [], f"the warm-up counters cannot be read: {exc}"
        return pool_views(config, found), None

    def _shaping(self) -> ShapingView:
        config = self._services.live.config
        hook = self._services.shaping
        state = hook() if hook is not None else None
        if state is None or not state.enabled:
            if not config.delivery.shaping.enabled:
                off = "delivery.shaping.enabled is false"
            elif config.delivery.mode != "mx":
                off = (f"it applies to delivery mode mx, and this relay delivers in mode "
                       f"{config.delivery.mode}")
            else:
                off = "this process does not deliver mail"
            return ShapingView(off=f"Shaping is off here: {off}.")
        now = self.clock()
        return ShapingView(
            lanes=[LaneView(lane, suspended_until=now + lane.suspended_for
                            if lane.suspended_for else None,
                            throttled_until=now + lane.throttled_for
                            if lane.factor < 1.0 else None)
                   for lane in state.lanes],
            providers=list(state.table.providers),
            destinations=sorted(((domain, limits) for domain, limits
                                 in state.destinations.items()
                                 if any(value is not None for value in (
                                     limits.max_connections, limits.per_second,
                                     limits.per_minute, limits.per_hour))),
                                key=lambda item: item[0]))

    # -- events -------------------------------------------------------------------------------

    async def _events_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        return self._render(request, session, "events.html", title="Events",
                            types=event_tail.EVENT_TYPES,
                            sets=sorted(self._services.live.config.configuration_sets),
                            available=self._services.events is not None)

    async def _events_stream(self, request: web.Request,
                             session: Session) -> web.StreamResponse:
        """Server-Sent Events for the Events page: `event` messages with the JSON of
        `smtprelay events tail --json`, `dropped` when some were lost."""
        tail = self._services.events
        if tail is None:
            raise web.HTTPNotFound()
        wanted = event_tail.TailFilter.of(request.query.getall("type", []),
                                          request.query.getall("set", []))
        response = web.StreamResponse(headers={
            **HEADERS, "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            async for item in event_tail.follow(tail, wanted, recent=50, keep_going=True,
                                                keepalive=self._keepalive):
                if item is None:
                    await response.write(b": keep-alive\n\n")
                elif isinstance(item, event_tail.Dropped):
                    await response.write(f"event: dropped\ndata: {item.count}\n\n".encode())
                else:
                    data = json.dumps(item.as_json(), ensure_ascii=False)
                    await response.write(f"event: event\ndata: {data}\n\n".encode())
                if self.sessions.find(session.id) is None:
                    break  # logged out or expired: the stream ends with the session
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response


@dataclass(frozen=True, slots=True)
class _EventRow:
    type: str
    at: float
    event_id: str
    detail: str  # the event's own SES object, indented JSON


def _event_row(kind: str, at: float, event_id: str, detail: dict[str, Any]) -> _EventRow:
    return _EventRow(kind, at, event_id,
                     json.dumps(detail, indent=1, ensure_ascii=False)[:4000])


@dataclass(frozen=True, slots=True)
class PoolView:
    """An IP pool on the Delivery page: its settings, who sends from it and each
    address's warm-up today."""

    name: str
    settings: IpPoolConfig
    used_by: list[str]  # the configuration sets whose mail leaves from it
    default: bool  # delivery.ip_pool: every set without a pool of its own uses it
    addresses: list[Progress]


def pool_views(config: Config, found: list[Progress]) -> list[PoolView]:
    """`found` (operations.ip_pools.report) grouped by pool, in the configuration's
    order."""
    views = []
    for name, settings in config.ip_pools.items():
        used_by = sorted(set_name for set_name, cs in config.configuration_sets.items()
                         if cs.delivery.ip_pool == name)
        views.append(PoolView(name, settings, used_by, config.delivery.ip_pool == name,
                              [p for p in found if p.pool == name]))
    return views


@dataclass(frozen=True, slots=True)
class LaneView:
    """A provider and source address, with its suspension's and throttle's end as
    times of day."""

    state: LaneState
    suspended_until: float | None
    throttled_until: float | None


@dataclass(frozen=True, slots=True)
class ShapingView:
    off: str | None = None  # why shaping does not apply here
    lanes: list[LaneView] = field(default_factory=list)
    providers: list[Provider] = field(default_factory=list)  # the table in force
    destinations: list[tuple[str, DestinationConfig]] = field(default_factory=list)


def _safe_next(target: str) -> str:
    """Where a login goes on to: a console path of this site, nothing else (an open
    redirect would let a link to our login page send people anywhere)."""
    if target.startswith(f"{ROOT}/") and not target.startswith("//") and "\\" not in target \
            and all(c.isprintable() for c in target):
        return target
    return f"{ROOT}/"


def _summary(message: QueuedMessage) -> str:
    """The recipients' states in a few words: "2 delivered, 1 deferred"."""
    counts: dict[str, int] = {}
    for recipient in message.recipients:
        state = "held" if recipient.held else recipient.state.value
        counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
