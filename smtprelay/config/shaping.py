"""Traffic shaping: limits per mailbox provider and per destination domain (docs/shaping.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from smtprelay.config.values import Model


class ShapingConfig(Model):
    # Limits per mailbox provider and source address, and the reply rules that throttle
    # or suspend a provider (the table bundled in smtprelay/delivery/providers.yaml).
    enabled: bool = True
    # An operator's providers file, in the bundled table's format: its providers
    # override bundled ones of the same name (what they give replaces, their rules
    # are tried first) or are added, tried before the bundled ones.
    rules_file: Path | None = None


class DestinationConfig(Model):
    # Sessions in use at once to this recipient domain (instead of
    # delivery.max_connections_per_domain).
    max_connections: int | None = Field(default=None, ge=1)
    # Messages started to this domain over any sliding second, minute and hour.
    per_second: int | None = Field(default=None, ge=1)
    per_minute: int | None = Field(default=None, ge=1)
    per_hour: int | None = Field(default=None, ge=1)
    # TLS towards this domain's MX hosts, as delivery.tls: it only tightens the
    # relay's and the set's policy (a bank that must never get mail in clear:
    # require_verified). Default: null (delivery.tls and the set's).
    tls: Literal["opportunistic", "require", "require_encrypted",
                 "require_verified"] | None = None
