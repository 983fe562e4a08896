"""API keys in Redis (`store: {backend: redis}`): a key made with `smtprelay api-keys
create` on any node signs requests to every node, and disabling or deleting it there
takes effect everywhere.

One hash (access key id -> the key as JSON), its secret sealed as in the state
database (auth.api_keys): Redis holds only ciphertext, and each node reads the key
that opens it from its own api.key_file, the same file on every node.
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any, cast

import redis

from smtprelay.auth.api_keys import ApiKey, Sealing, count_sealers
from smtprelay.auth.credentials_redis import JsonHash

# Replaces a sealed secret only if it is still the one read: a concurrent rotation
# is not undone, and a key disabled meanwhile stays disabled.
_RESEAL = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then
  return 0
end
local row = cjson.decode(value)
if row['sealed_secret'] ~= ARGV[2] then
  return 0
end
row['sealed_secret'] = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(row))
return 1
"""


class RedisApiKeyStore(JsonHash, Sealing):
    NAME = "api_keys"

    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:", *,
                 key_file: Path) -> None:
        JsonHash.__init__(self, client, prefix)
        Sealing.__init__(self, key_file)
        self._reseal = client.register_script(_RESEAL)

    def create(self, account: str, description: str | None = None) -> tuple[ApiKey, str]:
        key, secret, sealed = self._new(account, description)
        value = json.dumps({"account": key.account, "description": key.description,
                            "sealed_secret": sealed, "created_at": key.created_at,
                            "disabled": False})
        if not self._redis.hsetnx(self._key, key.access_key_id, value):
            raise RuntimeError("a generated access key id is taken; try again")  # 80 bits
        return key, secret

    def lookup(self, access_key_id: str) -> tuple[ApiKey, str] | None:
        value = cast(bytes | None, self._redis.hget(self._key, access_key_id))
        if value is None:
            return None
        data = json.loads(value)
        return self._reveal(_api_key(access_key_id, data), str(data["sealed_secret"]))

    def list(self, account: str | None = None) -> builtins.list[ApiKey]:
        keys = [_api_key(name, data) for name, data in self._rows().items()]
        return sorted((k for k in keys if account is None or k.account == account),
                      key=lambda k: (k.created_at, k.access_key_id))

    def sealed_with(self) -> dict[str, int]:
        """How many secrets each key-encryption key (by id) sealed."""
        return count_sealers(str(data["sealed_secret"]) for data in self._rows().values())

    def rekey(self, old_key: bytes, new_key: bytes) -> int:
        """Re-seal under new_key every secret sealed under old_key, one row at a time
        (each one atomic); a node reads either seal meanwhile (KeyFile)."""
        rows = [(_api_key(name, data), str(data["sealed_secret"]))
                for name, data in self._rows().items()]
        changed = 0
        for key, before, after in self._resealed(rows, old_key, new_key):
            changed += int(self._reseal(keys=[self._key],
                                        args=[key.access_key_id, before, after]))
        return changed


def _api_key(access_key_id: str, data: dict[str, Any]) -> ApiKey:
    return ApiKey(access_key_id=access_key_id, account=str(data["account"]),
                  created_at=float(data["created_at"]), disabled=bool(data.get("disabled")),
                  description=data.get("description"))
