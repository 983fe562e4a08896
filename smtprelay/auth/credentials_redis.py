"""CLI-created credentials in Redis (`store: {backend: redis}`): a credential made with
`smtprelay credentials create` on any node logs in on every node, and disabling or
deleting it there takes effect everywhere.

One hash (user name -> the credential as JSON, its password only as the slow hash).
Disabling is one Lua script (read, change, write), so it cannot undo a concurrent
delete. Kept across Redis restarts with the persistence docs/cluster.md asks for.
"""

from __future__ import annotations

import builtins
import json
from typing import Any, Self, cast

import redis

from smtprelay.auth.credentials import Credential, NewSecret, new_secret
from smtprelay.state.redis import blocking_client

_SET_DISABLED = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
  return 0
end
local credential = cjson.decode(value)
credential['disabled'] = ARGV[2] == '1'
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(credential))
return 1
"""


class JsonHash:
    """One Redis hash of a key column's values to JSON rows that have an account and a
    `disabled` flag: what credentials and API keys (auth.api_keys_redis) share."""

    NAME = ""  # the hash's key, after the prefix

    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:") -> None:
        self._redis = client
        self._key = f"{prefix}{self.NAME}"
        self._set_disabled = client.register_script(_SET_DISABLED)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "smtprelay:", timeout: float = 2.0,
                 **more: Any) -> Self:
        """`more`: what a subclass's constructor takes besides the client and prefix."""
        return cls(blocking_client(url, timeout), prefix, **more)

    def open(self) -> None:
        """Nothing to open: the client connects on first use."""

    def close(self) -> None:
        self._redis.close()

    def _rows(self) -> dict[str, dict[str, Any]]:
        found = cast(dict[bytes, bytes], self._redis.hgetall(self._key))
        return {name.decode(): json.loads(value) for name, value in found.items()}

    def set_disabled(self, key: str, disabled: bool) -> bool:
        return bool(self._set_disabled(keys=[self._key], args=[key, int(disabled)]))

    def delete(self, key: str) -> bool:
        return bool(self._redis.hdel(self._key, key))


class RedisCredentialStore(JsonHash):
    NAME = "credentials"

    def create(self, account: str, name: str | None = None) -> NewSecret:
        secret = new_secret(account, name)
        credential = secret.credential
        value = json.dumps({"account": credential.account, "name": credential.name,
                            "password_hash": credential.password_hash,
                            "created_at": credential.created_at, "disabled": False})
        if not self._redis.hsetnx(self._key, credential.username, value):
            raise RuntimeError("a generated user name is taken; try again")  # 96 bits
        return secret

    def lookup(self, username: str) -> Credential | None:
        value = cast(bytes | None, self._redis.hget(self._key, username))
        return None if value is None else _credential(username, json.loads(value))

    def list(self, account: str | None = None) -> builtins.list[Credential]:
        credentials = [_credential(name, data) for name, data in self._rows().items()]
        return sorted((c for c in credentials if account is None or c.account == account),
                      key=lambda c: (c.created_at or 0.0, c.username))


def _credential(username: str, data: dict[str, Any]) -> Credential:
    return Credential(username=username, account=str(data["account"]),
                      password_hash=str(data["password_hash"]), name=data.get("name"),
                      created_at=data.get("created_at"), disabled=bool(data.get("disabled")))
