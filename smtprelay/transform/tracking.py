"""What a configuration set changes in a message before DKIM: tracking and unsubscribe.

Order (SPEC 4.6): the hygiene stage has already run; then links and the open pixel
(links.rewrite), then the List-Unsubscribe fields and the {{unsubscribe_url}}
placeholder, and DKIM signs the result last, so every change is covered.

Who a token names: a message with one envelope recipient gets per-recipient tokens
(recipient index 0), so opens, clicks and unsubscribes are that person's. With several
recipients every one of them receives the same bytes, so the tokens name the whole
message (an open cannot be pinned on one of them, as with SES), and no unsubscribe
link is added: SES too adds one only "if the email is being sent to a single
recipient". The address itself is never put in a token: tokens are signed, not
encrypted, and URLs end up in proxy and browser logs.

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

from smtprelay.config import ConfigurationSetConfig
from smtprelay.mail.headers import parse_header_section
from smtprelay.transform import links, tokens, unsubscribe
from smtprelay.transform.links import DuplicateOpenTracker, Link

__all__ = ["DuplicateOpenTracker", "ListUnsubscribe", "Result", "Transformer"]

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


def changes_anything(settings: ConfigurationSetConfig | None,
                     list_unsubscribe: ListUnsubscribe | None = None) -> bool:
    """The set tracks or adds unsubscribe links, or the message goes to a contact list:
    more than the ses:* clean-up to do."""
    if list_unsubscribe is not None:
        return True
    if settings is None:
        return False
    tracking = settings.tracking
    return (tracking.domain is not None and (tracking.click or tracking.open)) \
        or settings.unsubscribe.one_click


class Transformer:
    def __init__(self, keyring: tokens.KeyRing) -> None:
        self.keyring = keyring

    def apply(self, data: bytes, *, message_id: str, recipient_count: int, issued_at: float,
              settings: ConfigurationSetConfig | None, media_type: str | None = None,
              list_unsubscribe: ListUnsubscribe | None = None) -> Result:
        """The message as the set wants it delivered. DuplicateOpenTracker: refuse it.

        `media_type`: the top level's Content-Type as the pipeline read it
        (mail.headers.content_type), when known. `list_unsubscribe`: the message named
        a contact list, so it gets that list's unsubscribe link.
        """
        if not changes_anything(settings, list_unsubscribe):
            if media_type == "text/plain":
                # One text/plain part: there is no HTML whose ses:* markup would go,
                # so the scan of every byte for markers is not needed either.
                return Result(data)
            return self._clean_up(data)
        tracking = settings.tracking if settings is not None else None
        recipient: int | None = 0 if recipient_count == 1 else None
        problems: list[str] = []
        issuer = tokens.Issuer(self.keyring, message_id, recipient, int(issued_at))
        make_click_url: links.ClickUrl | None = None
        pixel_url: str | None = None
        if tracking is not None and tracking.domain is not None:
            domain, https = tracking.domain, tracking.https
            if tracking.click:
                def make_click_url(index: int, url: str, tags: dict[str, str]) -> str:
                    try:
                        token = issuer.click(index, url, tuple(tags.items()))
                    except ValueError as exc:
                        problems.append(f"link {index} not tracked: {exc}")
                        return url
                    return links.tracking_url(domain, "c", token, https=https, original=url)
            if tracking.open:
                pixel_url = links.tracking_url(domain, "o", issuer.open(),
                                               https=https is not False)

        unsubscribe_url: str | None = None
        unsubscribe_token = ""
        mailto: str | None = None
        override = True
        if list_unsubscribe is not None:
            if recipient is None:
                problems.append("no unsubscribe link: the message has several recipients "
                                "(an unsubscribe link must name one)")
            else:
                unsubscribe_token = issuer.unsubscribe(list_unsubscribe.contact_list,
                                                       list_unsubscribe.topic)
                unsubscribe_url = links.tracking_url(
                    list_unsubscribe.host, "u", unsubscribe_token,
                    https=list_unsubscribe.https)
                mailto = list_unsubscribe.mailto
        elif settings is not None and settings.unsubscribe.one_click:
            mailto, override = settings.unsubscribe_mailto, settings.unsubscribe.override
            if recipient is None:
                problems.append("no unsubscribe link: the message has several recipients "
                                "(an unsubscribe link must name one)")
            else:
                host = settings.unsubscribe_domain
                assert host is not None  # the config checks one_click has a host
                unsubscribe_token = issuer.unsubscribe()
                unsubscribe_url = links.tracking_url(
                    host, "u", unsubscribe_token, https=settings.tracking.https is not False)

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
            if mailto is not None and recipient is not None:
                mailto = unsubscribe.mailto_address(
                    mailto, self.keyring, message_id, recipient,
                    contact_list=list_unsubscribe is not None)
            fields = parse_header_section(data)
            data = unsubscribe.add(
                data, fields,
                unsubscribe.header_fields(unsubscribe_url, mailto, unsubscribe_token),
                override=override)
        return Result(data, rewritten_links, pixel_url is not None, unsubscribe_url, problems,
                      len(rewritten_links))

    @staticmethod
    def _clean_up(data: bytes) -> Result:
        """A set that neither tracks nor adds unsubscribe: only ses:* markup goes."""
        if not _maybe_marked(data):
            return Result(data)
        rewritten = links.rewrite(data, make_click_url=None, open_pixel_url=None)
        return Result(rewritten.data, rewritten.links, problems=rewritten.problems)
