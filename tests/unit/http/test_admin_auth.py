"""Admin API credentials: the secret itself and signed tokens that expire."""

from __future__ import annotations

import re

import pytest

from smtprelay.http import admin_auth
from smtprelay.http.admin_auth import Verdict, check, issue

SECRET = "0123456789abcdef-secret"
NOW = 1_800_000_000.0


def test_the_secret_and_a_live_signed_token_are_accepted() -> None:
    assert check(SECRET, f"Bearer {SECRET}", NOW) is Verdict.OK
    assert check(SECRET, f"bearer   {SECRET}  ", NOW) is Verdict.OK  # scheme in any case
    token = issue(SECRET, NOW + 3600)
    assert re.fullmatch(r"v1\.1800003600\.[A-Za-z0-9_-]{43}", token)
    assert check(SECRET, f"Bearer {token}", NOW) is Verdict.OK
    assert check(SECRET, f"Bearer {token}", NOW + 3599) is Verdict.OK


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", f"Basic {SECRET}",
                                    SECRET, f"Token {SECRET}"])
def test_no_bearer_token(header: str | None) -> None:
    assert check(SECRET, header, NOW) is Verdict.MISSING


def test_expired_tampered_and_foreign_tokens_are_refused() -> None:
    token = issue(SECRET, NOW + 60)
    assert check(SECRET, f"Bearer {token}", NOW + 60) is Verdict.EXPIRED
    version, expiry, signature = token.split(".")
    for bad in (f"{version}.{int(expiry) + 1}.{signature}",
                f"{version}.{expiry}.{signature[:-1]}",
                f"{version}.{expiry}.{signature}A",
                f"v2.{expiry}.{signature}", f"{version}.0{expiry}.{signature}",
                f"{version}.-{expiry}.{signature}", f"{version}.{expiry}",
                issue("another-secret-0123456789", NOW + 60),
                f"{SECRET}x", SECRET.upper(), "v1.9999999999999.x", "é" * 10):
        assert check(SECRET, f"Bearer {bad}", NOW) is not Verdict.OK, bad
    # An expired token is only told apart after its signature checked out.
    assert check(SECRET, f"Bearer {version}.{int(expiry) - 120}.{signature}",
                 NOW) is Verdict.INVALID


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert admin_auth.secret_from_env(None) is None
    monkeypatch.delenv("ADMIN_TEST_SECRET", raising=False)
    assert admin_auth.secret_from_env("ADMIN_TEST_SECRET") is None
    monkeypatch.setenv("ADMIN_TEST_SECRET", "  \n")
    assert admin_auth.secret_from_env("ADMIN_TEST_SECRET") is None
    monkeypatch.setenv("ADMIN_TEST_SECRET", f" {SECRET}\n")
    assert admin_auth.secret_from_env("ADMIN_TEST_SECRET") == SECRET
