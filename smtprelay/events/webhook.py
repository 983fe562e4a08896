"""Webhook event destinations: each event POSTed as SES JSON, signed with HMAC-SHA256.

One ``aiohttp`` session per destination (keep-alive), one request at a time, so the
receiver sees the events in outbox order. A request counts as delivered only on a 2xx:
a redirect is a misconfigured URL (it is not followed, since the body would be sent
somewhere the operator did not name), and 4xx, 5xx, timeouts and connection errors are
failures the publisher retries with backoff.

The signature (Stripe's scheme) lets a receiver check both the sender and the age of a
request: ``X-Smtprelay-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``
with the timestamp in ``X-Smtprelay-Timestamp``; docs/events.md ("Webhooks") shows how
to verify it. The secret is read from the environment once, and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Final

import aiohttp
from yarl import URL

from smtprelay import __version__
from smtprelay.config import EventDestinationConfig
from smtprelay.events.notifications import Renderer
from smtprelay.spool.outbox import StoredEvent

USER_AGENT: Final = f"smtprelay/{__version__}"
# An answer's body is read (so the connection can be reused) up to this much, then the
# connection is dropped instead: receivers should answer with an empty body anyway.
_MAX_ANSWER_BYTES = 64 * 1024
# Keep-alive connections idle this long are closed by us, before most servers do it.
_KEEPALIVE_SECONDS = 15.0

# Why a request failed, as counted in smtprelay_webhook_failures_total{reason}.
REASONS: Final = ("status_5xx", "status_4xx", "redirect", "timeout", "connect")


class WebhookFailure(Exception):
    """A request that did not end in a 2xx; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Smtprelay-Signature value for `body` sent at `timestamp` (Unix seconds)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def shown_url(url: str | URL) -> str:
    """The URL as logs may show it: no user:password, query or fragment (they can hold
    tokens); the host, port and path say which receiver it is."""
    parsed = URL(url) if isinstance(url, str) else url
    if not parsed.is_absolute():
        return str(parsed.with_query(None).with_fragment(None))
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


class WebhookDestination:
    """POSTs events to one receiver. Create and use it inside the event loop."""

    def __init__(self, settings: EventDestinationConfig, renderer: Renderer) -> None:
        assert settings.url is not None and settings.secret_env is not None
        self._renderer = renderer
        self.url = URL(settings.url)
        self.shown_url = shown_url(self.url)
        # load_config refuses an unset or empty variable, so this is there; read once,
        # so a later change of the environment cannot half-apply.
        self._secret = os.environ.get(settings.secret_env, "").encode("utf-8")
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=_KEEPALIVE_SECONDS)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout,
                headers={"User-Agent": USER_AGENT}, auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, event: StoredEvent) -> None:
        """Deliver one event; raise WebhookFailure unless the receiver answered 2xx."""
        await self.post_message(event.event_id, self._renderer.body(event),
                                self._renderer.headers(event))

    async def post_message(self, message_id: str, body: bytes,
                           extra: dict[str, str]) -> None:
        """POST `body` with the headers `extra`, `message_id` in X-Smtprelay-Event-Id:
        an event, or SNS's SubscriptionConfirmation, which is not one."""
        try:
            await self._post_once(message_id, body, extra)
        except aiohttp.ServerDisconnectedError:
            # The receiver closed a kept-alive connection just as we reused it (a race
            # every keep-alive client meets); a fresh connection settles it at once.
            await self._post_once(message_id, body, extra)

    async def _post_once(self, event_id: str, body: bytes, extra: dict[str, str]) -> None:
        timestamp = str(int(time.time()))
        headers = {
            **extra,
            "X-Smtprelay-Event-Id": event_id,
            "X-Smtprelay-Timestamp": timestamp,
            "X-Smtprelay-Signature": signature(self._secret, timestamp, body),
        }
        try:
            async with self._client().post(self.url, data=body, headers=headers,
                                           allow_redirects=False) as response:
                status = response.status
                location = response.headers.get("Location")
                await _drain(response)
        except aiohttp.ServerDisconnectedError:
            raise
        except TimeoutError as exc:
            raise WebhookFailure("timeout", f"no answer within {self._timeout.total:g}s"
                                 ) from exc
        except aiohttp.ClientError as exc:
            raise WebhookFailure("connect", _connect_error(exc)) from exc
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            target = shown_url(self.url.join(URL(location))) if location else "(none)"
            raise WebhookFailure(
                "redirect", f"HTTP {status} redirect to {target} not followed; set url to "
                "the address that answers the POST itself")
        reason = "status_4xx" if 400 <= status < 500 else "status_5xx"
        raise WebhookFailure(reason, f"HTTP {status}")


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read the answer's body so the connection can carry the next request."""
    remaining = _MAX_ANSWER_BYTES
    while remaining > 0:
        chunk = await response.content.read(min(remaining, 16384))
        if not chunk:
            return
        remaining -= len(chunk)
    response.close()  # too long to be worth reading: drop this connection instead


def _connect_error(exc: aiohttp.ClientError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not accepted: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        # aiohttp's text repeats the host and port; the OS's reason is what is new.
        # Its strerror may be asyncio's "Connect call failed (addr)"; errno says why.
        error = exc.os_error
        reason = (os.strerror(error.errno) if error.errno else
                  error.strerror or str(error) or error.__class__.__name__)
        return f"cannot connect: {reason}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"bad answer: {exc.message}"
    return f"connection failed: {exc.__class__.__name__} {exc}".strip()
