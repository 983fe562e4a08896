"""A real browser reads a tracked message: the pixel loads, a click lands on the original page.

Debian's chromium runs headless and is driven over the DevTools protocol (CDP) with a
few lines of aiohttp websocket code, so no selenium or playwright is needed. The
message is built by smtprelay.transform.tracking exactly as the relay would send it, saved as
a local HTML file, and opened in the browser; the tracking links point at a real
HTTPServer and the original link at a landing page served by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from smtprelay.app.live import Live
from smtprelay.config import ConfigurationSetConfig, load_config
from smtprelay.http.server import HTTPServer
from smtprelay.transform import tokens, tracking
from tests.e2e.test_tracking_http import BROWSER, MESSAGE_ID, RecordingSink
from tests.support import base_config, free_port, need_program, write_config

pytestmark = pytest.mark.peer


class CDP:
    """The smallest DevTools client: send a command, wait for its answer or an event."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        async with asyncio.timeout(20):
            while True:
                message = await self._ws.receive_json()
                if message.get("id") == ident:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result
                self.events.append(message)

    async def event(self, method: str, after: int, timeout: float = 15) -> int:
        """The index in self.events of the first `method` event at or after `after`."""
        async with asyncio.timeout(timeout):
            while True:
                for index in range(after, len(self.events)):
                    if self.events[index].get("method") == method:
                        return index
                after = len(self.events)
                self.events.append(await self._ws.receive_json())

    async def click_and_load(self, selector: str) -> None:
        """Click an element that navigates; return once the new document has loaded.

        Polling with Runtime.evaluate during the navigation would race it: an evaluate
        still in flight in the old document when the browser commits the new one is
        answered "Inspected target navigated or closed". Page events need no answer
        from the old document, so waiting on them cannot lose that race. (Page.navigate
        answers only when the new document is about to commit, and commands sent after
        it go to that document, so it needs no such wait.)
        """
        start = len(self.events)
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")
        navigated = start
        while True:  # a subframe of the old page may navigate first
            navigated = await self.event("Page.frameNavigated", navigated)
            if "parentId" not in self.events[navigated]["params"]["frame"]:
                break
            navigated += 1
        await self.event("Page.loadEventFired", navigated)

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression,
                                 returnByValue=True, awaitPromise=True)
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression!r} still false after {timeout}s")


@contextlib.asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[CDP]:
    program = need_program("chromium")
    profile.mkdir()
    process = await asyncio.create_subprocess_exec(
        program, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--no-first-run", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", f"--user-agent={BROWSER}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                if process.returncode is not None:
                    raise AssertionError(f"chromium exited {process.returncode}")
                await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = json.loads(await response.text())
            [page] = [t for t in targets if t["type"] == "page"]
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield CDP(ws)
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class Landing:
    """The original site a tracked link leads to; remembers what it was asked."""

    seen: list[tuple[str, str | None]] = field(default_factory=list)

    async def page(self, request: web.Request) -> web.Response:
        self.seen.append((request.raw_path, request.headers.get("Referer")))
        return web.Response(text="<!DOCTYPE html><title>Landing</title><p>Welcome</p>",
                            content_type="text/html")


async def test_a_browser_opens_clicks_and_unsubscribes(tmp_path: Path) -> None:
    need_program("chromium")
    landing = Landing()
    app = web.Application()
    app.router.add_get("/landing", landing.page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    landing_port = runner.addresses[0][1]

    port = free_port()
    domain = f"127.0.0.1:{port}"
    path = write_config(tmp_path / "smtprelay.yaml", base_config(
        tmp_path / "var", http={"listen": [domain]}, tracking_domains={domain: {}}))
    config = load_config(path).config
    ring = tokens.KeyRing.generate()
    sink = RecordingSink()
    server = HTTPServer(config, lambda: True, keys=Live(config, keyring=ring), sink=sink)
    await server.start()
    try:
        original = f"http://127.0.0.1:{landing_port}/landing?x=1&y=%2F#section"
        html = (f'<!DOCTYPE html><html><body><p>Hello,</p><p><a href="'
                f'{original.replace("&", "&amp;")}">See the offer</a></p>'
                "<p><a href=\"{{unsubscribe_url}}\">Unsubscribe</a></p></body></html>")
        data = ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: offer\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
                + html + "\r\n").encode()
        settings = ConfigurationSetConfig.model_validate({
            "tracking": {"open": True, "click": True, "domain": domain, "https": False},
            "unsubscribe": {"one_click": True}})
        # Accepted a minute ago: a click now is not "too fast" for a person.
        result = tracking.Transformer(ring).apply(
            data, message_id=MESSAGE_ID, recipient_count=1, issued_at=time.time() - 60,
            settings=settings)
        assert len(result.links) == 1 and result.opens_tracked and result.unsubscribe_url
        parsed = email.message_from_bytes(result.data, policy=email.policy.default)
        body = parsed.get_body(("html",))
        assert body is not None
        page = tmp_path / "message.html"
        page.write_text(body.get_content(), encoding="utf-8")
        assert f"http://{domain}/c/" in page.read_text()

        async with chromium(tmp_path / "profile") as cdp:
            await cdp.call("Page.enable")
            await cdp.call("Page.navigate", url=page.as_uri())
            # The pixel: a loaded 1x1 image, and an Open for the sink.
            assert await cdp.wait_for(
                "document.images.length === 1 && document.images[0].complete"
                " && document.images[0].naturalWidth === 1") is True
            async with asyncio.timeout(10):
                while not sink.engaged_with:
                    await asyncio.sleep(0.05)
            [opened] = sink.engaged_with
            assert isinstance(opened.payload, tokens.OpenToken)
            assert (opened.machine, opened.user_agent, opened.ip) == (False, BROWSER,
                                                                      "127.0.0.1")

            await cdp.click_and_load("a")
            href = await cdp.wait_for(
                f"location.href.startsWith('http://127.0.0.1:{landing_port}/') && "
                "document.readyState === 'complete' && location.href")
            assert href == original
            assert landing.seen == [("/landing?x=1&y=%2F", None)]  # no token in a Referer
            clicks = [e for e in sink.engaged_with if isinstance(e.payload, tokens.ClickToken)]
            [click] = clicks
            assert isinstance(click.payload, tokens.ClickToken)
            assert click.payload.url == original and click.payload.link_index == 0
            assert (click.machine, click.machine_reason) == (False, None)
            assert click.host == "127.0.0.1"

            # Unsubscribe: the link shows a page; only its button unsubscribes.
            await cdp.call("Page.navigate", url=result.unsubscribe_url)
            await cdp.wait_for("document.readyState === 'complete' && "
                               "!!document.querySelector('form button')")
            assert sink.unsubscribed == []
            await cdp.click_and_load("form button")
            title = await cdp.wait_for("document.readyState === 'complete' && "
                                       "document.querySelector('h1') && "
                                       "document.querySelector('h1').textContent"
                                       " === 'You are unsubscribed' && document.title")
            assert title == "You are unsubscribed"
            [unsubscribed] = sink.unsubscribed
            assert isinstance(unsubscribed.payload, tokens.UnsubscribeToken)
            assert unsubscribed.payload.message_id == MESSAGE_ID
    finally:
        await server.stop()
        await runner.cleanup()
