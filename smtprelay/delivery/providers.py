"""Which mailbox provider a destination belongs to, by its MX host name.

Big providers host millions of domains behind a few MX names (every Google Workspace
domain's MX is some *.google.com host), and they judge a sender by everything it sends
them, whatever the recipient domain. Warm-up caps and traffic shaping therefore count
per provider, and the provider is read off the MX host the message goes to.

The bundled table (providers.yaml beside this module) names the providers; an
operator's file may override a provider by name or add one. Hosts that match no
pattern belong to no provider: they are limited per recipient domain only.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

BUNDLED = "providers.yaml"


class ProviderTableError(ValueError):
    """A provider table is malformed; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    description: str
    mx: tuple[str, ...]  # fnmatch patterns, lower case


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
        """This table with `overrides`' providers replacing same-named ones in place
        and the new ones tried first (an operator's pattern beats a bundled one)."""
        replaced = {p.name: p for p in overrides.providers}
        new = [p for p in overrides.providers if p.name not in self._by_name]
        return Providers([*new, *(replaced.get(p.name, p) for p in self.providers)])


def parse_providers(data: Any, source: str) -> Providers:
    """A provider table from its YAML form ({"providers": {name: {mx: [...]}}})."""
    if not isinstance(data, Mapping) or not isinstance(data.get("providers"), Mapping):
        raise ProviderTableError(f"{source}: expected a mapping with a 'providers' mapping")
    providers = []
    for name, entry in data["providers"].items():
        where = f"{source}: providers.{name}"
        if not isinstance(entry, Mapping):
            raise ProviderTableError(f"{where}: expected a mapping with an 'mx' list")
        mx = entry.get("mx", [])
        if not isinstance(mx, list) or not all(isinstance(p, str) and p for p in mx):
            raise ProviderTableError(f"{where}.mx: expected a list of host name patterns "
                                     "such as '*.google.com'")
        providers.append(Provider(name=str(name), description=str(entry.get("description", "")),
                                  mx=tuple(p.rstrip(".").lower() for p in mx)))
    return Providers(providers)


@lru_cache(maxsize=1)
def bundled() -> Providers:
    """The table shipped with smtprelay (read once)."""
    text = resources.files(__package__).joinpath(BUNDLED).read_text(encoding="utf-8")
    return parse_providers(yaml.safe_load(text), BUNDLED)
