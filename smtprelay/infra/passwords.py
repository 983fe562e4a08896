"""Password hashing for SMTP credentials: scrypt, stored as a self-describing string.

Format: ``scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<hash b64>``. The parameters live in
the string so they can be raised later without invalidating existing credentials.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SCHEME = "scrypt"
# N=2^15, r=8 costs ~32 MiB and ~60 ms here: slow enough against offline guessing;
# the verification cache keeps it off the per-session path.
DEFAULT_LOG_N = 15
DEFAULT_R = 8
DEFAULT_P = 1
_KEY_LEN = 32
_FORMAT = re.compile(
    r"^scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, log_n: int = DEFAULT_LOG_N) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode("utf-8"), salt, log_n, DEFAULT_R, DEFAULT_P)
    return f"{SCHEME}$ln={log_n},r={DEFAULT_R},p={DEFAULT_P}${_b64(salt)}${_b64(digest)}"


def _scrypt(password: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(
        password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 1024 * 1024, dklen=_KEY_LEN
    )


def is_supported_hash(stored: str) -> bool:
    match = _FORMAT.match(stored)
    return bool(match) and 10 <= int(match.group(1)) <= 20 if match else False


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of a password against a stored hash; False for malformed hashes."""
    match = _FORMAT.match(stored)
    if not match or not is_supported_hash(stored):
        return False
    log_n, r, p = int(match.group(1)), int(match.group(2)), int(match.group(3))
    try:
        salt = base64.b64decode(match.group(4), validate=True)
        expected = base64.b64decode(match.group(5), validate=True)
    except ValueError:
        return False
    digest = _scrypt(password.encode("utf-8"), salt, log_n, r, p)
    return hmac.compare_digest(digest, expected)
