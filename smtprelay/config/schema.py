"""The whole file: `Config`, its sections, the checks that span sections (names used
twice, references between sections) and the paths derived from data_dir.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from smtprelay.config.accounts import AccountConfig, IdentityConfig
from smtprelay.config.api import APIConfig
from smtprelay.config.delivery import DeliveryConfig
from smtprelay.config.ip_pools import IpPoolConfig, check_pool_names
from smtprelay.config.lists import ContactListConfig, check_list_names
from smtprelay.config.server import (
    AuthConfig,
    HTTPConfig,
    LimitsConfig,
    ListenerConfig,
    LoggingConfig,
    ServerConfig,
    StoreConfig,
    TLSConfig,
    TrackingDomainConfig,
)
from smtprelay.config.sets import (
    ConfigurationSetConfig,
    FeedbackConfig,
    ReputationConfig,
    SimulatorConfig,
)
from smtprelay.config.tls_reporting import cross_problems as tls_reporting_problems
from smtprelay.config.values import Model, check_domain, check_tracking_host, repeated


class Config(Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    tls: TLSConfig = Field(default_factory=TLSConfig)
    listeners: list[ListenerConfig] = Field(min_length=1)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    accounts: dict[str, AccountConfig] = Field(default_factory=dict)
    identities: dict[str, IdentityConfig] = Field(default_factory=dict)
    configuration_sets: dict[str, ConfigurationSetConfig] = Field(default_factory=dict)
    contact_lists: dict[str, ContactListConfig] = Field(default_factory=dict)
    simulator: SimulatorConfig = Field(default_factory=SimulatorConfig)
    reputation: ReputationConfig = Field(default_factory=ReputationConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    tracking_domains: dict[str, TrackingDomainConfig] = Field(default_factory=dict)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    ip_pools: dict[str, IpPoolConfig] = Field(default_factory=dict)
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    api: APIConfig = Field(default_factory=APIConfig)
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

    @field_validator("contact_lists", mode="before")
    @classmethod
    def _list_names(cls, value: Any) -> Any:
        return check_list_names(value)

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
            authorization = identity.sending_authorization
            for account_name in authorization.accounts if authorization else ():
                if account_name not in self.accounts:
                    problems.append(
                        f"identities.{domain}.sending_authorization.accounts: {account_name!r} "
                        "is not an account; list it under accounts or remove it here")
        for set_name, settings in self.configuration_sets.items():
            hosts = [("tracking.domain", settings.tracking.domain)]
            if settings.unsubscribe.one_click:
                if settings.unsubscribe_domain is None:
                    problems.append(
                        f"configuration_sets.{set_name}.unsubscribe: one_click needs a host "
                        "for the unsubscribe URL: set unsubscribe.domain or tracking.domain")
                hosts.append(("unsubscribe.domain", settings.unsubscribe.domain))
            for destination in settings.event_destinations:
                if (destination.type == "webhook" and destination.format == "notification"
                        and self.http.public_url is None):
                    problems.append(
                        f"configuration_sets.{set_name}.event_destinations[{destination.name}]"
                        ": format notification on a webhook starts with SNS's "
                        "SubscriptionConfirmation, whose SubscribeURL the receiver GETs from "
                        "this relay's HTTP listener: set http.public_url to the base URL it "
                        "can reach the listener at (such as https://relay.example.com)")
            for key, host in hosts:
                if host is not None and host not in self.tracking_domains:
                    problems.append(
                        f"configuration_sets.{set_name}.{key}: {host} is not listed under "
                        "tracking_domains; add it there (with its certificate for https)")
        owned: dict[str, str] = {}
        for list_name, contact_list in self.contact_lists.items():
            # SES: "Only one contact list is allowed per AWS account." A list's topics
            # are the account's subscription choices; a second list would be a second,
            # separate set of them for the same people.
            first = owned.setdefault(contact_list.account, list_name)
            if first != list_name:
                problems.append(
                    f"contact_lists.{list_name}.account: account {contact_list.account!r} "
                    f"already has contact list {first!r} (contact_lists.{first}); an "
                    "account has one contact list, as in SES: make this list's topics "
                    f"topics of {first!r} (up to 20) and remove contact_lists.{list_name}, "
                    "or give it another account")
            if contact_list.account not in self.accounts:
                problems.append(
                    f"contact_lists.{list_name}.account: {contact_list.account!r} is not an "
                    "account; list it under accounts or name the account that sends to "
                    "this list")
            if contact_list.unsubscribe_domain not in self.tracking_domains:
                problems.append(
                    f"contact_lists.{list_name}.unsubscribe_domain: "
                    f"{contact_list.unsubscribe_domain} is not listed under tracking_domains; "
                    "add it there (with its certificate for https)")
        if not any(listener.role == "feedback" for listener in self.listeners):
            mailtos = [f"configuration_sets.{name}.unsubscribe.mailto"
                       for name, settings in self.configuration_sets.items()
                       if settings.unsubscribe.mailto and "@" not in str(
                           settings.unsubscribe.mailto)]
            mailtos += [f"contact_lists.{name}.mailto"
                        for name, contact_list in self.contact_lists.items()
                        if contact_list.mailto and "@" not in str(contact_list.mailto)]
            problems.extend(
                f"{key}: mail to the signed unsubscribe addresses is taken by the feedback "
                "listener, and no listener has role: feedback; add one (port 25, the MX of "
                "the mailto domain) or set mailto: null" for key in mailtos)
        for api in ("sesv2", "sesv1"):
            if getattr(self.api, api) and not (self.http.listen or self.http.tls_listen):
                problems.append(f"api.{api}: the API is served on the HTTP listeners, and "
                                "http.listen and http.tls_listen are both empty; give one "
                                "an address or turn the API off")
        for name in repeated(listener.name for listener in self.listeners):
            problems.append(f"listeners: the name {name!r} is used twice")
        for account_name, account in self.accounts.items():
            default_set = account.default_configuration_set
            if default_set is not None and default_set not in self.configuration_sets:
                problems.append(
                    f"accounts.{account_name}.default_configuration_set: {default_set!r} is "
                    "not defined under configuration_sets"
                )
        for set_name, settings in self.configuration_sets.items():
            for account_name in settings.accounts or ():
                if account_name not in self.accounts:
                    problems.append(
                        f"configuration_sets.{set_name}.accounts: {account_name!r} is not an "
                        "account; list it under accounts or remove it here")
        for account_name, account in self.accounts.items():
            default_set = account.default_configuration_set
            if default_set is not None and default_set in self.configuration_sets \
                    and not self.may_use_set(account_name, default_set):
                problems.append(
                    f"accounts.{account_name}.default_configuration_set: {default_set!r} "
                    f"does not list {account_name!r} in its accounts; add it there")
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
        problems.extend(tls_reporting_problems(self.delivery.tls_reporting, self.accounts))
        problems.extend(self._pool_problems())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _pool_problems(self) -> list[str]:
        problems = check_pool_names(list(self.ip_pools))
        named = [("delivery.ip_pool", self.delivery.ip_pool)] + [
            (f"configuration_sets.{name}.delivery.ip_pool", settings.delivery.ip_pool)
            for name, settings in self.configuration_sets.items()]
        for key, pool_name in named:
            if pool_name is not None and pool_name not in self.ip_pools:
                problems.append(f"{key}: {pool_name!r} is not defined under ip_pools; define the "
                                "pool there or name one of " + (
                                    ", ".join(sorted(self.ip_pools)) or "(none defined)"))
        owner: dict[str, str] = {}
        for name, pool in self.ip_pools.items():
            for entry in pool.addresses:
                first = owner.setdefault(entry.address, name)
                if first != name:
                    problems.append(
                        f"ip_pools.{name}.addresses: {entry.address} is already in pool "
                        f"{first!r}; an address warms up once, so it belongs to one pool")
        if self.ip_pools and self.delivery.mode == "smarthost":
            problems.append("ip_pools: pools choose the source address towards MX hosts; "
                            "delivery.mode is smarthost, where the smarthost picks them. "
                            "Remove ip_pools or use mode mx")
        return problems

    # Paths derived from data_dir, kept here so every module agrees on the layout.
    def may_use_set(self, account: str, set_name: str) -> bool:
        """Whether `account` may send with configuration set `set_name` (tenant
        isolation: configuration_sets.<name>.accounts / shared)."""
        settings = self.configuration_sets.get(set_name)
        if settings is None:
            return False
        if settings.shared:
            return True
        if settings.accounts is not None:
            return account in settings.accounts
        owner = self.accounts.get(account)
        return owner is not None and owner.default_configuration_set == set_name

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
    def api_key_path(self) -> Path:
        """The key that encrypts the API keys' secrets (api.key_file)."""
        return self.api.key_file or self.server.data_dir / "api-keys.key"

    @property
    def capture_dir(self) -> Path:
        return self.server.data_dir / "captured"

    @property
    def cert_path(self) -> Path:
        return self.tls.cert_file or self.server.data_dir / "tls" / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.tls.key_file or self.server.data_dir / "tls" / "key.pem"
