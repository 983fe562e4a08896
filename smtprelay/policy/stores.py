"""Which backend keeps the lists every node must share (`store.backend`): the state
database in data_dir, or Redis for a cluster of nodes."""

from __future__ import annotations

from smtprelay.config import Config
from smtprelay.policy.pauses import PauseStore, SQLitePauseStore
from smtprelay.policy.pauses_redis import RedisPauseStore
from smtprelay.policy.suppression import SQLiteSuppressionStore, SuppressionStore
from smtprelay.policy.suppression_redis import RedisSuppressionStore


def suppression_store(config: Config) -> SuppressionStore:
    """The suppression list of `config`'s store, not yet opened."""
    store = config.store
    if store.backend == "redis":
        assert store.url is not None  # the configuration's validator says so
        return RedisSuppressionStore.from_url(store.url, prefix=store.key_prefix,
                                              timeout=store.timeout)
    return SQLiteSuppressionStore(config.state_path)


def pause_store(config: Config) -> PauseStore:
    """The paused sets and accounts of `config`'s store, not yet opened."""
    store = config.store
    if store.backend == "redis":
        assert store.url is not None
        return RedisPauseStore.from_url(store.url, prefix=store.key_prefix,
                                        timeout=store.timeout)
    return SQLitePauseStore(config.state_path)
