"""A contact list's contacts, for operators: list (SES's ListContacts), get, create,
update, delete, import, export.

Blocking calls on a `ContactStore` (the state database's or Redis's: the daemon's,
or one the CLI opens). The lists are the configuration's (`contact_lists:`); every
call names one, and a name the configuration lacks is ContactListNotFound. The send
path reads the same store for every message that names the list, so a change made
here holds from the next message on.

SES's rules where they fit: a create of a contact the list has is AlreadyExists
(`ContactExists`); an update or delete of one it lacks is NotFound; a topic must be
one of the list's (its NotFound words are the send path's); AttributesData must be
a JSON object ("It must be a valid JSON object"). An update replaces what it gives:
`replace_topics` (the admin API, as SES's UpdateContact: "you must specify all
existing topic preferences") makes the given preferences the contact's only ones;
otherwise (the CLI) each given topic changes and the others stay.

Changes made here are the operator's, not the recipient's: they make no
Subscription event. SES publishes one when "the recipient updated the subscription
preferences by clicking List-Unsubscribe in the email header or the Unsubscribe link
in the footer" (seed 004, "Subscriptions"), which is smtprelay.events.engagement's
job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from smtprelay.config import Config, ContactListConfig, SubscriptionStatus
from smtprelay.operations import contact_files, paging
from smtprelay.operations.contact_files import RawRow
from smtprelay.operations.errors import (
    BadContact,
    ContactExists,
    ContactListNotFound,
    ContactNotFound,
    Invalid,
    TopicNotFound,
)
from smtprelay.operations.suppression_files import ImportTally
from smtprelay.policy.contacts import Contact, ContactChange, ContactFilter, ContactStore
from smtprelay.policy.suppression import address_problem, normalise

STATUSES: tuple[SubscriptionStatus, ...] = ("OPT_IN", "OPT_OUT")
# AttributesData, in characters. SES documents no limit; this one keeps a contact's
# row small (a million contacts) and a CreateContact body at its largest under the
# admin API's 64 KiB even when each character is sent as the two \\uXXXX escapes of a
# surrogate pair (12 bytes: 48 KiB for the attributes, 4 KiB for the address).
MAX_ATTRIBUTES = 4096
# A cursor is the last address of a page: at most as long as an address.
MAX_CURSOR = 320
# Contacts fetched at a time by an export, so that a million never sit in memory.
_PAGE = 5000


class BadCursor(Invalid):
    def __init__(self) -> None:
        super().__init__("the cursor is not an address a page of contacts ends with "
                         "(at most 320 characters, no control characters); start again "
                         "without one")


# -- the lists (configuration) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactList:
    name: str
    settings: ContactListConfig

    def as_json(self) -> dict[str, Any]:
        """SES's GetContactList names, and the account the list belongs to."""
        return {
            "ContactListName": self.name,
            "Account": self.settings.account,
            "Description": self.settings.description,
            "Topics": [{"TopicName": topic.name, "DisplayName": topic.display_name,
                        "Description": topic.description,
                        "DefaultSubscriptionStatus": topic.default_subscription_status}
                       for topic in self.settings.topics],
        }


def find_list(config: Config, name: str) -> ContactListConfig:
    settings = config.contact_lists.get(name)
    if settings is None:
        raise ContactListNotFound(name, config.contact_lists)
    return settings


def lists(config: Config) -> list[ContactList]:
    """Every configured list, by name."""
    return [ContactList(name, settings) for name, settings in sorted(config.contact_lists.items())]


def contact_list(config: Config, name: str) -> ContactList:
    return ContactList(name, find_list(config, name))


# -- what both front ends show of a contact ------------------------------------------


def contact_json(contact: Contact, settings: ContactListConfig) -> dict[str, Any]:
    """SES's GetContact names: the explicit preferences (of the list's topics; one
    the configuration no longer has is left out), each topic's default, and times as
    unix seconds."""
    return {
        "ContactListName": contact.contact_list,
        "EmailAddress": contact.address,
        "UnsubscribeAll": contact.unsubscribe_all,
        "TopicPreferences": [{"TopicName": name, "SubscriptionStatus": status}
                             for name, status in preferences(contact, settings).items()],
        "TopicDefaultPreferences": [
            {"TopicName": topic.name, "SubscriptionStatus": topic.default_subscription_status}
            for topic in settings.topics],
        "AttributesData": contact.attributes,
        "CreatedTimestamp": contact.created_at,
        "LastUpdatedTimestamp": contact.updated_at,
    }


def preferences(contact: Contact, settings: ContactListConfig) -> dict[str, SubscriptionStatus]:
    """The contact's explicit preferences for the list's topics, in the list's order."""
    return {topic.name: contact.topics[topic.name] for topic in settings.topics
            if topic.name in contact.topics}


# -- checks ---------------------------------------------------------------------------


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate: from a JSON escape or an undecodable argument
    return True


def check_address(address: str) -> str:
    """The address as a contact is stored (normalise), or BadContact saying why not."""
    problem = address_problem(address)
    if problem is None and not _utf8(address):
        problem = f"{address!r} is not UTF-8"
    if problem is not None:
        raise BadContact("EmailAddress", problem)
    return normalise(address)


def check_topics(name: str, settings: ContactListConfig,
                 given: Iterable[tuple[str, str | None]]
                 ) -> dict[str, SubscriptionStatus | None]:
    """(topic, status) pairs as preferences; status None takes a preference away.
    TopicNotFound for a topic the list does not have, BadContact for a status that
    is not OPT_IN or OPT_OUT, or a topic given twice."""
    pairs = list(given)
    known = [topic.name for topic in settings.topics]
    for topic, _status in pairs:
        if topic not in known:
            raise TopicNotFound(name, topic, known)
    found: dict[str, SubscriptionStatus | None] = {}
    for topic, status in pairs:
        if topic in found:
            raise BadContact("TopicPreferences", f"topic {topic} is given twice")
        if status is not None and status not in STATUSES:
            raise BadContact("TopicPreferences", f"{status!r} is not a subscription status "
                                                 f"(topic {topic}): use OPT_IN or OPT_OUT")
        found[topic] = status
    return found


def preference_pairs(value: list[Any]) -> list[tuple[str, str | None]]:
    """SES's TopicPreferences, [{"TopicName": ..., "SubscriptionStatus": ...}], as the
    pairs check_topics takes (which checks the names and statuses)."""
    pairs: list[tuple[str, str | None]] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"TopicName", "SubscriptionStatus"} \
                or not all(isinstance(v, str) for v in item.values()):
            raise Invalid(f"TopicPreferences[{index}] must be {{\"TopicName\": ..., "
                          "\"SubscriptionStatus\": \"OPT_IN\" | \"OPT_OUT\"}")
        pairs.append((item["TopicName"], item["SubscriptionStatus"]))
    return pairs


def check_attributes(text: str) -> str:
    """AttributesData as given, or BadContact: it must be a JSON object's text (SES:
    "It must be a valid JSON object") of at most MAX_ATTRIBUTES characters."""
    if len(text) > MAX_ATTRIBUTES:
        raise BadContact("AttributesData", f"the attributes are {len(text)} characters; "
                                           f"at most {MAX_ATTRIBUTES}")
    if not _utf8(text):
        raise BadContact("AttributesData", "the attributes are not UTF-8 (a lone surrogate)")
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadContact("AttributesData", f"the attributes are not JSON ({exc.msg} at "
                                           f"character {exc.pos})") from None
    except RecursionError:
        raise BadContact("AttributesData", "the attributes are not JSON (nested too "
                                           "deeply)") from None
    except ValueError as exc:
        # NaN and Infinity (not JSON), integers too long to read.
        raise BadContact("AttributesData", f"the attributes are not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BadContact("AttributesData", f"the attributes must be a JSON object, not "
                                           f"{_json_kind(value)}")
    return text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


def check_cursor(after: str | None) -> None:
    if after is not None and (len(after) > MAX_CURSOR or not _utf8(after)
                              or any(ord(c) < 32 or ord(c) == 127 for c in after)):
        raise BadCursor


def make_filter(config: Config, name: str, *, status: str | None = None,
                topic: str | None = None, use_default: bool = False) -> ContactFilter:
    """SES's ListContacts filter (FilteredStatus, TopicFilter) for a list; without a
    topic, `use_default` has nothing to apply to and is ignored."""
    settings = find_list(config, name)
    if status is not None and status not in STATUSES:
        raise BadContact("FilteredStatus", f"{status!r} is not a subscription status: use "
                                           "OPT_IN or OPT_OUT")
    chosen = None
    if topic is not None:
        chosen = settings.topic(topic)
        if chosen is None:
            raise TopicNotFound(name, topic, [t.name for t in settings.topics])
    return ContactFilter(status, chosen, use_default)


def _key(name: str, address: str) -> str:
    """The stored form of an address looked up; one that cannot be stored is no
    contact."""
    if not _utf8(address):
        raise ContactNotFound(name, address)
    return normalise(address)


# -- one contact ------------------------------------------------------------------------


def get(store: ContactStore, config: Config, name: str, address: str) -> Contact:
    find_list(config, name)
    contact = store.get(name, _key(name, address))
    if contact is None:
        raise ContactNotFound(name, address)
    return contact


def create(store: ContactStore, config: Config, name: str, address: str, *,
           topics: Sequence[tuple[str, str | None]] = (), unsubscribe_all: bool = False,
           attributes: str | None = None, at: float | None = None) -> Contact:
    """A new contact (SES's CreateContact); ContactExists if the list has it."""
    settings = find_list(config, name)
    key = check_address(address)
    change = ContactChange(key, unsubscribe_all, check_topics(name, settings, topics),
                           attributes=None if attributes is None else check_attributes(attributes))
    made = store.create(name, change, at=at)
    if made is None:
        raise ContactExists(name, key)
    return made


def update(store: ContactStore, config: Config, name: str, address: str, *,
           topics: Sequence[tuple[str, str | None]] | None = None, replace_topics: bool = False,
           unsubscribe_all: bool | None = None, attributes: str | None = None,
           at: float | None = None) -> Contact:
    """Change a contact (SES's UpdateContact); what is None stays as it is.
    `replace_topics`: the given preferences (none when `topics` is None) are the
    contact's only ones."""
    settings = find_list(config, name)
    given = check_topics(name, settings, topics or ())
    change = ContactChange(_key(name, address), unsubscribe_all, given,
                           replace_topics=replace_topics,
                           attributes=None if attributes is None else check_attributes(attributes))
    changed = store.update(name, change, at=at)
    if changed is None:
        raise ContactNotFound(name, address)
    return changed[1]


def delete(store: ContactStore, config: Config, name: str, address: str) -> str:
    """Take a contact off the list (SES's DeleteContact); the address as it was stored.
    A later message to the list makes it a contact again, with no preferences."""
    find_list(config, name)
    if not store.delete(name, _key(name, address)):
        raise ContactNotFound(name, address)
    return normalise(address)


# -- listings -------------------------------------------------------------------------------


def page(store: ContactStore, config: Config, name: str, *,
         where: ContactFilter | None = None, limit: int,
         after: str | None = None) -> paging.Page[Contact]:
    """A page of the list's contacts in address order (SES's ListContacts); `where`
    from make_filter."""
    find_list(config, name)
    check_cursor(after)
    return paging.page(lambda n: store.page(name, where=where, after=after, limit=n),
                       limit, key=lambda contact: contact.address)


def contacts(store: ContactStore, config: Config, name: str, *,
             where: ContactFilter | None = None) -> Iterator[Contact]:
    """Every matching contact in address order, read a page at a time."""
    find_list(config, name)
    return store.iterate(name, where=where, page=_PAGE)


# -- import and export ----------------------------------------------------------------------


@dataclass
class ImportPlan(ImportTally):
    """The good rows of an import file, by stored address (the last row wins), and
    what was wrong with the others."""

    changes: dict[str, ContactChange] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Imported:
    new: int
    updated: int


def read_file(config: Config, name: str, text: str, display: str, fmt: str) -> ImportPlan:
    """Check every row of a CSV or JSON file (contact_files) against the list.
    UnreadableFile when the file as a whole cannot be used."""
    settings = find_list(config, name)
    rows = (contact_files.read_csv(text, display, [t.name for t in settings.topics])
            if fmt == "csv" else contact_files.read_json(text, display))
    return plan(config, name, rows)


def plan(config: Config, name: str, rows: Iterable[RawRow]) -> ImportPlan:
    settings = find_list(config, name)
    result = ImportPlan()
    for row in rows:
        if row.problem is not None:
            result.problem(row.where, row.problem)
            continue
        if row.address is None:
            result.problem(row.where, "no emailAddress")
            continue
        try:
            key = check_address(row.address)
            change = ContactChange(
                key, row.unsubscribe_all, check_topics(name, settings, row.topics),
                attributes=None if row.attributes is None else check_attributes(row.attributes))
        except (BadContact, TopicNotFound) as exc:
            result.problem(row.where, str(exc))
            continue
        if key in result.changes:
            result.duplicates += 1
            del result.changes[key]  # put back below: the file's last order
        result.changes[key] = change
    return result


def import_plan(store: ContactStore, config: Config, name: str,
                checked: ImportPlan, *, at: float | None = None) -> Imported:
    """Create or change the contacts of a checked file (SES's import action PUT), in
    transactions of policy.contacts.IMPORT_BATCH rows."""
    find_list(config, name)
    new, updated = store.put_many(name, checked.changes.values(), at=at)
    return Imported(new, updated)


def export(store: ContactStore, config: Config, name: str, out: IO[str],
           fmt: str) -> int:
    """Write the list's contacts as `fmt` ("csv" or "json": NDJSON) in SES's import
    layout, which import reads back; how many."""
    settings = find_list(config, name)
    topics = [topic.name for topic in settings.topics]
    rows = ((c.address, c.unsubscribe_all, c.attributes,
             cast(dict[str, str], preferences(c, settings)))
            for c in contacts(store, config, name))
    if fmt == "csv":
        return contact_files.write_csv(out, rows, topics)
    return contact_files.write_ndjson(out, rows, topics)
