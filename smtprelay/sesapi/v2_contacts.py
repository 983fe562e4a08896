"""SES v2's list management on the caller's account's contact list: ListContactLists,
GetContactList, and CreateContact, GetContact, UpdateContact, DeleteContact and
ListContacts on its contacts.

The lists are configuration (`contact_lists:`, each with its `account:`), so
Create/Update/DeleteContactList have no route (the API's UnknownOperationException).
The contacts are the contact store's, with smtprelay.operations.contacts' rules (the
admin API's and the CLI's), and the send path reads them for every message that names
the list. A list of another account is answered as one that does not exist.
"""

from __future__ import annotations

from typing import Any

from smtprelay.config import Config, ConfigSource, ContactListConfig
from smtprelay.operations import contacts as contact_ops
from smtprelay.policy.contacts import ContactStore
from smtprelay.sesapi.errors import not_found
from smtprelay.sesapi.v2 import Caller
from smtprelay.sesapi.v2_rest import (
    Request,
    Route,
    blocking,
    cursor_of,
    member,
    names_page,
    next_token,
    page_size,
    ses_refusals,
)

_LISTS = "/contact-lists"
_CONTACTS = f"{_LISTS}/{{ContactListName}}/contacts"
# ListContacts' Contact has these of GetContact's members.
_SUMMARY = ("EmailAddress", "TopicPreferences", "TopicDefaultPreferences", "UnsubscribeAll",
            "LastUpdatedTimestamp")


def _owned(config: Config, caller: Caller, request: Request
           ) -> tuple[str, ContactListConfig]:
    """The list the path names, if it is the caller's account's."""
    name = request.path["ContactListName"]
    settings = config.contact_lists.get(name)
    if settings is None or settings.account != caller.account:
        raise not_found(f"List with name {name} does not exist.")
    return name, settings


def _preferences(body: Any) -> list[tuple[str, str | None]] | None:
    given = member(body, "TopicPreferences", list)
    if given is None:
        return None
    with ses_refusals():
        return contact_ops.preference_pairs(given)


class ContactsApi:
    def __init__(self, live: ConfigSource, store: ContactStore) -> None:
        self._live = live
        self._store = store

    def routes(self) -> list[Route]:
        # ".../contacts/list" before ".../contacts/{EmailAddress}": a POST there is
        # ListContacts, and a GET the contact named "list", as in SES's model.
        return [Route("GET", _LISTS, self.list_lists),
                Route("GET", f"{_LISTS}/{{ContactListName}}", self.get_list),
                Route("POST", f"{_CONTACTS}/list", self.list_contacts),
                Route("POST", _CONTACTS, self.create),
                Route("GET", f"{_CONTACTS}/{{EmailAddress}}", self.get),
                Route("PUT", f"{_CONTACTS}/{{EmailAddress}}", self.update),
                Route("DELETE", f"{_CONTACTS}/{{EmailAddress}}", self.delete)]

    # -- the lists ---------------------------------------------------------------------

    async def list_lists(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        names, token = names_page(
            [name for name, settings in config.contact_lists.items()
             if settings.account == caller.account],
            request.one("PageSize"), request.one("NextToken"))
        return {"ContactLists": [{"ContactListName": name} for name in names], **token}

    async def get_list(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        name, _ = _owned(config, caller, request)
        found = contact_ops.contact_list(config, name).as_json()
        del found["Account"]  # the caller's own: SES has no such member
        return {**found, "Tags": []}

    # -- its contacts ------------------------------------------------------------------

    async def create(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        name, _ = _owned(config, caller, request)
        body = request.json()
        address = member(body, "EmailAddress", str, required=True)
        assert address is not None
        await blocking(contact_ops.create, self._store, config, name, address,
                       topics=_preferences(body) or (),
                       unsubscribe_all=member(body, "UnsubscribeAll", bool) or False,
                       attributes=member(body, "AttributesData", str))
        return {}

    async def get(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        name, settings = _owned(config, caller, request)
        contact = await blocking(contact_ops.get, self._store, config, name,
                                 request.path["EmailAddress"])
        return contact_ops.contact_json(contact, settings)

    async def update(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        name, _ = _owned(config, caller, request)
        body = request.json()
        topics = _preferences(body)
        # SES: "you must specify all existing topic preferences": those given are
        # the contact's only ones.
        await blocking(contact_ops.update, self._store, config, name,
                       request.path["EmailAddress"], topics=topics,
                       replace_topics=topics is not None,
                       unsubscribe_all=member(body, "UnsubscribeAll", bool),
                       attributes=member(body, "AttributesData", str))
        return {}

    async def delete(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        name, _ = _owned(config, caller, request)
        await blocking(contact_ops.delete, self._store, config, name,
                       request.path["EmailAddress"])
        return {}

    async def list_contacts(self, caller: Caller, request: Request) -> dict[str, Any]:
        config = self._live.config
        name, settings = _owned(config, caller, request)
        body = request.json()
        given = member(body, "Filter", dict) or {}
        topic_filter = member(given, "TopicFilter", dict) or {}
        with ses_refusals():
            where = contact_ops.make_filter(
                config, name, status=member(given, "FilteredStatus", str),
                topic=member(topic_filter, "TopicName", str),
                use_default=bool(member(topic_filter, "UseDefaultIfPreferenceUnavailable",
                                        bool)))
        page = await blocking(contact_ops.page, self._store, config, name, where=where,
                              limit=page_size(body.get("PageSize")),
                              after=cursor_of(body.get("NextToken")))
        return {"Contacts": [{key: value for key, value
                              in contact_ops.contact_json(contact, settings).items()
                              if key in _SUMMARY} for contact in page.items],
                **next_token(page.next_cursor)}
