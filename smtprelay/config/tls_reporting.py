"""delivery.tls_reporting: daily SMTP TLS reports (RFC 8460) to the recipient domains
that ask for them with a `_smtp._tls` TXT record."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import field_validator, model_validator

from smtprelay.config.accounts import AccountConfig
from smtprelay.config.values import Duration, Model, check_domain, plain_address

_TIME_OF_DAY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


class TLSReportingConfig(Model):
    # Off by default: reports go to third parties and name this relay's addresses.
    enabled: bool = False
    # The report's "organization-name": who runs this relay.
    organization_name: str | None = None
    # The report's "contact-info" (an address or a URL); default: from_address.
    contact_info: str | None = None
    # The From of reports sent by mail; an identity of one of the accounts (its DKIM
    # keys sign the report, which RFC 8460 section 3 requires).
    from_address: str | None = None
    # The "TLS-Report-Submitter" and the first part of the attachment's name; RFC 8460
    # 5.3 wants the From address's domain, the default.
    submitter: str | None = None
    # When (UTC, HH:MM) the day that just ended is reported. RFC 8460 4.1 asks for a
    # delay after midnight, so that receivers are not flooded at 00:00.
    send_at: str = "01:00"
    # A report POSTed to an https: address waits this long for the answer.
    http_timeout: Duration = 30.0
    # CA certificates (PEM) for the https: addresses; default: the system's store.
    https_ca_file: Path | None = None

    @field_validator("send_at")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        match = _TIME_OF_DAY.match(value.strip())
        if match is None:
            raise ValueError(f"{value!r} is not a time of day (UTC) such as 01:00")
        return f"{int(match.group(1)):02d}:{match.group(2)}"

    @field_validator("from_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else plain_address(value)

    @field_validator("submitter")
    @classmethod
    def _submitter(cls, value: str | None) -> str | None:
        return None if value is None else check_domain(value)

    @field_validator("organization_name", "contact_info")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\r" in value or "\n" in value):
            raise ValueError("must be one non-empty line")
        return value

    @model_validator(mode="after")
    def _complete(self) -> TLSReportingConfig:
        if not self.enabled:
            return self
        missing = [key for key in ("organization_name", "from_address")
                   if getattr(self, key) is None]
        if missing:
            raise ValueError(f"enabled: true needs {' and '.join(missing)} (what the "
                             "reports say they are from)")
        assert self.from_address is not None
        domain = self.from_address.rpartition("@")[2]
        if self.submitter is not None and self.submitter != domain:
            raise ValueError(f"submitter: {self.submitter} is not the domain of "
                             f"from_address ({domain}); RFC 8460 5.3 wants them the same: "
                             "leave submitter out or make them agree")
        return self

    @property
    def submitter_domain(self) -> str:
        """The submitter in force: `submitter`, else from_address's domain."""
        if self.submitter is not None:
            return self.submitter
        return (self.from_address or "").rpartition("@")[2]

    @property
    def send_at_minutes(self) -> int:
        """send_at as minutes after midnight UTC."""
        hours, _, minutes = self.send_at.partition(":")
        return int(hours) * 60 + int(minutes)


def _covers(identity: str, address: str) -> bool:
    # policy.identities.covers, which this layer cannot import; a plus-label of an
    # address identity is not needed for the relay's own From address.
    domain = address.rpartition("@")[2]
    if "@" in identity:
        return identity.lower() == address.lower()
    return domain == identity or domain.endswith("." + identity)


def sending_account(settings: TLSReportingConfig,
                    accounts: Mapping[str, AccountConfig]) -> str | None:
    """The account whose identities cover from_address (reports are sent as it)."""
    address = settings.from_address
    if address is None:
        return None
    for name in sorted(accounts):
        if any(_covers(identity, address) for identity in accounts[name].identities):
            return name
    return None


def cross_problems(settings: TLSReportingConfig,
                   accounts: Mapping[str, AccountConfig]) -> list[str]:
    """What the rest of the file must hold for reports to be sent."""
    if not settings.enabled or sending_account(settings, accounts) is not None:
        return []
    return [f"delivery.tls_reporting.from_address: {settings.from_address} is not an "
            "identity of any account; reports are sent through the relay as an account: "
            "add the address or its domain (with DKIM keys under identities) to an "
            "account's identities"]


__all__ = ["TLSReportingConfig", "cross_problems", "sending_account"]
