"""Who sends: accounts (identities, quotas, static credentials, trusted networks) and
the identities' DKIM keys and MAIL FROM domains.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from smtprelay.config.values import (
    Model,
    check_domain,
    check_selector,
    normalise_identity,
    repeated,
)


class StaticCredential(Model):
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


class QuotaConfig(Model):
    # Recipients per second (token bucket) and per rolling 24 hours, as SES counts.
    max_send_rate: float = Field(default=14.0, gt=0)
    max_24h_send: int = Field(default=50_000, ge=1)
    # Recipients that may be sent at once above the rate; default one second's worth.
    burst: int | None = Field(default=None, ge=1)


# SES sandbox quotas (seed: "Managing your Amazon SES sending limits").
SANDBOX_QUOTA = QuotaConfig(max_send_rate=1.0, max_24h_send=200)


class AccountConfig(Model):
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
        return [normalise_identity(v) for v in values]

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                network = ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not a network in CIDR form") from None
            if _host_bits(value, network):
                # 127.0.0.57/31 would silently trust 127.0.0.56 too.
                raise ValueError(f"{value!r} has host bits set: write the network it "
                                 f"means, {network}, or the single address "
                                 f"{value.partition('/')[0]}/{network.max_prefixlen}")
            mapped = getattr(network.network_address, "ipv4_mapped", None)
            if mapped is not None:
                # Clients connect over IPv4 or IPv6, never as ::ffff:a.b.c.d: it would
                # never match. The IPv4 form is what is meant.
                four = ipaddress.ip_network(
                    f"{mapped}/{max(0, network.prefixlen - 96)}", strict=False)
                raise ValueError(f"{value!r} is an IPv4-mapped IPv6 network, which no "
                                 f"client address matches; write {four} instead")
        return values


def _host_bits(value: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether `value` names an address inside `network` rather than the network."""
    address = ipaddress.ip_address(value.partition("/")[0])
    return address != network.network_address


class DKIMKeyConfig(Model):
    # The key is published at <selector>._domainkey.<domain>; its type (RSA or Ed25519)
    # is read from the PEM file and decides the algorithm (rsa-sha256, ed25519-sha256).
    selector: str
    key_file: Path

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        return check_selector(value)


class SendingAuthorizationConfig(Model):
    # SES's sending authorization policy, for this relay's accounts: the accounts
    # (other than those listing the identity) that may send as it, naming it with the
    # X-SES-SOURCE-ARN / X-SES-FROM-ARN / X-SES-RETURN-PATH-ARN headers.
    accounts: list[str] = Field(default_factory=list)
    # A condition, as a policy's ses:FromAddress: the From addresses the delegates may
    # use (identities: a domain or an address); empty: any under the identity.
    from_addresses: list[str] = Field(default_factory=list)

    @field_validator("from_addresses")
    @classmethod
    def _identities(cls, values: list[str]) -> list[str]:
        return [normalise_identity(v) for v in values]


class IdentityConfig(Model):
    # Every key signs every message whose From domain this identity covers (dual
    # signing with an RSA and an Ed25519 key); none: mail is sent unsigned.
    dkim: list[DKIMKeyConfig] = Field(default_factory=list)
    # SES's custom MAIL FROM domain: mail from this identity goes out with a VERP
    # sender at it (smtprelay.bounces.return_path), while it publishes an MX record.
    mail_from_domain: str | None = None
    # SES's "behavior on MX failure" while that MX record is missing: use_default sends
    # with the sender's own address as the envelope sender; reject refuses the mail at
    # submission (554 ... MailFromDomainNotVerified).
    behavior_on_mx_failure: Literal["use_default", "reject"] = "use_default"
    # Other accounts allowed to send as this identity (SES's sending authorization).
    sending_authorization: SendingAuthorizationConfig | None = None

    @field_validator("dkim")
    @classmethod
    def _unique_selectors(cls, values: list[DKIMKeyConfig]) -> list[DKIMKeyConfig]:
        for selector in repeated(v.selector.lower() for v in values):
            raise ValueError(f"selector {selector!r} is listed twice")
        return values

    @field_validator("mail_from_domain")
    @classmethod
    def _mail_from(cls, value: str | None) -> str | None:
        return None if value is None else check_domain(value)
