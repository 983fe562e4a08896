"""TLS for the SMTP listeners: server contexts and a self-signed certificate for development."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtprelay.infra.safeio import write_durably

log = logging.getLogger("smtprelay.tls")


class TLSSetupError(Exception):
    """The certificate or key cannot be used; the message names the file and the fix."""


def server_context(cert_file: Path, key_file: Path, min_version: str = "1.2",
                   ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise TLSSetupError(f"tls.ciphers: {ciphers!r} selects no cipher ({exc})") from None

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
