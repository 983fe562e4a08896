"""API keys for the SES-compatible HTTP API: an access key id and a secret, as AWS's.

Signature Version 4 signs each request with an HMAC keyed by the secret, so the
server needs the secret itself, not a slow hash of it as for SMTP passwords. The
secrets are kept encrypted at rest with AES-256-GCM under a key-encryption key
(KEK) in its own file, `api.key_file`, kept apart from the database: a copy of
state.db (or of Redis) without that file gives away no secret.

A sealed secret is ``v1:<KEK id>:<base64 of nonce + ciphertext + tag>``. The KEK id
(a hash of the key, not the key) says which key sealed it, so a rotation can be
resumed and a node that holds only the previous key says so rather than failing
vaguely. The associated data is the access key id and its account: a ciphertext
copied onto another row, or a row moved to another account, does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from smtprelay.auth.credentials import OwnedRows
from smtprelay.infra.safeio import fsync_dir, write_durably

KEY_FILE_SETTING = "api.key_file"
ACCESS_KEY_PREFIX = "SRAK"  # AWS's own are AKIA (long-term) and ASIA (temporary)
_KEY_BYTES = 32
_NONCE_BYTES = 12
_FORMAT = "v1"


class ApiKeyError(Exception):
    """An expected failure, said to the operator in one line naming what to do."""


class KeyFileError(ApiKeyError):
    """api.key_file is missing, unreadable, not a key, or not the key a secret needs."""


class UnreadableSecret(ApiKeyError):
    """A sealed secret fails authentication under the key it names: the row was altered."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    access_key_id: str
    account: str
    created_at: float
    disabled: bool = False
    description: str | None = None


def generate_access_key_id() -> str:
    # 20 characters like AWS's (AKIA + 16 base32); 80 random bits, no secret in it.
    return ACCESS_KEY_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode("ascii")


def generate_secret() -> str:
    # 40 characters of base64 like AWS's secret access keys (240 random bits).
    return base64.b64encode(secrets.token_bytes(30)).decode("ascii")


class KeyEncryptionKey:
    """The 32 bytes of api.key_file, and AES-GCM with them."""

    __slots__ = ("_aead", "id", "key")

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError(f"a key-encryption key is {_KEY_BYTES} bytes, not {len(key)}")
        self.key = key
        # Names the key in sealed secrets and messages; a hash, so it reveals nothing.
        self.id = hashlib.sha256(b"smtprelay api key KEK\0" + key).hexdigest()[:16]
        self._aead = AESGCM(key)

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(secrets.token_bytes(_KEY_BYTES))

    def file_text(self) -> bytes:
        return base64.b64encode(self.key) + b"\n"

    def seal(self, key: ApiKey, secret: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), _associated(key))
        return f"{_FORMAT}:{self.id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, key: ApiKey, sealed: str) -> str:
        try:
            data = base64.b64decode(sealed.split(":", 2)[2], validate=True)
            secret = self._aead.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:],
                                        _associated(key))
        except (InvalidTag, IndexError, ValueError):
            raise UnreadableSecret(
                f"the secret of access key {key.access_key_id} does not decrypt with the key "
                f"that sealed it ({self.id}): its stored row was altered or copied from "
                f"another key; delete it (smtprelay api-keys delete {key.access_key_id}) "
                "and create a new one") from None
        return secret.decode("ascii")


def _associated(key: ApiKey) -> bytes:
    return f"{key.access_key_id}\0{key.account}".encode()


def sealed_by(sealed: str) -> str:
    """The id of the KEK that sealed `sealed`."""
    version, _, rest = sealed.partition(":")
    if version != _FORMAT:
        raise UnreadableSecret(f"a sealed secret of unknown format {version!r}")
    return rest.partition(":")[0]


# --- the key file --------------------------------------------------------------------

def read_key_file(path: Path) -> KeyEncryptionKey:
    """The key in `path`: one line, 32 bytes in base64, not readable by group or others."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(
            f"{KEY_FILE_SETTING}: {path} does not exist; it holds the key that decrypts "
            "the API keys' secrets: restore it from its backup or secrets manager (every "
            "node needs the same file), or, if it is lost for good, delete the API keys "
            "and create new ones (the first `smtprelay api-keys create` makes the file)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"{KEY_FILE_SETTING}: cannot read {path}: {exc.strerror}; "
                           "make it readable by the user smtprelay runs as") from None
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(fd).st_mode & 0o077:
            raise KeyFileError(f"{KEY_FILE_SETTING}: {path} is readable by group or others; "
                               f"chmod 600 {path} (on a secrets manager's mount, give it "
                               "mode 0400 or 0600 there)")
        text = handle.read(4096)
    try:
        return KeyEncryptionKey(base64.b64decode(text.strip(), validate=True))
    except (binascii.Error, ValueError):
        raise KeyFileError(
            f"{KEY_FILE_SETTING}: {path} does not hold a key (one line: {_KEY_BYTES} "
            "random bytes in base64); restore the file from its backup") from None


def create_key_file(path: Path) -> KeyEncryptionKey:
    """A new random key written to `path` (mode 0600); never replaces a file there."""
    check_key_directory(path)
    key = KeyEncryptionKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path)  # made by a concurrent command: use it
    except OSError as exc:
        raise KeyFileError(f"{KEY_FILE_SETTING}: cannot create {path}: {exc.strerror}"
                           ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(key.file_text())
        out.flush()
        os.fsync(out.fileno())
    fsync_dir(path.parent)
    return key


def ensure_key_file(path: Path) -> KeyEncryptionKey:
    """The key in `path`, made first if there is no file (the first API key's)."""
    return read_key_file(path) if os.path.lexists(path) else create_key_file(path)


def replace_key_file(path: Path, key: KeyEncryptionKey) -> None:
    """Put `key` at `path` in one rename: a reader sees the old key or the new, whole."""
    check_key_directory(path)
    try:
        write_durably(path, key.file_text(), 0o600)
    except OSError as exc:
        raise KeyFileError(f"{KEY_FILE_SETTING}: cannot write {path}: {exc.strerror}; "
                           "on a read-only secrets mount, rotate it there") from None


def check_key_directory(path: Path) -> None:
    """Refuse to write a key where others could swap it for theirs: a directory that
    group or others may write to. The directory is made (0700) if missing."""
    directory = path.parent
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = directory.stat().st_mode
    except OSError as exc:
        raise KeyFileError(f"{KEY_FILE_SETTING}: cannot make {directory}: {exc.strerror}"
                           ) from None
    if mode & 0o022:
        raise KeyFileError(f"{KEY_FILE_SETTING}: {directory} is writable by group or "
                           f"others, who could replace {path.name}; chmod go-w {directory} "
                           "or set api.key_file to a file in a private directory")


def companion(path: Path, suffix: str) -> Path:
    """`<key_file>.old` (the key before the last rotation) or `<key_file>.new` (the
    key a rotation is moving to): where a node looks for a key a secret names."""
    return path.with_name(path.name + suffix)


class KeyFile:
    """api.key_file as the stores use it: read once, and read again (with .old and
    .new beside it) only when a secret names another key, which is how a running node
    follows `smtprelay api-keys rotate-key` without a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, KeyEncryptionKey] = {}
        self._current: KeyEncryptionKey | None = None
        self._lock = threading.Lock()

    def current(self) -> KeyEncryptionKey:
        """The key new secrets are sealed with."""
        if self._current is None:
            self._reload()
        assert self._current is not None
        return self._current

    def for_secret(self, key: ApiKey, sealed: str) -> KeyEncryptionKey:
        kek_id = sealed_by(sealed)
        found = self._keys.get(kek_id)
        if found is None:
            self._reload()
            found = self._keys.get(kek_id)
        if found is None:
            raise KeyFileError(
                f"{KEY_FILE_SETTING}: the secret of access key {key.access_key_id} was "
                f"sealed with key {kek_id}, and {self.path} holds key {self.current().id} "
                "(nor is it in .old or .new beside it); put the key file it was made with "
                "back (from its backup or secrets manager; after `rotate-key` on another "
                "node, copy that node's file here)")
        return found

    def _reload(self) -> None:
        with self._lock:
            current = read_key_file(self.path)
            keys = {current.id: current}
            for suffix in (".old", ".new"):
                other = companion(self.path, suffix)
                if os.path.lexists(other):
                    try:
                        extra = read_key_file(other)
                    except KeyFileError:
                        continue  # only a fallback; api.key_file itself is fine
                    keys.setdefault(extra.id, extra)
            self._keys, self._current = keys, current


# --- the stores ----------------------------------------------------------------------

class ApiKeyStore(Protocol):
    """Where API keys are kept: the state database (SqliteApiKeyStore), or Redis for a
    cluster of nodes (auth.api_keys_redis). Blocking calls: the daemon runs them in a
    thread."""

    def create(self, account: str, description: str | None = None
               ) -> tuple[ApiKey, str]: ...

    def lookup(self, access_key_id: str) -> tuple[ApiKey, str] | None: ...

    def list(self, account: str | None = None) -> builtins.list[ApiKey]: ...

    def set_disabled(self, access_key_id: str, disabled: bool) -> bool: ...

    def delete(self, access_key_id: str) -> bool: ...

    def rekey(self, old_key: bytes, new_key: bytes) -> int: ...

    def sealed_with(self) -> dict[str, int]: ...

    def open(self) -> None: ...

    def close(self) -> None: ...


class Sealing:
    """What both stores do around their rows: sealing a new secret, opening a stored
    one, and re-sealing for a rotation."""

    def __init__(self, key_file: Path) -> None:
        self.keys = KeyFile(key_file)

    def _new(self, account: str, description: str | None) -> tuple[ApiKey, str, str]:
        """A new key, its secret and the secret sealed."""
        # Whole milliseconds: Redis's Lua scripts re-encode a row's numbers with 14
        # digits, which would otherwise change the time when a key is disabled.
        key = ApiKey(access_key_id=generate_access_key_id(), account=account,
                     created_at=round(time.time(), 3), description=description)
        secret = generate_secret()
        return key, secret, self.keys.current().seal(key, secret)

    def _reveal(self, key: ApiKey, sealed: str) -> tuple[ApiKey, str]:
        return key, self.keys.for_secret(key, sealed).open(key, sealed)

    @staticmethod
    def _resealed(rows: Iterable[tuple[ApiKey, str]], old_key: bytes, new_key: bytes
                  ) -> builtins.list[tuple[ApiKey, str, str]]:
        """(key, sealed now, sealed under new_key) for every row sealed under old_key.

        Refuses, changing nothing, when a row is sealed under neither key: the
        rotation would otherwise finish with a secret that no key file opens.
        """
        old, new = KeyEncryptionKey(old_key), KeyEncryptionKey(new_key)
        rows = builtins.list(rows)
        strangers = sorted(k.access_key_id for k, sealed in rows
                           if sealed_by(sealed) not in (old.id, new.id))
        if strangers:
            raise KeyFileError(
                f"{KEY_FILE_SETTING}: {len(strangers)} API key(s) are sealed with neither "
                f"key {old.id} nor {new.id} ({', '.join(strangers[:5])}); restore the key "
                "file they were made with as api.key_file first, or delete them")
        return [(key, sealed, new.seal(key, old.open(key, sealed)))
                for key, sealed in rows if sealed_by(sealed) == old.id]


def count_sealers(sealed: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in sealed:
        kek_id = sealed_by(value)
        counts[kek_id] = counts.get(kek_id, 0) + 1
    return counts


# Each entry moves these tables one version on; never edit a released entry.
_MIGRATIONS: tuple[str, ...] = ("""
CREATE TABLE api_keys (
    access_key_id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    description TEXT,
    sealed_secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
""",)

_COLUMNS = "access_key_id, account, created_at, disabled, description, sealed_secret"


class SqliteApiKeyStore(OwnedRows, Sealing):
    """API keys in the state database. Safe to use from several processes at once."""

    COMPONENT = "api_keys"
    MIGRATIONS = _MIGRATIONS
    TABLE = "api_keys"
    KEY_COLUMN = "access_key_id"

    def __init__(self, path: Path, key_file: Path) -> None:
        OwnedRows.__init__(self, path)
        Sealing.__init__(self, key_file)

    def create(self, account: str, description: str | None = None) -> tuple[ApiKey, str]:
        key, secret, sealed = self._new(account, description)
        self.conn.execute(
            "INSERT INTO api_keys (access_key_id, account, description, sealed_secret,"
            " created_at) VALUES (?,?,?,?,?)",
            (key.access_key_id, key.account, key.description, sealed, key.created_at))
        return key, secret

    def lookup(self, access_key_id: str) -> tuple[ApiKey, str] | None:
        with self._lock:  # callers are the daemon's worker threads
            row = self.conn.execute(
                f"SELECT {_COLUMNS} FROM api_keys WHERE access_key_id = ?",  # noqa: S608
                (access_key_id,)).fetchone()
        return None if row is None else self._reveal(_from_row(row), str(row[5]))

    def list(self, account: str | None = None) -> builtins.list[ApiKey]:
        return [_from_row(row) for row in self._select(_COLUMNS, account)]

    def sealed_with(self) -> dict[str, int]:
        """How many secrets each key-encryption key (by id) sealed."""
        return count_sealers(str(row[0]) for row in self._select("sealed_secret", None))

    def rekey(self, old_key: bytes, new_key: bytes) -> int:
        """Re-seal under new_key every secret sealed under old_key, in one transaction."""
        with self.transaction() as conn:
            rows = [(_from_row(row), str(row[5]))
                    for row in conn.execute(f"SELECT {_COLUMNS} FROM api_keys")]  # noqa: S608
            changes = self._resealed(rows, old_key, new_key)
            for key, _, sealed in changes:
                conn.execute("UPDATE api_keys SET sealed_secret = ? WHERE access_key_id = ?",
                             (sealed, key.access_key_id))
        return len(changes)


def _from_row(row: Sequence[object]) -> ApiKey:
    return ApiKey(access_key_id=str(row[0]), account=str(row[1]),
                  created_at=float(row[2]),  # type: ignore[arg-type]
                  disabled=bool(row[3]), description=None if row[4] is None else str(row[4]))
