"""API keys and their secrets sealed under api.key_file (smtprelay.auth.api_keys), on
both backends of store.backend: the state database and a real Redis."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from smtprelay.auth.api_keys import (
    ApiKeyStore,
    KeyEncryptionKey,
    KeyFile,
    KeyFileError,
    SqliteApiKeyStore,
    UnreadableSecret,
    companion,
    create_key_file,
    ensure_key_file,
    generate_access_key_id,
    generate_secret,
    read_key_file,
    replace_key_file,
)
from smtprelay.auth.api_keys_redis import RedisApiKeyStore
from tests.redis_server import on_backend


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "api-keys.key"
    create_key_file(path)
    return path


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path, key_file: Path
          ) -> Iterator[ApiKeyStore]:
    yield from on_backend(
        request, lambda: SqliteApiKeyStore(tmp_path / "state.db", key_file),
        lambda url: RedisApiKeyStore.from_url(url, key_file=key_file))


def stored_bytes(store: ApiKeyStore, tmp_path: Path) -> bytes:
    """Everything the backend keeps, as the bytes an attacker with a copy would read."""
    if isinstance(store, SqliteApiKeyStore):
        store.close()  # the WAL checkpointed into the file
        data = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))
        store.open()
        return data
    assert isinstance(store, RedisApiKeyStore)
    return b"".join(k + v for k, v in store._redis.hgetall(store._key).items())


def test_ids_and_secrets_look_like_aws_ones() -> None:
    ids = {generate_access_key_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 20 and i.startswith("SRAK") and i.isupper() and i.isalnum()
               for i in ids)
    secrets = {generate_secret() for _ in range(1000)}
    assert len(secrets) == 1000
    assert all(len(s) == 40 and len(base64.b64decode(s)) == 30 for s in secrets)


def test_create_lookup_list_disable_and_delete(store: ApiKeyStore) -> None:
    first, first_secret = store.create("acme", "web app")
    second, second_secret = store.create("other")
    assert first_secret != second_secret
    assert store.lookup(first.access_key_id) == (first, first_secret)
    assert store.lookup(second.access_key_id) == (second, second_secret)
    assert first.description == "web app" and second.description is None
    assert store.lookup("SRAKNOBODY0000000000") is None
    # Oldest first; made in the same millisecond, by id.
    assert store.list() == sorted([first, second],
                                  key=lambda k: (k.created_at, k.access_key_id))
    assert store.list("other") == [second]
    assert store.list("nobody") == []
    assert store.set_disabled(first.access_key_id, True)
    found = store.lookup(first.access_key_id)
    assert found is not None and found[0].disabled and found[1] == first_secret
    assert store.set_disabled(first.access_key_id, False)
    assert store.lookup(first.access_key_id) == (first, first_secret)
    assert not store.set_disabled("SRAKNOBODY0000000000", True)
    assert store.delete(first.access_key_id)
    assert not store.delete(first.access_key_id)
    assert store.lookup(first.access_key_id) is None
    assert store.list() == [second]


def test_the_secret_is_stored_only_encrypted(store: ApiKeyStore, tmp_path: Path) -> None:
    secrets = [store.create("acme")[1] for _ in range(3)]
    data = stored_bytes(store, tmp_path)
    assert data  # something was read, so the next assertions can fail
    keys = [k.access_key_id.encode() for k in store.list()]
    assert all(k in data for k in keys)
    for secret in secrets:
        assert secret.encode() not in data
        assert base64.b64decode(secret) not in data


def test_a_ciphertext_copied_to_another_key_does_not_decrypt(store: ApiKeyStore) -> None:
    victim, _ = store.create("acme")
    thief, _ = store.create("acme")
    if isinstance(store, SqliteApiKeyStore):
        store.conn.execute(
            "UPDATE api_keys SET sealed_secret = (SELECT sealed_secret FROM api_keys"
            " WHERE access_key_id = ?) WHERE access_key_id = ?",
            (victim.access_key_id, thief.access_key_id))
    else:
        assert isinstance(store, RedisApiKeyStore)
        client: redis.Redis = store._redis
        rows = {k.decode(): json.loads(v) for k, v in client.hgetall(store._key).items()}
        rows[thief.access_key_id]["sealed_secret"] = rows[victim.access_key_id][
            "sealed_secret"]
        client.hset(store._key, thief.access_key_id, json.dumps(rows[thief.access_key_id]))
    with pytest.raises(UnreadableSecret, match=thief.access_key_id):
        store.lookup(thief.access_key_id)
    assert store.lookup(victim.access_key_id) is not None


def test_a_key_moved_to_another_account_does_not_decrypt(tmp_path: Path,
                                                          key_file: Path) -> None:
    store = SqliteApiKeyStore(tmp_path / "state.db", key_file)
    key, _ = store.create("acme")
    store.conn.execute("UPDATE api_keys SET account = 'other'")
    with pytest.raises(UnreadableSecret):
        store.lookup(key.access_key_id)


def test_wrong_or_missing_key_file_is_named(store: ApiKeyStore, key_file: Path) -> None:
    key, _ = store.create("acme")
    replace_key_file(key_file, KeyEncryptionKey.generate())
    # As a new process would: nothing read yet.
    store.keys = KeyFile(key_file)  # type: ignore[attr-defined]
    with pytest.raises(KeyFileError, match=r"^api\.key_file: .*sealed with key .*put the "
                                           r"key file it was made with back"):
        store.lookup(key.access_key_id)
    key_file.unlink()
    with pytest.raises(KeyFileError, match=rf"^api\.key_file: {key_file} does not exist"):
        store.lookup(key.access_key_id)


def test_key_file_checks(tmp_path: Path) -> None:
    path = tmp_path / "k" / "api-keys.key"
    made = ensure_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert len(path.read_bytes().strip()) == 44
    assert ensure_key_file(path).key == made.key  # never replaced
    assert create_key_file(path).key == made.key
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="readable by group or others; chmod 600"):
        read_key_file(path)
    path.chmod(0o600)
    path.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="does not hold a key"):
        read_key_file(path)
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(KeyFileError, match=r"writable by group or others.*chmod go-w"):
        create_key_file(open_dir / "api-keys.key")
    assert not (open_dir / "api-keys.key").exists()


def test_rekey_opens_with_the_new_key_only(store: ApiKeyStore, key_file: Path) -> None:
    old = read_key_file(key_file)
    made = [store.create("acme") for _ in range(3)]
    new = KeyEncryptionKey.generate()
    assert store.rekey(old.key, new.key) == 3
    assert store.sealed_with() == {new.id: 3}
    assert store.rekey(old.key, new.key) == 0  # again: nothing left under the old one
    # A node with only the old key file cannot open them...
    with pytest.raises(KeyFileError, match=f"sealed with key {new.id}"):
        store.lookup(made[0][0].access_key_id)
    # ...and once api.key_file holds the new key, the same running store opens them.
    replace_key_file(key_file, new)
    for key, secret in made:
        assert store.lookup(key.access_key_id) == (key, secret)
    # Sealed under neither key: refused, nothing changed.
    with pytest.raises(KeyFileError, match="3 API key"):
        store.rekey(old.key, KeyEncryptionKey.generate().key)
    assert store.sealed_with() == {new.id: 3}


def test_a_running_node_reads_secrets_of_either_side_of_a_rotation(
        store: ApiKeyStore, key_file: Path) -> None:
    old = read_key_file(key_file)
    key, secret = store.create("acme")
    new = KeyEncryptionKey.generate()
    # The swap happened, the re-encryption not yet: .old opens it.
    replace_key_file(companion(key_file, ".old"), old)
    replace_key_file(key_file, new)
    assert store.lookup(key.access_key_id) == (key, secret)
    # Another node re-encrypted; this node has the new key staged as .new only.
    replace_key_file(key_file, old)
    os.unlink(companion(key_file, ".old"))
    replace_key_file(companion(key_file, ".new"), new)
    store.rekey(old.key, new.key)
    assert store.lookup(key.access_key_id) == (key, secret)
