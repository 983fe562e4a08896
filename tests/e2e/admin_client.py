"""A small admin-API client for tests: aiohttp over a real socket, one call at a time.

Tests are synchronous (they also drive SMTP with smtplib), so each call runs its
own short event loop; the relay runs in its own thread and loop.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import yarl

from tests.support import Credential, RunningRelay, client_context, message

SECRET = "test-admin-secret-0123456789abcdef"
ENV = "SMTPRELAY_TEST_ADMIN_TOKEN"
# The relay the admin API tests run: the API on, its token in ENV, two sets.
ADMIN_HTTP = {"listen": ["127.0.0.1:0"], "admin_token_env": ENV}
TWO_SETS = {"transactional": {}, "marketing": {}}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class Admin:
    def __init__(self, port: int, token: str | None = SECRET) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, *, body: Any = None, token: str | None = None,
             headers: dict[str, str] | None = None, raw: bytes | None = None) -> Answer:
        """`path` as sent (already percent-encoded where it needs to be)."""
        sent = dict(headers or {})
        use = token if token is not None else self.token
        if use is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {use}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", "application/json")

        async def go() -> Answer:
            async with aiohttp.ClientSession() as session, session.request(
                    method, yarl.URL(self.base + path, encoded=True), data=data,
                    headers=sent, allow_redirects=False,  # a click's 302 is the answer
                    timeout=aiohttp.ClientTimeout(total=20)) as response:
                return Answer(response.status, dict(response.headers), await response.read())

        return asyncio.run(go())

    def get(self, path: str, **kwargs: Any) -> Answer:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Answer:
        return self.call("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Answer:
        return self.call("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Answer:
        return self.call("DELETE", path, **kwargs)


def suppression_path(account: str, address: str | None = None) -> str:
    path = f"/api/v1/accounts/{quote(account, safe='')}/suppression"
    return path if address is None else f"{path}/{quote(address, safe='@')}"


def send(relay: RunningRelay, cred: Credential, rcpts: list[str], *,
         configuration_set: str | None = None, data: bytes | None = None
         ) -> tuple[int, str]:
    """One message over STARTTLS + AUTH; the DATA reply (code, text), whatever it is."""
    body = data or message()
    if configuration_set is not None:
        body = f"X-SES-CONFIGURATION-SET: {configuration_set}\r\n".encode() + body
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        smtp.mail("app@example.com")
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            assert code == 250, (rcpt, code, text)
        try:
            code, reply = smtp.data(body)
        except smtplib.SMTPDataError as exc:
            code, reply = exc.smtp_code, exc.smtp_error
    return code, reply.decode()
