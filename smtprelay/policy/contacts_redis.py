"""The contact lists' contacts in Redis (`store: {backend: redis}`): one set of contacts
for every node, so a person who unsubscribed through one node's link (or whom an
operator opted out there) is not mailed by the next list message another node takes.

Per list, the contacts are a hash (normalised address -> JSON of the rest) and their
addresses a sorted set (policy.redis_entries), so the admin API and the CLI page a
list in address order as they do the state database's table. The semantics are
SQLiteContactStore's, and the changes are computed by the same code (ContactChange,
contacts.unsubscribed).

A list message makes at most two round trips: one HMGET of all its recipients, and
for those not yet contacts one MULTI that creates them with HSETNX (a contact another
node created a moment before is kept as it is) and reads them back. A change is read
in Python and written by one Lua script only if the contact is still as it was read,
else read and computed again: unlike WATCH on the list's hash, which every new
recipient of a busy list would disturb, the check is on the one contact.

Contacts must survive a Redis restart (docs/cluster.md: appendonly yes). A blocking
client: the daemon calls it from threads, the CLI directly.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import redis

from smtprelay.config import SubscriptionStatus
from smtprelay.policy.contacts import (
    Contact,
    ContactChange,
    ContactFilter,
    in_import_batches,
    paged,
    unsubscribed,
)
from smtprelay.policy.redis_entries import AddressEntries, RedisStore
from smtprelay.policy.suppression import by_key, normalise

# KEYS: a list's entries (hash), its index (sorted set). ARGV: triples of address,
# the value it was read with ('' for no contact), the value to write. Writes each
# contact still as it was read; returns the addresses that had changed meanwhile.
_PUT_UNCHANGED = """
local changed = {}
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i]) or ''
  if current == ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    redis.call('ZADD', KEYS[2], 0, ARGV[i])
  else
    changed[#changed + 1] = ARGV[i]
  end
end
return changed
"""

# How often a change is read and computed again when others keep changing the same
# contact before it can be written; past that the caller gets an error (a temporary
# reply, a 500), never a change computed from a stale contact.
_ATTEMPTS = 20


class ContactChanging(redis.RedisError):
    """A contact kept changing while a change to it was computed."""


class RedisContactStore(RedisStore):
    def __init__(self, client: redis.Redis, prefix: str = "smtprelay:") -> None:
        super().__init__(client, prefix)
        self._lists = AddressEntries(client, prefix, "contacts")
        self._put_unchanged = client.register_script(_PUT_UNCHANGED)

    # -- the send path and the unsubscribes ----------------------------------------------

    def contacts(self, contact_list: str, addresses: Sequence[str], *,
                 create_at: float | None = None) -> dict[str, Contact]:
        wanted = by_key(addresses)
        if not wanted:
            return {}
        keys = list(wanted)
        found: dict[str, bytes] = {}
        missing: list[str] = []
        for key, value in zip(keys, self._lists.get_many(contact_list, keys), strict=True):
            if value is None:
                missing.append(key)
            else:
                found[key] = value
        if missing and create_at is not None:
            # Only a message to someone new writes; mail to known contacts reads.
            new = _value(Contact(contact_list, "", created_at=create_at, updated_at=create_at))
            entries = self._lists.entries(contact_list)
            with self._redis.pipeline(transaction=True) as pipe:
                for key in missing:
                    pipe.hsetnx(entries, key, new)
                pipe.zadd(self._lists.index(contact_list), dict.fromkeys(missing, 0))
                pipe.hmget(entries, missing)
                made = cast(list[bytes | None], pipe.execute()[-1])
            found.update((key, value) for key, value in zip(missing, made, strict=True)
                         if value is not None)
        return {original: _contact(contact_list, key, value) for key, value in found.items()
                for original in wanted[key]}

    def get(self, contact_list: str, address: str) -> Contact | None:
        key = normalise(address)
        value = self._lists.get(contact_list, key)
        return None if value is None else _contact(contact_list, key, value)

    def unsubscribe(self, contact_list: str, address: str, topic: str | None, *,
                    at: float | None = None) -> tuple[Contact | None, Contact]:
        key = normalise(address)
        when = time.time() if at is None else at
        changed = self._change(contact_list, key, lambda before: unsubscribed(
            contact_list, key, before, topic, when))
        assert changed is not None  # an unsubscribe always has a contact after it
        return changed

    # -- operators' changes (smtprelay.operations.contacts) ----------------------------

    def create(self, contact_list: str, change: ContactChange, *,
               at: float | None = None) -> Contact | None:
        """A new contact; None when the list already has the address (nothing changes)."""
        contact = change.applied(contact_list, None, time.time() if at is None else at)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self._lists.entries(contact_list), contact.address, _value(contact))
            pipe.zadd(self._lists.index(contact_list), {contact.address: 0})
            made = pipe.execute()[0]
        return contact if made else None

    def update(self, contact_list: str, change: ContactChange, *,
               at: float | None = None) -> tuple[Contact, Contact] | None:
        """Change a contact (before, after); None when there is none."""
        when = time.time() if at is None else at
        changed = self._change(contact_list, normalise(change.address), lambda before: (
            None if before is None else change.applied(contact_list, before, when)))
        if changed is None:
            return None
        before, after = changed
        assert before is not None
        return before, after

    def delete(self, contact_list: str, address: str) -> bool:
        """True if the list had the contact."""
        return self._lists.remove(contact_list, normalise(address))

    def page(self, contact_list: str, *, where: ContactFilter | None = None,
             after: str | None = None, limit: int) -> list[Contact]:
        """Contacts in address order, those after `after` (keyset paging). The filter
        is ContactFilter.matches, which the SQLite store's condition is tested against."""
        found: list[Contact] = []
        if limit <= 0:
            return found
        matches = (where or ContactFilter()).matches
        start = "-" if after is None else "(" + after
        for address, value in self._lists.scan(contact_list, start):
            contact = _contact(contact_list, address, value)
            if matches(contact):
                found.append(contact)
                if len(found) >= limit:
                    break
        return found

    def iterate(self, contact_list: str, *, where: ContactFilter | None = None,
                page: int = 5000) -> Iterator[Contact]:
        """Every matching contact, a page at a time so memory stays flat (exports)."""
        return paged(self, contact_list, where, page)

    def count(self, contact_list: str) -> int:
        return self._lists.count(contact_list)

    def put_many(self, contact_list: str, changes: Iterable[ContactChange], *,
                 at: float | None = None) -> tuple[int, int]:
        """Create or change each contact (an import), IMPORT_BATCH at a time, each batch
        one script (with more only for contacts changed meanwhile); (new, updated)."""
        when = time.time() if at is None else at
        return in_import_batches(changes,
                                 lambda batch: self._put_batch(contact_list, batch, when))

    # -- reading, computing and writing a change -------------------------------------------

    def _put_batch(self, contact_list: str, batch: dict[str, ContactChange],
                   at: float) -> tuple[int, int]:
        new = updated = 0
        pending = sorted(batch)
        for _ in range(_ATTEMPTS):
            values = self._lists.get_many(contact_list, pending)
            rows = [(key, value, batch[key].applied(
                        contact_list, None if value is None else _contact(contact_list, key, value),
                        at))
                    for key, value in zip(pending, values, strict=True)]
            changed = self._write_unchanged(contact_list, rows)
            for key, value, _after in rows:
                if key in changed:
                    continue
                if value is None:
                    new += 1
                else:
                    updated += 1
            pending = [key for key in pending if key in changed]
            if not pending:
                return new, updated
        raise ContactChanging(f"{len(pending)} contacts of list {contact_list!r} kept "
                              "changing during the import; import them again")

    def _change(self, contact_list: str, key: str,
                make: Callable[[Contact | None], Contact | None]
                ) -> tuple[Contact | None, Contact] | None:
        """(before, after) of `make(before)` written, or None when it makes nothing (and
        nothing is written). `make` is called again if the contact changed meanwhile."""
        for _ in range(_ATTEMPTS):
            value = self._lists.get(contact_list, key)
            before = None if value is None else _contact(contact_list, key, value)
            after = make(before)
            if after is None:
                return None
            if not self._write_unchanged(contact_list, [(key, value, after)]):
                return before, after
        raise ContactChanging(f"contact {key} of list {contact_list!r} kept changing; "
                              "try again")

    def _write_unchanged(self, contact_list: str,
                         rows: Sequence[tuple[str, bytes | None, Contact]]) -> set[str]:
        """Write each contact still as read (None: no contact); the addresses that were
        not, having changed meanwhile."""
        args: list[str | bytes] = []
        for key, value, after in rows:
            args += [key, b"" if value is None else value, _value(after)]
        changed = self._put_unchanged(
            keys=[self._lists.entries(contact_list), self._lists.index(contact_list)],
            args=args)
        return {item.decode("utf-8", "surrogateescape") for item in cast(list[bytes], changed)}


def _value(contact: Contact) -> str:
    return json.dumps([int(contact.unsubscribe_all), dict(sorted(contact.topics.items())),
                       contact.attributes, contact.created_at, contact.updated_at],
                      ensure_ascii=False, separators=(",", ":"))


def _contact(contact_list: str, address: str, value: bytes) -> Contact:
    unsubscribe_all, topics, attributes, created_at, updated_at = cast(
        list[Any], json.loads(value))
    return Contact(contact_list=contact_list, address=address,
                   unsubscribe_all=bool(unsubscribe_all),
                   topics={str(k): cast(SubscriptionStatus, v) for k, v in topics.items()},
                   attributes=str(attributes), created_at=float(created_at),
                   updated_at=float(updated_at))
