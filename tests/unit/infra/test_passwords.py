"""Password hashes (smtprelay.infra.passwords)."""

from __future__ import annotations

from smtprelay.infra.passwords import hash_password, is_supported_hash, verify_password


def test_password_hash_round_trip() -> None:
    stored = hash_password("correct horse", log_n=10)
    assert is_supported_hash(stored)
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("x", "scrypt$ln=10,r=8,p=1$@@@$@@@")
    assert not is_supported_hash("$2b$12$bcrypt")
    assert hash_password("same", log_n=10) != hash_password("same", log_n=10)
