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
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Container
from typing import Any

from aiohttp import web

from smtprelay.auth import aws_errors, sigv4
from smtprelay.auth.api_keys import ApiKey, ApiKeyError, ApiKeyStore
from smtprelay.config import ConfigSource
from smtprelay.policy.quota import Quotas
from smtprelay.policy.stores import template_store
from smtprelay.sesapi.errors import ApiError
from smtprelay.sesapi.v2 import Caller, SesV2
from smtprelay.sesapi.v2_templates import SesV2Templates
from smtprelay.submission.seam import SubmissionHandler

log = logging.getLogger("smtprelay.http.ses")

KEY_CACHE_SECONDS = 5.0
_V2 = "/v2/email"

Operation = Callable[[Caller, bytes], Awaitable[dict[str, Any]]]
RequestOperation = Callable[[Caller, bytes, web.Request], Awaitable[dict[str, Any]]]


class _Refused(Exception):
    def __init__(self, response: aws_errors.ErrorResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _web(response: aws_errors.ErrorResponse) -> web.Response:
    return web.Response(status=response.status, body=response.body,
                        headers=dict(response.headers))


def ses_api(live: ConfigSource, handler: SubmissionHandler, quotas: Quotas,
            paused_accounts: Callable[[], Container[str]], keys: ApiKeyStore) -> SesApi | None:
    """The SES API on `handler` (the pipeline SMTP sessions use), when api.sesv2 is on."""
    if not live.config.api.sesv2:
        return None
    # The template store opens on first use (the state database or Redis).
    return SesApi(live, SesV2(live, handler, quotas, paused_accounts,
                              templates=template_store(live.config)), keys)


class SesApi:
    def __init__(self, live: ConfigSource, v2: SesV2, keys: ApiKeyStore,
                 clock: Callable[[], float] = time.time) -> None:
        self._live = live
        self._v2 = v2
        self._keys = keys
        self._clock = clock
        self._cache: dict[str, tuple[float, tuple[ApiKey, str] | None]] = {}

    def add_routes(self, app: web.Application) -> None:
        if self._live.config.api.sesv2:
            app.router.add_post(f"{_V2}/outbound-emails",
                                self._json(self._v2.send_email))
            app.router.add_get(f"{_V2}/account",
                               self._json(lambda caller, _body: self._v2.get_account(caller)))
            self._add_template_routes(app)

    def _add_template_routes(self, app: web.Application) -> None:
        t = SesV2Templates(self._v2)
        one = f"{_V2}/templates/{{TemplateName}}"

        def name(request: web.Request) -> str:
            return request.match_info["TemplateName"]

        app.router.add_post(f"{_V2}/templates", self._json(t.create))
        app.router.add_get(f"{_V2}/templates", self._with_request(
            lambda caller, _body, request: t.list_templates(caller, request.query)))
        app.router.add_get(one, self._with_request(
            lambda caller, _body, request: t.get(caller, name(request))))
        app.router.add_put(one, self._with_request(
            lambda caller, body, request: t.update(caller, name(request), body)))
        app.router.add_delete(one, self._with_request(
            lambda caller, _body, request: t.delete(caller, name(request))))
        app.router.add_post(f"{one}/render", self._with_request(
            lambda caller, body, request: t.test_render(caller, name(request), body)))
        app.router.add_post(f"{_V2}/outbound-bulk-emails", self._json(t.send_bulk))

    # -- authentication -----------------------------------------------------------------

    async def _secret(self, access_key_id: str) -> tuple[ApiKey, str] | None:
        now = time.monotonic()
        cached = self._cache.get(access_key_id)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        found = await asyncio.to_thread(self._keys.lookup, access_key_id)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: made-up key ids must not grow it for ever
        self._cache[access_key_id] = (now, found)
        return found

    async def _read(self, request: web.Request, protocol: aws_errors.Protocol,
                    request_id: str) -> bytes:
        limit = self._live.config.api.max_request_size
        if request.content_length is not None and request.content_length > limit:
            raise _Refused(aws_errors.render(
                protocol, "RequestEntityTooLarge" if protocol == "query" else
                "BadRequestException", f"The request is larger than {limit} bytes.", 413,
                request_id))
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise _Refused(aws_errors.render(
                protocol, "BadRequestException", f"The request is larger than {limit} bytes.",
                413, request_id))
        return body

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
        failed = sigv4.verify(signed, parsed, secret)
        if failed is not None:
            raise _Refused(failed.render(protocol, request_id))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return Caller(account=key.account, access_key_id=key.access_key_id,
                      ip=request.remote or "", port=int(peer[1]) if peer else 0)

    # -- SES v2 (REST-JSON) ---------------------------------------------------------------

    def _with_request(self, operation: RequestOperation
                      ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """`_json` for an operation that reads the path or the query too."""
        async def handle(request: web.Request) -> web.Response:
            return await self._json(
                lambda caller, body: operation(caller, body, request))(request)
        return handle

    def _json(self, operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            request_id = str(uuid.uuid4())
            try:
                body = await self._read(request, "json", request_id)
                caller = await self._caller(request, body, "json", request_id)
                answer = await operation(caller, body)
            except _Refused as refused:
                return _web(refused.response)
            except ApiError as exc:
                log.info("ses api: %s %s refused: %s", request.method, request.path, exc)
                return _web(aws_errors.render_json(exc.code, exc.message, exc.status,
                                                   request_id=request_id))
            return web.Response(body=json.dumps(answer).encode(), headers={
                "Content-Type": "application/json", "x-amzn-RequestId": request_id})
        return handle
