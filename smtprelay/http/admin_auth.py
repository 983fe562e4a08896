"""Who may use the admin API: the secret from ``http.admin_token_env``, or a token signed with it.

The environment variable named by ``http.admin_token_env`` holds a secret. A request
is let in with ``Authorization: Bearer <secret>``, or with a signed token that
expires, made by ``smtprelay admin-token issue --expires 1h`` so an operator can
hand out short-lived access without the secret itself:

    v1.<expiry: unix seconds>.<base64url HMAC-SHA256(secret, "smtprelay admin v1 <expiry>")>

about 60 characters of ``[A-Za-z0-9._-]``, safe in a header, a URL or a shell. A
token cannot be revoked one by one: changing the secret (and restarting) voids
every token made with the old one. Comparisons take the same time whatever the
input (hmac.compare_digest), and every refusal looks the same to the client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections.abc import Callable
from enum import Enum

from smtprelay.state.api import LockoutPolicy
from smtprelay.state.lockout import Lockout

VERSION = "v1"
# Shorter secrets are accepted (the operator chose it) but logged as guessable.
MIN_SECRET_CHARS = 16
_CONTEXT = b"smtprelay admin v1 "


class Verdict(Enum):
    OK = "ok"
    MISSING = "no bearer token"
    INVALID = "token not accepted"
    EXPIRED = "signed token expired"


def secret_from_env(name: str | None) -> str | None:
    """The secret, or None when the admin API is off (no variable named, unset, empty)."""
    if not name:
        return None
    value = os.environ.get(name, "")
    return value.strip() or None


def _signature(secret: str, expiry: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), _CONTEXT + str(expiry).encode("ascii"),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def issue(secret: str, expires_at: float) -> str:
    """A token valid until `expires_at` (unix time, rounded down to the second)."""
    expiry = int(expires_at)
    return f"{VERSION}.{expiry}.{_signature(secret, expiry)}"


def check(secret: str, authorization: str | None, now: float | None = None) -> Verdict:
    """Judge an Authorization header value against the secret."""
    if not authorization:
        return Verdict.MISSING
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return Verdict.MISSING
    presented = credentials.strip().encode("utf-8", "surrogateescape")
    if hmac.compare_digest(presented, secret.encode("utf-8")):
        return Verdict.OK
    version, _, rest = presented.partition(b".")
    expiry_text, _, signature = rest.partition(b".")
    if version != VERSION.encode() or not expiry_text.isdigit() or len(expiry_text) > 12:
        return Verdict.INVALID
    expiry = int(expiry_text)
    if expiry_text != str(expiry).encode("ascii"):
        return Verdict.INVALID  # one spelling per token: no leading zeros
    if not hmac.compare_digest(signature, _signature(secret, expiry).encode("ascii")):
        return Verdict.INVALID
    if expiry <= (time.time() if now is None else now):
        return Verdict.EXPIRED
    return Verdict.OK


class FailedTokens:
    """Wrong admin tokens per client address, for the admin API and the console login
    alike: the SMTP AUTH lockout's per-address limit (auth.max_failures_per_ip within
    auth.failure_window locks for auth.lockout_duration), kept apart from SMTP AUTH's
    own counts. While locked the right token is refused too. A request without any
    token is not a guess and is not counted. The counts are this process's."""

    def __init__(self, policy: LockoutPolicy,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._lockout = Lockout(clock)

    def locked_for(self, client: str) -> float:
        """Seconds the address stays locked out (0: it is not)."""
        return self._lockout.locked_for(client, None)

    def failed(self, client: str) -> bool:
        """Count a wrong token from `client`; True when that locks it out."""
        self._lockout.failure(client, None, self.policy)
        return self.locked_for(client) > 0
