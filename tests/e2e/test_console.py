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
import time
from pathlib import Path
from typing import Any

import pytest

from smtprelay.state.warmup import NO_PROVIDER, day_of
from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, send
from tests.e2e.delivery_world import World
from tests.e2e.test_console_http import POOL_A, POOL_B, POOL_C, pool_world
from tests.e2e.test_tracking_browser import CDP, chromium
from tests.support import RunningRelay, need_program, relay_fixture

pytestmark = pytest.mark.peer

# An IP pool for the Delivery page: two addresses warming up, one warm (loopback
# addresses; this relay holds its mail, so they never send: their counts are made below).
POOL = {"addresses": [{"address": "127.0.1.2", "helo": "o2.pool.test"},
                      {"address": "127.0.1.3", "helo": "o3.pool.test"},
                      {"address": "127.0.1.4", "helo": "o4.pool.test", "warm": True}],
        "overflow": "wait"}

relay = relay_fixture(
    lambda tmp_path: {"configuration_sets": {
        "transactional": {"event_destinations": [
            {"name": "file", "type": "file", "path": str(tmp_path / "events.ndjson")}]},
        "marketing": {"delivery": {"ip_pool": "marketing"}}},
        "ip_pools": {"marketing": POOL}},
    env={ENV: SECRET}, http=ADMIN_HTTP)


def warm_up(relay: RunningRelay) -> None:
    """Today's counts of the pool's addresses, as deliveries from them make them: one on
    day 12 of its warm-up, near its cap to Google, one on its first day, and the warm
    one; through the relay's own warm-up counters."""
    counters = relay.relay.warmup
    today = day_of(time.time())

    async def count() -> None:
        await counters.set_start_day("127.0.1.2", today - 11)
        await counters.set_start_day("127.0.1.3", today)
        for address, provider, sent in [
                ("127.0.1.2", "google", 9000), ("127.0.1.2", "microsoft-consumer", 4200),
                ("127.0.1.2", NO_PROVIDER, 3100), ("127.0.1.3", "yahoo", 12),
                ("127.0.1.4", "google", 5400), ("127.0.1.4", "apple", 800)]:
            await counters.add(today, address, provider, sent)

    relay.call(count())


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


async def bar_width(cdp: CDP, address: str, provider: str) -> float:
    """The drawn width, in pixels, of an address's bar for a provider's count."""
    selector = (f"tr[data-address='{address}'] .provider-count[data-provider='{provider}'] "
                ".bar")
    return float(await cdp.evaluate(
        f"document.querySelector({json.dumps(selector)}).getBoundingClientRect().width"))


async def fill(cdp: CDP, selector: str, value: str) -> None:
    await cdp.evaluate(f"document.querySelector({json.dumps(selector)}).value = "
                       f"{json.dumps(value)}")


def test_an_operator_uses_the_console_in_a_browser(relay: RunningRelay, cred: Any,
                                                   artifacts: Path) -> None:
    need_program("chromium")
    warm_up(relay)
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
            page = await text(cdp)
            assert "example.net" in page and "Pool marketing" in page
            assert "day 12" not in page and "12 of 30" in page  # 127.0.1.2's day
            # The bars are drawn (console.js sets their width; the CSP allows no
            # inline style): Google's near its cap on 127.0.1.2.
            assert await bar_width(cdp, "127.0.1.2", "google") > 50
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


def test_the_delivery_page_shows_providers_held_back_in_a_browser(
        net: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, artifacts: Path) -> None:
    """Real deliveries from a pool's addresses: p1 suspended for one address by its
    rate-limit reply, throttled for another, sending from the third
    (tests/e2e/test_console_http.py's pool_world)."""
    need_program("chromium")
    monkeypatch.setenv(ENV, SECRET)
    relay = pool_world(net, tmp_path)
    base = f"http://127.0.0.1:{relay.http_port}"

    async def run() -> None:
        async with chromium(artifacts.parent / f"profile-{os.getpid()}-{id(net)}") as cdp:
            await cdp.call("Page.enable")
            await cdp.call("Emulation.setDeviceMetricsOverride", width=1400, height=900,
                           deviceScaleFactor=1, mobile=False)
            await go(cdp, f"{base}/console/delivery")
            await fill(cdp, "#token", SECRET)
            await cdp.click_and_load("#login")
            assert await cdp.evaluate("location.pathname") == "/console/delivery"
            async def lane(source: str) -> str:
                selector = f"#lanes tr[data-provider=p1][data-source='{source}']"
                return str(await cdp.evaluate(
                    f"document.querySelector(\"{selector}\").innerText"))

            shown = await lane(POOL_A)
            assert "suspended" in shown and "421 4.7.28 <b>unusual</b> rate" in shown
            assert "throttled to 50%" in await lane(POOL_B)
            assert "sending" in await lane(POOL_C)
            assert await bar_width(cdp, POOL_A, "p1") > 0  # 1 of the day's cap: a sliver
            # The provider table opens to show the operator's p1 and its rule.
            await cdp.evaluate("document.getElementById('provider-table').open = true")
            assert "p1-rate" in str(await cdp.evaluate(
                "document.querySelector('#provider-table tr[data-name=p1]').innerText"))
            await screenshot(cdp, artifacts / "09-delivery-shaping.png")

    asyncio.run(run())
    assert (artifacts / "09-delivery-shaping.png").stat().st_size > 5000
