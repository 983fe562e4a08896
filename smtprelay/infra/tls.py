"""TLS for the relay's listeners: the server profile, server contexts and a self-signed
certificate for development.

Every TLS the relay serves (the SMTP listeners, STARTTLS and implicit, and the HTTP
listener's https) is made here with Mozilla's "intermediate" profile by default; the
delivery client's outbound TLS to MX hosts is not (delivery.client: opportunistic TLS
takes whatever the receiving server offers).
"""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import logging
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtprelay.infra import metrics
from smtprelay.infra.safeio import write_durably

log = logging.getLogger("smtprelay.tls")

# Mozilla's server-side TLS recommendations, "intermediate" profile, version 5.7
# (https://ssl-config.mozilla.org/guidelines/5.7.json): TLS 1.2 with these suites, all
# AEAD with forward secrecy (no CBC: LUCKY13), TLS 1.3 with OpenSSL's three default
# suites, the client's order of preference. The DHE suites stay in the list as Mozilla
# writes it but are never negotiated: the contexts load no DH parameters (see
# docs/design.md, "TLS: the server profile").
MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")
# Key-exchange groups (TLS 1.3 key shares, TLS 1.2 ECDHE curves): OpenSSL 3's default
# list adds X448, secp521r1 and the ffdhe groups, which the profile leaves out.
MOZILLA_INTERMEDIATE_GROUPS = "X25519:prime256v1:secp384r1"


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class Profile:
    """What every server context of the relay is made with (the `tls` section).

    groups None leaves OpenSSL's own list (tls.groups: null).
    """

    min_version: str = "1.2"
    ciphers: str = MOZILLA_INTERMEDIATE_CIPHERS
    groups: str | None = MOZILLA_INTERMEDIATE_GROUPS


def protocol_context(profile: Profile = Profile()) -> ssl.SSLContext:
    """A server context with the profile's versions, suites and groups, and no certificate.

    Also the context an SNI-switching listener accepts on: OpenSSL takes the versions,
    suites and groups of a handshake from the context the connection was made with, and
    only the certificate from the one the SNI callback switches to.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if profile.min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_COMPRESSION
    # Python sets server preference on every context; Mozilla's intermediate profile has
    # it off: every suite in the list is strong, and the client knows whether it has AES
    # in hardware (else it puts ChaCha20 first).
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.set_ciphers(profile.ciphers)
    except ssl.SSLError as exc:
        raise TLSSetupError(f"tls.ciphers: {profile.ciphers!r} selects no cipher "
                            f"({exc})") from None
    if profile.groups is not None:
        set_groups(ctx, profile.groups)
    return ctx


def server_context(cert_file: Path, key_file: Path,
                   profile: Profile = Profile()) -> ssl.SSLContext:
    ctx = protocol_context(profile)

    def no_pass_phrase() -> str:
        # Without a callback OpenSSL asks for the pass phrase on the terminal, and a
        # start in the foreground (or a reload) waits there for an answer.
        raise TLSSetupError(f"tls: {key_file} is encrypted; smtprelay needs the key "
                            "without a pass phrase")

    try:
        ctx.load_cert_chain(cert_file, key_file, password=no_pass_phrase)
    except FileNotFoundError as exc:
        raise TLSSetupError(
            f"tls: {exc.filename or cert_file} does not exist; set tls.cert_file and "
            "tls.key_file to PEM files, or tls.generate_self_signed: true for development"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise TLSSetupError(
            f"tls: cannot load certificate {cert_file} with key {key_file}: {exc}; "
            "both must be PEM and belong together"
        ) from None
    return ctx


def certificate_expiry(cert_file: Path) -> float:
    """The notAfter of the first certificate in `cert_file` (the leaf of a full chain:
    the one clients check the date of), as a Unix time. Raises OSError or ValueError."""
    leaf = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
    return leaf.not_valid_after_utc.timestamp()


def record_expiry(certificate: str, cert_file: Path) -> None:
    """Publish when `cert_file`, just loaded into a context, expires, as
    smtprelay_tls_certificate_expiry_timestamp_seconds{certificate=...}; `certificate`
    is the configuration key that names the file. A file that cannot be read now (it
    changed since it was loaded) leaves the metric as it was, with a warning: the
    context in use is not affected."""
    try:
        expiry = certificate_expiry(cert_file)
    except (OSError, ValueError, IndexError) as exc:
        log.warning("%s: cannot read the expiry of %s for the metrics: %s", certificate,
                    cert_file, exc)
        return
    metrics.TLS_CERTIFICATE_EXPIRY.labels(certificate=certificate).set(expiry)


# -- key-exchange groups ---------------------------------------------------------------
#
# Python's ssl module has no call for the groups before 3.15 (SSLContext.set_groups,
# CPython issue 136306); set_ecdh_curve allows one curve only. So, until then, OpenSSL's
# SSL_CTX_set1_groups_list (a macro for SSL_CTX_ctrl with SSL_CTRL_SET_GROUPS_LIST) is
# called through ctypes on the SSL_CTX that the SSLContext wraps, in the very libssl the
# _ssl module is linked with. docs/design.md says why not OPENSSL_CONF or pyOpenSSL.

_SSL_CTRL_SET_GROUPS_LIST = 92  # ssl.h, unchanged since OpenSSL 1.1.0 (SET_CURVES_LIST)


class GroupsUnsupported(Exception):
    """This Python cannot set the groups (not CPython, or its libssl cannot be reached)."""


@dataclass(frozen=True, slots=True)
class _LibSSL:
    ctrl: Callable[[int, int, int, bytes], int]  # SSL_CTX_ctrl
    get_options: Callable[[int], int]  # SSL_CTX_get_options


_libssl: _LibSSL | GroupsUnsupported | None = None


def _load_libssl() -> _LibSSL:
    global _libssl
    if _libssl is None:
        _libssl = _find_libssl()
    if isinstance(_libssl, GroupsUnsupported):
        raise _libssl
    return _libssl


def _find_libssl() -> _LibSSL | GroupsUnsupported:
    if sys.implementation.name != "cpython":
        return GroupsUnsupported(f"{sys.implementation.name} is not CPython")
    import _ssl

    # dlsym on the _ssl extension's own handle searches the libraries it was linked
    # with, so this is the libssl that made ssl.OPENSSL_VERSION (or _ssl itself when it
    # is linked statically), not another one on the library path.
    where = getattr(_ssl, "__file__", None)
    try:
        lib = ctypes.CDLL(where) if where else ctypes.pythonapi
        version = lib.OpenSSL_version_num
        ctrl, get_options = lib.SSL_CTX_ctrl, lib.SSL_CTX_get_options
    except (OSError, AttributeError) as exc:
        return GroupsUnsupported(f"OpenSSL's functions are not reachable from {where}: {exc}")
    version.argtypes, version.restype = [], ctypes.c_ulong
    if version() != ssl.OPENSSL_VERSION_NUMBER:
        return GroupsUnsupported(f"the libssl found ({version():#x}) is not the one the ssl "
                                 f"module uses ({ssl.OPENSSL_VERSION_NUMBER:#x})")
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    return _LibSSL(ctrl, get_options)


def _ssl_ctx(ctx: ssl.SSLContext, lib: _LibSSL) -> int:
    """The SSL_CTX pointer of `ctx`: CPython's PySSLContext holds it right after the
    object header (PySSLContext in Modules/_ssl.c). Checked before use: the SSL_CTX's
    options must be the context's."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.get_options(pointer) != ctx.options:
        raise GroupsUnsupported("this Python's SSLContext does not have the layout "
                                "smtprelay knows")
    return int(pointer)


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Restrict `ctx` to these key-exchange groups (an OpenSSL colon list: X25519,
    prime256v1, secp384r1, ...). TLSSetupError names tls.groups when OpenSSL refuses the
    list or this Python cannot set it."""
    try:
        if _try_groups(ctx, groups):
            return
    except GroupsUnsupported as exc:
        raise TLSSetupError(_unsupported(exc)) from None
    raise TLSSetupError(groups_problem(groups) or f"tls.groups: OpenSSL refuses {groups!r}")


def _try_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """True when OpenSSL took the list; raises GroupsUnsupported."""
    native = getattr(ctx, "set_groups", None)  # Python 3.15
    if native is not None:
        try:
            native(groups)
        except (ssl.SSLError, ValueError):
            return False
        return True
    lib = _load_libssl()
    try:
        encoded = groups.encode("ascii")
    except UnicodeEncodeError:
        return False
    return bool(lib.ctrl(_ssl_ctx(ctx, lib), _SSL_CTRL_SET_GROUPS_LIST, 0, encoded) == 1)


def _unsupported(exc: GroupsUnsupported) -> str:
    return (f"tls.groups: this Python cannot restrict the key-exchange groups ({exc}); "
            "set tls.groups: null to keep OpenSSL's own list, or run smtprelay on CPython "
            "with its ssl module")


def groups_problem(groups: str) -> str | None:
    """Why tls.groups cannot be `groups`, in the operator's words; None if OpenSSL takes
    the list."""
    names = groups.split(":")
    if not groups or any(not name for name in names):
        return (f"tls.groups: {groups!r} is not a colon-separated list of group names; "
                f"write them like {MOZILLA_INTERMEDIATE_GROUPS!r} (the default), or "
                "remove the key")
    try:
        if _try_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), groups):
            return None
        unknown = [name for name in names
                   if not _try_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), name)]
    except GroupsUnsupported as exc:
        return _unsupported(exc)
    return (f"tls.groups: {ssl.OPENSSL_VERSION} knows no group "
            f"{', '.join(map(repr, unknown or names))}; give OpenSSL's names separated by "
            "colons (X25519, prime256v1, secp384r1, ...; `openssl ecparam -list_curves` "
            f"lists the curves), or remove the key for the default, "
            f"{MOZILLA_INTERMEDIATE_GROUPS!r}")


def ensure_self_signed(cert_file: Path, key_file: Path, hostname: str) -> bool:
    """Create a self-signed pair when either file is missing. Returns True if created."""
    if cert_file.exists() and key_file.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname), x509.DNSName("localhost"),
                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                         x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    for path in (cert_file, key_file):
        path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    write_durably(key_file, key_bytes, 0o600)
    write_durably(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.warning("generated a self-signed certificate cert=%s key=%s (development only)",
                cert_file, key_file)
    return True
