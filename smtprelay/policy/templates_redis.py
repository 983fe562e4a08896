"""SES email templates in Redis (`store: {backend: redis}`): every node sends with the
same templates. Per account, a hash (name -> JSON of the parts) and the names'
sorted index (policy.redis_entries), so ListEmailTemplates pages by name as the
state database's table does. Create and update are one script each, so two nodes
creating one name, or an update racing a delete, cannot both win."""

from __future__ import annotations

import time

import redis

from smtprelay.policy.redis_entries import AddressEntries, RedisStore
from smtprelay.policy.templates import (
    MAX_TEMPLATES,
    Content,
    Template,
    TemplateExists,
    TooManyTemplates,
    decode,
    encode,
)

# KEYS: the account's hash, its index. ARGV: name, value, the limit.
# 0 created, 1 the name exists, 2 the account is at the limit.
_CREATE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 2 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return 0
"""
# KEYS: the account's hash. ARGV: name, new parts (JSON). Keeps created_at.
_UPDATE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then return 0 end
local value = cjson.decode(ARGV[2])
value['created_at'] = cjson.decode(current)['created_at']
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(value))
return 1
"""


class RedisTemplateStore(RedisStore):
    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:") -> None:
        super().__init__(client, prefix)
        self._accounts = AddressEntries(client, prefix, "templates")
        self._create = client.register_script(_CREATE)
        self._update = client.register_script(_UPDATE)

    def create(self, account: str, name: str, content: Content, *,
               at: float | None = None) -> Template:
        template = Template(name, content, time.time() if at is None else at)
        answer = int(self._create(
            keys=[self._accounts.entries(account), self._accounts.index(account)],
            args=[name, encode(template), MAX_TEMPLATES]))
        if answer == 1:
            raise TemplateExists(name)
        if answer == 2:
            raise TooManyTemplates(account)
        return template

    def get(self, account: str, name: str) -> Template | None:
        value = self._accounts.get(account, name)
        return None if value is None else decode(name, value)

    def update(self, account: str, name: str, content: Content) -> bool:
        return bool(self._update(keys=[self._accounts.entries(account)],
                                 args=[name, encode(Template(name, content, 0.0))]))

    def delete(self, account: str, name: str) -> bool:
        return self._accounts.remove(account, name)

    def page(self, account: str, *, after: str | None, limit: int) -> list[Template]:
        found: list[Template] = []
        for name, value in self._accounts.scan(account, "-" if after is None else "(" + after):
            found.append(decode(name, value))
            if len(found) >= limit:
                break
        return found
