"""The admin API under /api/v1: suppression list, queue, configuration-set pauses, statistics.

JSON in and out. Every route, ``/api/v1/openapi.json`` included, wants the bearer
token (smtprelay.http.admin_auth); without a good one the answer is a 401 that is
the same whatever was wrong. With ``http.admin_token_env`` unset or its variable
empty the routes are not there at all: everything under ``/api/`` is a plain 404.
The routes answer on every HTTP listener and ignore the Host header (the tracking
routes' host check is theirs alone); put the listener on a private address or
behind a proxy that only lets operators through.

Errors are ``{"error": {"code": ..., "message": ...}}``: 400 for a malformed query
or body, 404 for an unknown account, address, message or set, 409 when the state
forbids the change (already paused, nothing to retry), 422 for a well-formed body
or address with a value the relay cannot take. Every request is logged once with
the client's address and the route pattern; tokens never are.

Lists page with ``limit`` (1-1000, default 100) and ``cursor``: pass the previous
answer's ``next_cursor`` to get the page after it (null: there is none). A cursor
is the last key of the page (an address, a message id), so any string is a valid
cursor: the page starts after it. Database work runs in threads or in the spool's
writer; the event loop never waits on the disk.

What the validation accepts is exactly what openapi.json says (the same patterns
and ranges, from smtprelay.http.openapi), so a client generated from the document
never meets a 400 for a value the document allows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from smtprelay.config import Config
from smtprelay.http import admin_auth, openapi
from smtprelay.http.tracking import client_ip, parse_ip
from smtprelay.infra import metrics
from smtprelay.policy.pauses import AlreadyPaused, Pause, PausedSets
from smtprelay.policy.reputation import Judgement
from smtprelay.policy.suppression import (
    REASONS,
    Reason,
    SQLiteSuppressionStore,
    SuppressionEntry,
    address_problem,
    normalise,
)
from smtprelay.spool import set_stats
from smtprelay.spool.model import QueuedMessage, RecipientState
from smtprelay.spool.store import MessageFilter, Spool

log = logging.getLogger("smtprelay.http.admin")

PREFIX = "/api/v1"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="smtprelay"'}
_UNAUTHORIZED_BODY = {"error": {"code": "unauthorized",
                                "message": "a valid bearer token is required"}}

_ADDRESS = re.compile(openapi.ADDRESS_PATTERN)
_WINDOW = re.compile(openapi.WINDOW_PATTERN)
_LIMIT = re.compile(r"^[0-9]+$")
_WINDOW_UNITS = {"m": 60, "h": 3600, "d": 86400}
_STATUS_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "unprocessable", 500: "internal"}


def is_admin_path(path: str) -> bool:
    """Whether the admin API answers this (decoded) path: everything under /api/."""
    return path == "/api" or path.startswith("/api/")


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "error")
        self.message = message


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def _fail(status: int, message: str) -> NoReturn:
    raise APIError(status, message)


@dataclass
class AdminServices:
    """What the admin API works on: the daemon's own objects."""

    config: Callable[[], Config]  # the config in force (it changes on SIGHUP)
    spool: Spool
    suppression: SQLiteSuppressionStore
    pauses: PausedSets
    wake_scheduler: Callable[[], None] = lambda: None
    # The reputation guard's last judgement of ("set" | "account", name), or None.
    reputation: Callable[[str, str], Judgement | None] = lambda scope, name: None


# -- query and body parsing ---------------------------------------------------------------


def parse_limit(request: web.Request) -> int:
    text = request.query.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not _LIMIT.search(text) or not 1 <= int(text) <= MAX_LIMIT:
        _fail(400, f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def parse_window(text: str | None) -> float:
    """The window query parameter ("24h", "90m", "7d") in seconds; longer than the
    statistics kept (15 days) reads as 15 days."""
    if text is None:
        return set_stats.DAY
    match = _WINDOW.search(text)
    if match is None:
        _fail(400, "window must be a whole number of minutes, hours or days, such as "
                   "60m, 24h or 7d")
    seconds = int(match.group(1)) * _WINDOW_UNITS[match.group(2)]
    return float(min(seconds, set_stats.RETENTION))


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        _fail(400, f"{name} must be one of {', '.join(allowed)}")
    return value


def _text(request: web.Request, name: str, max_length: int) -> str | None:
    value = request.query.get(name)
    if value is not None and len(value) > max_length:
        _fail(400, f"{name} is longer than {max_length} characters")
    return value


async def read_body(request: web.Request, fields: dict[str, type]) -> dict[str, Any]:
    """A JSON object with only `fields` (name -> type); {} for an empty body."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        _fail(413, "the body is larger than the relay takes (64 KiB)")
    if not raw.strip():
        return {}
    media_type = request.content_type.lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        _fail(415, "send the body as JSON, with Content-Type: application/json")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        _fail(400, "the body is not JSON")
    if not isinstance(value, dict):
        _fail(422, "the body must be a JSON object")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        _fail(422, f"unknown field(s): {', '.join(unknown)}; allowed: "
                   f"{', '.join(sorted(fields)) or 'none'}")
    for name, kind in fields.items():
        if name in value and not isinstance(value[name], kind):
            _fail(422, f"{name} must be a {kind.__name__ if kind is not str else 'string'}")
    return value


# -- JSON shapes -----------------------------------------------------------------------------


async def pause_reason(request: web.Request) -> str:
    """The optional {"reason": text} of a pause request."""
    detail = str((await read_body(request, {"reason": str})).get("reason", ""))
    if len(detail) > openapi.MAX_PAUSE_REASON:
        _fail(422, f"reason is longer than {openapi.MAX_PAUSE_REASON} characters")
    return detail


def entry_json(entry: SuppressionEntry) -> dict[str, Any]:
    return {"account": entry.account, "address": entry.address, "reason": entry.reason,
            "created_at": entry.created_at, "source_message_id": entry.source_message_id}


def window_json(window: set_stats.Window) -> dict[str, Any]:
    return {"seconds": window.seconds, "since": window.since, "until": window.until}


def set_json(name: str, config: Config, pause: Pause | None,
             reputation: Judgement | None = None) -> dict[str, Any]:
    settings = config.configuration_sets.get(name)
    enabled = settings.sending_enabled if settings is not None else None
    return {
        "name": name, "configured": settings is not None, "sending_enabled": enabled,
        "paused": pause.as_json() if pause is not None else None,
        "accepting": bool(enabled) and pause is None,
        "publishes_events": settings.publishes if settings is not None else False,
        "reputation": reputation.as_json() if reputation is not None else None,
    }


def account_json(name: str, pause: Pause | None,
                 reputation: Judgement | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "paused": pause.as_json() if pause is not None else None,
        "accepting": pause is None,
        "reputation": reputation.as_json() if reputation is not None else None,
    }


def stats_json(counts: set_stats.Counts) -> dict[str, Any]:
    return counts.as_json()


# -- the API -------------------------------------------------------------------------------------


class AdminAPI:
    def __init__(self, secret: str, services: AdminServices, trusted_proxies: list[str],
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self._services = services
        self._trusted = [ipaddress.ip_network(n) for n in trusted_proxies]
        self._clock = clock
        self.document = openapi.document()
        if len(secret) < admin_auth.MIN_SECRET_CHARS:
            log.warning("http.admin_token_env: the admin secret is %d characters; use at "
                        "least %d random ones (openssl rand -base64 32)", len(secret),
                        admin_auth.MIN_SECRET_CHARS)

    # -- gate: every /api/ request passes here (server.py's middleware) ----------------

    def _client(self, request: web.Request) -> str:
        ip = client_ip(parse_ip(request.remote or ""), request.headers.items(), self._trusted)
        return "-" if ip is None else str(ip)

    async def handle(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, run the route, turn every failure into the JSON error shape."""
        client = self._client(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "(no route)"
        verdict = admin_auth.check(self._secret, request.headers.get("Authorization"),
                                   self._clock())
        if verdict is not admin_auth.Verdict.OK:
            metrics.ADMIN_AUTH_FAILURES.inc()
            log.warning("admin api: refused %s %s from %s: %s", request.method, route,
                        client, verdict.value)
            return web.json_response(_UNAUTHORIZED_BODY, status=401,
                                     headers=UNAUTHORIZED_HEADERS)
        try:
            response = await handler(request)
        except APIError as exc:
            response = error_response(exc.status, exc.code, exc.message)
        except web.HTTPException as exc:
            # The router's 404 and 405 (and aiohttp's 413), in the API's shape.
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            message = {404: "no such route in the admin API (see /api/v1/openapi.json)",
                       405: f"{request.method} is not allowed here"}.get(
                exc.status, exc.reason)
            response = error_response(exc.status, _STATUS_CODES.get(exc.status, "error"),
                                      message, headers)
        except Exception:
            log.exception("admin api: %s %s failed", request.method, route)
            response = error_response(500, "internal", "the relay failed to answer; its "
                                                       "log says why")
        log.info("admin api: %s %s %d from %s", request.method, route, response.status,
                 client)
        return response

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(f"{PREFIX}/openapi.json", self.openapi_json)
        suppression = f"{PREFIX}/accounts/{{account}}/suppression"
        r.add_get(suppression, self.suppression_search)
        r.add_get(f"{suppression}/{{address:.+}}", self.suppression_get)
        r.add_put(f"{suppression}/{{address:.+}}", self.suppression_put)
        r.add_delete(f"{suppression}/{{address:.+}}", self.suppression_delete)
        r.add_get(f"{PREFIX}/queue", self.queue_list)
        r.add_post(f"{PREFIX}/queue/retry", self.queue_retry_all)
        r.add_get(f"{PREFIX}/queue/{{message_id}}", self.queue_get)
        r.add_delete(f"{PREFIX}/queue/{{message_id}}", self.queue_delete)
        r.add_post(f"{PREFIX}/queue/{{message_id}}/retry", self.queue_retry)
        sets = f"{PREFIX}/configuration-sets"
        r.add_get(sets, self.sets_list)
        r.add_get(f"{sets}/{{name}}", self.set_get)
        r.add_post(f"{sets}/{{name}}/pause", self.set_pause)
        r.add_post(f"{sets}/{{name}}/resume", self.set_resume)
        r.add_get(f"{sets}/{{name}}/stats", self.set_stats)
        r.add_get(f"{PREFIX}/stats", self.stats)
        accounts = f"{PREFIX}/accounts"
        r.add_get(accounts, self.accounts_list)
        r.add_get(f"{accounts}/{{account}}", self.account_get)
        r.add_post(f"{accounts}/{{account}}/pause", self.account_pause)
        r.add_post(f"{accounts}/{{account}}/resume", self.account_resume)

    async def openapi_json(self, _request: web.Request) -> web.Response:
        return web.json_response(self.document)

    # -- suppression --------------------------------------------------------------------

    def _account(self, request: web.Request) -> str:
        account = request.match_info["account"]
        if account not in self._services.config().accounts:
            _fail(404, f"no account {account!r} in the configuration (accounts.{account})")
        return account

    async def suppression_search(self, request: web.Request) -> web.Response:
        account = self._account(request)
        limit = parse_limit(request)
        reason = _choice(request, "reason", REASONS)
        prefix = _text(request, "prefix", 320)
        cursor = _text(request, "cursor", 320)
        store = self._services.suppression
        entries = await asyncio.to_thread(
            store.list, account, reason=cast(Reason | None, reason), limit=limit + 1,
            after=(account, cursor) if cursor is not None else None,
            prefix=normalise(prefix) if prefix else None)
        more = len(entries) > limit
        entries = entries[:limit]
        return web.json_response({
            "items": [entry_json(e) for e in entries],
            "next_cursor": entries[-1].address if more else None})

    def _address(self, request: web.Request) -> str:
        return request.match_info["address"]

    async def suppression_get(self, request: web.Request) -> web.Response:
        account = self._account(request)
        address = self._address(request)
        entry = await asyncio.to_thread(self._services.suppression.get, account, address)
        if entry is None:
            _fail(404, f"{address} is not on account {account}'s suppression list")
        return web.json_response(entry_json(entry))

    async def suppression_put(self, request: web.Request) -> web.Response:
        account = self._account(request)
        address = self._address(request)
        body = await read_body(request, {"reason": str})
        if _ADDRESS.search(address) is None or address_problem(address) is not None:
            _fail(422, address_problem(address) or f"{address!r} is not an email address "
                  "smtprelay can list (one @, a domain, no spaces or control characters, "
                  "at most 320 characters)")
        reason = body.get("reason")
        if reason not in REASONS:
            _fail(422, "reason must be BOUNCE or COMPLAINT")
        store = self._services.suppression
        created = await asyncio.to_thread(store.add, account, address, reason)
        entry = await asyncio.to_thread(store.get, account, address)
        assert entry is not None
        log.info("admin api: account=%s suppressed %s reason=%s (%s)", account, entry.address,
                 reason, "new" if created else "updated")
        return web.json_response(entry_json(entry), status=201 if created else 200)

    async def suppression_delete(self, request: web.Request) -> web.Response:
        account = self._account(request)
        address = self._address(request)
        removed = await asyncio.to_thread(self._services.suppression.remove, account, address)
        if not removed:
            _fail(404, f"{address} is not on account {account}'s suppression list")
        log.info("admin api: account=%s unsuppressed %s", account, normalise(address))
        return web.json_response({"account": account, "address": normalise(address),
                                  "removed": True})

    # -- queue ----------------------------------------------------------------------------

    async def queue_list(self, request: web.Request) -> web.Response:
        limit = parse_limit(request)
        filters = MessageFilter(
            account=_text(request, "account", 256),
            configuration_set=_text(request, "configuration_set", 256),
            state=_choice(request, "state", openapi.QUEUE_STATES))
        cursor = _text(request, "cursor", 256)
        messages = await asyncio.to_thread(self._services.spool.messages, limit=limit + 1,
                                           after=cursor, filters=filters)
        more = len(messages) > limit
        messages = messages[:limit]
        return web.json_response({
            "items": [m.as_json() for m in messages],
            "next_cursor": messages[-1].message_id if more else None})

    async def _message(self, request: web.Request) -> QueuedMessage:
        message_id = request.match_info["message_id"]
        message = await asyncio.to_thread(self._services.spool.get, message_id)
        if message is None:
            _fail(404, f"no message {message_id} in the queue")
        return message

    async def queue_get(self, request: web.Request) -> web.Response:
        return web.json_response((await self._message(request)).as_json())

    async def queue_delete(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        if not await self._services.spool.delete(message_id):
            _fail(404, f"no message {message_id} in the queue")
        log.info("admin api: msg=%s deleted from the queue", message_id)
        return web.json_response({"message_id": message_id, "deleted": True})

    async def queue_retry(self, request: web.Request) -> web.Response:
        message = await self._message(request)
        due = await self._services.spool.retry(message.message_id, self._clock())
        if not due:
            waiting = [r for r in message.recipients if r.state is RecipientState.SENDING]
            _fail(409, f"message {message.message_id} has no recipient waiting for a retry "
                       + ("(a delivery attempt holds it now)" if waiting
                          else "(every recipient is final)"))
        self._services.wake_scheduler()
        log.info("admin api: msg=%s %d recipient(s) due now", message.message_id, due)
        return web.json_response({"message_id": message.message_id, "recipients_due": due})

    async def queue_retry_all(self, _request: web.Request) -> web.Response:
        due = await self._services.spool.retry(None, self._clock())
        self._services.wake_scheduler()
        log.info("admin api: queue flushed, %d recipient(s) due now", due)
        return web.json_response({"message_id": None, "recipients_due": due})

    # -- configuration sets ------------------------------------------------------------------

    def _set_names(self) -> list[str]:
        names = set(self._services.config().configuration_sets) | set(self._services.pauses)
        return sorted(names)

    def _known_set(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if (name not in self._services.config().configuration_sets
                and name not in self._services.pauses):
            _fail(404, f"no configuration set {name!r} in the configuration "
                       f"(configuration_sets.{name})")
        return name

    def _set_json(self, name: str, pause: Pause | None) -> dict[str, Any]:
        return set_json(name, self._services.config(), pause,
                        self._services.reputation("set", name))

    async def sets_list(self, _request: web.Request) -> web.Response:
        pauses = self._services.pauses
        return web.json_response({"items": [self._set_json(name, pauses.get(name))
                                            for name in self._set_names()]})

    async def set_get(self, request: web.Request) -> web.Response:
        name = self._known_set(request)
        return web.json_response(self._set_json(name, self._services.pauses.get(name)))

    async def set_pause(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        detail = await pause_reason(request)
        config = self._services.config()
        if name not in config.configuration_sets:
            _fail(404, f"no configuration set {name!r} in the configuration "
                       f"(configuration_sets.{name})")
        try:
            pause = await asyncio.to_thread(self._services.pauses.pause, name, detail=detail,
                                            by=f"api {self._client(request)}")
        except AlreadyPaused as exc:
            _fail(409, f"{exc}; resume it first to pause it again")
        return web.json_response(self._set_json(name, pause))

    async def set_resume(self, request: web.Request) -> web.Response:
        name = self._known_set(request)
        lifted = await asyncio.to_thread(self._services.pauses.resume, name)
        config = self._services.config()
        if lifted is None:
            settings = config.configuration_sets.get(name)
            hint = ("; sending_enabled: false in the configuration keeps it refusing mail "
                    "(change the file and reload)"
                    if settings is not None and not settings.sending_enabled else "")
            _fail(409, f"configuration set {name!r} is not paused{hint}")
        return web.json_response(self._set_json(name, None))

    # -- accounts ------------------------------------------------------------------------

    def _account_json(self, name: str, pause: Pause | None) -> dict[str, Any]:
        return account_json(name, pause, self._services.reputation("account", name))

    async def accounts_list(self, _request: web.Request) -> web.Response:
        paused = self._services.pauses.accounts
        names = sorted(set(self._services.config().accounts) | set(paused))
        return web.json_response({"items": [self._account_json(name, paused.get(name))
                                            for name in names]})

    def _known_account(self, request: web.Request) -> str:
        name = request.match_info["account"]
        if (name not in self._services.config().accounts
                and name not in self._services.pauses.accounts):
            _fail(404, f"no account {name!r} in the configuration (accounts.{name})")
        return name

    async def account_get(self, request: web.Request) -> web.Response:
        name = self._known_account(request)
        return web.json_response(self._account_json(
            name, self._services.pauses.accounts.get(name)))

    async def account_pause(self, request: web.Request) -> web.Response:
        name = self._account(request)
        detail = await pause_reason(request)
        try:
            pause = await asyncio.to_thread(self._services.pauses.pause_account, name,
                                            detail=detail, by=f"api {self._client(request)}")
        except AlreadyPaused as exc:
            _fail(409, f"{exc}; resume it first to pause it again")
        return web.json_response(self._account_json(name, pause))

    async def account_resume(self, request: web.Request) -> web.Response:
        name = self._known_account(request)
        lifted = await asyncio.to_thread(self._services.pauses.resume_account, name)
        if lifted is None:
            _fail(409, f"account {name!r} is not paused")
        return web.json_response(self._account_json(name, None))

    # -- statistics -------------------------------------------------------------------------

    async def set_stats(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        window = set_stats.Window.ending(self._clock(), parse_window(request.query.get("window")))
        found = await asyncio.to_thread(self._services.spool.set_totals, window,
                                        configuration_set=name)
        if name not in found and name not in self._services.config().configuration_sets:
            _fail(404, f"no configuration set {name!r} in the configuration "
                       f"(configuration_sets.{name}) and no statistics for it")
        counts = found.get(name, set_stats.Counts())
        return web.json_response({"configuration_set": name, "window": window_json(window),
                                  **stats_json(counts)})

    async def stats(self, request: web.Request) -> web.Response:
        window = set_stats.Window.ending(self._clock(), parse_window(request.query.get("window")))
        spool = self._services.spool
        by_set = await asyncio.to_thread(spool.set_totals, window)
        by_account = await asyncio.to_thread(spool.set_totals, window, by="account")
        config = self._services.config()
        keys = sorted(set(config.configuration_sets) | set(by_set))
        return web.json_response({
            "window": window_json(window),
            "total": stats_json(set_stats.merge(by_set.values())),
            "configuration_sets": [
                {"configuration_set": None if key == set_stats.NO_SET else key,
                 **stats_json(by_set.get(key, set_stats.Counts()))} for key in keys],
            "accounts": [{"account": account, **stats_json(by_account[account])}
                         for account in sorted(by_account)],
        })
