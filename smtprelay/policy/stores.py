"""Which backend keeps the lists every node must share (`store.backend`): the state
database in data_dir, or Redis for a cluster of nodes."""

from __future__ import annotations

from smtprelay.config import Config
from smtprelay.policy.contacts import ContactStore, SQLiteContactStore
from smtprelay.policy.contacts_redis import RedisContactStore
from smtprelay.policy.pauses import PauseStore, SQLitePauseStore
from smtprelay.policy.pauses_redis import RedisPauseStore
from smtprelay.policy.suppression import SQLiteSuppressionStore, SuppressionStore
from smtprelay.policy.suppression_redis import RedisSuppressionStore
from smtprelay.policy.templates import SQLiteTemplateStore, TemplateStore
from smtprelay.policy.templates_redis import RedisTemplateStore


def _redis_url(config: Config) -> str | None:
    """The Redis of `store: {backend: redis}`; None for the state database."""
    store = config.store
    if store.backend != "redis":
        return None
    assert store.url is not None  # the configuration's validator says so
    return store.url


def suppression_store(config: Config) -> SuppressionStore:
    """The suppression list of `config`'s store, not yet opened."""
    if (url := _redis_url(config)) is None:
        return SQLiteSuppressionStore(config.state_path)
    return RedisSuppressionStore.from_url(url, prefix=config.store.key_prefix,
                                          timeout=config.store.timeout)


def pause_store(config: Config) -> PauseStore:
    """The paused sets and accounts of `config`'s store, not yet opened."""
    if (url := _redis_url(config)) is None:
        return SQLitePauseStore(config.state_path)
    return RedisPauseStore.from_url(url, prefix=config.store.key_prefix,
                                    timeout=config.store.timeout)


def contact_store(config: Config) -> ContactStore:
    """The contact lists' contacts of `config`'s store, not yet opened."""
    if (url := _redis_url(config)) is None:
        return SQLiteContactStore(config.state_path)
    return RedisContactStore.from_url(url, prefix=config.store.key_prefix,
                                      timeout=config.store.timeout)


def template_store(config: Config) -> TemplateStore:
    """The SES email templates of `config`'s store, not yet opened."""
    if (url := _redis_url(config)) is None:
        return SQLiteTemplateStore(config.state_path)
    return RedisTemplateStore.from_url(url, prefix=config.store.key_prefix,
                                       timeout=config.store.timeout)
