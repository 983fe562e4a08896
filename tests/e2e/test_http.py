"""The HTTP side over a real HTTP client: health, readiness and the Prometheus metrics."""

from __future__ import annotations

import smtplib
from pathlib import Path

import aiohttp
import pytest

from smtprelay.infra.passwords import hash_password
from tests.support import Credential, RunningRelay, client_context, message, running, samples


async def fetch(port: int, path: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_health_and_readiness(relay: RunningRelay) -> None:
    assert await fetch(relay.http_port, "/healthz") == (200, "text/plain; charset=utf-8",
                                                        "ok\n")
    assert (await fetch(relay.http_port, "/readyz"))[0] == 200
    assert (await fetch(relay.http_port, "/nope"))[0] == 404


async def test_metrics_count_what_happened(relay: RunningRelay, cred: Credential) -> None:
    before = samples((await fetch(relay.http_port, "/metrics"))[2])

    def traffic() -> None:
        with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
            smtp.starttls(context=client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login(cred.username, "wrong")
            smtp.login(cred.username, cred.password)
            smtp.sendmail("app@example.com", ["a@example.net", "b@example.net"], message())
            with pytest.raises(smtplib.SMTPSenderRefused):
                smtp.sendmail("app@elsewhere.net", ["a@example.net"], message())

    import asyncio
    await asyncio.to_thread(traffic)
    status, ctype, text = await fetch(relay.http_port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    after = samples(text)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("smtprelay_auth_attempts_total", mechanism="PLAIN", result="invalid") == 1
    assert delta("smtprelay_auth_attempts_total", mechanism="PLAIN", result="ok") == 1
    assert delta("smtprelay_messages_accepted_total", listener="submission") == 1
    assert delta("smtprelay_messages_rejected_total", reason="identity") == 1
    assert delta("smtprelay_recipients_accepted_total") == 2
    assert delta("smtprelay_smtp_connections_total", listener="submission") == 1
    assert delta("smtprelay_spool_commit_seconds_count") >= 1
    assert after[("smtprelay_spool_messages", ())] >= 1


def test_static_credential_from_the_config(tmp_path: Path) -> None:
    accounts = {"acme": {"identities": ["example.com"], "credentials": [
        {"username": "app1", "password_hash": hash_password("s3cret", log_n=12)}]}}
    with running(tmp_path, accounts=accounts, configuration_sets={}) as relay, \
            smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("app1", "s3cre")
        assert smtp.login("app1", "s3cret")[0] == 235
        assert smtp.sendmail("app@example.com", ["x@example.net"], message()) == {}


async def test_concurrent_logins_cost_one_slow_hash(relay: RunningRelay,
                                                    cred: Credential) -> None:
    """A smarthost opening 20 sessions at once: one scrypt, then the cache answers."""
    import asyncio

    import aiosmtplib

    before = samples((await fetch(relay.http_port, "/metrics"))[2])

    async def session() -> int:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.submission_port,
                                 start_tls=True, tls_context=client_context(), timeout=20)
        await client.connect()
        response = await client.login(cred.username, cred.password)
        await client.quit()
        return response.code

    assert await asyncio.gather(*(session() for _ in range(20))) == [235] * 20
    assert await session() == 235
    after = samples((await fetch(relay.http_port, "/metrics"))[2])
    key = ("smtprelay_auth_hash_verifications_total", ())
    assert after[key] - before.get(key, 0.0) == 1
