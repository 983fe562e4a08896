"""The one live holder: the configuration and keys in force, which SIGHUP swaps.

Every component is given this holder (as the protocol of its own layer that says what
it reads: `config.ConfigSource`, `transform.keys.KeySource`, `transform.keys.SignerSource`,
`delivery.smtp_transport.TransportSource`, ...) when it is built, and reads from it each
time it needs a setting or a key. A reload reads and checks everything first (the file,
the DKIM keys, the smarthost password), then replaces the holder's contents in one
assignment: all of it or, on any problem, none of it. So there is nothing to push into
the components, and nothing half-reloaded to see.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from smtprelay.app import preflight
from smtprelay.config import Config, ConfigError
from smtprelay.delivery.smtp_transport import SmarthostPasswordError, smarthost_password
from smtprelay.infra import tls
from smtprelay.transform import dkim, tokens

log = logging.getLogger("smtprelay")

# Keys that only take effect at start: the sockets and files are already open. A reload
# keeps their running values and says so.
RESTART_ONLY = ("server", "listeners", "limits", "auth", "http", "store", "logging")
# The transport, resolver, pool and DSN factory are built at start from these.
DELIVERY_RESTART_ONLY = ("mode", "dns", "max_connections", "max_connections_per_domain",
                         "max_concurrent", "idle_timeout", "dsn")


@dataclass(frozen=True, slots=True)
class _InForce:
    """What a reload swaps, replaced as one object."""

    config: Config
    signer: dkim.Signer
    keyring: tokens.KeyRing
    smarthost_password: str | None


class Live:
    """The configuration, DKIM signer, tracking key ring, smarthost password and TLS
    context in force.

    Built from the configuration alone (the keys are empty until `open()`), so the
    stores and checks made before start can already be given it; tests build one with
    what they need.
    """

    def __init__(self, config: Config, *, signer: dkim.Signer | None = None,
                 keyring: tokens.KeyRing | None = None, smarthost_password: str | None = None,
                 tls_context: ssl.SSLContext | None = None, source: str = "") -> None:
        self._now = _InForce(config, signer if signer is not None else dkim.Signer(),
                             keyring if keyring is not None else tokens.KeyRing(),
                             smarthost_password)
        self._tls = tls_context
        # The text of the file `config` was read from, then of each reload's: what a
        # worker process started later is handed (app.workers).
        self.source = source

    @property
    def config(self) -> Config:
        return self._now.config

    @property
    def signer(self) -> dkim.Signer:
        return self._now.signer

    @property
    def keyring(self) -> tokens.KeyRing:
        return self._now.keyring

    @property
    def smarthost_password(self) -> str | None:
        return self._now.smarthost_password

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The relay's certificate for the SMTP listeners (None: no listener uses TLS)."""
        return self._tls

    def open(self) -> None:
        """At start (blocking: call in a thread): the TLS certificate, the DKIM keys, the
        tracking keys (created on first start) and the smarthost password of the
        configuration. Raises what stops the start: TLSSetupError, DKIMKeyError,
        KeyRingError, SmarthostPasswordError."""
        config = self.config
        tls_context = _load_tls(config)
        signer = dkim.Signer.from_config(config)
        _log_dkim(signer)
        keyring = tokens.KeyRing.open(config.tracking_keys_path)
        password = smarthost_password(config)
        self._now = _InForce(config, signer, keyring, password)
        self._tls = tls_context

    def reload(self, path: str, text: str | None = None) -> bool:
        """SIGHUP: the configuration at `path` (or `text`, as that file) with its DKIM
        keys and smarthost password, and the tracking keys again (after `smtprelay
        tracking-keys rotate`).

        False, with the reason logged and nothing changed, when the file, a DKIM key, the
        smarthost password or the tracking keys cannot be used. Restart-only keys keep
        their running values, with a warning.
        """
        try:
            loaded = preflight.load_checked(path, text=text)
            new = loaded.config
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", "; ".join(
                exc.problems))
            return False
        try:
            signer = dkim.Signer.from_config(new)
        except dkim.DKIMKeyError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        config = self._with_restart_only_kept(new)
        try:
            # Read for the configuration that will be in force. load_checked read both
            # files too, but either may have changed since.
            password = smarthost_password(config)
            keyring = tokens.KeyRing.load(config.tracking_keys_path)
        except (SmarthostPasswordError, tokens.KeyRingError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            return False
        self._now = _InForce(config, signer, keyring, password)
        self.source = loaded.text
        _log_dkim(signer)
        log.info("tracking keys loaded: signing with key %d", keyring.active().id)
        log.info("configuration reloaded from %s", path)
        return True

    def _with_restart_only_kept(self, new: Config) -> Config:
        """`new` with the running values of the keys that need a restart, each change to
        them logged."""
        old = self.config
        deferred = [key for key in RESTART_ONLY if getattr(new, key) != getattr(old, key)]
        if deferred:
            log.warning("reload: changes to %s take effect at the next restart",
                        ", ".join(deferred))
        if new.tls.profile != old.tls.profile:
            # OpenSSL takes them from the context a connection was accepted on, which
            # for implicit TLS and https is the one made at start (the SNI callbacks
            # swap in only the certificate).
            log.warning("reload: changes to tls.min_version, tls.ciphers or tls.groups "
                        "apply to STARTTLS now, to implicit-TLS listeners and "
                        "http.tls_listen at the next restart")
        fixed = {key: getattr(old.delivery, key) for key in DELIVERY_RESTART_ONLY}
        changed = [f"delivery.{key}" for key, value in fixed.items()
                   if getattr(new.delivery, key) != value]
        if changed:
            log.warning("reload: changes to %s take effect at the next restart",
                        ", ".join(changed))
        update = {key: getattr(old, key) for key in RESTART_ONLY}
        update["delivery"] = new.delivery.model_copy(update=fixed)
        return new.model_copy(update=update)

    def reload_tls(self) -> None:
        """Load the certificate again (SIGHUP); new handshakes use it, sessions go on."""
        try:
            self._tls = _load_tls(self.config)
        except tls.TLSSetupError as exc:
            log.error("tls reload failed, keeping the old certificate: %s", exc)
            return
        log.info("tls certificate reloaded from %s", self.config.cert_path)


def _load_tls(config: Config) -> ssl.SSLContext | None:
    if all(listener.tls == "none" for listener in config.listeners):
        return None
    if config.tls.generate_self_signed:
        tls.ensure_self_signed(config.cert_path, config.key_path, config.server.hostname)
    context = tls.server_context(config.cert_path, config.key_path, config.tls.profile)
    tls.record_expiry("tls.cert_file", config.cert_path)
    return context


def _log_dkim(signer: dkim.Signer) -> None:
    if signer.domains:
        log.info("dkim signing domains=%s", ",".join(signer.domains))
    else:
        log.info("dkim: no identity has keys, mail is sent unsigned")
