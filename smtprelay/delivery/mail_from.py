"""Custom MAIL FROM domains: whether each publishes the MX record SES requires.

SES keeps a state per custom MAIL FROM domain and checks it continuously: "Success"
while the MX record is there, and otherwise the identity's fallback, its behavior on
MX failure (send with the default envelope sender, or reject the mail). Without the
MX record, bounces to the VERP senders would go nowhere, so the relay only uses a
MAIL FROM domain while DNS shows one. Checked at start and every few minutes; a DNS
failure (a timeout, SERVFAIL) keeps what the last answer said, so a blip does not
flip a working domain to its fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from smtprelay.bounces import return_path
from smtprelay.config import ConfigSource
from smtprelay.delivery.dns import MXResolver
from smtprelay.infra.background import BackgroundLoop

log = logging.getLogger("smtprelay.delivery")

CHECK_EVERY = 300.0  # seconds between rounds, as the DNS answers' TTLs usually allow


class MailFromState(StrEnum):
    PENDING = "pending"  # not checked yet
    SUCCESS = "success"  # the MX record is there
    FAILED = "failed"  # DNS says there is none (no MX, a null MX, no such domain)
    TEMPORARY_FAILURE = "temporary_failure"  # DNS could not say, and never said yes


class MailFromChecks:
    """The state of every configured MAIL FROM domain (return_path.MailFromVerification)."""

    def __init__(self, live: ConfigSource, resolver: MXResolver, *,
                 every: float = CHECK_EVERY,
                 clock: Callable[[], float] = time.time) -> None:
        self._live = live
        self._resolver = resolver
        self._every = every
        self._clock = clock
        self._states: dict[str, MailFromState] = {}
        self._rounds = BackgroundLoop("mail-from-checks", self._round)

    def verified(self, domain: str) -> bool:
        return self._states.get(domain.lower()) is MailFromState.SUCCESS

    def state(self, domain: str) -> MailFromState:
        return self._states.get(domain.lower(), MailFromState.PENDING)

    async def check_all(self) -> None:
        """One round over every configured domain, concurrently."""
        domains = sorted(set(return_path.mail_from_domains(self._live.config).values()))
        await asyncio.gather(*(self._check(domain) for domain in domains))

    async def _check(self, domain: str) -> None:
        hosts = await self._resolver.mx_hosts(domain)
        before = self.state(domain)
        if hosts is None:
            after = (before if before in (MailFromState.SUCCESS, MailFromState.FAILED)
                     else MailFromState.TEMPORARY_FAILURE)
        else:
            after = MailFromState.SUCCESS if hosts else MailFromState.FAILED
        self._states[domain] = after
        if after is not before:
            if after is MailFromState.SUCCESS:
                log.info("MAIL FROM domain %s: MX %s found, VERP senders in use", domain,
                         ", ".join(hosts or ()))
            else:
                log.warning("MAIL FROM domain %s: %s (no MX record%s); its identities "
                            "fall back to their behavior_on_mx_failure", domain, after,
                            "" if hosts is not None else ": DNS did not answer")

    async def _round(self) -> float:
        await self.check_all()
        return self._every

    async def start(self, *, first_within: float) -> None:
        """A first round (at most `first_within` seconds, so a dead resolver cannot hold
        the start), then one every few minutes."""
        try:
            await asyncio.wait_for(self.check_all(), first_within)
        except TimeoutError:
            log.warning("MAIL FROM domains: DNS gave no answer within %.0f s at start; "
                        "checking again in the background", first_within)
        self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()
