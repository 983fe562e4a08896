"""Generated credentials (smtprelay.auth.credentials)."""

from __future__ import annotations

from smtprelay.auth.credentials import generate_password, generate_username


def test_generated_credentials_are_safe_to_paste() -> None:
    passwords = {generate_password() for _ in range(2000)}
    assert len(passwords) == 2000
    assert all(len(p) == 44 and p.isalnum() and p.isascii() for p in passwords)
    assert all(generate_username().isalnum() for _ in range(100))
