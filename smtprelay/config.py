"""Configuration: one YAML file loaded into frozen, typed objects, with every problem reported.

Relative paths in the file are resolved against the directory holding the file, so
the daemon behaves the same whatever its working directory is (systemd, a shell, CI).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import dns.nameserver
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_CONFIG = "SMTPRELAY_CONFIG"

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}


def _parse_duration(value: Any) -> Any:
    """Accept 30, 30s, 5m, 1h, 5d, 250ms; a bare number counts as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h or 5d")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError("expected a duration such as 30s, 5m, 1h or 5d")


def _parse_size(value: Any) -> Any:
    """Accept 10485760, 10M, 10MiB, 10MB (decimal), 512k."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 10485760, 512k or 10M")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return int(match.group(1)) * _SIZE_UNITS[unit]
    raise ValueError("expected a size such as 10485760, 512k or 10M")


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServerConfig(_Model):
    hostname: str = Field(default_factory=socket.getfqdn, min_length=1)
    data_dir: Path = Path("./var")
    # Worker processes for click/open tracking and unsubscribe (pure Python, ~3-4 ms
    # per 50 KB newsletter); "auto": one per core up to 4, none on a single core. 0:
    # in the relay's own process.
    transform_workers: int | Literal["auto"] = "auto"

    @field_validator("transform_workers")
    @classmethod
    def _workers_in_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError("must be between 0 and 64, or auto")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname_is_a_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
            raise ValueError(f"{value!r} is not a host name (letters, digits, dots, hyphens)")
        return value


class TLSConfig(_Model):
    cert_file: Path | None = None
    key_file: Path | None = None
    generate_self_signed: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"
    ciphers: str | None = None

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, float | int) else value


class ListenerConfig(_Model):
    name: str = Field(min_length=1)
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    # submission: AUTH (or trusted_networks) required, mail relayed out.
    # feedback: inbound DSNs and complaint reports (port 25 in production): no AUTH,
    # only VERP addresses and feedback.addresses accepted as recipients.
    role: Literal["submission", "feedback"] = "submission"

    @field_validator("address")
    @classmethod
    def _address_is_ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        return value


class LimitsConfig(_Model):
    max_message_size: Size = 10 * 1024 * 1024
    max_recipients: int = Field(default=50, ge=1)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_ip: int = Field(default=100, ge=1)
    # RFC 5321 4.5.3.1.6: 1000 octets including CRLF.
    max_line_length: int = Field(default=998, ge=78)
    idle_timeout: Duration = 300.0
    data_timeout: Duration = 180.0
    tls_handshake_timeout: Duration = 30.0
    max_errors: int = Field(default=10, ge=1)


class AuthConfig(_Model):
    max_failures_per_ip: int = Field(default=10, ge=1)
    max_failures_per_user: int = Field(default=10, ge=1)
    failure_window: Duration = 600.0
    lockout_duration: Duration = 900.0
    verify_cache_ttl: Duration = 3600.0


class StaticCredential(_Model):
    username: str = Field(min_length=1, max_length=256)
    password_hash: str = Field(min_length=1)

    @field_validator("password_hash")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        from smtprelay.infra.passwords import is_supported_hash

        if not is_supported_hash(value):
            raise ValueError(
                "not a password hash smtprelay understands; "
                "create one with `smtprelay credentials hash`"
            )
        return value


def _normalise_identity(value: str) -> str:
    value = value.strip()
    if "@" in value:
        local, _, domain = value.rpartition("@")
        if not local or not domain:
            raise ValueError(f"{value!r} is neither a domain nor an address")
        return f"{local}@{domain.lower().rstrip('.')}"
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?", value):
        raise ValueError(f"{value!r} is neither a domain nor an address")
    return value.lower().rstrip(".")


class QuotaConfig(_Model):
    # Recipients per second (token bucket) and per rolling 24 hours, as SES counts.
    max_send_rate: float = Field(default=14.0, gt=0)
    max_24h_send: int = Field(default=50_000, ge=1)
    # Recipients that may be sent at once above the rate; default one second's worth.
    burst: int | None = Field(default=None, ge=1)


# SES sandbox quotas (seed: "Managing your Amazon SES sending limits").
SANDBOX_QUOTA = QuotaConfig(max_send_rate=1.0, max_24h_send=200)


class AccountConfig(_Model):
    identities: list[str] = Field(default_factory=list)
    # Unset: unlimited for a production account, SES's 1/s and 200/24 h in the sandbox.
    quota: QuotaConfig | None = None
    sandbox: bool = False
    default_configuration_set: str | None = None
    credentials: list[StaticCredential] = Field(default_factory=list)
    trusted_networks: list[str] = Field(default_factory=list)

    @field_validator("identities")
    @classmethod
    def _identities(cls, values: list[str]) -> list[str]:
        return [_normalise_identity(v) for v in values]

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a network in CIDR form") from None
        return values


SuppressionReason = Literal["BOUNCE", "COMPLAINT"]


class SetSuppressionConfig(_Model):
    # Which suppression-list reasons stop delivery for messages sent with this set;
    # an empty list sends even to suppressed addresses (SES's override).
    reasons: tuple[SuppressionReason, ...] = ("BOUNCE", "COMPLAINT")


def check_tracking_host(value: str) -> str:
    """A tracking domain, lower-cased; ":port" allowed for tests and non-standard ports."""
    host, sep, port = value.strip().partition(":")
    host = check_domain(host)
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: the port after ':' must be 1-65535")
        return f"{host}:{int(port)}"
    return host


class TrackingConfig(_Model):
    # SES open and click tracking for this set's HTML parts.
    open: bool = False
    click: bool = False
    # Host name of the tracking links and pixel; must be listed under tracking_domains.
    domain: str | None = None
    # true: https links and pixel; false: http; null: each tracked link keeps its
    # original scheme (SES's default) and the pixel is https.
    https: bool | None = None

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else check_tracking_host(value)

    @model_validator(mode="after")
    def _domain_needed(self) -> TrackingConfig:
        if (self.open or self.click) and self.domain is None:
            raise ValueError("open or click tracking is on but tracking.domain is not set "
                             "(the host name the tracking links point to, such as "
                             "links.example.com)")
        return self


class UnsubscribeConfig(_Model):
    # RFC 8058 one-click unsubscribe: List-Unsubscribe (https URL on the tracking
    # domain) and List-Unsubscribe-Post headers, and {{unsubscribe_url}} in bodies.
    one_click: bool = False
    # Replace a List-Unsubscribe the sender wrote instead of keeping theirs.
    override: bool = False
    # An address added as <mailto:ADDRESS?subject=unsubscribe-TOKEN> after the URL.
    mailto: str | None = None
    # Host name for the unsubscribe URL; default: tracking.domain.
    domain: str | None = None

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str | None) -> str | None:
        return None if value is None else check_tracking_host(value)

    @field_validator("mailto")
    @classmethod
    def _mailto(cls, value: str | None) -> str | None:
        return None if value is None else _plain_address(value)


def _plain_address(value: str) -> str:
    """local@domain with nothing that would need quoting in a URL or a header."""
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or re.search(r"[\s<>?&%\"]", local):
        raise ValueError(f"{value!r} is not a plain mail address")
    return f"{local}@{check_domain(domain)}"


EVENT_TYPES = ("Send", "Reject", "Bounce", "Complaint", "Delivery", "DeliveryDelay",
               "Subscription", "Open", "Click")
EventTypeName = Literal["Send", "Reject", "Bounce", "Complaint", "Delivery", "DeliveryDelay",
                        "Subscription", "Open", "Click"]


class EventDestinationConfig(_Model):
    # Unique within the set; the delivery position is saved under "<set>/<name>", so a
    # renamed destination starts from the events made after the rename.
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal["file", "webhook"]
    enabled: bool = True
    # SES event types this destination receives, or "all".
    event_types: list[EventTypeName] | Literal["all"] = "all"
    # file: SES JSON, one event per line (NDJSON), appended; fsync once per batch.
    path: Path | None = None
    # Rotate the file at this size: path -> path.1 -> ... -> path.<keep>.
    max_size: Size = 100 * 1024 * 1024
    keep: int = Field(default=5, ge=0)
    # webhook: each event is POSTed as SES JSON to this http(s) URL, signed with
    # HMAC-SHA256 under the secret held in the environment variable secret_env.
    url: str | None = None
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # A request not answered within this long counts as a failure and is retried.
    timeout: Duration = 10.0
    # How long a failing receiver is retried (backoff up to retry_max_interval)
    # before its oldest events are set aside in data_dir/events-undelivered/.
    retry_for: Duration = 3 * 86400.0
    retry_max_interval: Duration = 300.0

    @model_validator(mode="after")
    def _target(self) -> EventDestinationConfig:
        if self.type == "file" and self.path is None:
            raise ValueError("a file destination needs path (the NDJSON file to append to)")
        if self.type == "webhook":
            if not self.url or not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError("a webhook destination needs url: an http:// or https:// "
                                 "address to POST events to")
            if not self.secret_env:
                raise ValueError("a webhook destination needs secret_env: the name of the "
                                 "environment variable holding its signing secret")
        return self

    def wants(self, event_type: str) -> bool:
        return self.enabled and (self.event_types == "all" or event_type in self.event_types)


class ConfigurationSetConfig(_Model):
    sending_enabled: bool = True
    # SES DeliveryOptions.TlsPolicy: require refuses to deliver this set's mail in clear
    # (it waits in the queue instead); default: delivery.tls.
    tls: Literal["opportunistic", "require"] | None = None
    suppression: SetSuppressionConfig = Field(default_factory=SetSuppressionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    unsubscribe: UnsubscribeConfig = Field(default_factory=UnsubscribeConfig)
    event_destinations: list[EventDestinationConfig] = Field(default_factory=list)

    @field_validator("event_destinations")
    @classmethod
    def _unique_names(cls, values: list[EventDestinationConfig]
                      ) -> list[EventDestinationConfig]:
        names = [v.name for v in values]
        for name in sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"the destination name {name!r} is used twice")
        return values

    @property
    def publishes(self) -> bool:
        """Some destination is on: events for this set are worth recording."""
        return any(d.enabled for d in self.event_destinations)

    @property
    def unsubscribe_domain(self) -> str | None:
        return self.unsubscribe.domain or self.tracking.domain


class FeedbackConfig(_Model):
    # Addresses besides the VERP ones (b-<tag>@<mail_from_domain>) the feedback
    # listener accepts mail for: where mailbox providers send complaint reports
    # (feedback loops: Yahoo, Microsoft JMRP, Comcast ...) and abuse@-style inboxes.
    addresses: list[str] = Field(default_factory=list)
    # Largest report accepted; DSNs usually return the original message (or its
    # headers). Past it: 552 5.3.4.
    max_message_size: Size = 10 * 1024 * 1024
    # Reports that could not be parsed or matched to a message we sent are kept this
    # long in data_dir/feedback.db (`smtprelay feedback unmatched`), then purged.
    unmatched_retention: Duration = 30 * 86400.0

    @field_validator("addresses")
    @classmethod
    def _plain_addresses(cls, values: list[str]) -> list[str]:
        return [_plain_address(value) for value in values]


def is_simulator_address(address: str, domain: str) -> bool:
    return address.rpartition("@")[2].lower().rstrip(".") == domain


class SimulatorConfig(_Model):
    # Recipients here never leave the machine (mailbox simulator,
    # smtprelay.delivery.simulator); the sandbox accepts them as it accepts verified
    # identities.
    domain: str = "simulator.smtprelay.invalid"
    # SES leaves simulator mail out of the bounce and complaint rates. True counts it
    # in the set statistics (so the reputation guard sees it): for rehearsing the
    # guard's warnings and pauses on a test relay without bouncing real mail.
    counts_for_reputation: bool = False

    def covers(self, address: str) -> bool:
        """The address is one of the simulator's (any local part, any +label)."""
        return is_simulator_address(address, self.domain)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return _normalise_identity(value)


class RateThresholds(_Model):
    # Rates as fractions (0.05 is 5%); at `warning` the scope is under review, at
    # `pause` the guard pauses it. A threshold of 1 or more can never be reached.
    warning: float = Field(gt=0)
    pause: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RateThresholds:
        if self.pause < self.warning:
            raise ValueError(f"pause ({self.pause}) is below warning ({self.warning})")
        return self


class ReputationConfig(_Model):
    # The reputation guard (smtprelay.policy.reputation): bounce and complaint rates per
    # configuration set and per account over a sliding window.
    enabled: bool = True
    # SES judges a "representative volume" of recent mail; a day of it is what a
    # sender's daily quota is counted over, and what the stats show by default.
    window: Duration = 86400.0
    # Fewer deliveries + hard bounces than this in the window: no verdict (5 bounces
    # out of 10 messages say little). Complaints are judged on deliveries.
    minimum_volume: int = Field(default=500, ge=1)
    check_interval: Duration = 60.0
    # SES's figures: under review at 5% bounces / 0.1% complaints, paused at 10% / 0.5%.
    bounce: RateThresholds = Field(
        default_factory=lambda: RateThresholds(warning=0.05, pause=0.10))
    complaint: RateThresholds = Field(
        default_factory=lambda: RateThresholds(warning=0.001, pause=0.005))
    # What the guard pauses: each configuration set over the pause threshold, and (with
    # `accounts`) an account over it: all its mail refused until resumed.
    pause_sets: bool = True
    pause_accounts: bool = True


def parse_nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    """``"127.0.0.1:5353"``, ``"[::1]:5353"``, ``"::1"`` or ``"127.0.0.1"`` (port 53)."""
    spec = text.strip()
    port = 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad nameserver {text!r}: expected [address]:port")
            port = int(rest[1:])
    elif spec.count(":") == 1:  # host:port; several colons is a bare IPv6 address
        host, _, port_text = spec.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad nameserver {text!r}: expected address:port")
        port = int(port_text)
    else:
        host = spec
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad nameserver {text!r}: not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver {text!r}: port out of range")
    return dns.nameserver.Do53Nameserver(str(address), port)


class DeliveryDNSConfig(_Model):
    # Resolvers for MX lookups, "host" or "host:port" ("[::1]:53" for IPv6).
    # Empty: the system resolver (/etc/resolv.conf).
    nameservers: list[str] = Field(default_factory=list)
    timeout: Duration = 5.0

    @field_validator("nameservers")
    @classmethod
    def _servers(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_nameserver(value)
        return values


class SmarthostConfig(_Model):
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    # starttls: STARTTLS required (never AUTH or mail in clear); implicit: TLS from the
    # first byte (port 465); none: clear text, no AUTH (a smarthost on loopback only).
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    verify_certificate: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _password_source(self) -> SmarthostConfig:
        sources = [s for s in (self.password_env, self.password_file) if s is not None]
        if self.username is None and sources:
            raise ValueError("password_env/password_file given without username")
        if self.username is not None and len(sources) != 1:
            raise ValueError("with username, set exactly one of password_env or password_file "
                             "(the password itself never goes in the config file)")
        if self.username is not None and self.tls == "none":
            raise ValueError("username needs tls: starttls or implicit; credentials are "
                             "never sent in clear")
        return self


class RetryConfig(_Model):
    # The first retry after a temporary failure; each later one waits twice as long
    # (with +-20% jitter) up to max_interval. A remote "try again in N minutes"
    # replaces the backoff for that attempt (capped at max_interval). After
    # max_lifetime in the queue the recipient bounces.
    first: Duration = 60.0
    max_interval: Duration = 3600.0
    max_lifetime: Duration = 5 * 86400.0


class DelayConfig(_Model):
    # A recipient still undelivered this long after acceptance gets a DeliveryDelay
    # record (SES event), then at most one per `every` while it waits.
    after: Duration = 900.0
    every: Duration = 3600.0


class DSNConfig(_Model):
    # An RFC 3464 bounce message to the envelope sender when recipients fail for good.
    enabled: bool = True
    # headers: the original header section only (Postfix's default); full: the whole message.
    return_content: Literal["headers", "full"] = "headers"


class DeliveryConfig(_Model):
    # mx: deliver to each recipient domain's MX hosts (the production mode).
    # smarthost: hand everything to one upstream server (delivery.smarthost).
    # capture: "delivered" messages are written as .eml files under
    #   data_dir/captured/ instead of leaving the machine (development, staging).
    # hold: accepted mail stays queued; nothing is delivered.
    mode: Literal["mx", "smarthost", "capture", "hold"] = "mx"
    # Remote SMTP port in mx mode (tests point it at a sink on loopback).
    port: int = Field(default=25, ge=1, le=65535)
    # The name sent in EHLO; default: server.hostname.
    helo_name: str | None = None
    dns: DeliveryDNSConfig = Field(default_factory=DeliveryDNSConfig)
    smarthost: SmarthostConfig | None = None
    # opportunistic: STARTTLS when offered, certificate not checked, clear otherwise.
    # require: never send in clear; defer until the remote offers working TLS.
    tls: Literal["opportunistic", "require"] = "opportunistic"
    # Outbound SMTP sessions open at once (in use or cached idle), and in use per
    # recipient domain.
    max_connections: int = Field(default=200, ge=1)
    max_connections_per_domain: int = Field(default=10, ge=1)
    # Messages the scheduler works on at once (each waits for a connection slot).
    max_concurrent: int = Field(default=1000, ge=1)
    connect_timeout: Duration = 30.0
    # RFC 5321 4.5.3.2 waits for replies (the final "." gets twice this).
    command_timeout: Duration = 300.0
    # A finished session stays open this long for the next message to the same host.
    idle_timeout: Duration = 5.0
    # A finished message (no recipient pending) stays in the spool this long for
    # `queue show`, then it and its outcomes are deleted.
    keep_finished: Duration = 7 * 86400.0
    retry: RetryConfig = Field(default_factory=RetryConfig)
    delay: DelayConfig = Field(default_factory=DelayConfig)
    dsn: DSNConfig = Field(default_factory=DSNConfig)

    @model_validator(mode="after")
    def _smarthost_needed(self) -> DeliveryConfig:
        if self.mode == "smarthost" and self.smarthost is None:
            raise ValueError("mode is smarthost but delivery.smarthost is not set "
                             "(host, port, tls, username, password_env)")
        if self.max_connections_per_domain > self.max_connections:
            raise ValueError(f"max_connections_per_domain ({self.max_connections_per_domain}) "
                             f"is above max_connections ({self.max_connections})")
        return self


# RFC 6376 3.1: a selector is one or more DNS labels.
_SELECTOR_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def check_domain(value: str) -> str:
    """A domain name, lower-cased, without a final dot; ValueError otherwise."""
    value = value.strip()
    if "@" in value or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?", value):
        raise ValueError(f"{value!r} is not a domain name")
    return value.lower().rstrip(".")


def check_selector(value: str) -> str:
    if not _SELECTOR_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a DKIM selector (DNS labels: letters, digits, "
                         "hyphens, dots between labels)")
    return value


class DKIMKeyConfig(_Model):
    # The key is published at <selector>._domainkey.<domain>; its type (RSA or Ed25519)
    # is read from the PEM file and decides the algorithm (rsa-sha256, ed25519-sha256).
    selector: str
    key_file: Path

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        return check_selector(value)


class IdentityConfig(_Model):
    # Every key signs every message whose From domain this identity covers (dual
    # signing with an RSA and an Ed25519 key); none: mail is sent unsigned.
    dkim: list[DKIMKeyConfig] = Field(default_factory=list)
    # SES's custom MAIL FROM domain; validated now, used by the bounce-handling release.
    mail_from_domain: str | None = None

    @field_validator("dkim")
    @classmethod
    def _unique_selectors(cls, values: list[DKIMKeyConfig]) -> list[DKIMKeyConfig]:
        selectors = [v.selector.lower() for v in values]
        for selector in sorted({s for s in selectors if selectors.count(s) > 1}):
            raise ValueError(f"selector {selector!r} is listed twice")
        return values

    @field_validator("mail_from_domain")
    @classmethod
    def _mail_from(cls, value: str | None) -> str | None:
        return None if value is None else check_domain(value)


# Defaults of http.machine_detection. Substrings are matched case-insensitively;
# "/.../" is a regular expression (re.search, case-insensitive).
_SCANNER_USER_AGENTS = (
    # Mail security gateways that fetch every link of a message on delivery.
    "Barracuda", "Mimecast", "Proofpoint", "ppops", "MessageLabs", "Symantec", "IronPort",
    "Cisco", "Forcepoint", "FireEye", "Trend Micro", "TrendMicro", "Sophos", "Fortinet",
    "Cloudmark", "SpamTitan", "Hornetsecurity", "Zscaler",
    # Sandboxes and scripts: browsers without a person in front of them.
    "HeadlessChrome", "PhantomJS", "python-requests", "python-urllib", "python-httpx",
    "aiohttp", "curl/", "Wget", "Go-http-client", "Java/", "Apache-HttpClient",
    "libwww-perl", "node-fetch", "axios/",
    # Crawlers and link previews (chat apps unfurling a pasted link).
    "bot", "crawler", "spider", "preview", "facebookexternalhit", "WhatsApp",
)


def _check_pattern(value: Any) -> Any:
    """A user-agent rule: a non-empty substring, or "/regex/" that compiles."""
    if not isinstance(value, str):
        return value  # the str type check reports it
    if not value.strip():
        raise ValueError("an empty user-agent rule would match everything")
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        try:
            re.compile(value[1:-1], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{value!r}: not a regular expression ({exc})") from None
    return value


def _check_network(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (CIDR such as 10.0.0.0/8)") from None


UserAgentRule = Annotated[str, BeforeValidator(_check_pattern)]
Network = Annotated[str, BeforeValidator(_check_network)]


class ImageProxyRule(_Model):
    # Mail services that fetch images on the recipient's behalf (privacy proxies,
    # prefetching): an open from them is flagged image-proxy:<name>. A request
    # matches when its user agent matches one of user_agents or its client IP is in
    # one of networks.
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    user_agents: list[UserAgentRule] = Field(default_factory=list)
    networks: list[Network] = Field(default_factory=list)


def _default_image_proxies() -> list[ImageProxyRule]:
    return [
        # Apple Mail Privacy Protection downloads every image on delivery through
        # Apple's proxies; they send just "Mozilla/5.0" and come from 17.0.0.0/8.
        ImageProxyRule(name="apple-mail-privacy", user_agents=["/^Mozilla/5\\.0$/"],
                       networks=["17.0.0.0/8"]),
        ImageProxyRule(name="gmail", user_agents=["GoogleImageProxy"]),
        ImageProxyRule(name="yahoo", user_agents=["YahooMailProxy"]),
    ]


class MachineDetectionConfig(_Model):
    # Engagements these rules match are still recorded, with machine: true and the
    # rule as the reason; nothing is dropped. HEAD requests always count as machine.
    # A click this soon after the message was accepted (mail scanners follow every
    # link within seconds of delivery); 0 turns the rule off. Opens are not timed:
    # image proxies are the rule for them.
    too_fast: Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)] = 2.0
    # A request without a User-Agent header (browsers always send one).
    empty_user_agent: bool = True
    # Scanners, scripts, crawlers and link previews, for opens and clicks.
    user_agents: list[UserAgentRule] = Field(
        default_factory=lambda: list(_SCANNER_USER_AGENTS))
    # Privacy proxies that prefetch images, for opens.
    image_proxies: list[ImageProxyRule] = Field(default_factory=_default_image_proxies)

    @field_validator("image_proxies")
    @classmethod
    def _unique_names(cls, values: list[ImageProxyRule]) -> list[ImageProxyRule]:
        names = [v.name for v in values]
        for name in sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"the image proxy name {name!r} is used twice")
        return values


class HTTPConfig(_Model):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:8080"])
    # The same routes over TLS, with a certificate per tracking domain chosen by SNI.
    tls_listen: list[str] = Field(default_factory=list)
    # Opens and clicks later than this after acceptance still redirect (or get the
    # pixel) but make no event: old mail re-opened years later is not engagement
    # worth reporting, and a leaked link cannot be replayed forever into the stats.
    tracking_window: Duration = 60 * 86400.0
    # Proxies and CDNs whose X-Forwarded-For / Forwarded headers are believed.
    trusted_proxies: list[Network] = Field(default_factory=list)
    # A connection must deliver a whole request head (and a POST body) this soon
    # after it opened or after the previous response, else it is closed; also the
    # idle keep-alive limit. Slow clients (slowloris) cannot hold sockets longer.
    read_timeout: Duration = 15.0
    machine_detection: MachineDetectionConfig = Field(default_factory=MachineDetectionConfig)
    # Name of the environment variable holding the admin API's bearer token
    # (/api/v1 on every http listener). Unset, or the variable empty: no admin API.
    admin_token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("listen", "tls_listen")
    @classmethod
    def _host_ports(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_host_port(value)
        return values


class TrackingDomainConfig(_Model):
    # Certificate served by SNI for https tracking links on this host name; without
    # one, https links need a proxy or CDN in front that ends TLS.
    cert_file: Path | None = None
    key_file: Path | None = None
    # JSON files served as /.well-known/apple-app-site-association and
    # /.well-known/assetlinks.json on this host, so app deep links (universal
    # links, Android app links) keep working through tracked links.
    apple_app_site_association: Path | None = None
    assetlinks: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> TrackingDomainConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both or neither")
        return self


class StoreConfig(_Model):
    backend: Literal["sqlite"] = "sqlite"


class LoggingConfig(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    listeners: list[ListenerConfig] = Field(min_length=1)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    accounts: dict[str, AccountConfig] = Field(default_factory=dict)
    identities: dict[str, IdentityConfig] = Field(default_factory=dict)
    configuration_sets: dict[str, ConfigurationSetConfig] = Field(default_factory=dict)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    reputation: ReputationConfig = Field(default_factory=ReputationConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    tracking_domains: dict[str, TrackingDomainConfig] = Field(default_factory=dict)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("identities", mode="before")
    @classmethod
    def _identity_domains(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        normalised: dict[str, Any] = {}
        problems: list[str] = []
        for name, identity in value.items():
            try:
                domain = check_domain(str(name))
            except ValueError as exc:
                problems.append(f"{exc}; the keys here are domains (mail from an address "
                                "is signed with its domain's keys)")
                continue
            if domain in normalised:
                problems.append(f"{name!r}: {domain} is listed twice")
            normalised[domain] = identity
        if problems:
            raise ValueError("\n".join(problems))
        return normalised

    @field_validator("tracking_domains", mode="before")
    @classmethod
    def _tracking_hosts(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        normalised: dict[str, Any] = {}
        for name, settings in value.items():
            normalised[check_tracking_host(str(name))] = settings
        return normalised

    @model_validator(mode="after")
    def _cross_references(self) -> Config:
        problems: list[str] = []
        for domain, identity in self.identities.items():
            mail_from = identity.mail_from_domain
            if mail_from is not None and not mail_from.endswith("." + domain):
                problems.append(
                    f"identities.{domain}.mail_from_domain: {mail_from} must be a subdomain "
                    f"of {domain} (such as bounce.{domain}), as SES requires")
        for set_name, settings in self.configuration_sets.items():
            hosts = [("tracking.domain", settings.tracking.domain)]
            if settings.unsubscribe.one_click:
                if settings.unsubscribe_domain is None:
                    problems.append(
                        f"configuration_sets.{set_name}.unsubscribe: one_click needs a host "
                        "for the unsubscribe URL: set unsubscribe.domain or tracking.domain")
                hosts.append(("unsubscribe.domain", settings.unsubscribe.domain))
            for key, host in hosts:
                if host is not None and host not in self.tracking_domains:
                    problems.append(
                        f"configuration_sets.{set_name}.{key}: {host} is not listed under "
                        "tracking_domains; add it there (with its certificate for https)")
        names = [listener.name for listener in self.listeners]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"listeners: the name {name!r} is used twice")
        for account_name, account in self.accounts.items():
            default_set = account.default_configuration_set
            if default_set is not None and default_set not in self.configuration_sets:
                problems.append(
                    f"accounts.{account_name}.default_configuration_set: {default_set!r} is "
                    "not defined under configuration_sets"
                )
        owners: dict[str, str] = {}
        for account_name, account in self.accounts.items():
            for index, cred in enumerate(account.credentials):
                if cred.username in owners:
                    problems.append(
                        f"accounts.{account_name}.credentials[{index}].username: "
                        f"{cred.username!r} is already used by account {owners[cred.username]!r}"
                    )
                owners[cred.username] = account_name
        networks = [
            (ipaddress.ip_network(net, strict=False), name)
            for name, account in self.accounts.items()
            for net in account.trusted_networks
        ]
        for i, (net_a, name_a) in enumerate(networks):
            for net_b, name_b in networks[i + 1 :]:
                if name_a != name_b and net_a.version == net_b.version and net_a.overlaps(net_b):
                    problems.append(
                        f"accounts.{name_b}.trusted_networks: {net_b} overlaps {net_a} of "
                        f"account {name_a!r}; a client address must map to one account"
                    )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # Paths derived from data_dir, kept here so every module agrees on the layout.
    @property
    def spool_path(self) -> Path:
        return self.server.data_dir / "spool.db"

    @property
    def state_path(self) -> Path:
        return self.server.data_dir / "state.db"

    @property
    def tracking_keys_path(self) -> Path:
        return self.server.data_dir / "tracking-keys.json"

    @property
    def capture_dir(self) -> Path:
        return self.server.data_dir / "captured"

    @property
    def cert_path(self) -> Path:
        return self.tls.cert_file or self.server.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.tls.key_file or self.server.data_dir / "tls" / "key.pem"


def parse_host_port(value: str) -> tuple[str, int]:
    """Split "127.0.0.1:8080" or "[::1]:8080" into host and port."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not host:port (IPv6 as [::1]:8080)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range")
    return host, port


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per problem."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and the file it came from."""

    config: Config
    path: Path


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first on line {seen[key] + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _describe(error: Any) -> list[str]:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = _location(loc)
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return [f"{where}: unknown key (check the spelling against config/smtprelay.example.yaml)"]
    if kind == "missing":
        return [f"{where}: required key is missing"]
    if kind == "literal_error":
        return [f"{where}: {message}, got {error.get('input')!r}"]
    if where == "(top level)":
        return message.splitlines()
    return [f"{where}: {line}" for line in message.splitlines()]


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative paths absolute against the config file's directory, in place."""

    def fix(section: Any, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str):
            path = Path(os.path.expanduser(section[key]))
            section[key] = os.path.normpath(path if path.is_absolute() else base / path)

    if raw.get("server") is None:
        raw["server"] = {}
    if isinstance(raw["server"], dict):
        raw["server"].setdefault("data_dir", "./var")
        fix(raw["server"], "data_dir")
    fix(raw.get("tls"), "cert_file")
    fix(raw.get("tls"), "key_file")
    delivery = raw.get("delivery")
    if isinstance(delivery, dict):
        fix(delivery.get("smarthost"), "ca_file")
        fix(delivery.get("smarthost"), "password_file")
    identities = raw.get("identities")
    if isinstance(identities, dict):
        for identity in identities.values():
            keys = identity.get("dkim") if isinstance(identity, dict) else None
            for key in keys if isinstance(keys, list) else ():
                fix(key, "key_file")
    tracking_domains = raw.get("tracking_domains")
    if isinstance(tracking_domains, dict):
        for domain in tracking_domains.values():
            for key in ("cert_file", "key_file", "apple_app_site_association", "assetlinks"):
                fix(domain, key)
    sets = raw.get("configuration_sets")
    if isinstance(sets, dict):
        for settings in sets.values():
            destinations = settings.get("event_destinations") if isinstance(
                settings, dict) else None
            for destination in destinations if isinstance(destinations, list) else ():
                fix(destination, "path")


def load_config(path: str | Path | None) -> LoadedConfig:
    """Read, parse and validate the configuration; raise ConfigError listing every problem.

    Only the file itself: the certificates, keys and variables it names are checked by
    `smtprelay.app.preflight`, for the commands that use them.
    """
    if path is None:
        path = os.environ.get(ENV_CONFIG)
    if not path:
        raise ConfigError("(none)", [f"no configuration file: pass -c FILE or set {ENV_CONFIG}"])
    file_path = Path(path).expanduser().absolute()
    try:
        text = file_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(file_path, ["the file does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file_path, [f"cannot be read: {exc}"]) from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(file_path, [f"{where}YAML syntax error: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file_path, ["the top level must be a mapping of keys"])
    _resolve_paths(raw, file_path.parent)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = [line for error in exc.errors() for line in _describe(error)]
        raise ConfigError(file_path, problems) from None
    return LoadedConfig(config=config, path=file_path)
