"""IP pools: the source addresses outbound mail leaves from, each with its own HELO name,
and the automatic warm-up of each address (`ip_pools.<name>`).

A configuration set names its pool (`configuration_sets.<set>.delivery.ip_pool`), or
the relay-wide `delivery.ip_pool` applies. The warm-up's daily caps themselves are
computed by smtprelay.delivery.warmup; this module only says what may be configured.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from smtprelay.config.values import Model, check_domain, repeated

# SES's dedicated IP pool names: letters, digits, "_" and "-", up to 64.
POOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_WARMUP_DAYS = 365


class PoolAddressConfig(Model):
    # An address of this host (it must be configured on an interface, or binding
    # fails and the mail waits); IPv4 or IPv6, written in its usual form.
    address: str
    # The name sent in EHLO from this address: its PTR record should name it and its
    # A/AAAA record should hold the address (forward-confirmed reverse DNS), which
    # `smtprelay dns-check` verifies.
    helo: str
    # An address already warm (moved from another relay or another pool): no caps.
    warm: bool = False

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None

    @field_validator("helo")
    @classmethod
    def _helo(cls, value: str) -> str:
        return check_domain(value)


class WarmupStep(Model):
    # A day of a custom schedule: from this day of the address's warm-up (1 is the
    # first) until the next step's day, at most `total` recipients a day from the
    # address, and at most `per_provider` to any one mailbox provider (default:
    # total x per_provider_share).
    day: int = Field(ge=1, le=MAX_WARMUP_DAYS)
    total: int = Field(ge=1)
    per_provider: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _provider_within_total(self) -> WarmupStep:
        if self.per_provider is not None and self.per_provider > self.total:
            raise ValueError(f"per_provider ({self.per_provider}) is above total "
                             f"({self.total}) on day {self.day}")
        return self


class WarmupConfig(Model):
    # standard: smtprelay's ramp over `days` (docs/ip-pools.md has the table);
    # custom: the steps in `table`; none: no warm-up, every address sends freely.
    schedule: Literal["standard", "custom", "none"] = "standard"
    # How long the warm-up lasts: from day days + 1 the address is warm (DONE).
    days: int = Field(default=30, ge=1, le=MAX_WARMUP_DAYS)
    # custom: the steps, by day; the first must be day 1.
    table: list[WarmupStep] = Field(default_factory=list)
    # The part of a day's total one mailbox provider (Gmail, Microsoft, Yahoo...)
    # may take, where a step names no per_provider.
    per_provider_share: float = Field(default=0.4, gt=0, le=1)

    @model_validator(mode="after")
    def _table(self) -> WarmupConfig:
        if self.schedule != "custom":
            if self.table:
                raise ValueError("table is only read with schedule: custom")
            return self
        if not self.table:
            raise ValueError("schedule custom needs table: a list of {day, total, "
                             "per_provider} steps starting at day 1")
        days = [step.day for step in self.table]
        if days[0] != 1:
            raise ValueError(f"table: the first step must be day 1, not day {days[0]}")
        if days != sorted(set(days)):
            raise ValueError("table: the steps' days must be increasing, each day once")
        if days[-1] > self.days:
            raise ValueError(f"table: a step on day {days[-1]} is after the warm-up's last "
                             f"day (days: {self.days}); raise days or drop the step")
        return self


class IpPoolConfig(Model):
    # The pool's source addresses; each transaction leaves from one of them.
    addresses: list[PoolAddressConfig] = Field(min_length=1)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    # What happens to mail over an address's daily cap while it warms up. warmed: it
    # leaves from another address of the pool with room, warm ones included; wait:
    # only another address still in warm-up with room may take it, else it waits
    # (deferred, retried later; never bounced for the cap) so the warm addresses'
    # volume stays as it was.
    overflow: Literal["warmed", "wait"] = "warmed"

    @field_validator("addresses")
    @classmethod
    def _unique(cls, values: list[PoolAddressConfig]) -> list[PoolAddressConfig]:
        for address in repeated(v.address for v in values):
            raise ValueError(f"the address {address} is listed twice")
        return values


def check_pool_names(names: list[str]) -> list[str]:
    """Problems with the pools' names (each one a line naming its key)."""
    return [f"ip_pools.{name}: a pool name is 1-64 letters, digits, '_' and '-'"
            for name in names if not POOL_NAME.match(name)]
