"""What a configuration set changes in a message before DKIM: tracking and unsubscribe.

Order (SPEC 4.6): the hygiene stage has already run; then links and the open pixel
(links.rewrite), then the List-Unsubscribe fields and the {{unsubscribe_url}}
placeholder, and DKIM signs the result last, so every change is covered.

Who a token names: a message with one envelope recipient gets per-recipient tokens
(recipient index 0), so opens, clicks and unsubscribes are that person's. A message
with several recipients whose set tracks or adds unsubscribe links (or which names a
contact list) is delivered as one copy per recipient (transform.copies): the spool
keeps the message as submitted with its Plan, and each copy is rendered here with its
recipient's index at delivery, then signed. The address itself is never put in a
token: tokens are signed, not encrypted, and URLs end up in proxy and browser logs.

A message sent with list-management options (policy.contacts) gets the one-click
unsubscribe whatever its set says, as SES adds it whenever ListManagementOptions is
given: its URL is on the list's own host, its token names the list and topic, and it
replaces a List-Unsubscribe the sender wrote ("Amazon SES overrides them").

Even without tracking, ``ses:no-track`` and ``ses:tags`` attributes are removed, the
``{{ses:openTracker}}`` placeholder is removed, and a second placeholder refuses the
message, so nothing meant for the relay reaches a recipient whatever the set says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smtprelay.config import ConfigurationSetConfig
from smtprelay.mail.headers import parse_header_section
from smtprelay.transform import links, tokens, unsubscribe
from smtprelay.transform.links import DuplicateOpenTracker, Link

__all__ = ["DuplicateOpenTracker", "ListUnsubscribe", "Plan", "Result", "Transformer", "plan_of"]

# Without any of these a message holds nothing the link rewriter would change: no
# ses:* attribute or placeholder in clear, and no encoded part that could hide one.
_MARKERS = (b"ses:", b"base64", b"quoted-printable")


def _maybe_marked(data: bytes) -> bool:
    # lower() and three `in` tests: a case-insensitive regex alternation costs ~25x more.
    low = data.lower()
    return any(marker in low for marker in _MARKERS)


@dataclass(frozen=True, slots=True)
class ListUnsubscribe:
    """The unsubscribe link of a message sent to a contact list (picklable: it crosses
    the pipe to a transform worker)."""

    contact_list: str
    topic: str | None
    host: str  # the list's unsubscribe_domain
    https: bool = True
    mailto: str | None = None  # the list's mailto target: a domain or a fixed address


@dataclass(frozen=True, slots=True)
class Result:
    data: bytes
    # The tracked links themselves, in-process only: a worker process sends back
    # just their number (link_count), which is all the pipeline records.
    links: list[Link] = field(default_factory=list)
    opens_tracked: bool = False
    unsubscribe_url: str | None = None
    problems: list[str] = field(default_factory=list)
    link_count: int = 0


@dataclass(frozen=True, slots=True)
class Plan:
    """What the transform does to a message beyond the ses:* clean-up: read once from
    its configuration set and contact list, picklable (it crosses the pipe to a
    transform worker) and stored with a message delivered as per-recipient copies, so
    each copy is made as the message was accepted whatever a reload changed since."""

    click_domain: str | None = None  # tracking.domain when clicks are tracked
    open_domain: str | None = None  # tracking.domain when opens are tracked
    tracking_https: bool | None = None  # tracking.https
    unsubscribe_host: str | None = None  # where the one-click URL points; None: no link
    unsubscribe_https: bool = True
    mailto: str | None = None  # the mailto target: a domain (signed address) or an address
    override: bool = True  # replace a List-Unsubscribe the sender wrote
    contact_list: str | None = None  # a list unsubscribe (token kind 3): list and topic
    topic: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {key: value for key in self.__slots__
                if (value := getattr(self, key)) != getattr(_NO_PLAN, key)}

    @classmethod
    def from_json(cls, value: Any) -> Plan | None:
        """What as_json() wrote, or None when it is not a plan (a damaged record)."""
        if not isinstance(value, dict):
            return None
        try:
            return cls(**{key: value[key] for key in cls.__slots__ if key in value})
        except TypeError:
            return None


_NO_PLAN = Plan()


def plan_of(settings: ConfigurationSetConfig | None,
            list_unsubscribe: ListUnsubscribe | None = None) -> Plan | None:
    """What the set and the message's contact list ask for, or None: nothing but the
    ses:* clean-up (the message is the same for every recipient)."""
    tracking = settings.tracking if settings is not None else None
    click_domain = open_domain = None
    if tracking is not None and tracking.domain is not None:
        click_domain = tracking.domain if tracking.click else None
        open_domain = tracking.domain if tracking.open else None
    https = tracking.https if tracking is not None else None
    if list_unsubscribe is not None:
        # SES adds the list's link whenever ListManagementOptions is given, replacing
        # the sender's.
        return Plan(click_domain, open_domain, https, list_unsubscribe.host,
                    list_unsubscribe.https, list_unsubscribe.mailto, True,
                    list_unsubscribe.contact_list, list_unsubscribe.topic)
    if settings is not None and settings.unsubscribe.one_click:
        host = settings.unsubscribe_domain
        assert host is not None  # the config checks one_click has a host
        return Plan(click_domain, open_domain, https, host, https is not False,
                    settings.unsubscribe_mailto, settings.unsubscribe.override)
    if click_domain is None and open_domain is None:
        return None
    return Plan(click_domain, open_domain, https)


def changes_anything(settings: ConfigurationSetConfig | None,
                     list_unsubscribe: ListUnsubscribe | None = None) -> bool:
    """The set tracks or adds unsubscribe links, or the message goes to a contact list:
    more than the ses:* clean-up to do."""
    return plan_of(settings, list_unsubscribe) is not None


class Transformer:
    def __init__(self, keyring: tokens.KeyRing) -> None:
        self.keyring = keyring

    def apply(self, data: bytes, *, message_id: str, recipient_count: int, issued_at: float,
              settings: ConfigurationSetConfig | None, media_type: str | None = None,
              list_unsubscribe: ListUnsubscribe | None = None) -> Result:
        """The message as the set wants it delivered (tokens naming recipient 0 when it
        has one recipient, the whole message otherwise). DuplicateOpenTracker: refuse it.

        `media_type`: the top level's Content-Type as the pipeline read it
        (mail.headers.content_type), when known. `list_unsubscribe`: the message named
        a contact list, so it gets that list's unsubscribe link.
        """
        plan = plan_of(settings, list_unsubscribe)
        if plan is None:
            if media_type == "text/plain":
                # One text/plain part: there is no HTML whose ses:* markup would go,
                # so the scan of every byte for markers is not needed either.
                return Result(data)
            return self._clean_up(data)
        return self.render(data, plan, message_id=message_id,
                           recipient=0 if recipient_count == 1 else None,
                           issued_at=issued_at)

    def render(self, data: bytes, plan: Plan, *, message_id: str, recipient: int | None,
               issued_at: float) -> Result:
        """The copy `plan` makes of `data` for one recipient (its index in the envelope),
        or for every recipient at once (None: whole-message tokens and no unsubscribe
        link, which must name one person). DuplicateOpenTracker: refuse the message."""
        problems: list[str] = []
        issuer = tokens.Issuer(self.keyring, message_id, recipient, int(issued_at))
        make_click_url: links.ClickUrl | None = None
        pixel_url: str | None = None
        if plan.click_domain is not None:
            domain, https = plan.click_domain, plan.tracking_https

            def make_click_url(index: int, url: str, tags: dict[str, str]) -> str:
                try:
                    token = issuer.click(index, url, tuple(tags.items()))
                except ValueError as exc:
                    problems.append(f"link {index} not tracked: {exc}")
                    return url
                return links.tracking_url(domain, "c", token, https=https, original=url)
        if plan.open_domain is not None:
            pixel_url = links.tracking_url(plan.open_domain, "o", issuer.open(),
                                           https=plan.tracking_https is not False)

        unsubscribe_url: str | None = None
        unsubscribe_token = ""
        if plan.unsubscribe_host is not None:
            if recipient is None:
                problems.append("no unsubscribe link: the message has several recipients "
                                "(an unsubscribe link must name one)")
            else:
                unsubscribe_token = issuer.unsubscribe(plan.contact_list, plan.topic) \
                    if plan.contact_list is not None else issuer.unsubscribe()
                unsubscribe_url = links.tracking_url(
                    plan.unsubscribe_host, "u", unsubscribe_token,
                    https=plan.unsubscribe_https)

        rewritten_links: list[Link] = []
        if make_click_url or pixel_url or unsubscribe_url or _maybe_marked(data):
            replacements = dict.fromkeys(unsubscribe.PLACEHOLDERS, unsubscribe_url) \
                if unsubscribe_url else None
            rewritten = links.rewrite(data, make_click_url=make_click_url,
                                      open_pixel_url=pixel_url, replacements=replacements)
            data = rewritten.data
            rewritten_links = rewritten.links
            problems.extend(rewritten.problems)

        if unsubscribe_url is not None:
            assert recipient is not None  # an unsubscribe URL names its recipient
            mailto = None if plan.mailto is None else unsubscribe.mailto_address(
                plan.mailto, self.keyring, message_id, recipient,
                contact_list=plan.contact_list is not None)
            fields = parse_header_section(data)
            data = unsubscribe.add(
                data, fields,
                unsubscribe.header_fields(unsubscribe_url, mailto, unsubscribe_token),
                override=plan.override)
        return Result(data, rewritten_links, pixel_url is not None, unsubscribe_url, problems,
                      len(rewritten_links))

    @staticmethod
    def _clean_up(data: bytes) -> Result:
        """A set that neither tracks nor adds unsubscribe: only ses:* markup goes."""
        if not _maybe_marked(data):
            return Result(data)
        rewritten = links.rewrite(data, make_click_url=None, open_pixel_url=None)
        return Result(rewritten.data, rewritten.links, problems=rewritten.problems)
