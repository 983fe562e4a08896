"""A real browser uses the web console: Debian's chromium, headless, over the DevTools
protocol as tests/e2e/test_tracking_browser.py drives it.

It logs in, finds a message in the queue and retries it, pauses and resumes a set, adds
and removes a suppression entry, and sees an event arrive in the live tail. A
screenshot of each page is saved in the artifacts directory the test prints
(SMTPRELAY_TEST_ARTIFACTS, else a temporary directory), never in the work tree.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, send
from tests.e2e.test_tracking_browser import CDP, chromium
from tests.support import RunningRelay, need_program, relay_fixture

pytestmark = pytest.mark.peer

relay = relay_fixture(
    lambda tmp_path: {"configuration_sets": {
        "transactional": {"event_destinations": [
            {"name": "file", "type": "file", "path": str(tmp_path / "events.ndjson")}]},
        "marketing": {}}},
    env={ENV: SECRET}, http=ADMIN_HTTP)


@pytest.fixture
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("SMTPRELAY_TEST_ARTIFACTS")
    directory = Path(chosen) / "console" if chosen else tmp_path_factory.mktemp("console")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {directory}")
    return directory


async def screenshot(cdp: CDP, path: Path) -> None:
    """The whole page, as wide as the window, however long."""
    metrics = await cdp.call("Page.getLayoutMetrics")
    size = metrics["cssContentSize"]
    shot = await cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": 1400,
                                "height": min(4000, max(900, size["height"])), "scale": 1})
    path.write_bytes(base64.b64decode(shot["data"]))


async def go(cdp: CDP, url: str) -> None:
    start = len(cdp.events)
    await cdp.call("Page.navigate", url=url)
    await cdp.event("Page.loadEventFired", start)


async def text(cdp: CDP) -> str:
    return str(await cdp.evaluate("document.body.innerText"))


async def fill(cdp: CDP, selector: str, value: str) -> None:
    await cdp.evaluate(f"document.querySelector({json.dumps(selector)}).value = "
                       f"{json.dumps(value)}")


def test_an_operator_uses_the_console_in_a_browser(relay: RunningRelay, cred: Any,
                                                   artifacts: Path) -> None:
    need_program("chromium")
    code, reply = send(relay, cred, ["reader@example.net", "other@example.org"])
    assert code == 250
    message_id = reply.split()[-1]
    base = f"http://127.0.0.1:{relay.http_port}"

    async def run() -> None:
        async with chromium(artifacts.parent / f"profile-{os.getpid()}-{id(relay)}") as cdp:
            await cdp.call("Page.enable")
            await cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                           deviceScaleFactor=1, mobile=False)
            # Without a session every page leads to the login.
            await go(cdp, f"{base}/console/queue")
            assert await cdp.evaluate("location.pathname") == "/console/login"
            await screenshot(cdp, artifacts / "01-login.png")
            await fill(cdp, "#token", SECRET)
            await cdp.click_and_load("#login")
            assert await cdp.evaluate("location.pathname") == "/console/queue"

            # Overview: the charts are drawn (uPlot's canvases), the depth shown.
            await go(cdp, f"{base}/console/")
            assert await cdp.wait_for(
                "document.querySelectorAll('.chart canvas').length === 2") is True
            assert await cdp.evaluate("document.getElementById('depth').textContent") == "1"
            await screenshot(cdp, artifacts / "02-overview.png")

            # Queue: find the message by a recipient, open it, retry it.
            await go(cdp, f"{base}/console/queue")
            await fill(cdp, "input[name=recipient]", "reader@")
            await cdp.click_and_load("#queue-search button")
            assert message_id in await text(cdp)
            await screenshot(cdp, artifacts / "03-queue.png")
            await cdp.click_and_load(f"a[href='/console/queue/{message_id}']")
            await cdp.click_and_load("#retry")
            page = await text(cdp)
            assert "recipients are due now" in page and "reader@example.net" in page
            await screenshot(cdp, artifacts / "04-message.png")

            # Sets: pause with a reason, see it, resume.
            await go(cdp, f"{base}/console/sets")
            row = "#set-table tr[data-name=marketing]"
            await fill(cdp, f"{row} input[name=reason]", "list clean-up")
            await cdp.click_and_load(f"{row} button.pause")
            assert "marketing" in relay.relay.pauses
            assert "list clean-up" in await cdp.evaluate(
                f"document.querySelector('{row}').innerText")
            await screenshot(cdp, artifacts / "05-sets-paused.png")
            await cdp.click_and_load(f"{row} button.resume")
            assert "marketing" not in relay.relay.pauses
            assert "accepting" in await cdp.evaluate(
                f"document.querySelector('{row}').innerText")

            # Suppression: add an entry, see it listed, remove it.
            await go(cdp, f"{base}/console/suppression?account=acme")
            await fill(cdp, "#suppression-add input[name=address]", "gone@example.net")
            await cdp.click_and_load("#suppression-add button")
            listed = "#suppressed tr[data-address='gone@example.net']"
            assert await cdp.evaluate(f"!!document.querySelector(\"{listed}\")") is True
            await screenshot(cdp, artifacts / "06-suppression.png")
            await cdp.click_and_load(f"{listed} button.remove")
            assert await cdp.evaluate(f"!!document.querySelector(\"{listed}\")") is False

            await go(cdp, f"{base}/console/delivery")
            assert "example.net" in await text(cdp)
            await screenshot(cdp, artifacts / "07-delivery.png")

            # Events: the live tail shows a message sent while the page is open.
            await go(cdp, f"{base}/console/events")
            assert await cdp.wait_for(
                "document.getElementById('tail-status').textContent === 'live'") is True
            await asyncio.to_thread(send, relay, cred, ["live@example.com"])
            assert await cdp.wait_for(
                "Array.from(document.querySelectorAll('#tail tbody tr')).some("
                "row => row.innerText.includes('live@example.com'))") is True
            await screenshot(cdp, artifacts / "08-events.png")

    asyncio.run(run())
    for name in ("01-login", "02-overview", "03-queue", "04-message", "05-sets-paused",
                 "06-suppression", "07-delivery", "08-events"):
        shot = artifacts / f"{name}.png"
        assert shot.stat().st_size > 5000, shot  # a page, not a blank
