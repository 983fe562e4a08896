"""Mail to a List-Unsubscribe mailto address: which unsubscribes a report asks for.

The transform writes ``<mailto:u-TAG@DOMAIN?subject=unsubscribe-TOKEN>`` (signed per
message and recipient: ``smtprelay.transform.unsubscribe``), or, in the older form, a
fixed address with the token in the subject alone. The listener accepts RCPT to a
``u-`` address only when its tag verifies, and to a fixed one as configured; the
processor asks ``find`` what a stored report unsubscribes, then hands each token to
the same ``EngagementSink.unsubscribe`` the one-click HTTPS POST uses
(``smtprelay.events.engagement``): the set-scoped or contact-list change and the
Subscription event, written once whatever the number of mails (a replay changes
nothing and publishes nothing).

What a report unsubscribes:

* ``u-`` address of a set's unsubscribe (scope 0): that message's recipient, from the
  address alone; the subject is not needed.
* ``u-`` address of a contact list's (scope 1): the list and topic come from the
  token in the mail (the subject, as the URI asks; the first 64 KiB are searched),
  which must be a list token for the same message and recipient. Without one the
  report is kept as unmatched: which list is not known.
* a fixed address: the first token in the mail that is an unsubscribe token naming
  a recipient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtprelay.config import Config
from smtprelay.feedback import mime
from smtprelay.feedback.inbox import Report
from smtprelay.mail.address import Address
from smtprelay.transform import tokens
from smtprelay.transform.tokens import KeyRing, UnsubscribeToken
from smtprelay.transform.unsubscribe import MAILTO_PREFIX, InvalidMailtoTag, decode_mailto

KIND = "unsubscribe"
_SEARCHED = 64 * 1024
_TOKEN = re.compile(rb"unsubscribe-([A-Za-z0-9_-]{20,8192})")
_TOKEN_TEXT = re.compile(r"unsubscribe-([A-Za-z0-9_-]{20,8192})")


@dataclass(frozen=True, slots=True)
class MailtoTargets:
    """Where mailto unsubscribes arrive under one configuration."""

    domains: frozenset[str]  # u-TAG@domain
    addresses: frozenset[str]  # fixed addresses (the older form), lower case

    @classmethod
    def of(cls, config: Config) -> MailtoTargets:
        targets = {settings.unsubscribe_mailto
                   for settings in config.configuration_sets.values()
                   if settings.unsubscribe.one_click}
        targets.update(contact_list.mailto_target
                       for contact_list in config.contact_lists.values())
        found = {t.lower() for t in targets if t}
        return cls(frozenset(t for t in found if "@" not in t),
                   frozenset(t for t in found if "@" in t))

    def tagged(self, address: Address) -> bool:
        """A u- address at one of the mailto domains (its tag still to be checked)."""
        return (address.domain in self.domains
                and address.local.lower().startswith(MAILTO_PREFIX))

    def wants(self, report: Report) -> bool:
        """Whether the report was sent to a mailto unsubscribe address."""
        return any(rcpt.lower() in self.addresses or self.tagged(Address.parse(rcpt))
                   for rcpt in report.recipients)


@dataclass(frozen=True, slots=True)
class Found:
    tokens: tuple[UnsubscribeToken, ...]  # what to unsubscribe, one per recipient
    problems: tuple[str, ...]  # why an address of the report unsubscribes no one


def find(report: Report, keyring: KeyRing, targets: MailtoTargets,
         now: float) -> Found:
    """The unsubscribes `report` asks for (CPU only, bounded: a thread or the loop)."""
    found: dict[tuple[str, int], UnsubscribeToken] = {}
    problems: list[str] = []
    in_mail: list[UnsubscribeToken] | None = None
    for rcpt in report.recipients:
        address = Address.parse(rcpt)
        if targets.tagged(address):
            try:
                tag = decode_mailto(address.local, keyring, now)
            except InvalidMailtoTag as exc:
                problems.append(f"{rcpt}: {exc}")
                continue
            if not tag.contact_list:
                found.setdefault((tag.message_id, tag.recipient), UnsubscribeToken(
                    tag.message_id, tag.recipient, _issued(tag.message_id)))
                continue
            in_mail = _tokens_in(report, keyring, now) if in_mail is None else in_mail
            match = next((t for t in in_mail if t.contact_list is not None
                          and (t.message_id, t.recipient) == (tag.message_id,
                                                              tag.recipient)), None)
            if match is None:
                problems.append(f"{rcpt}: a contact list's unsubscribe address, but the "
                                "mail has no unsubscribe token of that message and "
                                "recipient (the subject was changed?), so which list is "
                                "not known")
            else:
                found.setdefault((tag.message_id, tag.recipient), match)
        elif rcpt.lower() in targets.addresses:
            in_mail = _tokens_in(report, keyring, now) if in_mail is None else in_mail
            if not in_mail:
                problems.append(f"{rcpt}: no valid unsubscribe token in the mail")
            for token in in_mail[:1]:
                assert isinstance(token.recipient, int)
                found.setdefault((token.message_id, token.recipient), token)
    return Found(tuple(found.values()), tuple(problems))


def _tokens_in(report: Report, keyring: KeyRing, now: float) -> list[UnsubscribeToken]:
    """Unsubscribe tokens that name a recipient, from the Subject (decoded) first, then
    anywhere in the first 64 KiB; each verified."""
    head = (report.raw or b"")[:_SEARCHED]
    candidates: list[str] = []
    try:
        subject = mime.parse(head).subject or ""
    except mime.NotAReport:
        subject = ""
    candidates.extend(m.group(1) for m in _TOKEN_TEXT.finditer(subject))
    candidates.extend(m.group(1).decode("ascii") for m in _TOKEN.finditer(head))
    valid: list[UnsubscribeToken] = []
    for text in dict.fromkeys(candidates):
        try:
            payload = tokens.decode(text, keyring, now)
        except tokens.InvalidToken:
            continue
        if isinstance(payload, UnsubscribeToken) and isinstance(payload.recipient, int):
            valid.append(payload)
    return valid


def _issued(message_id: str) -> int:
    """The message's acceptance second, from its id (6 bytes of milliseconds)."""
    return int(message_id[:12], 16) // 1000
