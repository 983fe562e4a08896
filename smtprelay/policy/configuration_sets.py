"""Which configuration set a message uses, and its message tags (SES's X-SES-* headers).

The set comes from X-SES-CONFIGURATION-SET (or X-Configuration-Set), else the
account's default. Tags come from X-SES-MESSAGE-TAGS ("a=b, c=d") plus SES's
automatic ses:* tags. A malformed tag is reported and dropped, never fatal: the
message still goes, as with SES.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass, field

from smtprelay.config import Config
from smtprelay.mail import replies as R
from smtprelay.mail.headers import HeaderField
from smtprelay.mail.replies import Reply

SET_HEADERS = ("x-ses-configuration-set", "x-configuration-set")
TAGS_HEADER = "x-ses-message-tags"
# Seed: "Message tags can include the numbers 0-9, the letters A-Z (both uppercase and
# lowercase), hyphens (-), and underscores (_)"; SES caps names and values at 256.
_TAG_TEXT = re.compile(r"[A-Za-z0-9_-]{1,256}")
_MAX_TAGS = 50


@dataclass(frozen=True, slots=True)
class SetChoice:
    name: str | None
    tags: dict[str, list[str]] = field(default_factory=dict)
    tag_errors: tuple[str, ...] = ()
    # The X-SES-* control headers as sent, kept for events after they are removed.
    control_headers: dict[str, str] = field(default_factory=dict)


def parse_tags(value: str) -> tuple[dict[str, list[str]], list[str]]:
    tags: dict[str, list[str]] = {}
    errors: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, tag_value = item.partition("=")
        name, tag_value = name.strip(), tag_value.strip()
        if not sep:
            errors.append(f"{item!r}: expected name=value")
        elif not _TAG_TEXT.fullmatch(name):
            errors.append(f"{item!r}: the name may use only A-Z a-z 0-9 _ - (1-256)")
        elif not _TAG_TEXT.fullmatch(tag_value):
            errors.append(f"{item!r}: the value may use only A-Z a-z 0-9 _ - (1-256)")
        elif name.lower().startswith("ses:") or name.lower().startswith("ses-"):
            errors.append(f"{item!r}: names starting with ses are reserved")
        elif len(tags) >= _MAX_TAGS and name not in tags:
            errors.append(f"{item!r}: more than {_MAX_TAGS} tags")
        else:
            tags[name] = [tag_value]
    return tags, errors


def choose(config: Config, account: str, fields: list[HeaderField],
           paused: Container[str] = frozenset()) -> SetChoice | Reply:
    """The configuration set and tags for a message, or the 554 that refuses it.

    `paused` holds the sets paused at run time (smtprelay.policy.pauses): refused like a set
    with ``sending_enabled: false``.
    """
    control = {f.name: f.value for f in fields if f.key.startswith("x-ses-")
               or f.key == "x-configuration-set"}
    requested = next((f.value.strip() for key in SET_HEADERS for f in fields if f.key == key),
                     None)
    name = requested or config.accounts[account].default_configuration_set
    if name is not None:
        settings = config.configuration_sets.get(name)
        if settings is None or not config.may_use_set(account, name):
            # Another tenant's set is answered as one that does not exist: its name
            # tells nothing about who has it.
            return R.SET_UNKNOWN
        if not settings.sending_enabled or name in paused:
            return R.SET_PAUSED
    tags: dict[str, list[str]] = {}
    errors: list[str] = []
    for f in fields:
        if f.key == TAGS_HEADER:
            found, bad = parse_tags(f.value)
            tags.update(found)
            errors.extend(bad)
    return SetChoice(name=name, tags=tags, tag_errors=tuple(errors), control_headers=control)


def auto_tags(choice: SetChoice, *, from_domain: str, source_ip: str,
              caller: str) -> dict[str, list[str]]:
    """SES's automatic tags, added to the sender's own."""
    tags = dict(choice.tags)
    if choice.name is not None:
        tags["ses:configuration-set"] = [choice.name]
    tags["ses:from-domain"] = [from_domain]
    tags["ses:source-ip"] = [source_ip]
    tags["ses:caller-identity"] = [caller]
    return tags
