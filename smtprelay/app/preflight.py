"""The files and environment `serve` needs beyond the configuration file, checked up front.

`smtprelay check-config` and `smtprelay serve` (smtprelay.app.daemon.run) both run
`problems()` on a configuration that is valid in itself, so check-config refuses
whatever would stop the start, and either reports every unusable file at once
instead of one per attempt. Each problem names the configuration key, the file and
what to do. Nothing here writes: it runs before `serve` takes data_dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from smtprelay.config import Config, ConfigError, LoadedConfig, load_config, parse_config
from smtprelay.delivery.providers import ProviderTableError, load_table
from smtprelay.delivery.smtp_transport import SmarthostPasswordError, smarthost_password
from smtprelay.infra import tls
from smtprelay.transform import dkim, tokens


def load_checked(path: str | Path | None, *, dkim_keys: bool = True,
                 text: str | None = None) -> LoadedConfig:
    """The configuration at `path`, refused (ConfigError) unless `serve` could start on it.

    dkim_keys=False leaves the DKIM key files out (for `smtprelay dkim keygen`, which
    creates a key the configuration may already name). `text`: that text as the file at
    `path`, rather than what the file holds now.
    """
    if text is not None and path is not None:
        loaded = parse_config(text, Path(path))
    else:
        loaded = load_config(path)
    found = problems(loaded.config, dkim_keys=dkim_keys)
    if found:
        raise ConfigError(loaded.path, found)
    return loaded


def problems(config: Config, *, dkim_keys: bool = True) -> list[str]:
    """One line per file or variable `serve` would fail on; empty when it can start."""
    found = _cipher_problems(config)
    # With bad ciphers, the certificates are checked with the default ones, so that
    # each problem is reported once.
    profile = config.tls.profile
    if found:
        profile = dataclasses.replace(profile, ciphers=tls.MOZILLA_INTERMEDIATE_CIPHERS)
    found += _relay_tls(config, profile)
    found += _tracking_domains(config, profile)
    if dkim_keys:
        found += dkim.load_keys(config)[1]
    found += _smarthost(config)
    found += _shaping(config)
    found += _webhook_secrets(config)
    found += _data_dir(config)
    return found


# -- TLS ------------------------------------------------------------------------------


def _cipher_problems(config: Config) -> list[str]:
    ciphers = config.tls.ciphers
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        return [f"tls.ciphers: {ciphers!r} selects no cipher; give an OpenSSL cipher list "
                "(such as ECDHE+AESGCM:ECDHE+CHACHA20), or remove the key for Mozilla's "
                "intermediate list"]
    return []


def _relay_tls(config: Config, profile: tls.Profile) -> list[str]:
    """The listeners' certificate, and the fallback of http.tls_listen when it is there."""
    cert, key = config.cert_path, config.key_path
    both = os.path.isfile(cert) and os.path.isfile(key)  # False, not an error, if unreadable
    if config.tls.generate_self_signed and not both:
        return []  # serve makes a new pair at start
    if not (any(listener.tls != "none" for listener in config.listeners)
            or (config.http.tls_listen and both)):
        return []
    fix = "point it at a PEM file, or set tls.generate_self_signed: true for a " \
          "development certificate"
    return _pair("tls", cert, key, profile, fix)


def _tracking_domains(config: Config, profile: tls.Profile) -> list[str]:
    found: list[str] = []
    for domain, settings in config.tracking_domains.items():
        prefix = f"tracking_domains.{domain}"
        if settings.cert_file is not None and settings.key_file is not None:
            found += _pair(prefix, settings.cert_file, settings.key_file, profile,
                           "fix the path")
        for key in ("apple_app_site_association", "assetlinks"):
            source: Path | None = getattr(settings, key)
            if source is None:
                continue
            data, problem = _read(f"{prefix}.{key}", source, "fix the path")
            if problem is not None:
                found.append(problem)
                continue
            try:
                json.loads(data)
            except ValueError as exc:
                found.append(f"{prefix}.{key}: {source} is not JSON ({exc}); it is served "
                             "as it is, so fix the file (`python3 -m json.tool FILE` shows "
                             "where)")
    return found


def _pair(prefix: str, cert: Path, key: Path, profile: tls.Profile, fix: str) -> list[str]:
    """A certificate and its key as the daemon loads them; each bad file named."""
    cert_key, key_key = f"{prefix}.cert_file", f"{prefix}.key_file"
    cert_data, cert_problem = _read(cert_key, cert, fix)
    key_data, key_problem = _read(key_key, key, fix)
    unreadable = [p for p in (cert_problem, key_problem) if p is not None]
    if unreadable:
        return unreadable
    # OpenSSL, as the daemon uses it, is the judge (it takes some PEM that
    # `cryptography` does not, like TRUSTED CERTIFICATE); `cryptography` then tells
    # which file is at fault, as OpenSSL's "PEM lib" does not say.
    try:
        tls.server_context(cert, key, profile)
    except tls.TLSSetupError as exc:
        failure = str(exc)
    else:
        return []
    found: list[str] = []
    certificates = _certificates(cert, cert_data)
    if certificates is None:
        found.append(f"{cert_key}: {cert} is not a PEM certificate; give the certificate "
                     "chain as PEM (-----BEGIN CERTIFICATE-----, leaf first); a DER file "
                     f"converts with `openssl x509 -inform der -in {cert} -out cert.pem`")
    private_key: PrivateKeyTypes | None
    try:
        private_key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        found.append(f"{key_key}: {key} is encrypted; smtprelay needs the key without a "
                     f"pass phrase (`openssl pkey -in {key} -out key.pem` asks for it once "
                     "and writes the key decrypted)")
        private_key = None
    except (ValueError, UnsupportedAlgorithm):
        found.append(f"{key_key}: {key} is not a PEM private key; give the certificate's "
                     "key as PEM (-----BEGIN PRIVATE KEY-----); a DER key converts with "
                     f"`openssl pkey -inform der -in {key} -out key.pem`")
        private_key = None
    if found:
        return found
    if certificates and private_key is not None and not _same_key(certificates[0],
                                                                   private_key):
        return [f"{key_key}: {key} is not the key of the certificate in {cert_key} "
                f"({cert}); install the key the certificate was issued for, or a new pair"]
    return [f"{cert_key}/{key_key}: {failure.removeprefix('tls: ')}"]


def _certificates(path: Path, data: bytes) -> list[x509.Certificate] | None:
    """The certificates in a PEM file, [] when OpenSSL reads some that `cryptography`
    does not, None when there are none."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return None
    return []


def _same_key(certificate: x509.Certificate, key: PrivateKeyTypes) -> bool:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return (key.public_key().public_bytes(der, spki)
            == certificate.public_key().public_bytes(der, spki))


def _read(key: str, path: Path, fix: str) -> tuple[bytes, str | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return b"", f"{key}: {path} does not exist; {fix}"
    except IsADirectoryError:
        return b"", f"{key}: {path} is a directory; {fix}"
    except PermissionError:
        return b"", (f"{key}: {path} cannot be read (permission denied); make it readable "
                     "by the user smtprelay runs as")
    except OSError as exc:
        return b"", f"{key}: {path} cannot be read: {exc.strerror or exc}"


# -- delivery, events, data_dir --------------------------------------------------------


def _shaping(config: Config) -> list[str]:
    shaping = config.delivery.shaping
    if not shaping.enabled or shaping.rules_file is None:
        return []
    try:
        load_table(shaping.rules_file)
    except ProviderTableError as exc:
        return [f"delivery.shaping.rules_file: {exc}"]
    return []


def _smarthost(config: Config) -> list[str]:
    found: list[str] = []
    try:
        smarthost_password(config)
    except SmarthostPasswordError as exc:
        found.append(str(exc))
    smarthost = config.delivery.smarthost
    if (config.delivery.mode == "smarthost" and smarthost is not None
            and smarthost.ca_file is not None and smarthost.tls != "none"
            and smarthost.verify_certificate):
        key = "delivery.smarthost.ca_file"
        _, problem = _read(key, smarthost.ca_file, "fix the path, or remove the key to trust "
                                                   "the system's CAs")
        if problem is None:
            try:
                ssl.create_default_context(cafile=smarthost.ca_file)
            except ssl.SSLError:
                problem = (f"{key}: {smarthost.ca_file} holds no PEM certificate; give the "
                           "CA certificate(s) that signed the smarthost's, as PEM")
        if problem is not None:
            found.append(problem)
    ca_file = config.delivery.tls_ca_file
    if config.delivery.mode == "mx" and ca_file is not None:
        key = "delivery.tls_ca_file"
        _, problem = _read(key, ca_file, "fix the path, or remove the key to trust only "
                                         "the system's CAs")
        if problem is None:
            try:
                ssl.create_default_context(cafile=ca_file)
            except ssl.SSLError:
                problem = (f"{key}: {ca_file} holds no PEM certificate; give the extra CA "
                           "certificate(s) to trust for MX hosts, as PEM")
        if problem is not None:
            found.append(problem)
    return found


def _webhook_secrets(config: Config) -> list[str]:
    found: list[str] = []
    for set_name, settings in config.configuration_sets.items():
        for destination in settings.event_destinations:
            if (destination.type == "webhook" and destination.enabled
                    and destination.secret_env and not os.environ.get(destination.secret_env)):
                found.append(
                    f"configuration_sets.{set_name}.event_destinations[{destination.name}]"
                    f".secret_env: the environment variable {destination.secret_env} is not "
                    "set or empty; export the webhook's signing secret in it (at least 16 "
                    "random characters, e.g. `openssl rand -hex 32`)")
    return found


def _data_dir(config: Config) -> list[str]:
    data_dir = config.server.data_dir
    if os.path.lexists(data_dir) and not os.path.isdir(data_dir):
        return [f"server.data_dir: {data_dir} exists and is not a directory; point "
                "server.data_dir at a directory (it is created if missing)"]
    keys = config.tracking_keys_path
    # os.path.exists is False, not an error, when data_dir (mode 0700, the service
    # user's) cannot be entered by whoever runs check-config; serve, run as that user,
    # still reports the file.
    if not os.path.exists(keys):
        return []  # serve creates it
    _, problem = _read("server.data_dir", keys, "it must be the tracking key file serve "
                                                "made there")
    if problem is not None:
        return [problem]
    try:
        tokens.KeyRing.load(keys)
    except tokens.KeyRingError as exc:
        return [f"server.data_dir: {exc}"]
    return []
