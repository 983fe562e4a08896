"""Why an operator action was refused, as types rather than text.

Each front end says these its own way: the CLI as one line on stderr in the words
of its flags and an exit status of 1, the admin API as a status code (404 for
`NotConfigured` and `NotFound`, 409 for `Conflict`, 422 for `Invalid`) with its
JSON error. So `str()` of each is one plain sentence naming no front end, and every
detail a front end may want to say differently is an attribute. The contact lists'
refusals are SES's too: NotFoundException (`ContactListNotFound`, `TopicNotFound`,
`ContactNotFound`), AlreadyExistsException (`ContactExists`) and BadRequestException
(`BadContact`, `Invalid`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from smtprelay.config import Config
from smtprelay.policy import pauses
from smtprelay.policy.pauses import Scope, describe

# The configuration key each scope's names live under.
CONFIG_KEYS: dict[str, str] = {"set": "configuration_sets", "account": "accounts"}


class OperationError(Exception):
    """An expected refusal: the request was understood and cannot be done."""


class NotConfigured(OperationError):
    """`name` is not a configured set or account (`known` are the configured ones)."""

    def __init__(self, scope: Scope, name: str, known: Iterable[str]) -> None:
        super().__init__(f"no {describe(scope, name)} in the configuration "
                         f"({CONFIG_KEYS[scope]}.{name})")
        self.scope = scope
        self.name = name
        self.known = tuple(sorted(known))


class NoStatistics(NotConfigured):
    """A set neither configured nor seen in the statistics' window."""

    def __str__(self) -> str:
        return f"{super().__str__()} and no statistics for it"


class NotFound(OperationError):
    """Something looked up by its key is not there."""


class MessageNotFound(NotFound):
    def __init__(self, message_id: str) -> None:
        super().__init__(f"no message {message_id} in the queue")
        self.message_id = message_id


class NotSuppressed(NotFound):
    def __init__(self, account: str, address: str) -> None:
        super().__init__(f"{address} is not on account {account}'s suppression list")
        self.account = account
        self.address = address  # as asked for, not normalised


class ContactListNotFound(NotFound):
    """`name` is not a list under `contact_lists` (`known`: the configured ones)."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        super().__init__(f"no contact list {name!r} in the configuration "
                         f"(contact_lists.{name})")
        self.name = name
        self.known = tuple(sorted(known))


class TopicNotFound(NotFound):
    """A topic the list does not have (`known`: its topics), as the send path says it."""

    def __init__(self, contact_list: str, topic: str, known: Iterable[str]) -> None:
        self.known = tuple(known)
        super().__init__(f"Topic {topic} does not exist in contact list {contact_list} "
                         f"(its topics: {', '.join(self.known) or 'none'})")
        self.contact_list = contact_list
        self.topic = topic


class ContactNotFound(NotFound):
    def __init__(self, contact_list: str, address: str) -> None:
        super().__init__(f"{address} is not a contact of list {contact_list!r}")
        self.contact_list = contact_list
        self.address = address  # as asked for, not normalised


class Conflict(OperationError):
    """The state forbids the change."""


class ContactExists(Conflict):
    def __init__(self, contact_list: str, address: str) -> None:
        super().__init__(f"{address} is already a contact of list {contact_list!r}")
        self.contact_list = contact_list
        self.address = address  # as stored (normalised)


class AlreadyPaused(Conflict, pauses.AlreadyPaused):
    """The store's AlreadyPaused (its message, and `pause`: the pause in force) as one
    of the operations' conflicts."""


class NotPaused(Conflict):
    """Nothing to resume. `disabled`: a set that `sending_enabled: false` keeps
    refusing mail, which only the configuration file can change."""

    def __init__(self, scope: Scope, name: str, *, disabled: bool = False) -> None:
        hint = ("; sending_enabled: false in the configuration keeps it refusing mail "
                "(change the file and reload)" if disabled else "")
        super().__init__(f"{describe(scope, name)} is not paused{hint}")
        self.scope = scope
        self.name = name
        self.disabled = disabled


class NothingToRetry(Conflict):
    """No recipient of the message waits: `held` if a delivery attempt has one now,
    otherwise every recipient is final."""

    def __init__(self, message_id: str, *, held: bool) -> None:
        super().__init__(f"message {message_id} has no recipient waiting for a retry "
                         + ("(a delivery attempt holds it now)" if held
                            else "(every recipient is final)"))
        self.message_id = message_id
        self.held = held


class NothingToHold(Conflict):
    """No recipient of the message waits to be held (held already, final, or in an
    attempt)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id} has no waiting recipient to hold (each is "
                         "held already, final, or in a delivery attempt now)")
        self.message_id = message_id


class NotHeld(Conflict):
    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id} is not held")
        self.message_id = message_id


class Invalid(OperationError):
    """A well-formed request with a value the relay cannot take."""


class BadAddress(Invalid):
    """Not an address a suppression list can hold; the message says why."""


class BadContact(Invalid):
    """A contact's field the list cannot take (`field`: SES's name for it, such as
    TopicPreferences or AttributesData); the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class BadReason(Invalid):
    def __init__(self) -> None:
        super().__init__("reason must be BOUNCE or COMPLAINT")


class TooLong(Invalid):
    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"{field} is longer than {limit} characters")
        self.field = field
        self.limit = limit


def configured_names(config: Config, scope: Scope) -> Collection[str]:
    return config.configuration_sets if scope == "set" else config.accounts


def require_configured(config: Config, scope: Scope, name: str) -> None:
    names = configured_names(config, scope)
    if name not in names:
        raise NotConfigured(scope, name, names)
