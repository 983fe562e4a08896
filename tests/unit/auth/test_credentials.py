"""Generated credentials (smtprelay.auth.credentials)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.auth.credentials import (
    Credentials,
    CredentialStore,
    generate_password,
    generate_username,
)
from smtprelay.auth.credentials_redis import RedisCredentialStore
from smtprelay.infra.passwords import verify_password
from tests.redis_server import on_backend


def test_generated_credentials_are_safe_to_paste() -> None:
    passwords = {generate_password() for _ in range(2000)}
    assert len(passwords) == 2000
    assert all(len(p) == 44 and p.isalnum() and p.isascii() for p in passwords)
    assert all(generate_username().isalnum() for _ in range(100))


@pytest.fixture(params=["sqlite", "redis"])
def credentials(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Credentials]:
    """Each backend of store.backend: the state database, and Redis (a real server)."""
    yield from on_backend(request, lambda: CredentialStore(tmp_path / "state.db"),
                          RedisCredentialStore.from_url)


def test_create_lookup_list_disable_and_delete(credentials: Credentials) -> None:
    first = credentials.create("acme", "app server")
    second = credentials.create("other")
    found = credentials.lookup(first.credential.username)
    assert found == first.credential
    assert verify_password(first.password, found.password_hash)
    assert first.password not in found.password_hash  # only the slow hash is kept
    assert credentials.lookup("SRNOBODY") is None
    assert [c.username for c in credentials.list()] == [first.credential.username,
                                                        second.credential.username]
    assert [c.username for c in credentials.list("other")] == [second.credential.username]
    assert credentials.set_disabled(first.credential.username, True)
    assert credentials.lookup(first.credential.username).disabled  # type: ignore[union-attr]
    assert credentials.set_disabled(first.credential.username, False)
    assert not credentials.lookup(first.credential.username).disabled  # type: ignore[union-attr]
    assert not credentials.set_disabled("SRNOBODY", True)
    assert credentials.delete(first.credential.username)
    assert not credentials.delete(first.credential.username)
    assert credentials.lookup(first.credential.username) is None
