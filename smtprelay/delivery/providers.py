"""Which mailbox provider a destination belongs to, by its MX host name, and how to send to it.

Big providers host millions of domains behind a few MX names (every Google Workspace
domain's MX is some *.google.com host), and they judge a sender by everything it sends
them, whatever the recipient domain. Warm-up caps and traffic shaping therefore count
per provider, and the provider is read off the MX host the message goes to.

The bundled table (providers.yaml beside this module) names the providers, their
limits per source address and the reply rules that throttle or suspend them; an
operator's file (delivery.shaping.rules_file) may override a provider by name or add
one. Hosts that match no pattern belong to no provider: they are limited per recipient
domain only. docs/shaping.md is the operator's description of the format.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smtprelay.config import Duration

BUNDLED = "providers.yaml"
LIMIT_KEYS = ("connections", "messages_per_connection", "per_minute", "per_hour")


class ProviderTableError(ValueError):
    """A provider table is malformed; the message names the file and the entry."""


# ------------------------------------------------------------------ the file's form

class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Entry):
    """Per source address: what one of our addresses may do to the provider at once.
    None: no limit (an operator's file lifts a bundled limit with null)."""

    connections: int | None = Field(default=None, ge=1)  # sessions open, in use or idle
    messages_per_connection: int | None = Field(default=None, ge=1)
    per_minute: int | None = Field(default=None, ge=1)
    per_hour: int | None = Field(default=None, ge=1)


class _RuleEntry(_Entry):
    name: str | None = None
    match: str
    code: int | None = Field(default=None, ge=200, le=599)
    status: str | None = Field(default=None, pattern=r"^[245](\.\d{1,3}){0,2}$")
    action: Literal["suspend", "throttle", "ignore"]
    duration: Duration | None = None
    factor: float = Field(default=0.5, gt=0, lt=1)

    @field_validator("match")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _duration_needed(self) -> _RuleEntry:
        if self.action != "ignore" and self.duration is None:
            raise ValueError(f"action {self.action} needs a duration such as 30m or 1h")
        return self


class _ProviderEntry(_Entry):
    description: str | None = None
    mx: list[str] | None = None
    limits: Limits | None = None
    rules: list[_RuleEntry] = Field(default_factory=list)

    @field_validator("mx")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not all(isinstance(p, str) and p for p in value):
            raise ValueError("expected a list of host name patterns such as '*.google.com'")
        return value


# ------------------------------------------------------------------ the table

@dataclass(frozen=True, slots=True)
class Rule:
    """A reply rule: a reply whose diagnostic ("smtp; 421 4.7.28 ...") matches throttles
    or suspends the provider for the source address the reply came to."""

    name: str
    pattern: re.Pattern[str]
    action: Literal["suspend", "throttle", "ignore"]
    duration: float = 0.0
    factor: float = 0.5  # throttle: the limits are multiplied by it
    code: int | None = None
    status: str | None = None  # a prefix of the enhanced status code: "4.7." or "4.7.28"
    origin: str = BUNDLED  # the file that said it, for messages

    def matches(self, code: int | None, status: str, diagnostic: str) -> bool:
        if self.code is not None and code != self.code:
            return False
        if self.status is not None and not _status_prefix(status, self.status):
            return False
        return self.pattern.search(diagnostic) is not None


def _status_prefix(status: str, wanted: str) -> bool:
    return status == wanted or status.startswith(wanted.rstrip(".") + ".")


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    description: str
    mx: tuple[str, ...]  # fnmatch patterns, lower case
    limits: Limits = field(default_factory=Limits)
    rules: tuple[Rule, ...] = ()
    # What the file said, so an override replaces only that: "description", "mx" and
    # the limit names.
    given: frozenset[str] = frozenset()
    origin: str = BUNDLED

    def overridden_by(self, mine: Provider) -> Provider:
        """This provider with an operator's entry of the same name on top: what it
        gives replaces, its rules come first."""
        limits = self.limits.model_copy(update={
            key: getattr(mine.limits, key) for key in LIMIT_KEYS if key in mine.given})
        return Provider(
            name=self.name,
            description=mine.description if "description" in mine.given else self.description,
            mx=mine.mx if "mx" in mine.given else self.mx,
            limits=limits, rules=(*mine.rules, *self.rules),
            given=self.given | mine.given, origin=mine.origin)


class Providers:
    """A provider table: first match wins, in the table's order."""

    def __init__(self, providers: Iterable[Provider]) -> None:
        self.providers = tuple(providers)
        self._by_name = {p.name: p for p in self.providers}
        # One regular expression per provider, compiled once: classification runs for
        # every transaction.
        self._patterns = [(p.name, re.compile("|".join(
            f"(?:{fnmatch.translate(pattern)})" for pattern in p.mx) or "(?!)"))
            for p in self.providers]
        self._cache: dict[str, str | None] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> Provider | None:
        return self._by_name.get(name)

    def provider_of(self, mx_host: str) -> str | None:
        """The provider whose MX patterns match this host name, or None."""
        host = mx_host.rstrip(".").lower()
        try:
            return self._cache[host]
        except KeyError:
            pass
        found = next((name for name, pattern in self._patterns if pattern.match(host)), None)
        if len(self._cache) > 10_000:
            self._cache.clear()  # bounded: MX host names are few, but never trust that
        self._cache[host] = found
        return found

    def merged(self, overrides: Providers) -> Providers:
        """This table with `overrides`' providers laid over same-named ones in place
        (what the override gives replaces, its rules are tried first) and the new ones
        tried first (an operator's pattern beats a bundled one)."""
        replaced = {p.name: p for p in overrides.providers}
        new = [p for p in overrides.providers if p.name not in self._by_name]
        return Providers([*new, *(p.overridden_by(replaced[p.name]) if p.name in replaced
                                  else p for p in self.providers)])

    def check(self) -> None:
        """Refuse what only the merged table shows: a throttle rule with nothing to lower."""
        for provider in self.providers:
            lowerable = [k for k in ("connections", "per_minute", "per_hour")
                         if getattr(provider.limits, k) is not None]
            for rule in provider.rules:
                if rule.action == "throttle" and not lowerable:
                    raise ProviderTableError(
                        f"{rule.origin}: providers.{provider.name} rule {rule.name}: action "
                        "throttle lowers the provider's limits, and it has none; give it "
                        "limits (connections, per_minute or per_hour) or use suspend")


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def parse_providers(data: Any, source: str) -> Providers:
    """A provider table from its YAML form ({"providers": {name: {mx: [...], limits: {...},
    rules: [...]}}}); `source` names the file in errors."""
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), Mapping):
        raise ProviderTableError(f"{source}: expected a mapping with a 'providers' mapping")
    unknown = sorted(str(k) for k in data if k != "providers")
    if unknown:
        raise ProviderTableError(f"{source}: unknown top-level key {unknown[0]!r}; the file "
                                 "holds one mapping, 'providers'")
    providers = []
    for name, entry in data["providers"].items():
        where = f"{source}: providers.{name}"
        if not isinstance(entry, Mapping):
            raise ProviderTableError(f"{where}: expected a mapping with an 'mx' list")
        try:
            parsed = _ProviderEntry.model_validate(entry)
        except ValidationError as exc:
            first = exc.errors()[0]
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ProviderTableError(f"{where}{_where(first['loc'])}: {message}") from None
        rules = tuple(
            Rule(name=r.name or f"{name}.rules[{index}]",
                 pattern=re.compile(r.match, re.IGNORECASE), action=r.action,
                 duration=r.duration or 0.0, factor=r.factor, code=r.code, status=r.status,
                 origin=source)
            for index, r in enumerate(parsed.rules))
        limits = parsed.limits or Limits()
        given: set[str] = {key for key in ("description", "mx")
                           if key in parsed.model_fields_set}
        given |= limits.model_fields_set if parsed.limits is not None else set()
        providers.append(Provider(
            name=str(name), description=parsed.description or "",
            mx=tuple(p.rstrip(".").lower() for p in parsed.mx or ()),
            limits=limits, rules=rules, given=frozenset(given), origin=source))
    return Providers(providers)


def load_table(rules_file: Path | None) -> Providers:
    """The bundled table with the operator's file laid over it (None: the bundled one).
    ProviderTableError names the file and the entry; blocking (reads the file)."""
    if rules_file is None:
        return bundled()
    try:
        data = yaml.safe_load(rules_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProviderTableError(f"{rules_file}: cannot read it: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ProviderTableError(f"{rules_file}: not valid YAML{at}: "
                                 f"{getattr(exc, 'problem', None) or exc}") from None
    table = bundled().merged(parse_providers(data, str(rules_file)))
    table.check()
    return table


@lru_cache(maxsize=1)
def bundled() -> Providers:
    """The table shipped with smtprelay (read once)."""
    text = resources.files(__package__).joinpath(BUNDLED).read_text(encoding="utf-8")
    table = parse_providers(yaml.safe_load(text), BUNDLED)
    table.check()
    return table
