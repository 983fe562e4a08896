"""The web console over real HTTP: the login, its session cookie, CSRF on every change,
and each page's work, against a relay running in this process (tests/support.py).

A browser drives the same console in tests/e2e/test_console.py; here an aiohttp client
with a cookie jar plays it, so each refusal can be checked exactly.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from smtprelay.http import admin_auth
from smtprelay.http.console import Console
from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, Admin, send
from tests.e2e.delivery_world import World
from tests.sinks import Script
from tests.support import RunningRelay, message, relay_fixture

relay = relay_fixture(
    lambda tmp_path: {"configuration_sets": {
        "transactional": {"event_destinations": [
            {"name": "file", "type": "file", "path": str(tmp_path / "events.ndjson")}]},
        "marketing": {}}},
    env={ENV: SECRET}, http=ADMIN_HTTP)

PAGES = ["/console/", "/console/queue", "/console/queue/some-id", "/console/sets",
         "/console/suppression", "/console/delivery", "/console/events",
         "/console/events/stream", "/console/suppression/export?account=acme",
         "/console/suppression/import/nope"]
CHANGES = ["/console/queue/some-id/retry", "/console/sets/transactional/pause",
           "/console/accounts/acme/pause", "/console/suppression/add",
           "/console/suppression/remove", "/console/suppression/import?account=acme",
           "/console/logout"]


def console(relay: RunningRelay) -> Console:
    assert relay.relay.http is not None and relay.relay.http.console is not None
    return relay.relay.http.console


class Browser:
    """An HTTP client with a cookie jar, as a browser keeps one for the console."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self.csrf = ""

    async def get(self, path: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
        async with self.session.get(self.base + path, allow_redirects=False,
                                    **kwargs) as answer:
            return answer.status, dict(answer.headers), await answer.text()

    async def post(self, path: str, data: dict[str, str] | None = None, *,
                   csrf: bool = True, **kwargs: Any) -> tuple[int, dict[str, str], str]:
        form = dict(data or {})
        if csrf:
            form["csrf"] = self.csrf
        async with self.session.post(self.base + path, data=form, allow_redirects=False,
                                     **kwargs) as answer:
            return answer.status, dict(answer.headers), await answer.text()

    async def login(self, token: str = SECRET) -> tuple[int, dict[str, str], str]:
        status, _, page = await self.get("/console/login?next=/console/queue")
        assert status == 200
        login_csrf = _field(page, "csrf")
        answer = await self.post("/console/login", {"token": token, "csrf": login_csrf,
                                                    "next": _field(page, "next")}, csrf=False)
        if answer[0] == 303:
            status, _, page = await self.get("/console/")
            assert status == 200, page
            self.csrf = _meta_csrf(page)
        return answer


def _field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no {name} field in {page[:500]}"
    return found.group(1).replace("&amp;", "&")


def _meta_csrf(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]*)"', page)
    assert found is not None
    return found.group(1)


async def browser(relay: RunningRelay) -> AsyncIterator[Browser]:
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1, as a browser keeps them
    async with aiohttp.ClientSession(cookie_jar=jar,
                                     timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield Browser(session, f"http://127.0.0.1:{relay.http_port}")


def run(relay: RunningRelay, test: Any) -> None:
    async def go() -> None:
        async for b in browser(relay):
            await test(b)

    asyncio.run(go())


def test_every_page_and_change_without_a_session_goes_to_the_login(relay: RunningRelay
                                                                   ) -> None:
    async def test(b: Browser) -> None:
        for path in ["/", "/console"]:
            status, headers, _ = await b.get(path)
            assert (status, headers["Location"]) == (303, "/console/"), path
        for path in PAGES:
            status, headers, _ = await b.get(path)
            assert status == 303, path
            assert headers["Location"].startswith("/console/login?next="), path
        for path in CHANGES:
            status, headers, _ = await b.post(path, {"reason": "x"}, csrf=False)
            assert status == 303 and headers["Location"].startswith("/console/login"), path
        # Nothing changed: the set still accepts mail.
        sets = relay.relay.pauses
        assert "transactional" not in sets
        # The login page and the static files need no session.
        status, headers, page = await b.get("/console/login")
        assert status == 200 and 'name="token"' in page
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        status, headers, script = await b.get("/console/static/uPlot.iife.min.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert "uPlot" in script
        assert (await b.get("/console/static/../console.py"))[0] == 404

    run(relay, test)


def test_login_sets_a_strict_httponly_cookie_and_never_logs_the_token(
        relay: RunningRelay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtprelay")

    async def test(b: Browser) -> None:
        status, _, page = await b.login("not-the-token-at-all-0123456789")
        assert status == 401 and "not accepted" in page
        assert (await b.get("/console/"))[0] == 303
        status, headers, _ = await b.login()
        assert status == 303 and headers["Location"] == "/console/queue"
        cookie = SimpleCookie(headers["Set-Cookie"])["smtprelay_console"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/console" and not cookie["secure"]  # plain HTTP here
        assert int(cookie["max-age"]) <= 8 * 3600
        assert (await b.get("/console/queue"))[0] == 200
        # A login form without its own token (made elsewhere) is refused.
        status, _, _ = await b.post("/console/login", {"token": SECRET}, csrf=False)
        assert status == 403

    run(relay, test)
    assert "refused a login" in caplog.text and "login from 127.0.0.1" in caplog.text
    assert SECRET not in caplog.text
    assert "not-the-token-at-all" not in caplog.text


def test_a_signed_token_logs_in_until_it_expires(relay: RunningRelay) -> None:
    clock = console(relay).sessions
    now = time.time()
    token = admin_auth.issue(SECRET, now + 120)

    async def test(b: Browser) -> None:
        status, headers, _ = await b.login(token)
        assert status == 303
        max_age = int(SimpleCookie(headers["Set-Cookie"])["smtprelay_console"]["max-age"])
        assert 100 <= max_age <= 120  # the token's expiry, not the 8 hours
        assert (await b.get("/console/sets"))[0] == 200
        clock.clock = lambda: now + 121
        try:
            status, headers, _ = await b.get("/console/sets")
            assert status == 303 and headers["Location"].startswith("/console/login")
            # An expired signed token cannot log in again.
            assert (await b.login(token))[0] == 401
        finally:
            clock.clock = time.time

    run(relay, test)


def test_a_session_expires_and_logout_ends_it(relay: RunningRelay) -> None:
    sessions = console(relay).sessions

    async def test(b: Browser) -> None:
        await b.login()
        assert (await b.get("/console/delivery"))[0] == 200
        later = time.time() + sessions.lifetime + 1
        sessions.clock = lambda: later
        try:
            assert (await b.get("/console/delivery"))[0] == 303
        finally:
            sessions.clock = time.time
        await b.login()
        status, headers, _ = await b.post("/console/logout")
        assert (status, headers["Location"]) == (303, "/console/login")
        assert (await b.get("/console/delivery"))[0] == 303

    run(relay, test)


def test_a_change_without_the_csrf_token_is_refused(relay: RunningRelay,
                                                    cred: Any) -> None:
    code, reply = send(relay, cred, ["someone@example.net"])
    assert code == 250
    message_id = reply.split()[-1]

    async def test(b: Browser) -> None:
        await b.login()
        for path, form in [(f"/console/queue/{message_id}/delete", {}),
                           ("/console/sets/transactional/pause", {"reason": "x"}),
                           ("/console/suppression/add", {"account": "acme", "reason":
                                                         "BOUNCE", "address": "a@b.example"}),
                           ("/console/logout", {})]:
            status, _, page = await b.post(path, form, csrf=False)
            assert status == 403 and "CSRF" in page, path
            status, _, _ = await b.post(path, {**form, "csrf": "forged"}, csrf=False)
            assert status == 403, path
        # A fetch() without the header, and one with someone else's token.
        status, _, _ = await b.post("/console/suppression/import?account=acme", csrf=False,
                                    headers={"X-CSRF-Token": "x" * 43})
        assert status == 403
        assert (await b.get(f"/console/queue/{message_id}"))[0] == 200  # not deleted
        assert "transactional" not in relay.relay.pauses
        assert (await b.get("/console/"))[0] == 200  # still logged in

    run(relay, test)


def test_queue_search_history_retry_hold_release_and_delete(relay: RunningRelay,
                                                            cred: Any) -> None:
    _, first = send(relay, cred, ["ann@one.example", "bob@two.example"])
    _, second = send(relay, cred, ["cat@two.example"])
    first, second = first.split()[-1], second.split()[-1]

    async def test(b: Browser) -> None:
        await b.login()
        status, headers, _ = await b.get(f"/console/queue?id={first}")
        assert (status, headers["Location"]) == (303, f"/console/queue/{first}")
        _, _, page = await b.get("/console/queue?domain=TWO.example")
        assert first in page and second in page
        _, _, page = await b.get("/console/queue?recipient=ann@")
        assert first in page and second not in page
        _, _, page = await b.get("/console/queue?sender=APP@example.com&state=queued")
        assert first in page and second in page
        _, _, page = await b.get("/console/queue?sender=nobody")
        assert "No message matches" in page
        status, headers, _ = await b.post(f"/console/queue/{first}/hold")
        assert (status, headers["Location"]) == (303, f"/console/queue/{first}?done=held")
        _, _, page = await b.get(f"/console/queue/{first}?done=held")
        assert "The message is held" in page and page.count('class="state held"') == 2
        _, _, page = await b.get("/console/queue?state=held")
        assert first in page and second not in page
        held = relay.relay.spool.get(first)
        assert held is not None and all(r.held for r in held.recipients)
        status, _, page = await b.post(f"/console/queue/{first}/hold")
        assert status == 409 and "no waiting recipient" in page
        assert (await b.post(f"/console/queue/{first}/release"))[0] == 303
        released = relay.relay.spool.get(first)
        assert released is not None and not any(r.held for r in released.recipients)
        status, headers, _ = await b.post(f"/console/queue/{first}/retry")
        assert (status, headers["Location"]) == (303, f"/console/queue/{first}?done=retried")
        # Its history: the Send event, still in the outbox or the live tail's memory.
        _, _, page = await b.get(f"/console/queue/{first}")
        assert "<td>Send</td>" in page and "ann@one.example" in page
        assert (await b.post(f"/console/queue/{second}/delete"))[0] == 303
        status, _, page = await b.get(f"/console/queue/{second}")
        assert status == 404 and f"no message {second}" in page

    run(relay, test)


def test_sets_pause_and_resume_with_the_reason_shown(relay: RunningRelay) -> None:
    async def test(b: Browser) -> None:
        await b.login()
        status, _, page = await b.get("/console/sets")
        assert status == 200 and "transactional" in page and "marketing" in page
        status, headers, _ = await b.post("/console/sets/marketing/pause",
                                          {"reason": "list <cleanup>"})
        assert (status, headers["Location"]) == (303, "/console/sets?done=paused")
        assert "marketing" in relay.relay.pauses
        _, _, page = await b.get("/console/sets?done=paused")
        assert "list &lt;cleanup&gt;" in page and "console 127.0.0.1" in page
        status, _, page = await b.post("/console/sets/marketing/pause", {"reason": "again"})
        assert status == 409 and "resume it first" in page
        assert (await b.post("/console/sets/marketing/resume"))[0] == 303
        assert "marketing" not in relay.relay.pauses
        assert (await b.post("/console/accounts/other/pause", {"reason": "r"}))[0] == 303
        assert "other" in relay.relay.pauses.accounts
        assert (await b.post("/console/accounts/other/resume"))[0] == 303
        status, _, _ = await b.post("/console/sets/nosuchset/pause")
        assert status == 404

    run(relay, test)


def test_suppression_add_search_remove_import_and_export(relay: RunningRelay) -> None:
    async def test(b: Browser) -> None:
        await b.login()
        status, headers, _ = await b.post("/console/suppression/add", {
            "account": "acme", "address": "gone@Example.NET", "reason": "BOUNCE"})
        assert status == 303 and "done=added" in headers["Location"]
        _, _, page = await b.get("/console/suppression?account=acme&prefix=gone")
        assert '<tr data-address="gone@example.net">' in page
        status, _, page = await b.post("/console/suppression/add", {
            "account": "acme", "address": "not an address", "reason": "BOUNCE"})
        assert status == 422
        # Import: the file as the body, then its progress until done.
        rows = "".join(f"user{i}@bulk.example,COMPLAINT\n" for i in range(12000)) + "bad\n"
        async with b.session.post(
                f"{b.base}/console/suppression/import?account=acme&name=list.csv",
                data=rows.encode(), headers={"X-CSRF-Token": b.csrf,
                                             "Content-Type": "application/octet-stream"}
        ) as answer:
            assert answer.status == 202
            job = (await answer.json())["job"]
        async with asyncio.timeout(30):
            while True:
                status, _, text = await b.get(f"/console/suppression/import/{job}")
                state = json.loads(text)
                if state["state"] != "importing":
                    break
                await asyncio.sleep(0.05)
        assert state["state"] == "done", state
        assert (state["new"], state["bad"], state["done"], state["rows"]) == (
            12000, 1, 12000, 12000)
        status, headers, text = await b.get("/console/suppression/export?account=acme")
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        assert "user11999@bulk.example" in text and "attachment" in headers[
            "Content-Disposition"]
        status, _, _ = await b.post("/console/suppression/remove", {
            "account": "acme", "address": "gone@example.net"})
        assert status == 303
        _, _, page = await b.get("/console/suppression?account=acme&prefix=gone")
        assert "No address matches" in page

    run(relay, test)


def test_overview_delivery_and_events_pages(relay: RunningRelay, cred: Any) -> None:
    send(relay, cred, ["x@three.example"])

    async def test(b: Browser) -> None:
        await b.login()
        status, _, page = await b.get("/console/")
        assert status == 200
        hour = re.search(r'id="chart-hour" data-json="([^"]*)"', page)
        assert hour is not None
        series = json.loads(html.unescape(hour.group(1)))
        assert len(series["series"]["accepted"]) == 60 and sum(
            series["series"]["accepted"]) >= 1
        assert "three.example" in page  # a busy destination: mail waiting for it
        status, _, page = await b.get("/console/delivery")
        assert status == 200 and "three.example" in page
        # No pool configured, and delivery held: nothing to shape.
        assert 'id="no-pools"' in page
        assert "Shaping is off here: it applies to delivery mode mx, and this relay " \
               "delivers in mode hold." in page
        status, _, page = await b.get("/console/events")
        assert status == 200 and 'id="tail"' in page
        # The live stream: the Send of a message sent while it is open.
        async with b.session.get(f"{b.base}/console/events/stream?type=Send") as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            await asyncio.to_thread(send, relay, cred, ["live@four.example"])
            async with asyncio.timeout(10):
                while True:
                    line = (await stream.content.readline()).decode()
                    if line.startswith("data:") and "live@four.example" in line:
                        break
        event = json.loads(line.removeprefix("data:"))
        assert event["eventType"] == "Send" and event["configurationSet"] == "transactional"

    run(relay, test)


def test_the_login_goes_on_only_to_a_console_page(relay: RunningRelay) -> None:
    async def test(b: Browser) -> None:
        for target in ["//evil.example/", "https://evil.example/", "/console/\\evil",
                       "/elsewhere"]:
            _, _, page = await b.get(f"/console/login?next={target}")
            assert _field(page, "next") == "/console/", target

    run(relay, test)


def test_the_console_and_its_live_tail_through_worker_processes(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With server.workers the workers pass console requests to the supervisor; the
    live tail's stream stays open past http.read_timeout (the worker's read limit on
    the supervisor's answer) because the relay writes keep-alives while it is quiet."""
    from tests.support import DaemonProcess, submit_to_daemon

    monkeypatch.setenv(ENV, SECRET)
    daemon = DaemonProcess(
        tmp_path, server={"workers": 2, "transform_workers": 0},
        http={**ADMIN_HTTP, "read_timeout": "2s"},
        configuration_sets={"transactional": {"event_destinations": [
            {"name": "file", "type": "file", "path": str(tmp_path / "events.ndjson")}]}})
    daemon.start(wait=False)
    try:
        daemon.wait_log("smtprelay ready", timeout=60)

        async def test() -> None:
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as session:
                b = Browser(session, f"http://127.0.0.1:{daemon.ports['http']}")
                assert (await b.login())[0] == 303
                async with session.get(f"{b.base}/console/events/stream") as stream:
                    assert stream.status == 200
                    # Quiet for longer than read_timeout: keep-alives hold it open.
                    async with asyncio.timeout(10):
                        for _ in range(2):
                            assert await stream.content.readline() == b": keep-alive\n"
                            assert await stream.content.readline() == b"\n"
                    message_id = await asyncio.to_thread(submit_to_daemon, daemon,
                                                         ["w@example.net"])
                    async with asyncio.timeout(10):
                        while True:
                            line = (await stream.content.readline()).decode()
                            if line.startswith("data:"):
                                break
                    assert json.loads(line.removeprefix("data:"))["messageId"] == message_id
                status, _, page = await b.get(f"/console/queue/{message_id}")
                assert status == 200 and "w@example.net" in page

        asyncio.run(test())
    finally:
        daemon.stop()


def test_hold_and_release_from_the_cli_as_the_console_sees_them(relay: RunningRelay,
                                                                cred: Any) -> None:
    import os
    import subprocess
    import sys

    _, reply = send(relay, cred, ["held@example.net"])
    message_id = reply.split()[-1]
    config = relay.config.server.data_dir.parent / "smtprelay.yaml"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "smtprelay", "queue", *args, "-c",
                               str(config)], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ))

    held = cli("hold", message_id)
    assert held.returncode == 0 and "1 recipient(s) held" in held.stdout, held.stderr
    again = cli("hold", message_id)
    assert again.returncode == 1 and "held already" in again.stderr
    listed = cli("list", "--state", "held")
    assert message_id in listed.stdout and "held@example.net  held" in listed.stdout

    async def test(b: Browser) -> None:
        await b.login()
        _, _, page = await b.get(f"/console/queue/{message_id}")
        assert 'class="state held"' in page and 'id="release"' in page

    run(relay, test)
    released = cli("release", message_id)
    assert released.returncode == 0 and "1 recipient(s) released" in released.stdout
    assert cli("release", message_id).returncode == 1
    assert message_id not in cli("list", "--state", "held").stdout


# -- the Delivery page's IP pools and provider shaping, over a delivery world ----------------

# The pool's source addresses, on loopback: A warming up, B and C warm.
POOL_A, POOL_B, POOL_C = "127.0.1.2", "127.0.1.3", "127.0.1.4"
# A provider of the operator's rules file (delivery.shaping.rules_file): its rate-limit
# reply suspends it for an hour, "too busy" halves its limits for 30 minutes.
P1 = {"providers": {"p1": {
    "description": "Test provider", "mx": ["*.p1.test"],
    "limits": {"connections": 4, "per_hour": 1000},
    "rules": [{"name": "p1-rate", "match": r"4\.7\.28", "action": "suspend",
               "duration": "1h"},
              {"name": "p1-busy", "match": "too busy", "action": "throttle",
               "duration": "30m"}]}}}


def pool_world(net: World, tmp_path: Path) -> RunningRelay:
    """A relay whose set `bulk` sends from pool `bulk` with p1's rules, and one message
    from each address in turn: A's to angry.test gets p1's rate-limit reply (p1
    suspended for A), B's to busy.test "too busy" (p1 throttled for B), C's to
    calm.test is delivered."""
    angry = net.sinks.smtp(Script(data_reply="421 4.7.28 <b>unusual</b> rate of mail"),
                           host=net.address(), port=net.port)
    busy = net.sinks.smtp(Script(data_reply="451 4.7.0 too busy, try later"),
                          host=net.address(), port=net.port)
    calm = net.sinks.smtp(host=net.address(), port=net.port)
    net.mx("angry.test", (10, "mx1.p1.test", angry.host))
    net.mx("busy.test", (10, "mx2.p1.test", busy.host))
    net.mx("calm.test", (10, "mx3.p1.test", calm.host))
    rules = tmp_path / "providers.yaml"
    rules.write_text(yaml.safe_dump(P1))
    relay = net.start(top={
        "http": ADMIN_HTTP,
        "ip_pools": {"bulk": {
            "addresses": [{"address": POOL_A, "helo": "o2.pool.test"},
                          {"address": POOL_B, "helo": "o3.pool.test", "warm": True},
                          {"address": POOL_C, "helo": "o4.pool.test", "warm": True}],
            "warmup": {"days": 10}, "overflow": "wait"}},
        "configuration_sets": {"transactional": {}, "bulk": {"delivery": {"ip_pool": "bulk"}}}},
        shaping={"rules_file": str(rules)},
        destinations={"calm.test": {"max_connections": 2, "per_minute": 60}},
        # No retry while the test looks: each message is tried once, from its turn's
        # address (A, B, C).
        retry={"first": "1h", "max_interval": "1h", "max_lifetime": "2h"})
    for recipient, state in (("a@angry.test", "deferred"), ("b@busy.test", "deferred"),
                             ("c@calm.test", "delivered")):
        sent = net.submit([recipient], data=b"X-SES-CONFIGURATION-SET: bulk\r\n"
                          + message(to=recipient))
        assert net.wait_states(sent, {recipient: state}) == {recipient: state}
    return relay


def row(page: str, **attributes: str) -> str:
    """The text of the table row with these data-* attributes, tags stripped."""
    wanted = "".join(f'[^>]*data-{k}="{re.escape(v)}"' for k, v in attributes.items())
    found = re.search(rf"<tr{wanted}[^>]*>(.*?)</tr>", page, re.S)
    assert found is not None, attributes
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(1))).split())


def test_the_delivery_page_shows_pools_warmup_and_providers_held_back(
        net: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)
    relay = pool_world(net, tmp_path)
    # A on day 3 of its 10: WarmupPercentage 20, the standard ramp's caps of that day.
    moved = Admin(relay.http_port).put(f"/api/v1/ip-pools/bulk/addresses/{POOL_A}/warmup",
                                       body={"day": 3})
    assert moved.status == 200, moved.body
    api = {item["Ip"]: item for item in
           Admin(relay.http_port).get("/api/v1/ip-pools").json["items"]}

    async def test(b: Browser) -> None:
        await b.login()
        status, _, page = await b.get("/console/delivery")
        assert status == 200
        pool = page[page.index('id="pool-bulk"'):page.index("</section>")]
        assert "Overflow: wait" in " ".join(re.sub(r"<[^>]+>", " ", pool).split())
        assert "Used by: bulk" in " ".join(re.sub(r"<[^>]+>", " ", pool).split())
        # Each address as the admin API reports it: day, percentage, status, today's
        # counts against the caps, per provider (the operator file's p1).
        a, caps = row(page, address=POOL_A), api[POOL_A]["caps"]
        assert api[POOL_A]["sent_today"] == {"total": 1, "by_provider": {"p1": 1}}
        assert a == (f"{POOL_A} o2.pool.test 3 of 10 20% IN_PROGRESS 1 / {caps['total']:,} "
                     f"p1 1 / {caps['per_provider']:,}")
        assert row(page, address=POOL_C) == (f"{POOL_C} o4.pool.test — 100% DONE "
                                             "1 (no cap: warm) p1 1")
        assert page.count('class="bar" data-fill=') >= 4  # the bars, drawn by console.js
        # p1 suspended for A by the reply (escaped: it is the remote's text), until an
        # hour from now, throttled for B, sending from C. The limits are the operator
        # file's (halved for B).
        suspended = row(page, provider="p1", source=POOL_A)
        assert suspended.startswith(f"p1 {POOL_A} 4 — — 1000 suspended ")
        until = re.search(r"suspended (\S+ \S+)", suspended)
        assert until is not None
        left = (datetime.datetime.strptime(until.group(1), "%Y-%m-%d %H:%M:%S")
                .replace(tzinfo=datetime.UTC).timestamp() - time.time())
        assert 3500 < left <= 3600
        assert suspended.endswith("rule p1-rate: smtp; 421 4.7.28 <b>unusual</b> rate of mail")
        assert "&lt;b&gt;unusual&lt;/b&gt;" in page and "<b>unusual" not in page
        throttled = row(page, provider="p1", source=POOL_B)
        assert throttled.startswith(f"p1 {POOL_B} 2 of 4 — — 500 of 1000 throttled to 50% ")
        assert re.search(r"\(29m left\)|\(30m left\)", throttled), throttled
        assert throttled.endswith("rule p1-busy: smtp; 451 4.7.0 too busy, try later")
        assert row(page, provider="p1", source=POOL_C) == (
            f"p1 {POOL_C} 4 — — 1000 sending — —")
        # The table in force: the operator's p1 beside the bundled providers, and the
        # provider of each destination read from it.
        assert row(page, name="p1") == ("p1 Test provider *.p1.test 4 — — 1000 "
                                         "suspend 1h p1-rate throttle 30m p1-busy "
                                         f"{tmp_path / 'providers.yaml'}")
        assert row(page, domain="calm.test") == "calm.test 2 — 60 —"
        assert row(page, name="google").startswith("google ") and row(
            page, name="google").endswith(" bundled")
        destination = re.search(r'<a href="/console/queue\?domain=calm.test">calm.test</a>'
                                r"</td><td>([^<]*)</td>", page)
        assert destination is not None and destination.group(1) == "p1"

    run(relay, test)
