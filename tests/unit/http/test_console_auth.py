"""The console's sessions: tokens accepted as the admin API accepts them, expiry, and
the bound on how many are kept."""

from __future__ import annotations

from smtprelay.http import admin_auth, console_auth
from smtprelay.http.console import _safe_next
from smtprelay.http.console_auth import Session, Sessions

SECRET = "a-secret-of-thirty-two-characters!!"


def test_the_secret_and_a_signed_token_log_in_others_do_not() -> None:
    now = [1_000_000.0]
    sessions = Sessions(SECRET, 3600, lambda: now[0])
    assert sessions.login("wrong", "192.0.2.1") is admin_auth.Verdict.INVALID
    assert sessions.login("", "192.0.2.1") is admin_auth.Verdict.MISSING
    plain = sessions.login(SECRET, "192.0.2.1")
    assert isinstance(plain, Session) and plain.expires == now[0] + 3600
    signed = sessions.login(admin_auth.issue(SECRET, now[0] + 60), "192.0.2.1")
    assert isinstance(signed, Session) and signed.expires == now[0] + 60
    assert sessions.login(admin_auth.issue(SECRET, now[0] - 1), "x") is \
        admin_auth.Verdict.EXPIRED
    assert sessions.find(plain.id) is plain and sessions.find("nope") is None
    now[0] += 61
    assert sessions.find(signed.id) is None and sessions.find(plain.id) is plain
    now[0] += 3600
    assert sessions.find(plain.id) is None and len(sessions) == 0


def test_ids_and_csrf_tokens_are_random_and_compared_in_full() -> None:
    sessions = Sessions(SECRET, 60)
    one, two = sessions.login(SECRET, "a"), sessions.login(SECRET, "b")
    assert isinstance(one, Session) and isinstance(two, Session)
    assert len({one.id, two.id, one.csrf, two.csrf}) == 4 and len(one.id) >= 43
    assert console_auth.same(one.csrf, one.csrf)
    assert not console_auth.same(one.csrf[:-1], one.csrf)
    assert not console_auth.same(None, one.csrf) and not console_auth.same("", one.csrf)
    sessions.end(one.id)
    assert sessions.find(one.id) is None


def test_the_oldest_session_goes_past_the_bound() -> None:
    sessions = Sessions(SECRET, 60)
    first = sessions.login(SECRET, "a")
    assert isinstance(first, Session)
    for _ in range(console_auth.MAX_SESSIONS):
        sessions.login(SECRET, "a")
    assert len(sessions) == console_auth.MAX_SESSIONS and sessions.find(first.id) is None


def test_a_login_goes_on_only_to_console_paths() -> None:
    assert _safe_next("/console/queue?state=held") == "/console/queue?state=held"
    for target in ["", "/", "//evil.example/console/", "https://evil.example/",
                   "/console/\\\\evil", "/consoleX", "/console/\nx"]:
        assert _safe_next(target) == "/console/", target
