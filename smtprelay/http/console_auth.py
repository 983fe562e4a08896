"""The console's sessions: who logged in with the admin token, and each session's CSRF token.

A login presents the admin secret, or a signed token from `smtprelay admin-token
issue` (smtprelay.http.admin_auth judges both), once; the browser then holds only a
random session id (256 bits) in an HttpOnly, SameSite=Strict cookie, Secure when the
console is reached over HTTPS. Sessions live in the supervisor's memory: a restart
logs everyone out, and nothing about them is written anywhere. A session ends at
logout, after ``http.console_session_lifetime``, or when the signed token it was
opened with expires, whichever is first.

Every change (a POST) must carry the session's CSRF token, in the form field
``csrf`` or the ``X-CSRF-Token`` header of a fetch(); SameSite=Strict alone would
leave browsers without it, and sub-domains that share the site, unprotected. The
login form has its own token in a short-lived cookie of the login path (a
double submit), so a page elsewhere cannot log a browser into the console either.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay.http import admin_auth

COOKIE = "smtprelay_console"
LOGIN_COOKIE = "smtprelay_console_login"
CSRF_FIELD = "csrf"
CSRF_HEADER = "X-CSRF-Token"
MAX_SESSIONS = 1000  # past this the oldest is ended: a login loop cannot fill memory


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    started: float
    expires: float
    client: str  # the address that logged in, for the log


def token_expiry(token: str) -> float | None:
    """When a signed token (v1.<expiry>.<mac>) expires; None for the secret itself."""
    version, _, rest = token.partition(".")
    expiry, _, _ = rest.partition(".")
    if version == admin_auth.VERSION and expiry.isdigit():
        return float(expiry)
    return None


def same(presented: str | None, expected: str) -> bool:
    return presented is not None and hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), expected.encode("ascii"))


class Sessions:
    def __init__(self, secret: str, lifetime: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret
        self.lifetime = lifetime
        self.clock = clock
        self._by_id: dict[str, Session] = {}

    def login(self, token: str, client: str) -> Session | admin_auth.Verdict:
        """A new session for a good token; the verdict for a bad one."""
        verdict = admin_auth.check(self._secret, f"Bearer {token.strip()}", self.clock())
        if verdict is not admin_auth.Verdict.OK:
            return verdict
        now = self.clock()
        expires = now + self.lifetime
        signed_until = token_expiry(token.strip())
        if signed_until is not None:
            expires = min(expires, signed_until)
        self._forget_expired(now)
        while len(self._by_id) >= MAX_SESSIONS:
            del self._by_id[next(iter(self._by_id))]  # the oldest (dicts keep order)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, expires,
                          client)
        self._by_id[session.id] = session
        return session

    def find(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires <= self.clock():
            del self._by_id[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._by_id.pop(session_id, None)

    def _forget_expired(self, now: float) -> None:
        for sid in [sid for sid, s in self._by_id.items() if s.expires <= now]:
            del self._by_id[sid]

    def __len__(self) -> int:
        return len(self._by_id)
