"""Wrong admin tokens lock the client address out of the admin API and the console
(auth.max_failures_per_ip within auth.failure_window, for auth.lockout_duration), the
right token included; other addresses, and requests without a token, are not counted
against. Clients on distinct loopback addresses, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

import aiohttp
import pytest

from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, suppression_path
from tests.support import RunningRelay, relay_fixture

relay = relay_fixture(env={ENV: SECRET}, http=ADMIN_HTTP,
                      auth={"max_failures_per_ip": 3, "failure_window": "10m",
                            "lockout_duration": "15m"})

GUESSER = "127.0.0.61"
NEIGHBOUR = "127.0.0.62"
PROBE = "127.0.0.63"


async def request(relay: RunningRelay, source: str, method: str, path: str, *,
                  token: str | None = None, body: Any = None
                  ) -> tuple[int, dict[str, str], bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=20)) as session, \
            session.request(method, f"http://127.0.0.1:{relay.http_port}{path}",
                            headers=headers, json=body, allow_redirects=False) as answer:
        return answer.status, dict(answer.headers), await answer.read()


async def console_login(relay: RunningRelay, source: str, token: str
                        ) -> tuple[int, dict[str, str], str]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    jar = aiohttp.CookieJar(unsafe=True)
    base = f"http://127.0.0.1:{relay.http_port}"
    async with aiohttp.ClientSession(connector=connector, cookie_jar=jar,
                                     timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.get(f"{base}/console/login") as page:
            form = await page.text()
        found = re.search(r'name="csrf" value="([^"]*)"', form)
        assert found is not None
        async with session.post(f"{base}/console/login", allow_redirects=False, data={
                "token": token, "csrf": found.group(1), "next": "/console/"}) as answer:
            return answer.status, dict(answer.headers), await answer.text()


def test_wrong_tokens_lock_the_address_out_of_the_api_and_the_console(
        relay: RunningRelay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtprelay")
    add = suppression_path("acme", "guess@example.net")

    async def go() -> None:
        # Three wrong tokens, each trying to change something: refused, nothing changed.
        for guess in ("wrong-1", "wrong-2", "wrong-3"):
            status, _, _ = await request(relay, GUESSER, "PUT", add, token=guess,
                                         body={"reason": "BOUNCE"})
            assert status == 401
        # Locked: the right token is refused too, with when to come back.
        status, headers, body = await request(relay, GUESSER, "PUT", add, token=SECRET,
                                              body={"reason": "BOUNCE"})
        assert status == 429
        assert json.loads(body)["error"]["code"] == "too_many_failures"
        assert 890 <= int(headers["Retry-After"]) <= 900
        status, headers, page = await console_login(relay, GUESSER, SECRET)
        assert status == 429 and "Too many wrong tokens" in page
        assert "smtprelay_console=" not in headers.get("Set-Cookie", "")
        assert 890 <= int(headers["Retry-After"]) <= 900
        # Nothing was suppressed by any of it.
        status, _, _ = await request(relay, NEIGHBOUR, "GET", add, token=SECRET)
        assert status == 404
        # Another address is not locked: the API and the console answer it.
        status, _, _ = await request(relay, NEIGHBOUR, "PUT", add, token=SECRET,
                                     body={"reason": "BOUNCE"})
        assert status in (200, 201, 204)
        status, headers, _ = await console_login(relay, NEIGHBOUR, SECRET)
        assert status == 303 and "smtprelay_console=" in headers["Set-Cookie"]
        # The API's own document says so.
        status, _, body = await request(relay, NEIGHBOUR, "GET", "/api/v1/openapi.json",
                                        token=SECRET)
        document = json.loads(body)
        put = document["paths"]["/accounts/{account}/suppression/{address}"]["put"]
        assert put["responses"]["429"] == {"$ref": "#/components/responses/LockedOut"}
        assert "Retry-After" in document["components"]["responses"]["LockedOut"]["headers"]

    asyncio.run(go())
    assert f"{GUESSER} locked out for 900s after 3 wrong tokens" in caplog.text
    assert SECRET not in caplog.text and "wrong-1" not in caplog.text


def test_wrong_console_logins_count_as_the_api_s_wrong_tokens(relay: RunningRelay) -> None:
    async def go() -> None:
        for guess in ("wrong-1", "wrong-2"):
            status, _, page = await console_login(relay, GUESSER, guess)
            assert status == 401 and "not accepted" in page
        status, _, _ = await request(relay, GUESSER, "GET", "/api/v1/queue", token="wrong-3")
        assert status == 401
        status, _, _ = await request(relay, GUESSER, "GET", "/api/v1/queue", token=SECRET)
        assert status == 429

    asyncio.run(go())


def test_requests_without_a_token_are_not_guesses(relay: RunningRelay) -> None:
    async def go() -> None:
        for _ in range(6):  # twice the limit
            status, _, _ = await request(relay, PROBE, "GET", "/api/v1/queue")
            assert status == 401
        status, _, _ = await request(relay, PROBE, "GET", "/api/v1/queue", token=SECRET)
        assert status == 200

    asyncio.run(go())
