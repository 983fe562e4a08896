"""Which backend keeps the CLI-created credentials and API keys (`store.backend`): the
state database in data_dir, or Redis for a cluster of nodes."""

from __future__ import annotations

from smtprelay.auth.api_keys import ApiKeyStore, SqliteApiKeyStore
from smtprelay.auth.api_keys_redis import RedisApiKeyStore
from smtprelay.auth.credentials import Credentials, CredentialStore
from smtprelay.auth.credentials_redis import RedisCredentialStore
from smtprelay.config import Config


def credential_store(config: Config) -> Credentials:
    """The credentials of `config`'s store, not yet opened."""
    store = config.store
    if store.backend == "redis":
        assert store.url is not None  # the configuration's validator says so
        return RedisCredentialStore.from_url(store.url, prefix=store.key_prefix,
                                             timeout=store.timeout)
    return CredentialStore(config.state_path)


def api_key_store(config: Config) -> ApiKeyStore:
    """The API keys of `config`'s store, not yet opened; their secrets open with
    api.key_file on this node."""
    store = config.store
    if store.backend == "redis":
        assert store.url is not None
        return RedisApiKeyStore.from_url(store.url, prefix=store.key_prefix,
                                         timeout=store.timeout, key_file=config.api_key_path)
    return SqliteApiKeyStore(config.state_path, config.api_key_path)
