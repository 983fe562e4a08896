"""When to try a deferred recipient again, and how SES would name the delay.

Backoff doubles from `first` up to `max_interval`, with +-20% jitter so recipients
deferred together (a receiver down for an hour) do not all come back in the same
second. A retry hint in the remote reply ("try again in 5 minutes", greylisting)
replaces the backoff for that attempt, capped at `max_interval`. Nothing is
scheduled past the message's expiry: the last attempt happens at the deadline, and
a deferral at or after it becomes a bounce (Postfix's maximal_queue_lifetime).
"""

from __future__ import annotations

import random
import re

from smtprelay.config import RetryConfig
from smtprelay.delivery.model import RecipientResult

JITTER = 0.2


def next_retry(attempts: int, result: RecipientResult, retry: RetryConfig, *, now: float,
               expires_at: float, rng: random.Random) -> float:
    """The time of the next attempt after `attempts` failed ones (1 after the first)."""
    if result.retry_after is not None:
        wait = min(result.retry_after, retry.max_interval)
    else:
        exponent = min(max(attempts - 1, 0), 40)  # 2**40 minutes is far past any cap
        wait = min(retry.first * 2.0**exponent, retry.max_interval)
        wait *= rng.uniform(1 - JITTER, 1 + JITTER)
    return min(now + wait, expires_at)


_MAILBOX_FULL = re.compile(r"mailbox (is )?full|over ?quota|quota exceeded|insufficient storage",
                           re.IGNORECASE)
_SPAM = re.compile(r"spam|unsolicited|bulk mail", re.IGNORECASE)
# Aimed at the sending IP. Not "try again later": nearly every 4xx says it ("451 4.3.0
# Temporary server error, try again later" is the receiver's own trouble, which SES
# calls RecipientServerError, as docs/events.md's DeliveryDelay example does).
_IP = re.compile(r"block ?list|blacklist|blocked|rbl|rate limit|too many (connections|messages)"
                 r"|throttl|reputation", re.IGNORECASE)


def delay_type(result: RecipientResult) -> str:
    """The SES DeliveryDelay delayType for a temporary failure."""
    if result.delay_type is not None:
        return result.delay_type
    status = result.status
    text = result.diagnostic
    if status == "4.2.2" or _MAILBOX_FULL.search(text):
        return "MailboxFull"
    if text.startswith("x-local;"):
        return "InternalFailure"
    if result.code is None:
        # No reply from a server: connection, TLS (4.7.4/4.7.5 are ours) or DNS
        # trouble. SES's own event example spells it TransientCommunicationFailure.
        return "TransientCommunicationFailure"
    if status.startswith("4.7.") and _SPAM.search(text):
        return "SpamDetected"
    if status.startswith("4.7.") or _IP.search(text):
        return "IPFailure"
    if result.code // 100 == 4:
        return "RecipientServerError"
    return "General"
