"""The admin API under /api/v1: suppression list, queue, configuration-set pauses, statistics,
contact lists.

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
the client's address and the route pattern; tokens never are. The contact-list
routes use SES's field names (EmailAddress, TopicPreferences, ...) and give their
refusals SES's names as the code: NotFoundException (404), AlreadyExistsException
(409), BadRequestException (400 and 422).

Lists page with ``limit`` (1-1000, default 100) and ``cursor``: pass the previous
answer's ``next_cursor`` to get the page after it (null: there is none). A cursor
is the last key of the page (an address, a message id), so any string is a valid
cursor: the page starts after it.

Each route parses its request, runs the operation the CLI runs too
(smtprelay.operations) in a thread, so the event loop never waits on the disk, and
says its result or refusal (`refusal`) in the API's shapes.

What the validation accepts is exactly what openapi.json says (the same patterns
and ranges, from smtprelay.http.openapi), so a client generated from the document
never meets a 400 for a value the document allows.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, cast

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from redis.exceptions import RedisError

from smtprelay.config import NAME_PATTERN, ConfigSource
from smtprelay.delivery.shaping import ShapingState
from smtprelay.events import tail as event_tail
from smtprelay.events.tail import EventTail
from smtprelay.http import admin_auth, openapi
from smtprelay.http.tracking import client_ip, parse_ip
from smtprelay.infra import metrics
from smtprelay.operations import contacts as contact_ops
from smtprelay.operations import ip_pools as pool_ops
from smtprelay.operations import nodes as nodes_ops
from smtprelay.operations import pauses as pause_ops
from smtprelay.operations import queue as queue_ops
from smtprelay.operations import stats as stats_ops
from smtprelay.operations import suppression as suppression_ops
from smtprelay.operations.errors import (
    AlreadyPaused,
    BadContact,
    Conflict,
    NotConfigured,
    NotFound,
    OperationError,
)
from smtprelay.operations.nodes import NodeControl
from smtprelay.operations.paging import Page
from smtprelay.policy.contacts import ContactStore
from smtprelay.policy.pauses import PausedSets, Scope
from smtprelay.policy.reputation import Judgement
from smtprelay.policy.suppression import REASONS, Reason, SuppressionStore, address_problem
from smtprelay.spool import set_stats
from smtprelay.spool.store import MessageFilter, Spool
from smtprelay.state.api import StateUnavailable
from smtprelay.state.warmup import WarmupCounters

log = logging.getLogger("smtprelay.http.admin")

PREFIX = "/api/v1"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="smtprelay"'}
_UNAUTHORIZED_BODY = {"error": {"code": "unauthorized",
                                "message": "a valid bearer token is required"}}

_ADDRESS = re.compile(openapi.ADDRESS_PATTERN)
_NAME = re.compile(NAME_PATTERN)
_CURSOR = re.compile(openapi.CURSOR_PATTERN)
_WINDOW = re.compile(openapi.WINDOW_PATTERN)
_LIMIT = re.compile(r"^[0-9]+$")
_WINDOW_UNITS = {"m": 60, "h": 3600, "d": 86400}
_STATUS_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
                 422: "unprocessable", 500: "internal",
                 503: "unavailable"}


# The contact-list routes' codes: SES's exception names for the same refusals.
_SES_CODES = {400: "BadRequestException", 404: "NotFoundException",
              409: "AlreadyExistsException", 422: "BadRequestException"}
_CONTACT_FIELDS: dict[str, type] = {"TopicPreferences": list, "UnsubscribeAll": bool,
                                    "AttributesData": str}


def is_admin_path(path: str) -> bool:
    """Whether the admin API answers this (decoded) path: everything under /api/."""
    return path == "/api" or path.startswith("/api/")


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "error")
        self.message = message


def refusal(exc: OperationError) -> APIError:
    """An operation's refusal as the API says it: 404, 409 or 422 and its message."""
    if isinstance(exc, NotConfigured | NotFound):
        return APIError(404, str(exc))
    if isinstance(exc, AlreadyPaused):
        return APIError(409, f"{exc}; resume it first to pause it again")
    return APIError(409 if isinstance(exc, Conflict) else 422, str(exc))


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


def _fail(status: int, message: str) -> NoReturn:
    raise APIError(status, message)


def ses_errors(handler: Callable[[AdminAPI, web.Request], Awaitable[web.Response]]
               ) -> Callable[[AdminAPI, web.Request], Awaitable[web.Response]]:
    """A contact-list route: its refusals carry SES's exception name as their code,
    and a field SES's request names is named in the message."""

    @functools.wraps(handler)
    async def route(api: AdminAPI, request: web.Request) -> web.Response:
        try:
            return await handler(api, request)
        except BadContact as exc:
            raise APIError(422, f"{exc.field}: {exc}", _SES_CODES[422]) from None
        except OperationError as exc:
            failure = refusal(exc)
        except APIError as exc:
            failure = exc
        raise APIError(failure.status, failure.message,
                       _SES_CODES.get(failure.status, failure.code))

    return route


@dataclass
class AdminServices:
    """What the admin API works on: the daemon's own objects."""

    live: ConfigSource  # the config in force (a reload swaps it)
    spool: Spool
    suppression: SuppressionStore
    pauses: PausedSets
    contacts: ContactStore
    wake_scheduler: Callable[[], None] = lambda: None
    # The reputation guard's last judgement of ("set" | "account", name), or None.
    reputation: Callable[[str, str], Judgement | None] = lambda scope, name: None
    # Statistics: the spool's own (None), or the whole cluster's (spool.cluster_stats).
    counters: set_stats.Counters | None = None
    node: NodeControl | None = None  # drain and the cluster's nodes (None: not offered)
    # The IP pools' warm-up counters (None: the /ip-pools routes answer 404).
    warmup: WarmupCounters | None = None
    events: EventTail | None = None  # the live tail of events (None: not offered)
    # The console's delivery page: delivery sessions in use to a recipient domain now
    # (None: not known here), the mailbox provider of an MX host (None: the bundled
    # table of smtprelay.delivery.providers), and the MX transport's shaping state
    # (None: no MX transport here).
    connections: Callable[[str], int] | None = None
    provider_of: Callable[[str], str | None] | None = None
    shaping: Callable[[], ShapingState] | None = None


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
    """A JSON object with only `fields` (name -> type); {} for no body at all (white
    space is not JSON: a 400, as for any other body that is not)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        _fail(413, "the body is larger than the relay takes (64 KiB)")
    except (ConnectionResetError, aiohttp.ClientPayloadError, aiohttp.EofStream) as exc:
        # The client went away in the middle of its body: nothing was done, and no one
        # is there to read an answer. An info line, not an ERROR with a traceback.
        log.info("admin api: %s %s from %s: the client closed the connection in the "
                 "middle of its body (%s)", request.method, request.path, request.remote,
                 type(exc).__name__)
        raise web.HTTPBadRequest(text="incomplete body") from None
    if not raw:
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


async def pause_detail(request: web.Request) -> str:
    """The optional {"reason": text} of a pause request (its length is the operation's
    to check)."""
    return str((await read_body(request, {"reason": str})).get("reason", ""))


def keepalive_interval(read_timeout: float) -> float:
    """How often a quiet stream writes something: well within `read_timeout`."""
    return max(0.5, min(15.0, read_timeout / 2))


def tail_request(request: web.Request) -> tuple[event_tail.TailFilter, int, bool]:
    """The event tail's query: type (repeated: any of them), configuration_set
    (repeated; empty: mail without a set), recent (0-200, default 10), follow."""
    types = request.query.getall("type", [])
    for kind in types:
        if kind not in event_tail.EVENT_TYPES:
            _fail(400, f"type must be one of {', '.join(event_tail.EVENT_TYPES)}")
    sets = request.query.getall("configuration_set", [])
    for name in sets:
        if len(name) > 256 or _CURSOR.search(name) is None:
            _fail(400, "configuration_set must be a set's name (at most 256 characters, "
                       "no control characters; empty: mail sent without a set)")
    text = request.query.get("recent", "10")
    if not _LIMIT.search(text) or not 0 <= int(text) <= event_tail.RECENT:
        _fail(400, f"recent must be a whole number from 0 to {event_tail.RECENT}")
    follow = _choice(request, "follow", ("true", "false")) == "true"
    return event_tail.TailFilter.of(types, sets), int(text), follow


# -- JSON shapes -----------------------------------------------------------------------------


def page_json(page: Page[Any], item: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    return {"items": [item(i) for i in page.items], "next_cursor": page.next_cursor}


# -- the API -------------------------------------------------------------------------------------


class AdminAPI:
    def __init__(self, secret: str, services: AdminServices, trusted_proxies: list[str],
                 *, failures: admin_auth.FailedTokens,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        # Wrong tokens per client address, shared with the console's login.
        self.failures = failures
        self._services = services
        self._trusted = [ipaddress.ip_network(n) for n in trusted_proxies]
        self._clock = clock
        self._queue = queue_ops.DaemonSpool(services.spool, services.counters)
        self.document = openapi.document()
        # A streamed answer writes at least this often: a worker process passing it on
        # gives up on a read after http.read_timeout (smtprelay.http.forward).
        self.keepalive = keepalive_interval(services.live.config.http.read_timeout)
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
        locked = self.failures.locked_for(client)
        if locked:
            metrics.ADMIN_AUTH_FAILURES.inc()
            log.warning("admin api: refused %s %s from %s: locked out for %.0fs more after "
                        "wrong tokens", request.method, route, client, locked)
            return error_response(429, "too_many_failures", (
                "too many wrong tokens from this address; try again later"),
                {"Retry-After": str(math.ceil(locked))})
        verdict = admin_auth.check(self._secret, request.headers.get("Authorization"),
                                   self._clock())
        if verdict is not admin_auth.Verdict.OK:
            metrics.ADMIN_AUTH_FAILURES.inc()
            log.warning("admin api: refused %s %s from %s: %s", request.method, route,
                        client, verdict.value)
            if verdict is not admin_auth.Verdict.MISSING and self.failures.failed(client):
                log.warning("admin api and console: %s locked out for %.0fs after %d wrong "
                            "tokens (auth.max_failures_per_ip)", client,
                            self.failures.policy.lockout, self.failures.policy.per_ip)
            return web.json_response(_UNAUTHORIZED_BODY, status=401,
                                     headers=UNAUTHORIZED_HEADERS)
        try:
            response = await handler(request)
        except OperationError as exc:
            failure = refusal(exc)
            response = error_response(failure.status, failure.code, failure.message)
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
        r.add_post(f"{PREFIX}/queue/{{message_id}}/hold", self.queue_hold)
        r.add_post(f"{PREFIX}/queue/{{message_id}}/release", self.queue_release)
        sets = f"{PREFIX}/configuration-sets"
        r.add_get(sets, self.sets_list)
        r.add_get(f"{sets}/{{name}}", self.set_get)
        r.add_post(f"{sets}/{{name}}/pause", self.set_pause)
        r.add_post(f"{sets}/{{name}}/resume", self.set_resume)
        r.add_get(f"{sets}/{{name}}/stats", self.set_stats)
        r.add_get(f"{PREFIX}/stats", self.stats)
        r.add_get(f"{PREFIX}/node", self.node_get)
        r.add_post(f"{PREFIX}/node/drain", self.node_drain)
        r.add_post(f"{PREFIX}/node/undrain", self.node_undrain)
        r.add_get(f"{PREFIX}/cluster/nodes", self.cluster_nodes)
        pools = f"{PREFIX}/ip-pools"
        r.add_get(pools, self.ip_pools)
        r.add_get(f"{pools}/{{pool}}", self.ip_pool)
        r.add_put(f"{pools}/{{pool}}/addresses/{{ip}}/warmup", self.ip_warmup_put)
        r.add_get(f"{PREFIX}/events/stream", self.events_stream)
        accounts = f"{PREFIX}/accounts"
        r.add_get(accounts, self.accounts_list)
        r.add_get(f"{accounts}/{{account}}", self.account_get)
        r.add_post(f"{accounts}/{{account}}/pause", self.account_pause)
        r.add_post(f"{accounts}/{{account}}/resume", self.account_resume)
        lists = f"{PREFIX}/contact-lists"
        r.add_get(lists, self.contact_lists)
        r.add_get(f"{lists}/{{list}}", self.contact_list)
        r.add_get(f"{lists}/{{list}}/contacts", self.contacts_list)
        r.add_post(f"{lists}/{{list}}/contacts", self.contact_create)
        r.add_get(f"{lists}/{{list}}/contacts/{{address:.+}}", self.contact_get)
        r.add_put(f"{lists}/{{list}}/contacts/{{address:.+}}", self.contact_update)
        r.add_delete(f"{lists}/{{list}}/contacts/{{address:.+}}", self.contact_delete)

    async def openapi_json(self, _request: web.Request) -> web.Response:
        return web.json_response(self.document)

    # -- suppression --------------------------------------------------------------------

    def _account(self, request: web.Request) -> str:
        account = request.match_info["account"]
        suppression_ops.check_account(self._services.live.config, account)
        return account

    async def suppression_search(self, request: web.Request) -> web.Response:
        account = self._account(request)
        limit = parse_limit(request)
        reason = _choice(request, "reason", REASONS)
        prefix = _text(request, "prefix", 320)
        cursor = _text(request, "cursor", 320)
        found = await asyncio.to_thread(
            suppression_ops.page, self._services.suppression, self._services.live.config,
            account, reason=cast(Reason | None, reason), prefix=prefix, limit=limit,
            after=cursor)
        return web.json_response(page_json(found, lambda entry: entry.as_json()))

    async def suppression_get(self, request: web.Request) -> web.Response:
        account = self._account(request)
        entry = await asyncio.to_thread(suppression_ops.get, self._services.suppression,
                                        self._services.live.config, account,
                                        request.match_info["address"])
        return web.json_response(entry.as_json())

    async def suppression_put(self, request: web.Request) -> web.Response:
        account = self._account(request)
        address = request.match_info["address"]
        body = await read_body(request, {"reason": str})
        # The document's pattern, which generated clients check too; the operation
        # checks the rest (and says why for an address the pattern lets through).
        if _ADDRESS.search(address) is None:
            _fail(422, address_problem(address) or f"{address!r} is not an email address "
                  "smtprelay can list (one @, a domain, no spaces or control characters, "
                  "at most 320 characters)")
        added = await asyncio.to_thread(
            suppression_ops.add, self._services.suppression, self._services.live.config,
            account, address, body.get("reason"))
        log.info("admin api: account=%s suppressed %s reason=%s (%s)", account,
                 added.entry.address, added.entry.reason, "new" if added.created else "updated")
        return web.json_response(added.entry.as_json(), status=201 if added.created else 200)

    async def suppression_delete(self, request: web.Request) -> web.Response:
        account = self._account(request)
        address = await asyncio.to_thread(
            suppression_ops.remove, self._services.suppression, self._services.live.config,
            account, request.match_info["address"])
        log.info("admin api: account=%s unsuppressed %s", account, address)
        return web.json_response({"account": account, "address": address, "removed": True})

    # -- queue ----------------------------------------------------------------------------

    async def queue_list(self, request: web.Request) -> web.Response:
        limit = parse_limit(request)
        filters = MessageFilter(
            account=_text(request, "account", 256),
            configuration_set=_text(request, "configuration_set", 256),
            state=_choice(request, "state", openapi.QUEUE_STATES))
        cursor = _text(request, "cursor", 256)
        found = await asyncio.to_thread(queue_ops.page, self._queue, filters, limit=limit,
                                        after=cursor)
        return web.json_response(page_json(found, lambda message: message.as_json()))

    async def queue_get(self, request: web.Request) -> web.Response:
        message = await asyncio.to_thread(queue_ops.show, self._queue,
                                          request.match_info["message_id"])
        return web.json_response(message.as_json())

    async def queue_delete(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        await asyncio.to_thread(queue_ops.delete, self._queue, message_id)
        log.info("admin api: msg=%s deleted from the queue", message_id)
        return web.json_response({"message_id": message_id, "deleted": True})

    async def queue_retry(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        due = await asyncio.to_thread(queue_ops.retry, self._queue, message_id, self._clock())
        self._services.wake_scheduler()
        log.info("admin api: msg=%s %d recipient(s) due now", message_id, due)
        return web.json_response({"message_id": message_id, "recipients_due": due})

    async def queue_hold(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        held = await asyncio.to_thread(queue_ops.hold, self._queue, message_id)
        log.info("admin api: msg=%s %d recipient(s) held", message_id, held)
        return web.json_response({"message_id": message_id, "recipients_held": held})

    async def queue_release(self, request: web.Request) -> web.Response:
        message_id = request.match_info["message_id"]
        due = await asyncio.to_thread(queue_ops.release, self._queue, message_id,
                                      self._clock())
        self._services.wake_scheduler()
        log.info("admin api: msg=%s released, %d recipient(s) due now", message_id, due)
        return web.json_response({"message_id": message_id, "recipients_due": due})

    async def queue_retry_all(self, _request: web.Request) -> web.Response:
        due = await asyncio.to_thread(queue_ops.retry_all, self._queue, self._clock())
        self._services.wake_scheduler()
        log.info("admin api: queue flushed, %d recipient(s) due now", due)
        return web.json_response({"message_id": None, "recipients_due": due})

    # -- configuration sets and accounts: pauses --------------------------------------------

    def _target_json(self, target: pause_ops.Target) -> dict[str, Any]:
        judged = self._services.reputation(target.scope, target.name)
        # Beside what the CLI shows too: a set's publishes_events, an account's accepting.
        own = ({"publishes_events": target.publishes_events} if target.scope == "set"
               else {"accepting": target.accepting})
        return {**target.as_json(), **own,
                "reputation": judged.as_json() if judged is not None else None}

    def _listing(self, scope: Scope) -> web.Response:
        # The daemon's PausedSets answer from memory: no thread needed.
        targets = pause_ops.listing(self._services.pauses, self._services.live.config, scope)
        return web.json_response({"items": [self._target_json(t) for t in targets]})

    def _found(self, scope: Scope, name: str) -> web.Response:
        return web.json_response(self._target_json(pause_ops.find(
            self._services.pauses, self._services.live.config, scope, name)))

    async def _pause(self, request: web.Request, scope: Scope, name: str) -> web.Response:
        detail = await pause_detail(request)
        target = await asyncio.to_thread(
            pause_ops.pause, self._services.pauses, self._services.live.config, scope, name,
            detail=detail, by=f"api {self._client(request)}")
        return web.json_response(self._target_json(target))

    async def _resume(self, scope: Scope, name: str) -> web.Response:
        resumed = await asyncio.to_thread(pause_ops.resume, self._services.pauses,
                                          self._services.live.config, scope, name)
        return web.json_response(self._target_json(resumed.target))

    async def sets_list(self, _request: web.Request) -> web.Response:
        return self._listing("set")

    async def set_get(self, request: web.Request) -> web.Response:
        return self._found("set", request.match_info["name"])

    async def set_pause(self, request: web.Request) -> web.Response:
        return await self._pause(request, "set", request.match_info["name"])

    async def set_resume(self, request: web.Request) -> web.Response:
        return await self._resume("set", request.match_info["name"])

    async def accounts_list(self, _request: web.Request) -> web.Response:
        return self._listing("account")

    async def account_get(self, request: web.Request) -> web.Response:
        return self._found("account", request.match_info["account"])

    async def account_pause(self, request: web.Request) -> web.Response:
        # An unknown account is a 404 before its body is read, as it has always been.
        return await self._pause(request, "account", self._account(request))

    async def account_resume(self, request: web.Request) -> web.Response:
        return await self._resume("account", request.match_info["account"])

    # -- statistics -------------------------------------------------------------------------

    def _window(self, request: web.Request) -> set_stats.Window:
        return set_stats.Window.last_hours(self._clock(), parse_window(request.query.get("window")))

    async def set_stats(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        window = self._window(request)
        counts = await asyncio.to_thread(stats_ops.set_report, self._queue,
                                         self._services.live.config, name, window)
        return web.json_response({"configuration_set": name, "window": window.as_json(),
                                  **counts.as_json()})

    async def stats(self, request: web.Request) -> web.Response:
        report = await asyncio.to_thread(stats_ops.report, self._queue,
                                         self._services.live.config, self._window(request))
        return web.json_response({
            "window": report.window.as_json(),
            "total": report.total.as_json(),
            "configuration_sets": [{"configuration_set": row.configuration_set,
                                    **row.counts.as_json()} for row in report.sets],
            "accounts": [{"account": account, **counts.as_json()}
                         for account, counts in report.accounts],
        })

    # -- this node and its cluster ------------------------------------------------------------

    def _node(self) -> NodeControl:
        if self._services.node is None:
            _fail(404, "this relay does not offer node control")
        assert self._services.node is not None
        return self._services.node

    @staticmethod
    def _node_json(name: str, status: dict[str, Any]) -> web.Response:
        return web.json_response({**status, "node": name,
                                  "safe_to_stop": status["draining"]
                                  and nodes_ops.safe_to_stop(status)})

    async def node_get(self, _request: web.Request) -> web.Response:
        node = self._node()
        return self._node_json(node.name, await node.status())

    async def node_drain(self, _request: web.Request) -> web.Response:
        """As `smtprelay drain`: 421 to new connections, /readyz failing, the queue
        delivered; poll GET /node until safe_to_stop."""
        node = self._node()
        return self._node_json(node.name, await node.drain())

    async def node_undrain(self, _request: web.Request) -> web.Response:
        node = self._node()
        return self._node_json(node.name, await node.undrain())

    async def cluster_nodes(self, _request: web.Request) -> web.Response:
        """Every node from the heartbeats in the store; a relay that is one node lists
        itself."""
        node = self._node()
        if node.cluster is None:
            status = await node.status()
            return web.json_response({"items": [{**status, "node": node.name,
                                                 "alive": True}]})
        try:
            found = await asyncio.to_thread(node.cluster)
        except (RedisError, OSError) as exc:
            _fail(503, f"the store does not answer: {exc}")
        return web.json_response({"items": found})

    # -- IP pools and their warm-up --------------------------------------------------------

    def _warmup(self) -> WarmupCounters:
        if self._services.warmup is None:
            _fail(404, "this relay does not keep warm-up counters")
        assert self._services.warmup is not None
        return self._services.warmup

    async def _pool_items(self, pool: str | None) -> web.Response:
        try:
            found = await pool_ops.report(self._services.live.config, self._warmup(),
                                          now=self._clock(), pool=pool)
        except StateUnavailable as exc:
            _fail(503, f"the warm-up counters cannot be read: {exc}")
        return web.json_response({"items": [pool_ops.progress_json(p) for p in found]})

    async def ip_pools(self, _request: web.Request) -> web.Response:
        """Every pool address's warm-up: day, WarmupPercentage, WarmupStatus, today's
        caps and what it sent today per mailbox provider."""
        return await self._pool_items(None)

    async def ip_pool(self, request: web.Request) -> web.Response:
        return await self._pool_items(request.match_info["pool"])

    async def ip_warmup_put(self, request: web.Request) -> web.Response:
        """Put an address on a day of its warm-up (1 restarts it; days + 1 ends it)."""
        config = self._services.live.config
        pool = request.match_info["pool"]
        address = request.match_info["ip"]
        pool_ops.check_pool(config, pool)
        body = await read_body(request, {"day": int})
        day = body.get("day")
        if day is None or isinstance(day, bool):
            _fail(422, "day is required: a whole number, 1 for the warm-up's first day")
        try:
            changed = await pool_ops.set_day(config, self._warmup(), pool, address, day,
                                             now=self._clock())
        except StateUnavailable as exc:
            _fail(503, f"the warm-up counters cannot be changed: {exc}")
        log.info("admin api: ip pool=%s address=%s put on warm-up day %d", pool, address,
                 day)
        return web.json_response(pool_ops.progress_json(changed))

    # -- the live tail of events ------------------------------------------------------------

    async def events_stream(self, request: web.Request) -> web.StreamResponse:
        """NDJSON: the latest events, then with follow=true each new one as it is
        committed (`smtprelay events tail`); a blank line keeps a quiet stream alive,
        {"dropped": n} says n events were lost for reading too slowly."""
        tail = self._services.events
        if tail is None:
            _fail(404, "this relay does not offer the event tail")
        assert tail is not None
        wanted, recent, keep_going = tail_request(request)
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson; charset=utf-8",
            "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            async for item in event_tail.follow(tail, wanted, recent=recent,
                                                keep_going=keep_going,
                                                keepalive=self.keepalive):
                if item is None:
                    line = b"\n"
                elif isinstance(item, event_tail.Dropped):
                    line = json.dumps({"dropped": item.count}).encode() + b"\n"
                else:
                    line = json.dumps(item.as_json(), ensure_ascii=False,
                                      separators=(",", ":")).encode() + b"\n"
                await response.write(line)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the viewer went away: nothing to tell anyone
        return response

    # -- contact lists (SES's list management) ------------------------------------------------
    #
    # The lists are the configuration's; their contacts are the contact store's, which
    # the send path reads for every list message. A change here makes no Subscription
    # event: SES publishes one only for the recipient's own change (the unsubscribe
    # link or header).

    @ses_errors
    async def contact_lists(self, _request: web.Request) -> web.Response:
        found = contact_ops.lists(self._services.live.config)
        return web.json_response({"items": [item.as_json() for item in found]})

    @ses_errors
    async def contact_list(self, request: web.Request) -> web.Response:
        found = contact_ops.contact_list(self._services.live.config, request.match_info["list"])
        return web.json_response(found.as_json())

    @ses_errors
    async def contacts_list(self, request: web.Request) -> web.Response:
        config = self._services.live.config
        name = request.match_info["list"]
        settings = contact_ops.find_list(config, name)
        limit = parse_limit(request)
        status = _choice(request, "status", contact_ops.STATUSES)
        topic = request.query.get("topic")
        if topic is not None and _NAME.search(topic) is None:
            _fail(400, "topic must be a topic name: 1-64 letters, digits, '-' and '_'")
        use_default = _choice(request, "use_default", ("true", "false")) == "true"
        cursor = request.query.get("cursor")
        if cursor is not None and (len(cursor) > contact_ops.MAX_CURSOR
                                   or _CURSOR.search(cursor) is None):
            _fail(400, str(contact_ops.BadCursor()))
        where = contact_ops.make_filter(config, name, status=status, topic=topic,
                                        use_default=use_default)
        found = await asyncio.to_thread(contact_ops.page, self._services.contacts, config,
                                        name, where=where, limit=limit, after=cursor)
        return web.json_response(page_json(
            found, lambda contact: contact_ops.contact_json(contact, settings)))

    @ses_errors
    async def contact_get(self, request: web.Request) -> web.Response:
        config = self._services.live.config
        name = request.match_info["list"]
        settings = contact_ops.find_list(config, name)
        contact = await asyncio.to_thread(contact_ops.get, self._services.contacts, config,
                                          name, request.match_info["address"])
        return web.json_response(contact_ops.contact_json(contact, settings))

    @ses_errors
    async def contact_create(self, request: web.Request) -> web.Response:
        config = self._services.live.config
        name = request.match_info["list"]
        settings = contact_ops.find_list(config, name)  # an unknown list: 404 before the body
        body = await read_body(request, {"EmailAddress": str, **_CONTACT_FIELDS})
        address = body.get("EmailAddress")
        if address is None:
            _fail(422, "EmailAddress is required")
        # The document's pattern, which generated clients check too; the operation
        # checks the rest (and says why for an address the pattern lets through).
        if _ADDRESS.search(address) is None:
            _fail(422, "EmailAddress: " + (address_problem(address) or (
                f"{address!r} is not an email address a contact can have (one @, a domain, "
                "no spaces or control characters, at most 320 characters)")))
        made = await asyncio.to_thread(
            contact_ops.create, self._services.contacts, config, name, address,
            topics=contact_ops.preference_pairs(body.get("TopicPreferences", [])),
            unsubscribe_all=body.get("UnsubscribeAll", False),
            attributes=body.get("AttributesData"))
        log.info("admin api: contact list=%s added %s", name, made.address)
        return web.json_response(contact_ops.contact_json(made, settings), status=201)

    @ses_errors
    async def contact_update(self, request: web.Request) -> web.Response:
        config = self._services.live.config
        name = request.match_info["list"]
        settings = contact_ops.find_list(config, name)
        body = await read_body(request, _CONTACT_FIELDS)
        given = body.get("TopicPreferences")
        changed = await asyncio.to_thread(
            contact_ops.update, self._services.contacts, config, name,
            request.match_info["address"],
            topics=None if given is None else contact_ops.preference_pairs(given),
            replace_topics=given is not None, unsubscribe_all=body.get("UnsubscribeAll"),
            attributes=body.get("AttributesData"))
        log.info("admin api: contact list=%s changed %s (%s)", name, changed.address,
                 ", ".join(sorted(body)) or "nothing")
        return web.json_response(contact_ops.contact_json(changed, settings))

    @ses_errors
    async def contact_delete(self, request: web.Request) -> web.Response:
        config = self._services.live.config
        name = request.match_info["list"]
        address = await asyncio.to_thread(contact_ops.delete, self._services.contacts, config,
                                          name, request.match_info["address"])
        log.info("admin api: contact list=%s deleted %s", name, address)
        return web.json_response({"ContactListName": name, "EmailAddress": address,
                                  "Deleted": True})
