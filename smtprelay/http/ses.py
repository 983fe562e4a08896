"""The SES API on the relay's HTTP listener: SigV4 authentication with API keys, then the
operations of smtprelay.sesapi, answered in the shapes the AWS SDKs parse.

Every request is verified before anything else reads its body: the signature covers
the method, path, query, the signed headers and the body's hash (smtprelay.auth.sigv4),
with the secret of the access key it names (smtprelay.auth.api_keys). A key that is
unknown, disabled, or whose account is not configured gets AWS's answer for an unknown
key. Keys are kept for KEY_CACHE_SECONDS after a look-up, so a disabled key stops
working within that time and a busy client costs one look-up per interval, not one
per request.

The body is read here, up to `api.max_request_size`, rather than by aiohttp's own
limit, which stays small for every other route.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

from aiohttp import web

from smtprelay.auth import aws_errors, sigv4
from smtprelay.auth.api_keys import ApiKey, ApiKeyError, ApiKeyStore
from smtprelay.config import ConfigSource
from smtprelay.operations.pauses import PauseBook
from smtprelay.policy.contacts import ContactStore
from smtprelay.policy.quota import Quotas
from smtprelay.policy.suppression import SuppressionStore
from smtprelay.policy.templates import TemplateStore
from smtprelay.sesapi.errors import ApiError
from smtprelay.sesapi.send import Caller
from smtprelay.sesapi.v1 import SesV1
from smtprelay.sesapi.v2 import SesV2
from smtprelay.sesapi.v2_contacts import ContactsApi
from smtprelay.sesapi.v2_rest import Request as ApiRequest
from smtprelay.sesapi.v2_rest import RestOperation, Route
from smtprelay.sesapi.v2_sets import ConfigurationSetsApi
from smtprelay.sesapi.v2_suppression import SuppressionApi
from smtprelay.sesapi.v2_templates import SesV2Templates
from smtprelay.spool.set_stats import Counters
from smtprelay.submission.seam import SubmissionHandler

log = logging.getLogger("smtprelay.http.ses")

KEY_CACHE_SECONDS = 5.0
_KEY_CACHE_SIZE = 10_000
# Bodies above this are hashed in a thread (below it the hop costs more than it saves;
# at 22 KB the two are even, at 68 KB the thread is as fast or faster: bench/README.md,
# "The SES API against SMTP").
_HASH_IN_THREAD = 16 * 1024
# Request ids as AWS writes them (a UUID's shape): this process's random prefix and a
# count, since uuid4() per request was 5% of the API's CPU (bench/run_ses_api.py).
_ID_PREFIX = str(uuid.uuid4())[:24]
_ID_COUNT = itertools.count()


def _request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNT) % 16**12:012x}"


_V2 = "/v2/email"

Operation = Callable[[Caller, bytes], Awaitable[dict[str, Any]]]
# An operation past the gate: the caller, the request, its body, the request id.
Answer = Callable[[Caller, web.Request, bytes, str], Awaitable[web.Response]]


class _Refused(Exception):
    def __init__(self, response: aws_errors.ErrorResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _web(response: aws_errors.ErrorResponse) -> web.Response:
    return web.Response(status=response.status, body=response.body,
                        headers=dict(response.headers))


def ses_api(live: ConfigSource, handler: SubmissionHandler, quotas: Quotas,
            paused_accounts: Callable[[], Container[str]], keys: ApiKeyStore, *,
            suppression: SuppressionStore, contacts: ContactStore, pauses: PauseBook,
            templates: TemplateStore, counters: Counters | None = None) -> SesApi | None:
    """The SES API on `handler` (the pipeline SMTP sessions use), when api.sesv2 or
    api.sesv1 is on; the account's data on the process's own stores and pauses (the
    supervisor's, or a worker's; `templates` opens on first use, and its owner closes
    it); `counters`: where v1's GetSendStatistics reads (None: v1 off)."""
    api = live.config.api
    v1 = SesV1(live, handler, quotas, counters, templates=templates) \
        if api.sesv1 and counters is not None else None
    if not api.sesv2 and v1 is None:
        return None
    v2 = SesV2(live, handler, quotas, paused_accounts, templates=templates)
    return SesApi(live, v2, keys, v1=v1, routes=[
        *SesV2Templates(v2).routes(),
        *SuppressionApi(live, suppression).routes(),
        *ConfigurationSetsApi(live, pauses).routes(),
        *ContactsApi(live, contacts).routes()])


class SesApi:
    def __init__(self, live: ConfigSource, v2: SesV2, keys: ApiKeyStore,
                 clock: Callable[[], float] = time.time, *, v1: SesV1 | None = None,
                 routes: Sequence[Route] = ()) -> None:
        self._live = live
        self._v2 = v2
        self._v1 = v1
        self._routes = routes
        self._keys = keys
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, tuple[ApiKey, str] | None]] = OrderedDict()

    def add_routes(self, app: web.Application) -> None:
        if self._live.config.api.sesv2:
            app.router.add_post(f"{_V2}/outbound-emails",
                                self._json(self._v2.send_email))
            app.router.add_get(f"{_V2}/account",
                               self._json(lambda caller, _body: self._v2.get_account(caller)))
            for route in self._routes:
                app.router.add_route(route.method, _V2 + route.path, self._rest(route.operation))
            # Last: any other path under /v2 (a Create/DeleteConfigurationSet, an
            # operation not served) gets AWS's answer, not aiohttp's text 404 or 405.
            app.router.add_route("*", "/v2/{tail:.*}", _unknown_operation)
        if self._v1 is not None:
            # AWS takes the Query protocol's fields as a form body or as the query.
            app.router.add_post("/", self._gate("query", self._query))
            app.router.add_get("/", self._gate("query", self._query))

    # -- authentication -----------------------------------------------------------------

    async def _secret(self, access_key_id: str) -> tuple[ApiKey, str] | None:
        now = time.monotonic()
        cached = self._cache.get(access_key_id)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        found = await asyncio.to_thread(self._keys.lookup, access_key_id)
        self._cache[access_key_id] = (now, found)
        self._cache.move_to_end(access_key_id)
        if len(self._cache) > _KEY_CACHE_SIZE:
            # The least recently asked goes, not the whole cache: a stranger sending
            # made-up key ids must not make every tenant's key be read again.
            self._cache.popitem(last=False)
        return found

    async def _read(self, request: web.Request, protocol: aws_errors.Protocol,
                    request_id: str) -> bytes:
        """The whole body, up to api.max_request_size. (StreamReader.read(n) answers with
        what has arrived so far, which for a large body is only its start.)"""
        limit = self._live.config.api.max_request_size
        too_large = _Refused(aws_errors.render(
            protocol, "RequestEntityTooLarge" if protocol == "query" else
            "BadRequestException", f"The request is larger than {limit} bytes.", 413,
            request_id))
        if request.content_length is not None:
            if request.content_length > limit:
                raise too_large
            if request.content_length == 0:
                return b""  # (aiohttp's empty stream refuses even readexactly(0))
            try:
                return await request.content.readexactly(request.content_length)
            except asyncio.IncompleteReadError:
                raise _Refused(aws_errors.render(
                    protocol, "MalformedQueryString" if protocol == "query" else
                    "BadRequestException", "The body ended before its Content-Length.",
                    400, request_id)) from None
        chunks: list[bytes] = []  # chunked transfer encoding: until its end
        size = 0
        while chunk := await request.content.read(65536):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def _caller(self, request: web.Request, body: bytes,
                      protocol: aws_errors.Protocol, request_id: str) -> Caller:
        signed = sigv4.SignedRequest(
            method=request.method, path=request.raw_path.partition("?")[0],
            query=request.raw_path.partition("?")[2],
            headers=[(k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                     for k, v in request.raw_headers],
            body=body)
        config = self._live.config
        parsed = sigv4.parse(signed, now=self._clock(), max_skew=config.api.max_clock_skew)
        if isinstance(parsed, sigv4.SigV4Error):
            raise _Refused(parsed.render(protocol, request_id))
        try:
            found = await self._secret(parsed.access_key_id)
        except ApiKeyError as exc:
            log.error("ses api: cannot read API keys: %s", exc)
            raise _Refused(aws_errors.render(protocol, "InternalFailure",
                                             "The relay cannot read its API keys.", 500,
                                             request_id)) from None
        if found is None or found[0].disabled or found[0].account not in config.accounts:
            raise _Refused(sigv4.unknown_key().render(protocol, request_id))
        key, secret = found
        body_hash = None
        if len(body) > _HASH_IN_THREAD:
            # Hashing 50 KB is most of a request's CPU here: on another core, beside the
            # loop (hashlib lets go of the GIL).
            body_hash = await asyncio.to_thread(sigv4.payload_hash, body)
        failed = sigv4.verify(signed, parsed, secret, body_hash=body_hash)
        if failed is not None:
            raise _Refused(failed.render(protocol, request_id))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return Caller(account=key.account, access_key_id=key.access_key_id,
                      ip=request.remote or "", port=int(peer[1]) if peer else 0)

    def _gate(self, protocol: aws_errors.Protocol, answer: Answer
              ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """`answer` behind the signature check, its errors in `protocol`'s shape."""
        async def handle(request: web.Request) -> web.Response:
            request_id = _request_id()
            try:
                body = await self._read(request, protocol, request_id)
                caller = await self._caller(request, body, protocol, request_id)
                return await answer(caller, request, body, request_id)
            except _Refused as refused:
                return _web(refused.response)
            except ApiError as exc:
                log.info("ses api: %s %s refused: %s", request.method, request.path, exc)
                return _web(aws_errors.render(protocol, exc.code, exc.message, exc.status,
                                              request_id))
            except Exception:
                log.exception("ses api: %s %s failed", request.method, request.path)
                return _web(aws_errors.render(
                    protocol, "InternalFailure", "The relay failed to answer; its log says why.",
                    500, request_id))
        return handle

    # -- SES v2 (REST-JSON) ---------------------------------------------------------------

    def _json(self, operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        return self._rest(lambda caller, request: operation(caller, request.body))

    def _rest(self, operation: RestOperation
              ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """An operation that reads the path's parameters and the query too."""
        async def answer(caller: Caller, request: web.Request, body: bytes,
                         request_id: str) -> web.Response:
            result = await operation(caller, ApiRequest(
                body, dict(request.match_info), list(request.query.items())))
            return web.Response(body=json.dumps(result).encode(), headers={
                "Content-Type": "application/json", "x-amzn-RequestId": request_id})
        return self._gate("json", answer)

    # -- SES v1 (Query) -------------------------------------------------------------------

    async def _query(self, caller: Caller, request: web.Request, body: bytes,
                     request_id: str) -> web.Response:
        assert self._v1 is not None
        fields = body if request.method == "POST" else \
            request.raw_path.partition("?")[2].encode()
        xml = await self._v1.call(caller, fields, request_id)
        return web.Response(body=xml, headers={"Content-Type": "text/xml",
                                               "x-amzn-RequestId": request_id})


async def _unknown_operation(request: web.Request) -> web.Response:
    # Unsigned requests get it too: the API's operations are no secret.
    return _web(aws_errors.render_json(
        "UnknownOperationException", f"No operation at {request.method} {request.path}.",
        404, request_id=_request_id()))
