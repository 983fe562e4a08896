"""Checks an SMTP user name and password: lockout, verification cache, slow hash off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from smtprelay.auth.credentials import Credential, Credentials
from smtprelay.config import Config, ConfigSource, Derived
from smtprelay.infra import metrics
from smtprelay.infra.passwords import hash_password, verify_password
from smtprelay.state.api import LockoutPolicy, SharedState, StateUnavailable
from smtprelay.state.local import LocalState

log = logging.getLogger("smtprelay.auth")

_CACHE_SIZE = 10_000
# Verifications run at most this many at once: scrypt is memory-hard and a flood of
# guesses must not take every core from the sessions that carry mail.
_MAX_CONCURRENT_VERIFY = 2


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    LOCKED = "locked"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class AuthResult:
    outcome: Outcome
    account: str | None = None
    username: str | None = None
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class _FromConfig:
    """The static credentials (by user name) and the accounts of one configuration."""

    static: dict[str, Credential]
    accounts: frozenset[str]

    @classmethod
    def of(cls, config: Config) -> _FromConfig:
        return cls({cred.username: Credential(username=cred.username, account=account,
                                              password_hash=cred.password_hash,
                                              source="config")
                    for account, acfg in config.accounts.items()
                    for cred in acfg.credentials},
                   frozenset(config.accounts))


def lockout_policy(config: Config) -> LockoutPolicy:
    auth = config.auth
    return LockoutPolicy(per_ip=auth.max_failures_per_ip, per_user=auth.max_failures_per_user,
                         per_user_everywhere=auth.max_failures_per_user_everywhere,
                         min_addresses=auth.user_lockout_min_addresses,
                         window=auth.failure_window, lockout=auth.lockout_duration)


class Authenticator:
    def __init__(self, live: ConfigSource, store: Credentials,
                 shared: SharedState | None = None) -> None:
        self._store = store
        # Static credentials and accounts follow a reload; lockout state stays, shared
        # by every worker process (smtprelay.state).
        self._from_config = Derived(live, _FromConfig.of)
        self._shared: SharedState = shared if shared is not None else LocalState()
        # `auth` needs a restart: a reload keeps its running values.
        auth = live.config.auth
        self._lockout = lockout_policy(live.config)
        self._cache_ttl = auth.verify_cache_ttl
        # The cache is keyed by HMAC(process key, user, password): the password
        # itself is never kept, and the key dies with the process.
        self._cache_key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._verify_slots = asyncio.Semaphore(_MAX_CONCURRENT_VERIFY)
        # One verification per (user, password) at a time: a smarthost opening 50
        # sessions at once must cost one slow hash, not 50.
        self._inflight: dict[bytes, asyncio.Task[bool]] = {}
        self._dummy_hash = hash_password(secrets.token_urlsafe(16))

    def _cache_id(self, username: str, password: str) -> bytes:
        material = username.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._cache_key, material, hashlib.sha256).digest()

    async def _shown(self, username: str) -> str:
        """A user name as logs may show it: as typed when it is a credential's, else a
        hash (a password typed into the user name field must not reach the log)."""
        try:
            known = await asyncio.to_thread(self._lookup, username) is not None
        except Exception:
            known = False
        return username if known else _unknown(username)

    def _lookup(self, username: str) -> Credential | None:
        static = self._from_config().static.get(username)
        if static is not None:
            return static
        return self._store.lookup(username)

    async def authenticate(self, username: str, password: str, client_ip: str,
                           mechanism: str) -> AuthResult:
        result = await self._authenticate(username, password, client_ip)
        metrics.AUTH_ATTEMPTS.labels(mechanism=mechanism, result=result.outcome.value).inc()
        return result

    async def _authenticate(self, username: str, password: str, client_ip: str) -> AuthResult:
        try:
            wait = await self._shared.auth_locked_for(client_ip, username)
        except StateUnavailable as exc:
            # No lockout can be checked, so no password is tried: a temporary refusal.
            log.error("auth unavailable client=%s: %s", client_ip, exc)
            return AuthResult(Outcome.UNAVAILABLE)
        if wait > 0:
            log.warning("auth locked client=%s user=%s retry_after=%.0fs", client_ip,
                        await self._shown(username), wait)
            return AuthResult(Outcome.LOCKED, retry_after=wait)
        try:
            credential = await asyncio.to_thread(self._lookup, username)
        except Exception as exc:
            log.error("auth backend failed client=%s user=%s error=%s", client_ip, username, exc)
            return AuthResult(Outcome.UNAVAILABLE)

        cache_id = self._cache_id(username, password)
        cached = self._cache.get(cache_id)
        if cached is not None and credential is not None:
            stored_hash, expires = cached
            # A hit counts only while the credential still holds the same hash and is
            # enabled: deleting, disabling or rotating it takes effect at once.
            if expires > time.monotonic() and stored_hash == credential.password_hash \
                    and not credential.disabled \
                    and credential.account in self._from_config().accounts:
                self._cache.move_to_end(cache_id)
                return await self._accepted(credential, client_ip)
            self._cache.pop(cache_id, None)

        # Unknown users cost the same hash as known ones, so timing tells nothing.
        stored = credential.password_hash if credential is not None else self._dummy_hash
        valid = await self._verify(cache_id, password, stored)
        if credential is None or not valid or credential.disabled \
                or credential.account not in self._from_config().accounts:
            try:
                await self._shared.auth_failure(client_ip, username, self._lockout)
            except StateUnavailable as exc:
                log.error("auth failure of client=%s not counted: %s", client_ip, exc)
            reason = ("unknown user" if credential is None else
                      "disabled" if credential.disabled and valid else
                      "unknown account" if valid else "wrong password")
            shown = username if credential is not None else _unknown(username)
            log.warning("auth failed client=%s user=%s reason=%s", client_ip, shown, reason)
            return AuthResult(Outcome.INVALID)
        return await self._accepted(credential, client_ip)

    async def _verify(self, cache_id: bytes, password: str, stored: str) -> bool:
        task = self._inflight.get(cache_id)
        if task is None:
            # A task of its own, shielded: a caller that goes away (client hung up)
            # must not cancel the verification others are waiting for.
            task = asyncio.create_task(self._verify_now(cache_id, password, stored))
            self._inflight[cache_id] = task
            task.add_done_callback(lambda _: self._inflight.pop(cache_id, None))
        return await asyncio.shield(task)

    async def _verify_now(self, cache_id: bytes, password: str, stored: str) -> bool:
        async with self._verify_slots:
            metrics.AUTH_HASH_VERIFICATIONS.inc()
            valid = await asyncio.to_thread(verify_password, password, stored)
        if valid:
            # Cached here, before the task completes and leaves `_inflight`: were it
            # cached by a waiter, a session arriving between the two would find
            # neither and pay a second slow hash. A hit still checks the credential
            # (same hash, enabled, account configured) when it is used.
            self._cache[cache_id] = (stored, time.monotonic() + self._cache_ttl)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return valid

    async def _accepted(self, credential: Credential, client_ip: str) -> AuthResult:
        with contextlib.suppress(StateUnavailable):  # it only clears a pair's failures
            await self._shared.auth_success(client_ip, credential.username)
        return AuthResult(Outcome.OK, account=credential.account, username=credential.username)


def _unknown(username: str) -> str:
    """An unknown user name in the log: a hash an operator can match against what a
    client was told to use, never the text (it may be a password typed in the wrong
    field)."""
    return "unknown:" + hashlib.sha256(username.encode("utf-8", "surrogateescape")
                                       ).hexdigest()[:12]
