"""Contact lists (SES list management): contacts, their subscription preferences, and
what a message's ``X-SES-LIST-MANAGEMENT-OPTIONS`` means for its recipients.

SES semantics (seed 004, "Using list management" and "Using subscription
management", lines ~9590-9970):

- A message names a list and optionally one of its topics with
  ``X-SES-LIST-MANAGEMENT-OPTIONS: <list>; topic=<topic>``. The list must be one of
  the sending account's (``contact_lists.<name>.account``); anything else refuses the
  message (SES's API answers NotFoundException; SMTP has no text for it, so
  ``mail.replies`` words one).
- "If you include ListManagementOptions ... to a recipient email address that is not
  on your contact list, then a contact will be created on your list automatically":
  every recipient of such a message becomes a contact (no preference, not
  unsubscribed) if it is not one yet.
- "Amazon SES will bounce an email if it is sent to an unsubscribed contact": a
  contact that unsubscribed from the whole list (``unsubscribe_all``), or from the
  message's topic (an explicit OPT_OUT, or no preference and the topic's default
  OPT_OUT), is not delivered to. The message is still accepted; the recipient is
  recorded like a suppressed one (final state, a Permanent bounce, events).
- Mail without the header is never held back by a list: a person who left a
  newsletter still gets password resets.

A configuration set with one-click unsubscribe but no list keeps working: its
unsubscribes opt the person out of the set's implicit list (``set_scope``), which
holds back later mail of that set, and only of that set.

The contacts are kept where the suppression list is (``store.backend``): in the state
database (``SQLiteContactStore``, one row per (list, address)), or with
``store: {backend: redis}`` in Redis (policy.contacts_redis), so that an unsubscribe
on one node holds on every node; policy.stores picks. The lists themselves are
configuration (``smtprelay.config.lists``). Operators change contacts with the admin
API and the CLI (smtprelay.operations.contacts); the send path reads the store for
every list message, so a change counts from the next message on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

from smtprelay.config import Config, ContactListConfig, SubscriptionStatus, TopicConfig, check_name
from smtprelay.db import sqlite
from smtprelay.mail import replies as R
from smtprelay.mail.headers import HeaderField
from smtprelay.mail.replies import Reply
from smtprelay.policy.suppression import by_key, normalise

HEADER = "x-ses-list-management-options"
# The implicit list of a configuration set's own unsubscribes. List names cannot hold
# a colon (config.lists.NAME_PATTERN), so no configured list can take this name.
_SET_SCOPE = "configuration-set:"

# Bound on the host parameters of one `IN (...)` query (see policy.suppression).
_IN_CHUNK = 500
# Rows per transaction of an import (put_many), as policy.suppression.IMPORT_BATCH.
IMPORT_BATCH = 10_000

# Each entry moves the table one version on; never edit a released entry (the scripts
# are split at semicolons: none in comments). topic_preferences is a JSON object
# {"<topic>": "OPT_IN" | "OPT_OUT"} of the contact's explicit preferences (a topic not
# in it follows its default_subscription_status); attributes is SES's AttributesData,
# a JSON object about the contact.
_MIGRATIONS: tuple[str, ...] = ("""
CREATE TABLE contacts (
    contact_list TEXT NOT NULL,
    address TEXT NOT NULL,
    unsubscribe_all INTEGER NOT NULL DEFAULT 0 CHECK (unsubscribe_all IN (0, 1)),
    topic_preferences TEXT NOT NULL DEFAULT '{}',
    attributes TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (contact_list, address)
) WITHOUT ROWID
""",)

_COLUMNS = ("contact_list, address, unsubscribe_all, topic_preferences, attributes,"
            " created_at, updated_at")


# --- what a message asks for ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListOptions:
    """A message's list-management options, checked against the configuration."""

    contact_list: str
    settings: ContactListConfig
    topic: TopicConfig | None = None

    @property
    def where(self) -> str:
        """The list and topic as the diagnostics and logs name them."""
        if self.topic is None:
            return f"contact list {self.contact_list!r}"
        return f"topic {self.topic.name!r} of contact list {self.contact_list!r}"


def parse_options(value: str) -> tuple[str, str | None]:
    """``<list>; topic=<topic>`` (topic optional) as (list, topic); ValueError saying
    what is wrong. Spaces around the parts and the parameter name's case do not
    matter; any other parameter, or a second topic, is an error rather than ignored."""
    parts = [part.strip() for part in value.split(";")]
    if parts and parts[-1] == "":
        parts.pop()  # "news;" or "news; topic=x;"
    if not parts or not parts[0]:
        raise ValueError("no contact list named (expected '<list>; topic=<topic>')")
    name = check_name(parts[0], "contact list")
    topic: str | None = None
    for parameter in parts[1:]:
        key, eq, given = parameter.partition("=")
        if not eq or key.strip().lower() != "topic":
            raise ValueError(f"unknown parameter {parameter!r}")
        if topic is not None:
            raise ValueError("topic= is given twice")
        topic = check_name(given.strip().strip('"'), "topic")
    return name, topic


def options_of(config: Config, account: str,
               fields: Sequence[HeaderField]) -> ListOptions | Reply | None:
    """The message's list options; None without the header; a Reply that refuses the
    message when the header is malformed, repeated, or names a list or topic the
    sending account does not have."""
    values = [f.value for f in fields if f.key == HEADER]
    if not values:
        return None
    if len(values) > 1:
        return R.duplicate_header("X-SES-LIST-MANAGEMENT-OPTIONS")
    try:
        name, topic_name = parse_options(values[0])
    except ValueError as exc:
        return R.bad_list_management(str(exc))
    settings = config.contact_lists.get(name)
    # A list of another account is refused as if it did not exist: a sender learns
    # nothing about other accounts' lists.
    if settings is None or settings.account != account:
        return R.contact_list_unknown(name)
    topic: TopicConfig | None = None
    if topic_name is not None:
        topic = settings.topic(topic_name)
        if topic is None:
            return R.topic_unknown(name, topic_name)
    return ListOptions(name, settings, topic)


def set_scope(configuration_set: str) -> str:
    """The implicit list a set's unsubscribes go to when its mail names no list."""
    return _SET_SCOPE + configuration_set


def scope_set(contact_list: str) -> str | None:
    """The configuration set whose implicit list this is, or None for a configured list."""
    if contact_list.startswith(_SET_SCOPE):
        return contact_list[len(_SET_SCOPE):]
    return None


# --- contacts ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Contact:
    contact_list: str
    address: str  # normalised (policy.suppression.normalise)
    unsubscribe_all: bool = False
    # Explicit preferences only; other topics follow their default.
    topics: Mapping[str, SubscriptionStatus] = field(default_factory=dict)
    attributes: str = "{}"  # a JSON object, as SES's AttributesData
    created_at: float = 0.0
    updated_at: float = 0.0

    def status(self, topic: TopicConfig) -> SubscriptionStatus:
        """The contact's preference for `topic`, its default when it has none."""
        return self.topics.get(topic.name, topic.default_subscription_status)

    def receives(self, topic: TopicConfig | None) -> bool:
        """Whether mail of the list (of `topic`, when given) is delivered to the contact."""
        if self.unsubscribe_all:
            return False
        return topic is None or self.status(topic) == "OPT_IN"



@dataclass(frozen=True, slots=True)
class ContactChange:
    """What an operator (admin API, CLI, an import row) sets on one contact; what it
    leaves out stays as it is (a new contact: subscribed, no preferences, ``{}``).
    Checked by smtprelay.operations.contacts before it gets here."""

    address: str
    unsubscribe_all: bool | None = None
    # Explicit preferences to set; None takes the topic's preference away (its
    # default applies again).
    topics: Mapping[str, SubscriptionStatus | None] = field(default_factory=dict)
    # True: the contact's preferences are `topics` alone, the others go (SES's
    # UpdateContact: "you must specify all existing topic preferences").
    replace_topics: bool = False
    attributes: str | None = None  # a JSON object's text

    def applied(self, contact_list: str, before: Contact | None, at: float) -> Contact:
        base = before or Contact(contact_list, normalise(self.address), created_at=at)
        topics: dict[str, SubscriptionStatus] = {} if self.replace_topics else dict(base.topics)
        for name, status in self.topics.items():
            if status is None:
                topics.pop(name, None)
            else:
                topics[name] = status
        return Contact(
            contact_list, base.address,
            base.unsubscribe_all if self.unsubscribe_all is None else self.unsubscribe_all,
            dict(sorted(topics.items())),
            base.attributes if self.attributes is None else self.attributes,
            base.created_at, at)


@dataclass(frozen=True, slots=True)
class ContactFilter:
    """SES's ListContacts filter: `status` (FilteredStatus) and `topic` (TopicFilter's
    TopicName) with `use_default` (UseDefaultIfPreferenceUnavailable).

    Without a topic, the status is the list's: OPT_OUT is a contact who unsubscribed
    from all of it. With a topic, it is the status a message of the topic meets:
    OPT_OUT for a contact who unsubscribed from the whole list, else their
    preference for the topic, or with `use_default` the topic's default when they
    have none; without `use_default`, only contacts with a preference for the topic
    are listed (SES: "only contacts with an explicitly set preference are
    considered"). A topic alone lists those with a preference for it (every contact
    with `use_default`)."""

    status: SubscriptionStatus | None = None
    topic: TopicConfig | None = None
    use_default: bool = False

    def sql(self) -> tuple[str, list[object]]:
        """The condition (" AND ..." or "") and its parameters."""
        if self.topic is None:
            if self.status is None:
                return "", []
            return " AND unsubscribe_all = ?", [int(self.status == "OPT_OUT")]
        # Topic names are [A-Za-z0-9_-] (config.lists.check_name): safe in a quoted
        # JSON path, which the name still goes into as a parameter.
        path = f'$."{self.topic.name}"'
        where = ""
        params: list[object] = []
        if not self.use_default:
            where += " AND json_extract(topic_preferences, ?) IS NOT NULL"
            params.append(path)
        if self.status is not None:
            where += (" AND (CASE WHEN unsubscribe_all THEN 'OPT_OUT' ELSE"
                      " coalesce(json_extract(topic_preferences, ?), ?) END) = ?")
            params += [path, self.topic.default_subscription_status, self.status]
        return where, params

    def matches(self, contact: Contact) -> bool:
        """The same test in Python (the store answers with sql(); tests compare)."""
        if self.topic is None:
            return self.status is None or contact.unsubscribe_all == (self.status == "OPT_OUT")
        explicit = contact.topics.get(self.topic.name)
        if explicit is None and not self.use_default:
            return False
        if self.status is None:
            return True
        status = "OPT_OUT" if contact.unsubscribe_all else contact.status(self.topic)
        return status == self.status


class ContactStore(Protocol):
    """What the relay needs from the contacts of its lists, whatever keeps them (the
    state database, or Redis for a cluster): the send path and the unsubscribes
    (contacts, get, unsubscribe), and the operators' changes
    (smtprelay.operations.contacts)."""

    def contacts(self, contact_list: str, addresses: Sequence[str], *,
                 create_at: float | None = None) -> dict[str, Contact]:
        """The contacts among `addresses`, keyed by the address as passed in; with
        `create_at`, the missing ones are created first (no preference, subscribed)."""

    def get(self, contact_list: str, address: str) -> Contact | None: ...

    def unsubscribe(self, contact_list: str, address: str, topic: str | None, *,
                    at: float) -> tuple[Contact | None, Contact]:
        """Opt the contact out of `topic`, or of the whole list when None, creating it
        if needed; returns the contact before (None: there was none) and after."""

    def close(self) -> None: ...

    def open(self) -> None: ...

    def create(self, contact_list: str, change: ContactChange, *,
               at: float | None = None) -> Contact | None:
        """A new contact; None when the list already has the address (nothing changes)."""

    def update(self, contact_list: str, change: ContactChange, *,
               at: float | None = None) -> tuple[Contact, Contact] | None:
        """Change a contact (before, after); None when there is none."""

    def delete(self, contact_list: str, address: str) -> bool:
        """True if the list had the contact."""

    def page(self, contact_list: str, *, where: ContactFilter | None = None,
             after: str | None = None, limit: int) -> list[Contact]:
        """Contacts in address order (bytes of the UTF-8, as SQLite's BINARY
        collation), those after `after` (keyset paging)."""

    def iterate(self, contact_list: str, *, where: ContactFilter | None = None,
                page: int = 5000) -> Iterator[Contact]:
        """Every matching contact, a page at a time so memory stays flat (exports)."""

    def count(self, contact_list: str) -> int: ...

    def put_many(self, contact_list: str, changes: Iterable[ContactChange], *,
                 at: float | None = None) -> tuple[int, int]:
        """Create or change each contact (an import, SES's ContactListImportAction
        PUT), IMPORT_BATCH at a time; (new, updated). Within a batch the last change
        of an address wins."""


def unsubscribed(contact_list: str, key: str, before: Contact | None, topic: str | None,
                 at: float) -> Contact:
    """The contact `before` (None: none yet) once opted out of `topic`, or of the whole
    list when None; its attributes and creation time stay."""
    base = before or Contact(contact_list, key, created_at=at, updated_at=at)
    topics = dict(base.topics)
    if topic is None:
        unsubscribe_all = True
    else:
        unsubscribe_all = base.unsubscribe_all
        topics[topic] = "OPT_OUT"
    return Contact(contact_list, key, unsubscribe_all, topics, base.attributes,
                   base.created_at, at)


def paged(store: ContactStore, contact_list: str, where: ContactFilter | None,
          page: int) -> Iterator[Contact]:
    """Every contact store.page() matches, a page at a time (keyset paging)."""
    after: str | None = None
    while True:
        rows = store.page(contact_list, where=where, after=after, limit=page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1].address


def in_import_batches(changes: Iterable[ContactChange],
                      write: Callable[[dict[str, ContactChange]], tuple[int, int]]
                      ) -> tuple[int, int]:
    """An import's changes by stored address, handed to `write` IMPORT_BATCH at a time
    (within a batch the last change of an address wins); the sums of what `write`
    says was (new, updated)."""
    new = updated = 0
    batch: dict[str, ContactChange] = {}
    for change in changes:
        batch[normalise(change.address)] = change
        if len(batch) >= IMPORT_BATCH:
            counts = write(batch)
            new, updated = new + counts[0], updated + counts[1]
            batch = {}
    if batch:
        counts = write(batch)
        new, updated = new + counts[0], updated + counts[1]
    return new, updated


class SQLiteContactStore(sqlite.Store):
    """The contacts in the state database (config.state_path), beside the suppression
    list; safe from several processes at once, as SQLiteSuppressionStore is."""

    COMPONENT = "contacts"
    MIGRATIONS = _MIGRATIONS

    def contacts(self, contact_list: str, addresses: Sequence[str], *,
                 create_at: float | None = None) -> dict[str, Contact]:
        wanted = by_key(addresses)
        if not wanted:
            return {}
        with self._lock:
            found = self._select(contact_list, list(wanted))
            missing = [key for key in wanted if key not in found]
            if missing and create_at is not None:
                # Only a message to someone new writes (and waits for an fsync); mail
                # to known contacts reads.
                with self.transaction() as conn:
                    conn.executemany(
                        "INSERT OR IGNORE INTO contacts (contact_list, address, created_at,"
                        " updated_at) VALUES (?, ?, ?, ?)",
                        [(contact_list, key, create_at, create_at) for key in missing])
                found.update(self._select(contact_list, missing))
        return {original: contact for key, contact in found.items()
                for original in wanted[key]}

    def _select(self, contact_list: str, keys: list[str]) -> dict[str, Contact]:
        found: dict[str, Contact] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start:start + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT {_COLUMNS} FROM contacts"  # noqa: S608 - only ? marks
                f" WHERE contact_list = ? AND address IN ({marks})",
                (contact_list, *chunk)).fetchall()
            for row in rows:
                contact = _contact(row)
                found[contact.address] = contact
        return found

    def get(self, contact_list: str, address: str) -> Contact | None:
        with self._lock:
            row = self.conn.execute(
                f"SELECT {_COLUMNS} FROM contacts"  # noqa: S608 - only ? marks
                " WHERE contact_list = ? AND address = ?",
                (contact_list, normalise(address))).fetchone()
        return _contact(row) if row else None

    def unsubscribe(self, contact_list: str, address: str, topic: str | None, *,
                    at: float | None = None) -> tuple[Contact | None, Contact]:
        key = normalise(address)
        when = time.time() if at is None else at
        # IMMEDIATE: the read and the write see the same row even when two requests
        # (a provider's POST and the person's button) come at once.
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM contacts"  # noqa: S608 - only ? marks
                " WHERE contact_list = ? AND address = ?", (contact_list, key)).fetchone()
            before = _contact(row) if row else None
            after = unsubscribed(contact_list, key, before, topic, when)
            conn.execute(
                "INSERT INTO contacts (contact_list, address, unsubscribe_all,"
                " topic_preferences, attributes, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (contact_list, address) DO UPDATE SET"
                " unsubscribe_all = excluded.unsubscribe_all,"
                " topic_preferences = excluded.topic_preferences,"
                " updated_at = excluded.updated_at",
                _row(after))
        return before, after


    # -- operators' changes (smtprelay.operations.contacts) ----------------------------

    def create(self, contact_list: str, change: ContactChange, *,
               at: float | None = None) -> Contact | None:
        """A new contact; None when the list already has the address (nothing changes)."""
        contact = change.applied(contact_list, None, time.time() if at is None else at)
        with self._lock:
            cursor = self.conn.execute(
                "INSERT INTO contacts (contact_list, address, unsubscribe_all,"
                " topic_preferences, attributes, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (contact_list, address) DO NOTHING",
                _row(contact))
            return contact if cursor.rowcount == 1 else None

    def update(self, contact_list: str, change: ContactChange, *,
               at: float | None = None) -> tuple[Contact, Contact] | None:
        """Change a contact (before, after); None when there is none."""
        when = time.time() if at is None else at
        with self.transaction() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM contacts"  # noqa: S608 - only ? marks
                " WHERE contact_list = ? AND address = ?",
                (contact_list, normalise(change.address))).fetchone()
            if row is None:
                return None
            before = _contact(row)
            after = change.applied(contact_list, before, when)
            conn.execute(_UPSERT, _row(after))
        return before, after

    def delete(self, contact_list: str, address: str) -> bool:
        """True if the list had the contact."""
        with self._lock:
            cursor = self.conn.execute(
                "DELETE FROM contacts WHERE contact_list = ? AND address = ?",
                (contact_list, normalise(address)))
            return cursor.rowcount > 0

    def page(self, contact_list: str, *, where: ContactFilter | None = None,
             after: str | None = None, limit: int) -> list[Contact]:
        """Contacts in address order, those after `after` (keyset paging)."""
        condition, params = (where or ContactFilter()).sql()
        sql = (f"SELECT {_COLUMNS} FROM contacts WHERE contact_list = ?"  # noqa: S608
               + (" AND address > ?" if after is not None else "") + condition
               + " ORDER BY address LIMIT ?")
        values: list[object] = [contact_list, *([after] if after is not None else []),
                                *params, max(0, limit)]
        with self._lock:
            rows = self.conn.execute(sql, values).fetchall()
        return [_contact(row) for row in rows]

    def iterate(self, contact_list: str, *, where: ContactFilter | None = None,
                page: int = 5000) -> Iterator[Contact]:
        """Every matching contact, a page at a time so memory stays flat (exports)."""
        return paged(self, contact_list, where, page)

    def count(self, contact_list: str) -> int:
        with self._lock:
            row = self.conn.execute("SELECT count(*) FROM contacts WHERE contact_list = ?",
                                    (contact_list,)).fetchone()
        return int(row[0])

    def put_many(self, contact_list: str, changes: Iterable[ContactChange], *,
                 at: float | None = None) -> tuple[int, int]:
        """Create or change each contact (an import, SES's ContactListImportAction
        PUT), in transactions of IMPORT_BATCH; (new, updated). Within a batch the
        last change of an address wins."""
        when = time.time() if at is None else at
        return in_import_batches(changes,
                                 lambda batch: self._put_batch(contact_list, batch, when))

    def _put_batch(self, contact_list: str, batch: dict[str, ContactChange],
                   at: float) -> tuple[int, int]:
        keys = sorted(batch)  # mostly sequential B-tree writes (see policy.suppression)
        with self.transaction() as conn:
            found: dict[str, Contact] = {}
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start:start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute(
                        f"SELECT {_COLUMNS} FROM contacts"  # noqa: S608 - only ? marks
                        f" WHERE contact_list = ? AND address IN ({marks})",
                        (contact_list, *chunk)):
                    contact = _contact(row)
                    found[contact.address] = contact
            conn.executemany(_UPSERT, (_row(batch[key].applied(contact_list, found.get(key), at))
                                       for key in keys))
        return len(keys) - len(found), len(found)


_UPSERT = (
    "INSERT INTO contacts (contact_list, address, unsubscribe_all, topic_preferences,"
    " attributes, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (contact_list, address) DO UPDATE SET"
    " unsubscribe_all = excluded.unsubscribe_all,"
    " topic_preferences = excluded.topic_preferences,"
    " attributes = excluded.attributes, updated_at = excluded.updated_at")


def _row(contact: Contact) -> tuple[object, ...]:
    return (contact.contact_list, contact.address, int(contact.unsubscribe_all),
            json.dumps(dict(sorted(contact.topics.items())), separators=(",", ":")),
            contact.attributes, contact.created_at, contact.updated_at)


def _contact(row: tuple[object, ...]) -> Contact:
    topics = json.loads(str(row[3]))
    return Contact(
        contact_list=str(row[0]), address=str(row[1]), unsubscribe_all=bool(row[2]),
        topics={str(k): cast(SubscriptionStatus, v) for k, v in topics.items()},
        attributes=str(row[4]), created_at=float(cast(float, row[5])),
        updated_at=float(cast(float, row[6])))
