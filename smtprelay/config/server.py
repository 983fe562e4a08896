"""The relay's own sections: server, TLS, listeners, limits, AUTH lockout, the HTTP
listener (with its machine detection and tracking domains), store and logging.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from smtprelay.config.values import (
    Duration,
    DurationOrZero,
    Model,
    Network,
    Size,
    UserAgentRule,
    parse_host_port,
    repeated,
)
from smtprelay.infra import tls


class ServerConfig(Model):
    hostname: str = Field(default_factory=socket.getfqdn, min_length=1)
    data_dir: Path = Path("./var")
    # Worker processes for click/open tracking and unsubscribe (pure Python, ~3-4 ms
    # per 50 KB newsletter); "auto": one per core up to 4, none on a single core. 0:
    # in the relay's own process.
    transform_workers: int | Literal["auto"] = "auto"
    # Processes that serve the submission and HTTP listeners (SMTP sessions, AUTH,
    # policy, transforms; clicks, opens, unsubscribes), each with its own event loop on
    # the same sockets; the relay's own process keeps the spool, delivery, events, the
    # feedback listener, the admin API and the shared counts. 1: one process does
    # everything. "auto": one per CPU core (1 on a single core).
    workers: int | Literal["auto"] = "auto"

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 64:
            raise ValueError("must be between 1 and 64, or auto")
        return value

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


class TLSConfig(Model):
    cert_file: Path | None = None
    key_file: Path | None = None
    generate_self_signed: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"
    # TLS 1.2 suites (OpenSSL cipher list; TLS 1.3 keeps OpenSSL's three) and the
    # key-exchange groups: Mozilla's intermediate profile by default (infra.tls). The
    # ciphers are checked by check-config (app.preflight); groups None is OpenSSL's list.
    ciphers: str = Field(default=tls.MOZILLA_INTERMEDIATE_CIPHERS, min_length=1)
    groups: str | None = tls.MOZILLA_INTERMEDIATE_GROUPS

    @field_validator("min_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, float | int) else value

    @field_validator("groups")
    @classmethod
    def _groups_known_to_openssl(cls, value: str | None) -> str | None:
        if value is not None:
            problem = tls.groups_problem(value)
            if problem is not None:
                raise ValueError(problem.removeprefix("tls.groups: "))
        return value

    @property
    def profile(self) -> tls.Profile:
        return tls.Profile(self.min_version, self.ciphers, self.groups)


class ListenerConfig(Model):
    name: str = Field(min_length=1)
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    # submission: AUTH (or trusted_networks) required, mail relayed out.
    # feedback: inbound DSNs and complaint reports (port 25 in production): no AUTH,
    # only VERP addresses and feedback.addresses accepted as recipients.
    role: Literal["submission", "feedback"] = "submission"
    # Behind a load balancer: every connection starts with a PROXY protocol header (v1
    # or v2; HAProxy's send-proxy / send-proxy-v2) naming the real client, whose
    # address then counts for limits, lockout, trusted networks, Received and logs.
    # Only a peer in trusted_proxies may connect: others are closed unanswered.
    proxy_protocol: bool = False
    trusted_proxies: list[Network] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _address_is_ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        return value

    @model_validator(mode="after")
    def _proxies_are_named(self) -> ListenerConfig:
        _need_trusted_proxies(self.proxy_protocol, self.trusted_proxies)
        return self


def _need_trusted_proxies(proxy_protocol: bool, trusted_proxies: list[str]) -> None:
    if proxy_protocol and not trusted_proxies:
        raise ValueError("proxy_protocol needs trusted_proxies: the load balancers' "
                         "addresses (for example [10.0.0.0/24])")


class LimitsConfig(Model):
    max_message_size: Size = 10 * 1024 * 1024
    max_recipients: int = Field(default=50, ge=1)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_ip: int = Field(default=100, ge=1)
    # RFC 5321 4.5.3.1.6: 1000 octets including CRLF.
    max_line_length: int = Field(default=998, ge=78)
    # A bare CR or LF in DATA: normalize takes it for a line end and stores CRLF (Postfix
    # 3.9's smtpd_forbid_bare_newline = normalize; Python's smtplib sends file bytes as
    # they are); reject refuses the message (554 5.6.0). Either way only CRLF.CRLF
    # ends DATA, so no line ending can smuggle a second message.
    bare_line_endings: Literal["normalize", "reject"] = "normalize"
    # A NUL byte in DATA: reject refuses the message (554 5.6.0), as RFC 5322 allows no
    # NUL in a message and IMAP servers (Cyrus, Dovecot) refuse or mangle one; accept
    # relays it verbatim, for legacy senders of unencoded binary.
    nul_bytes: Literal["reject", "accept"] = "reject"
    # Each whole command line must arrive within idle_timeout, and the whole of DATA
    # within data_timeout plus the time its size needs at min_data_rate (bytes per
    # second): a client trickling a byte at a time cannot hold a session open.
    idle_timeout: Duration = 300.0
    data_timeout: Duration = 180.0
    min_data_rate: Size = Field(default=1024, ge=1)
    tls_handshake_timeout: Duration = 30.0
    max_errors: int = Field(default=10, ge=1)


class AuthConfig(Model):
    # Failures in failure_window that lock: a client address (for every user name)...
    max_failures_per_ip: int = Field(default=10, ge=1)
    # ...a user name at one address (only there: a stranger cannot lock the user out)...
    max_failures_per_user: int = Field(default=10, ge=1)
    # ...and a user name everywhere, once this many came from at least
    # user_lockout_min_addresses addresses (a guess spread over many of them).
    max_failures_per_user_everywhere: int = Field(default=100, ge=1)
    user_lockout_min_addresses: int = Field(default=5, ge=1)
    failure_window: Duration = 600.0
    lockout_duration: Duration = 900.0
    verify_cache_ttl: Duration = 3600.0


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


class ImageProxyRule(Model):
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


class MachineDetectionConfig(Model):
    # Engagements these rules match are still recorded, with machine: true and the
    # rule as the reason; nothing is dropped. HEAD requests always count as machine.
    # A click this soon after the message was accepted (mail scanners follow every
    # link within seconds of delivery); 0 turns the rule off. Opens are not timed:
    # image proxies are the rule for them.
    too_fast: DurationOrZero = 2.0
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
        for name in repeated(v.name for v in values):
            raise ValueError(f"the image proxy name {name!r} is used twice")
        return values


class HTTPConfig(Model):
    listen: list[str] = Field(default_factory=lambda: ["127.0.0.1:8080"])
    # The same routes over TLS, with a certificate per tracking domain chosen by SNI.
    tls_listen: list[str] = Field(default_factory=list)
    # Opens and clicks later than this after acceptance still redirect (or get the
    # pixel) but make no event: old mail re-opened years later is not engagement
    # worth reporting, and a leaked link cannot be replayed forever into the stats.
    tracking_window: Duration = 60 * 86400.0
    # Proxies and CDNs whose X-Forwarded-For / Forwarded headers are believed, and
    # with proxy_protocol the load balancers that may connect at all.
    trusted_proxies: list[Network] = Field(default_factory=list)
    # Behind a load balancer in TCP mode: every connection to listen and tls_listen
    # starts with a PROXY protocol header (v1 or v2; HAProxy's send-proxy /
    # send-proxy-v2), before the TLS handshake, naming the real client, whose address
    # is then the one machine detection, engagement events and the logs see. Only a
    # peer in trusted_proxies may connect: others are closed unanswered. One list for
    # both: a peer that may name the client in a header is trusted either way.
    proxy_protocol: bool = False
    # A connection must deliver a whole request head (and a POST body) this soon
    # after it opened or after the previous response, else it is closed; also the
    # idle keep-alive limit. Slow clients (slowloris) cannot hold sockets longer.
    read_timeout: Duration = 15.0
    machine_detection: MachineDetectionConfig = Field(default_factory=MachineDetectionConfig)
    # Name of the environment variable holding the admin API's bearer token
    # (/api/v1 on every http listener). Unset, or the variable empty: no admin API.
    admin_token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # How long a login to the web console (/console/, on whenever the admin API is)
    # lasts; a signed admin token's own expiry ends it sooner. Logging out ends it too.
    console_session_lifetime: Duration = Field(default=8 * 3600.0, gt=0)
    # The base URL at which others reach this listener (through a proxy or CDN, if
    # any), such as https://relay.example.com: the SubscribeURL that a webhook with
    # format: notification sends in SNS's SubscriptionConfirmation points there
    # (<public_url>/sns/confirm?...). Needed by such a webhook; None otherwise.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not re.fullmatch(r"https?://[^/\s?#@]+(/[^\s?#]*)?", value):
            raise ValueError(f"{value!r} is not an http:// or https:// base URL (a host, "
                             "an optional port and path; no query, fragment or user)")
        return value.rstrip("/")

    @field_validator("listen", "tls_listen")
    @classmethod
    def _host_ports(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_host_port(value)
        return values

    @model_validator(mode="after")
    def _proxies_are_named(self) -> HTTPConfig:
        _need_trusted_proxies(self.proxy_protocol, self.trusted_proxies)
        return self


class TrackingDomainConfig(Model):
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


class StoreConfig(Model):
    # sqlite: this machine's files in data_dir (one node). redis: the state every node
    # of a cluster must agree on (send rates, 24-hour quotas, AUTH lockout) in the
    # Redis (or Valkey) server at `url`, shared by every node that names it with the
    # same `key_prefix` (smtprelay.state.redis).
    backend: Literal["sqlite", "redis"] = "sqlite"
    # redis://[[user]:password@]host:port/db, or rediss:// for TLS. A password in it is
    # never logged.
    url: str | None = None
    # This node's name in the shared state (its held quota); default the host name.
    node: str = Field(default_factory=socket.gethostname, min_length=1, max_length=200)
    key_prefix: str = Field(default="smtprelay:", min_length=1, max_length=100)
    # How long a Redis call may take before the relay answers with a temporary reply.
    timeout: Duration = 2.0
    # How long a node's lease on an outbound connection slot lasts unless renewed
    # (every third of it): a node that dies frees its share of each destination's
    # connection limit within this (smtprelay.state.leases).
    lease_ttl: Duration = 30.0
    # Free space on data_dir's file system kept for the spool (Postfix's
    # queue_minfree, turned round): the feedback inbox refuses a report with 452
    # 4.3.1 rather than leave less than this free, so reports cannot take the room
    # accepted mail and its delivery results need (smtprelay.spool.space). "auto":
    # twice limits.max_message_size, at least 256 MiB.
    spool_reserve: Size | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _redis_needs_a_url(self) -> StoreConfig:
        if self.backend == "redis" and not self.url:
            raise ValueError("backend redis needs url (redis://host:6379/0)")
        if self.url is not None and not self.url.startswith(("redis://", "rediss://",
                                                             "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")
        if self.lease_ttl < 1:
            raise ValueError("lease_ttl must be at least 1s (it is renewed every third)")
        return self


class LoggingConfig(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
