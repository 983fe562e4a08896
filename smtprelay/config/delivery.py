"""Outbound delivery: the mode, DNS, the smarthost, retries, delay notices and DSNs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from smtprelay.config.shaping import DestinationConfig, ShapingConfig
from smtprelay.config.tls_reporting import TLSReportingConfig
from smtprelay.config.values import Duration, Model, check_domain, parse_nameserver


class DeliveryDNSConfig(Model):
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


class SmarthostConfig(Model):
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


class RetryConfig(Model):
    # The first retry after a temporary failure; each later one waits twice as long
    # (with +-20% jitter) up to max_interval. A remote "try again in N minutes"
    # replaces the backoff for that attempt (capped at max_interval). After
    # max_lifetime in the queue the recipient bounces.
    first: Duration = 60.0
    max_interval: Duration = 3600.0
    max_lifetime: Duration = 5 * 86400.0


class DelayConfig(Model):
    # A recipient still undelivered this long after acceptance gets a DeliveryDelay
    # record (SES event), then at most one per `every` while it waits.
    after: Duration = 900.0
    every: Duration = 3600.0


class DSNConfig(Model):
    # An RFC 3464 bounce message to the envelope sender when recipients fail for good.
    enabled: bool = True
    # headers: the original header section only (Postfix's default); full: the whole message.
    return_content: Literal["headers", "full"] = "headers"


# The outbound TLS policies, weakest first: a configuration set may move up, never down.
# "require" is the older name of require_encrypted, still accepted.
TLSPolicyName = Literal["opportunistic", "require", "require_encrypted", "require_verified"]


class MtaStsConfig(Model):
    # MTA-STS (RFC 8461): a recipient domain's published policy (DNS TXT
    # _mta-sts.<domain>, then https://mta-sts.<domain>/.well-known/mta-sts.txt) says
    # which MX hosts are genuine and that they must present a valid certificate.
    enabled: bool = True
    # The HTTPS port of policy hosts; 443 on the Internet (tests use another).
    port: int = Field(default=443, ge=1, le=65535)
    # Policies kept in memory (least recently used dropped first), each for its max_age;
    # all of them are also kept in data_dir/state.db, so they outlive a restart.
    cache_size: int = Field(default=10000, ge=1)
    # Longest wait for a policy file (RFC 8461 3.3 suggests a minute at most).
    fetch_timeout: Duration = 60.0


class DeliveryConfig(Model):
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
    # The IP pool (ip_pools.<name>) mail leaves from when its configuration set names
    # none; null: the host's own choice of source address, with helo_name.
    ip_pool: str | None = None
    dns: DeliveryDNSConfig = Field(default_factory=DeliveryDNSConfig)
    smarthost: SmarthostConfig | None = None
    # opportunistic: STARTTLS when offered, certificate not checked, clear otherwise.
    # require_encrypted (or require): never send in clear; the certificate is not checked.
    # require_verified: never send in clear, and the certificate must be valid for the
    #   MX host name (system CAs plus tls_ca_file). Mail waits in the queue otherwise.
    tls: TLSPolicyName = "opportunistic"
    # Extra CA certificates (PEM) trusted besides the system's, for MX certificates
    # under require_verified or MTA-STS and for MTA-STS policy hosts.
    tls_ca_file: Path | None = None
    mta_sts: MtaStsConfig = Field(default_factory=MtaStsConfig)
    # DANE (RFC 7672): TLSA records of MX hosts, when DNSSEC-validated, decide which
    # certificate is genuine. Needs delivery.dns.nameservers to be a validating resolver
    # run by the operator (unbound on loopback; docs/tls-policy.md).
    dane: bool = False
    # A DNSSEC-signed name the resolver is asked about to check that it validates (the
    # AD bit); without AD, DANE is not applied and an error is logged.
    dane_probe_name: str = "."
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
    # Daily TLS reports (RFC 8460) to recipient domains that publish _smtp._tls.
    tls_reporting: TLSReportingConfig = Field(default_factory=TLSReportingConfig)
    # Limits per mailbox provider and source address (docs/shaping.md).
    shaping: ShapingConfig = Field(default_factory=ShapingConfig)
    # Limits per recipient domain: sessions and message rates (docs/shaping.md).
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)

    @field_validator("destinations")
    @classmethod
    def _destination_domains(cls, value: dict[str, DestinationConfig]
                             ) -> dict[str, DestinationConfig]:
        return {check_domain(domain): limits for domain, limits in value.items()}

    @model_validator(mode="after")
    def _smarthost_needed(self) -> DeliveryConfig:
        if self.mode == "smarthost" and self.smarthost is None:
            raise ValueError("mode is smarthost but delivery.smarthost is not set "
                             "(host, port, tls, username, password_env)")
        if self.dane and not self.dns.nameservers:
            raise ValueError("dane is true but dns.nameservers is empty: DANE trusts the "
                             "AD bit of the resolver, so name a validating resolver you run "
                             "(e.g. unbound on 127.0.0.1; see docs/tls-policy.md)")
        if self.max_connections_per_domain > self.max_connections:
            raise ValueError(f"max_connections_per_domain ({self.max_connections_per_domain}) "
                             f"is above max_connections ({self.max_connections})")
        for domain, limits in self.destinations.items():
            wanted = limits.max_connections
            if wanted is not None and wanted > self.max_connections:
                raise ValueError(f"destinations.{domain}.max_connections "
                                 f"({wanted}) is above max_connections "
                                 f"({self.max_connections})")
        return self
