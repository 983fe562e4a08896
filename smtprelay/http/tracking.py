"""The tracking routes: click redirects, the open pixel, one-click unsubscribe, deep-link files.

``/c/<token>``, ``/o/<token>`` and ``/u/<token>`` are the URLs smtprelay.transform.tracking
puts into messages. A token is signed (smtprelay.transform.tokens), so answering needs no
database: the click URL comes out of the token, never out of the request, which is
why this can never be an open redirect. What happened is handed to an
EngagementSink (the events store), which turns it into SES Open, Click and
Subscription events and subscription changes (smtprelay.policy.contacts).

Decisions worth knowing:

- A bad token (tampered, truncated, unknown or retired key, another kind's token) on
  ``/c`` or ``/u`` gets a plain 404 that names nothing from the request. On ``/o``
  it still gets the GIF: a broken-image icon in someone's mail helps nobody, and an
  identical answer tells a prober nothing. It makes no event either way.
- Clicks and opens later than ``http.tracking_window`` after acceptance still work
  but make no event. Unsubscribing has no window: it must work as long as the key
  that signed the link verifies (RFC 8058 wants it to keep working; so does the law
  in many places).
- ``GET /u/<token>`` only shows a page with a button: mail scanners and prefetchers
  GET every link, and must not unsubscribe anyone. The button POSTs
  ``List-Unsubscribe=One-Click``, the same body mailbox providers send (RFC 8058).
- Only the hosts under ``tracking_domains`` answer these routes; any other Host gets
  a 404, so the relay is not a redirector for whatever name points at it.
- Machine opens and clicks are flagged (smtprelay.http.machine), never dropped.
- Every answer here says ``Cache-Control: no-store, private`` (a cached redirect or
  pixel would hide later opens and clicks, and one person's page must not be
  served to another), ``Referrer-Policy: no-referrer`` (the token must not leak to
  the landing page) and ``nosniff``; no cookies are ever set.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import html
import ipaddress
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web

from smtprelay.config import Config
from smtprelay.events.model import Engagement, EngagementSink
from smtprelay.http.machine import IPAddress, Kind, MachineDetector
from smtprelay.infra import metrics
from smtprelay.transform import tokens
from smtprelay.transform.keys import KeySource

log = logging.getLogger("smtprelay.http.tracking")

# The smallest transparent 1x1 GIF (GIF89a, a graphic control extension that marks
# colour 0 transparent, one LZW-coded pixel): 43 bytes.
PIXEL = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
         b"!\xf9\x04\x01\x00\x00\x00\x00"
         b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
TRACKING_HEADERS = {
    "Cache-Control": "no-store, private",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# The pages: no scripts, no external anything; forms may only post back here.
_PAGE_HEADERS = {
    **TRACKING_HEADERS,
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
ROUTES = {"c": "click", "o": "open", "u": "unsubscribe"}
# The whole request target, raw, as the client sent it: one route letter, one token
# of the base64url alphabet, an optional query (ignored). Anything else (dot
# segments, percent-encoded bytes, double slashes, a trailing slash) is a 404.
_TARGET = re.compile(rf"/([cou])/([A-Za-z0-9_-]{{1,{tokens.MAX_TOKEN_CHARS}}})(?:\?[^#]*)?")
WELL_KNOWN = {
    "/.well-known/apple-app-site-association": "apple_app_site_association",
    "/.well-known/assetlinks.json": "assetlinks",
}
RETRY_AFTER = 60  # seconds, for an unsubscribe the sink could not record


# --- client address -------------------------------------------------------------------

def parse_ip(text: str) -> IPAddress | None:
    """An address as written in a socket peer, X-Forwarded-For or Forwarded entry.

    Accepts "1.2.3.4", "1.2.3.4:5678", "2001:db8::1", "[2001:db8::1]:443" and quoted
    forms; IPv4-mapped IPv6 becomes IPv4. None for anything else ("unknown",
    obfuscated identifiers, garbage).
    """
    text = text.strip().strip('"').strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_for(value: str) -> list[str]:
    """The for= values of a Forwarded header (RFC 7239), in order."""
    found: list[str] = []
    for element in value.split(","):
        for pair in element.split(";"):
            name, eq, item = pair.partition("=")
            if eq and name.strip().lower() == "for":
                found.append(item.strip())
    return found


def client_ip(peer: IPAddress | None, headers: Iterable[tuple[str, str]],
              trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
              ) -> IPAddress | None:
    """Who made the request: the socket peer, or behind trusted proxies the client they name.

    Only a peer in `trusted` is believed. Its X-Forwarded-For (or, without one,
    Forwarded: for=) is read right to left, skipping proxies that are trusted too;
    the first address that is not a trusted proxy is the client. Everything left of
    it was written by that client and could say anything. An entry that is not an
    address stops the walk at the last proxy that wrote it.
    """
    def is_trusted(address: IPAddress) -> bool:
        return any(address in network for network in trusted)

    if peer is None or not trusted or not is_trusted(peer):
        return peer
    xff: list[str] = []
    fwd: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "x-forwarded-for":
            xff.extend(value.split(","))  # repeated fields join in order (RFC 9110 5.3)
        elif lowered == "forwarded":
            fwd.extend(_forwarded_for(value))
    client = peer
    for entry in reversed(xff or fwd):
        address = parse_ip(entry)
        if address is None:
            break
        client = address
        if not is_trusted(address):
            break
    return client


def split_host(value: str) -> tuple[str, str]:
    """A Host header as (host[:port] as sent, host alone), lower case, no final dot."""
    value = value.strip().lower()
    if value.startswith("[") and "]" in value:
        end = value.index("]") + 1
        host, rest = value[:end], value[end:]
    else:
        host, sep, port = value.partition(":")
        rest = sep + port
    host = host.rstrip(".")
    return host + rest, host


# --- pages -----------------------------------------------------------------------------

_STYLE = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:34em;"
          "margin:3em auto;padding:0 1em;line-height:1.5;color:#222}"
          "button{font:inherit;padding:.6em 1.4em;cursor:pointer}")


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"robots\" content=\"noindex, nofollow\">"
            f"<title>{title}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n<h1>{title}</h1>\n{body}\n</body></html>\n")


# No action attribute: the form posts to the page's own URL, whatever proxy path or
# scheme it was reached through. The default enctype sends exactly
# "List-Unsubscribe=One-Click", the RFC 8058 body.
CONFIRM_PAGE = _page(
    "Unsubscribe",
    "<p>Do you want to stop receiving these emails at this address?</p>\n"
    "<form method=\"post\">\n"
    "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n"
    "<button type=\"submit\">Unsubscribe</button>\n"
    "</form>")


def confirm_page(config: Config, payload: tokens.UnsubscribeToken) -> str:
    """The confirmation page; for a contact list's message it names the topic (or the
    list) the button leaves, as the list describes it. Everything shown is escaped."""
    settings = None if payload.contact_list is None else \
        config.contact_lists.get(payload.contact_list)
    if settings is None:
        return CONFIRM_PAGE
    topic = None if payload.topic is None else settings.topic(payload.topic)
    if topic is not None:
        what = f"<strong>{html.escape(topic.display_name)}</strong> emails"
        about = topic.description
    else:
        what = "any of these emails"
        about = settings.description
    return _page(
        "Unsubscribe",
        f"<p>Do you want to stop receiving {what} at this address?</p>\n"
        + (f"<p>{html.escape(about)}</p>\n" if about else "")
        + "<form method=\"post\">\n"
        "<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\n"
        "<button type=\"submit\">Unsubscribe</button>\n"
        "</form>")


DONE_PAGE = _page(
    "You are unsubscribed",
    "<p>This address will not receive these emails any more.</p>")


def _not_found() -> web.Response:
    return web.Response(status=404, text="Link not found\n", headers=TRACKING_HEADERS)


def _safe_location(url: str) -> str:
    """The URL as it is, unless it holds bytes a header cannot (never in what we issue)."""
    if url.isascii() and url.isprintable() and " " not in url:
        return url
    return urllib.parse.quote(url, safe="".join(map(chr, range(0x21, 0x7f))))


def _one_click(content_type: str, header: str, body: bytes) -> bool:
    """Whether a POST body carries List-Unsubscribe=One-Click (RFC 8058 3.1).

    Both encodings a form can use; other fields may come along. The body is already
    read and bounded, so multipart is parsed in memory (no temporary files).
    """
    if content_type == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, max_num_fields=100)
        return ("List-Unsubscribe", "One-Click") in pairs
    if content_type == "multipart/form-data":
        parser = email.parser.BytesParser(policy=email.policy.HTTP)
        message = parser.parsebytes(b"Content-Type: " + header.encode("latin-1", "replace")
                                    + b"\r\n\r\n" + body)
        if not message.is_multipart():
            return False
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "List-Unsubscribe":
                value = part.get_payload(decode=True)
                if isinstance(value, bytes) and value.strip() == b"One-Click":
                    return True
        return False
    return False


# --- the routes ---------------------------------------------------------------------

class Tracking:
    """The tracking routes of one HTTP server: sink and rules fixed at start; the keys
    are read from `keys` for every token, so a reload (after `smtprelay tracking-keys
    rotate`) applies at once."""

    def __init__(self, config: Config, keys: KeySource,
                 sink: EngagementSink | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._keys = keys
        self._sink = sink
        self._clock = clock
        self._window = config.http.tracking_window
        self._read_timeout = config.http.read_timeout
        self._trusted = [ipaddress.ip_network(n) for n in config.http.trusted_proxies]
        self._detector = MachineDetector(config.http.machine_detection)
        # Host header value (with or without port) -> the tracking domain's key.
        self._hosts: dict[str, str] = {}
        for key in config.tracking_domains:
            self._hosts[key] = key
            self._hosts.setdefault(key.partition(":")[0], key)
        self._files: dict[tuple[str, str], bytes] = {}

    def add_routes(self, app: web.Application) -> None:
        for letter, kind in ROUTES.items():
            path = f"/{letter}/{{token}}"
            if kind == "unsubscribe":
                app.router.add_get(path, self._unsubscribe_page)
                app.router.add_post(path, self._unsubscribe)
            else:
                app.router.add_get(path, self._click if kind == "click" else self._open)
        for path in WELL_KNOWN:
            app.router.add_get(path, self._well_known)

    async def load_files(self) -> None:
        """Read the deep-link files now: a missing or broken one stops the start, named."""
        self._files = await asyncio.to_thread(self._read_files)

    def _read_files(self) -> dict[tuple[str, str], bytes]:
        files: dict[tuple[str, str], bytes] = {}
        for domain, settings in self._config.tracking_domains.items():
            for path, key in WELL_KNOWN.items():
                source: Path | None = getattr(settings, key)
                if source is None:
                    continue
                where = f"tracking_domains.{domain}.{key}: {source}"
                try:
                    data = source.read_bytes()
                    json.loads(data)
                except OSError as exc:
                    raise OSError(f"{where}: {exc.strerror or exc}") from None
                except ValueError as exc:
                    raise OSError(f"{where}: not JSON ({exc})") from None
                files[(domain, path)] = data
        return files

    # --- helpers -----------------------------------------------------------------------

    def _domain(self, request: web.Request) -> str | None:
        """The tracking domain (config key) the request is for, or None."""
        full, host = split_host(request.headers.get("Host", ""))
        return self._hosts.get(full) or self._hosts.get(host)

    def _target(self, request: web.Request, letter: str) -> str | None:
        """The token, when the raw request target is exactly /<letter>/<token>[?query]."""
        match = _TARGET.fullmatch(request.raw_path)
        if match is None or match.group(1) != letter:
            return None
        return match.group(2)

    def _decode(self, token: str | None, kind: Kind, now: float) -> tokens.Payload | None:
        if token is None:
            return None
        try:
            payload = tokens.decode(token, self._keys.keyring, now)
        except tokens.InvalidToken as exc:
            log.info("tracking token refused kind=%s reason=%s", kind, exc.reason)
            return None
        wanted = {"click": tokens.ClickToken, "open": tokens.OpenToken,
                  "unsubscribe": tokens.UnsubscribeToken}[kind]
        if not isinstance(payload, wanted):
            log.info("tracking token refused kind=%s reason=wrong kind", kind)
            return None
        return payload

    def _engagement(self, request: web.Request, payload: tokens.Payload, kind: Kind,
                    now: float) -> Engagement:
        peer = parse_ip(request.remote or "")
        ip = client_ip(peer, request.headers.items(), self._trusted)
        user_agent = request.headers.get("User-Agent", "")
        verdict = self._detector.judge(kind=kind, method=request.method, user_agent=user_agent,
                                       ip=ip, elapsed=now - payload.issued_at)
        _, host = split_host(request.headers.get("Host", ""))
        return Engagement(payload=payload, at=now, ip="" if ip is None else str(ip),
                          user_agent=user_agent, host=host, machine=verdict.machine,
                          machine_reason=verdict.reason)

    async def _record(self, request: web.Request, payload: tokens.Payload, kind: Kind,
                      now: float) -> None:
        """Hand an open or click to the sink, unless it is past the tracking window."""
        if now - payload.issued_at > self._window:
            metrics.TRACKING_REQUESTS.labels(kind, "expired").inc()
            return
        engagement = self._engagement(request, payload, kind, now)
        metrics.TRACKING_REQUESTS.labels(kind, "machine" if engagement.machine else "ok").inc()
        if self._sink is None:
            return
        try:
            await self._sink.engaged(engagement)
        except Exception:
            # The person still gets their page; the event is the sink's to lose.
            log.exception("recording a %s failed msg=%s", kind, payload.message_id)

    # --- handlers ----------------------------------------------------------------------

    async def _click(self, request: web.Request) -> web.StreamResponse:
        if self._domain(request) is None:
            return _not_found()
        now = self._clock()
        payload = self._decode(self._target(request, "c"), "click", now)
        if not isinstance(payload, tokens.ClickToken):
            metrics.TRACKING_REQUESTS.labels("click", "invalid").inc()
            return _not_found()
        await self._record(request, payload, "click", now)
        return web.Response(status=302, headers={
            **TRACKING_HEADERS, "Location": _safe_location(payload.url)})

    async def _open(self, request: web.Request) -> web.StreamResponse:
        token = self._target(request, "o")
        if self._domain(request) is None or token is None:
            return _not_found()
        now = self._clock()
        payload = self._decode(token, "open", now)
        if payload is None:
            metrics.TRACKING_REQUESTS.labels("open", "invalid").inc()
        else:
            await self._record(request, payload, "open", now)
        return web.Response(body=PIXEL, content_type="image/gif", headers=TRACKING_HEADERS)

    async def _unsubscribe_page(self, request: web.Request) -> web.StreamResponse:
        if self._domain(request) is None:
            return _not_found()
        payload = self._decode(self._target(request, "u"), "unsubscribe", self._clock())
        if not isinstance(payload, tokens.UnsubscribeToken):
            metrics.TRACKING_REQUESTS.labels("unsubscribe", "invalid").inc()
            return _not_found()
        return web.Response(text=confirm_page(self._config, payload), content_type="text/html",
                            headers=_PAGE_HEADERS)

    async def _unsubscribe(self, request: web.Request) -> web.StreamResponse:
        if self._domain(request) is None:
            return _not_found()
        now = self._clock()
        payload = self._decode(self._target(request, "u"), "unsubscribe", now)
        if payload is None:
            metrics.TRACKING_REQUESTS.labels("unsubscribe", "invalid").inc()
            return _not_found()
        try:
            async with asyncio.timeout(self._read_timeout):
                body = await request.read()  # at most the app's client_max_size
        except TimeoutError:
            return web.Response(status=408, text="Request body too slow\n",
                                headers={**TRACKING_HEADERS, "Connection": "close"})
        header = request.headers.get("Content-Type", "")
        if not _one_click(request.content_type, header, body):
            return web.Response(
                status=400, headers=TRACKING_HEADERS,
                text="To unsubscribe, POST the form field List-Unsubscribe=One-Click "
                     "(RFC 8058), or open this link in a browser and press the button.\n")
        engagement = self._engagement(request, payload, "unsubscribe", now)
        recorded = False
        if self._sink is not None:
            try:
                recorded = await self._sink.unsubscribe(engagement)
            except Exception:
                log.exception("recording an unsubscribe failed msg=%s", payload.message_id)
        if not recorded:
            return web.Response(
                status=503, text="Unsubscribing is not possible right now; please try "
                                 "again in a few minutes.\n",
                headers={**TRACKING_HEADERS, "Retry-After": str(RETRY_AFTER)})
        metrics.TRACKING_REQUESTS.labels("unsubscribe", "ok").inc()
        log.info("unsubscribed msg=%s ip=%s", payload.message_id, engagement.ip)
        return web.Response(text=DONE_PAGE, content_type="text/html", headers=_PAGE_HEADERS)

    async def _well_known(self, request: web.Request) -> web.StreamResponse:
        domain = self._domain(request)
        data = None if domain is None else self._files.get((domain, request.path))
        if data is None or request.raw_path.partition("?")[0] != request.path:
            return web.Response(status=404, text="Not found\n", headers=TRACKING_HEADERS)
        # Apple and Google fetch these through their own CDNs, which may cache them.
        return web.Response(body=data, content_type="application/json", headers={
            "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
