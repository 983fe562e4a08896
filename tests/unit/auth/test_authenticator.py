"""The authenticator's verification cache: one slow hash per (user, password)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from smtprelay.auth.authenticator import Authenticator, Outcome
from smtprelay.auth.credentials import CredentialStore
from smtprelay.config import Config


def _config(*accounts: str) -> Config:
    return Config.model_validate({
        "listeners": [{"name": "s", "address": "127.0.0.1", "port": 0, "tls": "none"}],
        "accounts": {name: {} for name in accounts}})


class _Fixed:
    def __init__(self, config: Config) -> None:
        self.config = config


async def test_a_verification_is_cached_before_its_waiters_resume(tmp_path: Path) -> None:
    """A login arriving after the hash finished but before the first caller resumed
    finds the cached result: the success is recorded by the verification itself."""
    store = CredentialStore(tmp_path / "state.db")
    store.open()
    secret = store.create("acme")
    config = _config("acme")
    authenticator = Authenticator(_Fixed(config), store)

    first = asyncio.create_task(authenticator.authenticate(
        secret.credential.username, secret.password, "127.0.0.1", "PLAIN"))
    while not authenticator._inflight:
        await asyncio.sleep(0)
    verification = next(iter(authenticator._inflight.values()))
    assert await verification is True  # resumes before the first caller does
    # The first caller has not run since the hash finished; the cache must hold it.
    cache_id = authenticator._cache_id(secret.credential.username, secret.password)
    assert cache_id in authenticator._cache
    assert not first.done()
    assert (await first).outcome is Outcome.OK
    store.close()


async def test_a_cached_login_stops_counting_once_its_account_is_gone(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "state.db")
    store.open()
    secret = store.create("acme")
    holder = _Fixed(_config("acme"))
    authenticator = Authenticator(holder, store)
    login = (secret.credential.username, secret.password, "127.0.0.1", "PLAIN")
    assert (await authenticator.authenticate(*login)).outcome is Outcome.OK
    holder.config = _config("other")  # a reload
    assert (await authenticator.authenticate(*login)).outcome is Outcome.INVALID
    store.close()
