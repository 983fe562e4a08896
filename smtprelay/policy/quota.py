"""Sending quotas per account, as SES counts them: recipients per second and per rolling 24 h.

A message's recipients are reserved after DATA, in one step against both limits (SES
refuses a message over either whole, `454 Throttling failure`), and settled when it is
spooled (they count in the 24 hours) or was not (the rate tokens go back). The
counting itself is shared state (smtprelay.state): one bucket and one 24-hour count per
account whichever worker process, or node, the message arrived on. This module turns
the configuration into the limits each call carries, and verdicts into SES's replies.
"""

from __future__ import annotations

import asyncio
import logging

from smtprelay.config import SANDBOX_QUOTA, Config, ConfigSource, QuotaConfig
from smtprelay.mail import replies as R
from smtprelay.mail.replies import Reply
from smtprelay.state.api import SendLimits, SendVerdict, SharedState, StateUnavailable

log = logging.getLogger("smtprelay.policy")

# Seconds between tries of a settlement the state did not take, doubling to the max.
_SETTLE_RETRY_FIRST = 0.25
_SETTLE_RETRY_MAX = 5.0


def effective_quota(config: Config, account: str) -> QuotaConfig | None:
    """The quota in force: the configured one, else SES's sandbox quota in the sandbox."""
    settings = config.accounts[account]
    if settings.quota is not None:
        return settings.quota
    return SANDBOX_QUOTA if settings.sandbox else None


def send_limits(config: Config, account: str) -> SendLimits | None:
    """The account's limits as shared state applies them (None: unlimited, or no such
    account any more, as after a reload that removed it)."""
    if account not in config.accounts:
        return None
    quota = effective_quota(config, account)
    if quota is None:
        return None
    burst = quota.burst if quota.burst is not None else max(1, int(quota.max_send_rate))
    return SendLimits(quota.max_send_rate, burst, quota.max_24h_send)


class Quotas:
    def __init__(self, live: ConfigSource, state: SharedState) -> None:
        self._live = live
        self._state = state
        self._settling: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def reserve(self, account: str, recipients: int, daily: int) -> Reply | None:
        """Take `recipients` from the account's rate, `daily` of them also from its 24
        hours (the others are mailbox simulator recipients, which SES leaves out of
        the 24-hour quota), or the SES 454 that refuses the message."""
        verdict = await self._state.reserve_send(
            account, recipients, daily, send_limits(self._live.config, account))
        if verdict is SendVerdict.RATE:
            return R.RATE_EXCEEDED
        if verdict is SendVerdict.DAILY:
            return R.DAILY_QUOTA_EXCEEDED
        return None

    async def settle(self, account: str, recipients: int, daily: int, *,
                     sent: bool) -> None:
        """The reserved message was spooled (`sent`), or not: then its recipients go
        back to the rate."""
        await self._state.settle_send(account, recipients, daily, sent=sent,
                                      limits=send_limits(self._live.config, account))

    def settle_later(self, account: str, recipients: int, daily: int, *,
                     sent: bool) -> None:
        """settle() without the client waiting for it: its reply does not depend on
        it, and with the state in Redis or behind the supervisor it is a round trip.
        Until it lands, the recipients still count as held, so nothing is granted
        twice meanwhile. drain() waits for what is under way."""
        task = asyncio.ensure_future(self._settle_logged(account, recipients, daily, sent))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_logged(self, account: str, recipients: int, daily: int,
                             sent: bool) -> None:
        # Tried again until the state answers: a sent message's recipients that never
        # reach the 24-hour count would stop being held after a while (the backend
        # gives back what a lost worker or a quiet node held) and let the account
        # send them again.
        wait = _SETTLE_RETRY_FIRST
        while True:
            try:
                await self.settle(account, recipients, daily, sent=sent)
                return
            except StateUnavailable as exc:
                if self._stopping:
                    log.error("quota of account=%s not settled: %s", account, exc)
                    return
                if wait == _SETTLE_RETRY_FIRST:
                    log.warning("quota of account=%s not settled yet, trying again: %s",
                                account, exc)
            await asyncio.sleep(wait)
            wait = min(wait * 2, _SETTLE_RETRY_MAX)

    async def drain(self) -> None:
        """Wait for the settlements under way (before the state goes away); those the
        state does not take make one more try."""
        self._stopping = True
        while self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)

    async def sent_last_24h(self, account: str) -> int:
        return await self._state.sent_last_24h(account)
