"""Paused sets and accounts in Redis (`store: {backend: redis}`): a pause made on one node
(its admin API, its CLI, its reputation guard) is in force on every node within a
refresh of PausedSets (REFRESH_SECONDS), as one made by the CLI is on one node.

A hash per scope (name -> the pause as JSON) and one of the times pauses were lifted
(the reputation guard's "only what came after the resume"). Pausing is HSETNX, so two
nodes pausing the same set at once agree on which pause is in force.
"""

from __future__ import annotations

import json
import time
from typing import cast

import redis

from smtprelay.policy.pauses import (
    AlreadyPaused,
    Pause,
    Reason,
    Scope,
)
from smtprelay.state.redis import blocking_client, redacted


class RedisPauseStore:
    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:",
                 where: str = "redis") -> None:
        self._redis = client
        self._prefix = prefix
        self.where = where

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "smtprelay:",
                 timeout: float = 2.0) -> RedisPauseStore:
        return cls(blocking_client(url, timeout), prefix,
                   f"{redacted(url)} ({prefix}pauses:*)")

    def open(self) -> None:
        """Nothing to open: the client connects on first use."""

    def close(self) -> None:
        self._redis.close()

    def _key(self, scope: Scope) -> str:
        return f"{self._prefix}pauses:{scope}"

    @property
    def _resumes(self) -> str:
        return f"{self._prefix}pauses:resumed"

    def pause(self, name: str, *, reason: Reason = "manual", detail: str = "", by: str,
              now: float | None = None, scope: Scope = "set") -> Pause:
        """Pause a set (or an account); AlreadyPaused (with the pause in force) if it is."""
        pause = Pause.new(scope, name, reason, detail, by, now)
        value = json.dumps([pause.reason, pause.detail, pause.since, pause.by],
                           ensure_ascii=False)
        for _ in range(3):  # a pause lifted between the two calls: try again
            if self._redis.hsetnx(self._key(scope), name, value):
                return pause
            existing = self.get(name, scope)
            if existing is not None:
                raise AlreadyPaused(existing)
        raise redis.RedisError(f"{name!r} kept being paused and resumed; try again")

    def resume(self, name: str, *, scope: Scope = "set",
               now: float | None = None) -> Pause | None:
        """Lift a pause; the pause lifted, or None if there was none."""
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(self._key(scope), name)
            pipe.hdel(self._key(scope), name)
            value, removed = pipe.execute()
        if not removed:
            return None
        self._redis.hset(self._resumes, f"{scope}\x00{name}",
                         repr(time.time() if now is None else now))
        return _pause(scope, name, cast(bytes, value))

    def get(self, name: str, scope: Scope = "set") -> Pause | None:
        value = cast(bytes | None, self._redis.hget(self._key(scope), name))
        return None if value is None else _pause(scope, name, value)

    def all(self, scope: Scope = "set") -> dict[str, Pause]:
        found = cast(dict[bytes, bytes], self._redis.hgetall(self._key(scope)))
        pauses = {key.decode(): _pause(scope, key.decode(), value)
                  for key, value in found.items()}
        return dict(sorted(pauses.items()))

    def resumes(self) -> dict[tuple[str, str], float]:
        """(scope, name) -> when its last pause was lifted."""
        found = cast(dict[bytes, bytes], self._redis.hgetall(self._resumes))
        resumed: dict[tuple[str, str], float] = {}
        for key, value in found.items():
            scope, _, name = key.decode().partition("\x00")
            resumed[(scope, name)] = float(value)
        return resumed


def _pause(scope: Scope, name: str, value: bytes) -> Pause:
    reason, detail, since, by = json.loads(value)
    return Pause(scope=scope, name=name, reason=str(reason), detail=str(detail),
                 since=float(since), by=str(by))
