"""The envelope sender a delivered message goes out with, and the domains bounces come back to.

SES's custom MAIL FROM domain: an identity (``identities.<domain>``) may name a
``mail_from_domain`` (a subdomain of it, such as ``bounce.example.com``). Mail whose
envelope sender that identity covers is then delivered with
``MAIL FROM:<b-TAG@bounce.example.com>``, a VERP address (``smtprelay.bounces.verp``)
naming the message and the recipient, one per recipient: the receiving MTA writes it
as the Return-Path, DSNs come back to it, and the feedback listener (the MX of
``bounce.example.com``) maps each one to the message and recipient it is about. SPF
for that domain also passes aligned with a From at ``example.com``.

Without a ``mail_from_domain`` the sender's own address is used, as given at
submission; asynchronous bounces then go to the sender's own mailbox and cannot be
matched (only the ones the relay meets during delivery become Bounce events).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from smtprelay.config import Config
from smtprelay.mail.address import domain_of


class MailFromVerification(Protocol):
    """Whether a custom MAIL FROM domain has its MX record now (SES's "Success"
    state); smtprelay.delivery.mail_from checks them in the background."""

    def verified(self, domain: str) -> bool: ...


class AllVerified:
    """Every MAIL FROM domain taken as set up: for relays and tests that do not check."""

    def verified(self, domain: str) -> bool:
        return True


def mail_from_domains(config: Config) -> dict[str, str]:
    """Identity domain -> its custom MAIL FROM domain, for the identities that have one."""
    return {domain: identity.mail_from_domain.lower()
            for domain, identity in config.identities.items()
            if identity.mail_from_domain}


def feedback_domains(config: Config) -> frozenset[str]:
    """Every MAIL FROM domain: where the feedback listener accepts VERP addresses."""
    return frozenset(mail_from_domains(config).values())


def mail_from_domain_for(sender: str, domains: Mapping[str, str]) -> str | None:
    """The MAIL FROM domain of the most specific identity covering ``sender`` that has
    one (example.com covers news.example.com, as for DKIM keys); None: the sender's own
    address stays the envelope sender (and so does the null sender of our DSNs)."""
    if not domains or "@" not in sender:
        return None
    domain = domain_of(sender)
    while domain:
        found = domains.get(domain)
        if found:
            return found
        domain = domain.partition(".")[2]
    return None


def refused_mail_from(sender: str, config: Config,
                      verification: MailFromVerification) -> str | None:
    """The custom MAIL FROM domain whose missing MX record refuses mail from ``sender``
    (its identity says ``behavior_on_mx_failure: reject``), or None: send it."""
    domains = mail_from_domains(config)
    found = mail_from_domain_for(sender, domains)
    if found is None or verification.verified(found):
        return None
    domain = domain_of(sender)
    while domain:
        identity = config.identities.get(domain)
        if identity is not None and identity.mail_from_domain:
            return found if identity.behavior_on_mx_failure == "reject" else None
        domain = domain.partition(".")[2]
    return None
