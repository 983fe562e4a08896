"""DKIM signing (RFC 6376, RFC 8463): per-identity keys, the last change before the spool.

dkimpy does the DKIM format: relaxed/relaxed canonicalisation and the selection and
hashing of the signed header fields. The private-key operation itself is done with
`cryptography` (OpenSSL): dkimpy's RSA is pure Python, ~7.5 ms per 2048-bit signature
holding the GIL, against ~0.8 ms here (bench/dkim_cost.py); Ed25519 from
`cryptography` also spares us PyNaCl.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dkim as dkimpy
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from dkim import canonicalization
from dkim.canonicalization import CanonicalizationPolicy

from smtprelay.mail.headers import HeaderField, parse_header_section

if TYPE_CHECKING:
    from smtprelay.config import Config

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# What receivers expect signed (RFC 6376 5.4.1, M3AAWG): the originator and recipient
# fields, the subject and identity of the message, its MIME structure and the
# one-click unsubscribe pair (RFC 8058 3 requires List-Unsubscribe(-Post) signed), and
# the TLS report fields (RFC 8460 5.3: the relay's own TLS reports SHOULD sign them).
SIGNED_FIELDS = ("from", "to", "cc", "subject", "date", "message-id", "reply-to",
                 "mime-version", "content-type", "list-unsubscribe", "list-unsubscribe-post",
                 "feedback-id", "tls-report-domain", "tls-report-submitter")
# RSA keys under 1024 bits must not be used (RFC 8301 3.2); keygen makes 2048.
MIN_RSA_BITS = 1024
RSA_BITS = 2048

_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_FIELD_NAME = b"DKIM-Signature"
_LINE = 76  # folding width, as most signers
_PIECE = 64 * 1024
# Two or more spaces: what is left to squeeze once tabs are spaces. dkimpy's pattern
# ([\x09\x20]+ -> " ") also "replaces" every single space by itself, which in prose
# is every word boundary: squeezing only real runs, after str.replace for the tabs,
# does the same work about 8x faster on a newsletter's body.
_BLANK_RUN = re.compile(rb"  +")


class DKIMKeyError(ValueError):
    """A DKIM key file cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    algorithm: Algorithm
    private_key: PrivateKey
    path: Path

    def public_record(self) -> str:
        """The TXT record value to publish at <selector>._domainkey.<domain>."""
        return public_record(self.private_key)


def public_record(key: PrivateKey) -> str:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def txt_strings(value: str) -> str:
    """A TXT value as a zone file wants it: quoted strings of at most 255 bytes."""
    data = value.encode("ascii")
    return " ".join(f'"{data[i:i + 255].decode()}"' for i in range(0, len(data), 255))


def dns_record(domain: str, selector: str, key: PrivateKey) -> str:
    """The zone-file line publishing ``key``, as `dkim keygen` prints and `dns-check` expects."""
    return f"{selector}._domainkey.{domain}.  3600  IN  TXT  {txt_strings(public_record(key))}"


def generate_key(kind: Literal["rsa", "ed25519"]) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ed25519.Ed25519PrivateKey.generate()


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def read_key(path: Path, keygen: str = "create one with `smtprelay dkim keygen DOMAIN "
                                      "--selector S`") -> tuple[Algorithm, PrivateKey]:
    """The key in a PEM file and the algorithm it signs with; DKIMKeyError if unusable."""
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise DKIMKeyError(f"{path} does not exist; {keygen}, or fix the path") from None
    except IsADirectoryError:
        raise DKIMKeyError(f"{path} is a directory, not a PEM key file") from None
    except PermissionError:
        raise DKIMKeyError(f"{path} cannot be read (permission denied); make it readable "
                           "by the user smtprelay runs as (owned by it, mode 0600)") from None
    except OSError as exc:
        raise DKIMKeyError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise DKIMKeyError(f"{path} is encrypted; smtprelay needs an unencrypted PEM key "
                           "(`openssl pkey -in OLD -out NEW` decrypts one)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise DKIMKeyError(f"{path} is not a PEM private key (RSA or Ed25519); "
                           f"{keygen}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519-sha256", key
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DKIMKeyError(f"{path} is a {key.key_size}-bit RSA key; receivers ignore "
                               f"signatures by keys under {MIN_RSA_BITS} bits (RFC 8301): "
                               f"use a {RSA_BITS}-bit key ({keygen})")
        return "rsa-sha256", key
    kind = "an EC (ECDSA)" if isinstance(key, ec.EllipticCurvePrivateKey) else "another kind of"
    raise DKIMKeyError(f"{path} holds {kind} key; DKIM signs with RSA (rsa-sha256) or "
                       "Ed25519 (ed25519-sha256) keys")


def load_keys(config: Config) -> tuple[dict[str, tuple[SigningKey, ...]], list[str]]:
    """Every configured key by domain, and one problem line per unusable key file."""
    keys: dict[str, tuple[SigningKey, ...]] = {}
    problems: list[str] = []
    for domain, identity in config.identities.items():
        loaded: list[SigningKey] = []
        for index, entry in enumerate(identity.dkim):
            try:
                algorithm, key = read_key(entry.key_file, keygen=(
                    f"create it with `smtprelay dkim keygen {domain} --selector "
                    f"{entry.selector} --out {entry.key_file}`"))
            except DKIMKeyError as exc:
                problems.append(f"identities.{domain}.dkim[{index}].key_file: {exc}")
                continue
            loaded.append(SigningKey(domain, entry.selector, algorithm, key, entry.key_file))
        if loaded:
            keys[domain] = tuple(loaded)
    return keys, problems


class Signer:
    """The DKIM keys of every identity; picks the signing domain and signs."""

    def __init__(self, keys: Mapping[str, Sequence[SigningKey]] | None = None) -> None:
        self._keys = {domain: tuple(found) for domain, found in (keys or {}).items() if found}

    @classmethod
    def from_config(cls, config: Config) -> Signer:
        keys, problems = load_keys(config)
        if problems:
            raise DKIMKeyError("; ".join(problems))
        return cls(keys)

    @property
    def domains(self) -> list[str]:
        return sorted(self._keys)

    def keys_for(self, from_domain: str) -> tuple[SigningKey, ...]:
        """The keys of the most specific identity with keys covering the From domain.

        example.com covers sub.example.com; an identity of its own for sub.example.com
        wins, so a subdomain can be signed with d= of itself.
        """
        domain = from_domain.lower().rstrip(".")
        while domain:
            found = self._keys.get(domain)
            if found:
                return found
            domain = domain.partition(".")[2]
        return ()

    def sign(self, data: bytes, keys: Iterable[SigningKey], now: float | None = None) -> bytes:
        """The message with one DKIM-Signature field per key in front of it."""
        return b"".join(signatures(data, keys, now)) + data


def signed_fields(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: each signed field as often as it occurs, plus From once more, so a
    second From added later breaks the signature (over-signing, RFC 6376 8.15)."""
    present = [name.lower().rstrip() for name, _ in headers]
    chosen = [name.encode() for name in SIGNED_FIELDS for _ in range(present.count(name.encode()))]
    return [*chosen, b"from"]


def signatures(data: bytes, keys: Iterable[SigningKey], now: float | None = None,
               fields: Sequence[HeaderField] | None = None) -> list[bytes]:
    """One DKIM-Signature field (CRLF-terminated) per key, over `data` (CRLF lines).

    `fields`: `data`'s header fields as parse_header_section found them, when the
    caller has them, so the header section is not read again."""
    keys = list(keys)
    if not keys:
        return []
    split = data.find(b"\r\n\r\n")
    if split < 0:
        head, body = data, b""
    else:
        head, body = data[:split + 2], data[split + 4:]
    canonical_headers = _RELAXED.canonicalize_headers(header_fields(head, fields))
    include = signed_fields(canonical_headers)
    body_hash = base64.b64encode(hashlib.sha256(canonical_body(body)).digest())
    stamp = int(time.time() if now is None else now)
    return [_signature(key, canonical_headers, include, body_hash, stamp) for key in keys]


def header_fields(head: bytes, found: Sequence[HeaderField] | None = None
                  ) -> list[tuple[bytes, bytes]]:
    """(name, value) per field of a CRLF header section, in dkimpy's form (value with
    its folding and final CRLF), read by the relay's own header reader (or given as
    it found them: `found`). Unlike dkimpy's parser it takes the obsolete
    "Subject : x" (RFC 5322 4.5.3), which the relay accepts; relaxed canonicalisation
    drops the space."""
    fields = []
    for field in parse_header_section(head) if found is None else found:
        name, _, value = head[field.start:field.end].partition(b":")
        fields.append((name, value))
    return fields


def canonical_body(body: bytes) -> bytes:
    """The relaxed body (RFC 6376 3.4.4), dkimpy's rules applied piece by piece.

    Pieces of ~64 KiB ending at a line end, so that no single regex call holds the GIL
    for long when a big message is signed in a thread; a piece without the whitespace
    the rules change (base64 attachments, most HTML lines) is passed as it is.
    """
    pieces: list[bytes] = []
    start = 0
    while start < len(body):
        end = body.find(b"\r\n", start + _PIECE)
        end = len(body) if end < 0 else end + 2
        piece = body[start:end]
        if b" \r\n" in piece or b"\t" in piece:
            piece = canonicalization.strip_trailing_whitespace(piece)
        if b"\t" in piece:
            piece = piece.replace(b"\t", b" ")
        if b"  " in piece:
            piece = _BLANK_RUN.sub(b" ", piece)
        pieces.append(piece)
        start = end
    joined = b"".join(pieces)
    result: bytes = canonicalization.correct_empty_body(
        canonicalization.strip_trailing_lines(joined))
    return result


def _signature(key: SigningKey, canonical_headers: list[tuple[bytes, bytes]],
               include: list[bytes], body_hash: bytes, stamp: int) -> bytes:
    tags = [f"{tag};".encode() for tag in ("v=1", f"a={key.algorithm}", "c=relaxed/relaxed",
                                           f"d={key.domain}", f"s={key.selector}",
                                           f"t={stamp}")]
    # h= may be folded after any colon (RFC 6376 3.5, sig-h-tag).
    names = [name + b":" for name in include]
    names[0] = b"h=" + names[0]
    names[-1] = names[-1][:-1] + b";"
    head = _fold(tags, names, [b"bh=" + body_hash + b";", b"b="])
    # The signature covers this field with an empty b= (RFC 6376 3.7), as verifiers
    # rebuild it; the value is appended afterwards, folded on its own lines.
    hasher = hashlib.sha256()
    dkimpy.hash_headers(hasher, _RELAXED, canonical_headers, include, (_FIELD_NAME, head), {})
    digest = hasher.digest()
    if isinstance(key.private_key, rsa.RSAPrivateKey):
        raw = key.private_key.sign(digest, padding.PKCS1v15(),
                                   utils.Prehashed(hashes.SHA256()))
    else:
        raw = key.private_key.sign(digest)  # RFC 8463 3: Ed25519 over the SHA-256 hash
    value = base64.b64encode(raw)
    column = len(head.rsplit(b"\n", 1)[-1]) + (len(_FIELD_NAME) + 1 if b"\n" not in head else 0)
    lines = [value[:max(0, _LINE - column)]]
    rest = value[len(lines[0]):]
    lines += [rest[i:i + _LINE - 1] for i in range(0, len(rest), _LINE - 1)]
    return _FIELD_NAME + b":" + head + b"\r\n ".join(lines) + b"\r\n"


def _fold(*groups: list[bytes]) -> bytes:
    """Tags joined by spaces, h= names joined directly, broken into lines of _LINE."""
    out = b""
    column = len(_FIELD_NAME) + 1
    for group_index, group in enumerate(groups):
        for index, atom in enumerate(group):
            # Inside the h= group atoms join without a space; elsewhere with one.
            glue = b"" if (group_index == 1 and index > 0) else b" "
            if column + len(glue) + len(atom) > _LINE:
                out += b"\r\n "
                column = 1
            else:
                out += glue
                column += len(glue)
            out += atom
            column += len(atom)
    return out


def write_key(path: Path, key: PrivateKey) -> None:
    """Write a new key file, mode 0600; FileExistsError rather than replace one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem(key))
        out.flush()
        os.fsync(out.fileno())
