"""SNS's subscription handshake for webhooks with ``format: notification``.

SNS starts every HTTP(S) subscription with a ``SubscriptionConfirmation`` POST and
sends notifications only once the endpoint has confirmed by GETting the
``SubscribeURL`` in it; "SES bounces via SNS" endpoints (listmonk, Mautic, ...) expect
that. Here the SubscribeURL points at the relay's own HTTP listener
(``<http.public_url>/sns/confirm?Action=ConfirmSubscription&TopicArn=...&Token=...``,
served by smtprelay.http.sns), and until a destination's receiver has confirmed, the
publisher holds its events in the outbox (smtprelay.events.publisher).

A subscription is one destination (``<set>/<name>``) sending to one URL under one
TopicArn: another URL or TopicArn for the same destination is a new subscription, with
a new token, to be confirmed again (as a new SNS subscription would be). The URL is
kept only as a SHA-256 (it may hold a password). The state is a small JSON file,
``data_dir/events-subscriptions.json`` (mode 0600: it holds the tokens), rewritten
durably (smtprelay.infra.safeio) when a subscription is requested, confirmed or
dropped, so a confirmation survives a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from smtprelay.infra.safeio import write_durably

log = logging.getLogger("smtprelay.events")

SUBSCRIPTIONS_FILE = "events-subscriptions.json"
CONFIRM_PATH = "/sns/confirm"
# SNS's tokens are long hex strings; 64 random bytes, as hex.
_TOKEN_BYTES = 64
# Anything longer is not one of ours, and is not compared at all.
MAX_TOKEN_LENGTH = 2 * _TOKEN_BYTES


def endpoint_id(url: str) -> str:
    """How a subscription names its receiver's URL without keeping a password in it."""
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def subscribe_url(base: str, topic_arn: str, token: str) -> str:
    """The SubscribeURL: SNS's query (Action, TopicArn, Token) on the relay's route."""
    query = urlencode({"Action": "ConfirmSubscription", "TopicArn": topic_arn,
                       "Token": token}, quote_via=quote, safe=":")
    return f"{base.rstrip('/')}{CONFIRM_PATH}?{query}"


@dataclass(frozen=True, slots=True)
class Subscription:
    endpoint: str  # endpoint_id(url)
    topic_arn: str
    token: str
    requested: float  # Unix time the token was made
    confirmed: float | None = None  # Unix time of the first confirmation
    subscription_arn: str | None = None

    def is_for(self, endpoint: str, topic_arn: str) -> bool:
        return self.endpoint == endpoint and self.topic_arn == topic_arn


class Confirmer(Protocol):
    """What GET /sns/confirm calls (the publisher): the SubscriptionArn for a valid
    TopicArn and Token (confirming the subscription if it was pending), else None."""

    async def confirm(self, topic_arn: str, token: str) -> str | None: ...


class Subscriptions:
    """Every notification webhook's subscription, pending or confirmed, on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_key: dict[str, Subscription] = {}
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file (blocking: call in a thread). A damaged one is started afresh:
        every notification webhook then asks its receiver to confirm again."""
        try:
            data = json.loads(self.path.read_bytes())
            self._by_key = {str(key): Subscription(**value) for key, value in data.items()}
        except FileNotFoundError:
            self._by_key = {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s cannot be read (%s); webhooks with format notification ask "
                        "their receivers to confirm the subscription again", self.path, exc)
            self._by_key = {}

    def keys(self) -> set[str]:
        return set(self._by_key)

    def get(self, key: str) -> Subscription | None:
        return self._by_key.get(key)

    def confirmed(self, key: str, endpoint: str, topic_arn: str) -> bool:
        found = self._by_key.get(key)
        return (found is not None and found.is_for(endpoint, topic_arn)
                and found.confirmed is not None)

    async def request(self, key: str, endpoint: str, topic_arn: str) -> Subscription:
        """The subscription of `key` to this endpoint and topic: the one on file, or a
        new pending one with a fresh token (saved before it is returned, so the token
        sent is one a restart still knows)."""
        async with self._lock:
            found = self._by_key.get(key)
            if found is not None and found.is_for(endpoint, topic_arn):
                return found
            made = Subscription(endpoint=endpoint, topic_arn=topic_arn,
                                token=secrets.token_hex(_TOKEN_BYTES), requested=time.time())
            await self._save({**self._by_key, key: made})
            return made

    async def confirm(self, topic_arn: str, token: str) -> tuple[str, Subscription] | None:
        """The destination key and its subscription for this TopicArn and token,
        confirmed (and saved) if it was pending; None when no subscription has them.
        The token is compared with every subscription's in constant time."""
        async with self._lock:
            match: tuple[str, Subscription] | None = None
            if len(token) <= MAX_TOKEN_LENGTH:
                given = token.encode("utf-8", "surrogateescape")
                for key, subscription in self._by_key.items():
                    # Every token is compared, whatever matched before.
                    same = hmac.compare_digest(subscription.token.encode("ascii"), given)
                    if same and subscription.topic_arn == topic_arn:
                        match = (key, subscription)
            if match is None:
                return None
            key, subscription = match
            if subscription.confirmed is not None:
                return match  # a repeated GET: the same answer, nothing to save
            done = replace(subscription, confirmed=time.time(),
                           subscription_arn=f"{topic_arn}:{uuid.uuid4()}")
            await self._save({**self._by_key, key: done})
            return key, done

    async def forget(self, keys: set[str]) -> None:
        """Drop the subscriptions of destinations that are gone (or send events now)."""
        async with self._lock:
            if keys & self._by_key.keys():
                await self._save({k: v for k, v in self._by_key.items() if k not in keys})

    async def _save(self, state: dict[str, Subscription]) -> None:
        """Write `state`, then make it the one in memory; on failure neither changes."""
        data = json.dumps({key: asdict(value) for key, value in state.items()},
                          indent=1, sort_keys=True).encode() + b"\n"
        await asyncio.to_thread(write_durably, self.path, data, 0o600)
        self._by_key = state
