"""Contact lists and their topics (SES list management): who may send to a list, what
its topics are, and where its unsubscribe links point.

A message selects a list, and optionally one of its topics, with
``X-SES-LIST-MANAGEMENT-OPTIONS: <list>; topic=<topic>`` (smtprelay.policy.contacts);
the contacts and their preferences live in the state database, not here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from smtprelay.config.values import (
    MailtoSetting,
    Model,
    check_mailto,
    check_tracking_host,
    mailto_target,
    repeated,
)

SubscriptionStatus = Literal["OPT_IN", "OPT_OUT"]
# Names appear in a header field (`<list>; topic=<topic>`) and in signed tokens: no
# separators, no white space, no quoting needed anywhere.
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
# SES: "A list can have a maximum of 20 topics."
MAX_TOPICS = 20


def check_name(value: str, what: str) -> str:
    """A list or topic name as written, or ValueError saying what is allowed."""
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} name: use 1-64 letters, digits, "
                         "'-' and '_' (it is written in the X-SES-LIST-MANAGEMENT-OPTIONS "
                         "header field)")
    return value


class TopicConfig(Model):
    # The name messages give in `topic=`; unique in its list.
    name: str
    # What a contact sees on the unsubscribe page.
    display_name: str = Field(min_length=1, max_length=128)
    description: str = Field(default="", max_length=500)
    # A contact with no preference for the topic gets its mail (OPT_IN) or not
    # (OPT_OUT).
    default_subscription_status: SubscriptionStatus

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "topic")


class ContactListConfig(Model):
    # The account whose mail may name this list; any other account's is refused.
    account: str = Field(min_length=1)
    description: str = Field(default="", max_length=500)
    # Host of the unsubscribe links of the list's mail; must be under
    # tracking_domains. Required, so that no list message is ever refused (or sent
    # without its link) for want of a host, whatever configuration set it uses.
    unsubscribe_domain: str
    # true: https unsubscribe links (RFC 8058 wants https); false: http, only for a
    # test relay without TLS.
    https: bool = True
    # A mailto URI besides the https link, as a set's unsubscribe.mailto: true (at
    # unsubscribe_domain) or a domain (signed per-recipient addresses there, whose
    # MX is the feedback listener), or an address (the older fixed form); null: none.
    mailto: MailtoSetting = None
    topics: list[TopicConfig] = Field(default_factory=list, max_length=MAX_TOPICS)

    @field_validator("unsubscribe_domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return check_tracking_host(value)

    @field_validator("mailto")
    @classmethod
    def _mailto(cls, value: MailtoSetting) -> MailtoSetting:
        return check_mailto(value)

    @property
    def mailto_target(self) -> str | None:
        """Where the mailto unsubscribe goes: a domain, a fixed address, or None."""
        return mailto_target(self.mailto, self.unsubscribe_domain)

    @model_validator(mode="after")
    def _unique_topics(self) -> ContactListConfig:
        for name in repeated(topic.name for topic in self.topics):
            raise ValueError(f"topics: the topic name {name!r} is used twice")
        return self

    def topic(self, name: str) -> TopicConfig | None:
        return next((topic for topic in self.topics if topic.name == name), None)


def check_list_names(value: Any) -> Any:
    """The keys of `contact_lists`, each a valid list name (before the entries load)."""
    if isinstance(value, dict):
        problems = []
        for name in value:
            try:
                check_name(str(name), "contact list")
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("\n".join(problems))
    return value
