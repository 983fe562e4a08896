"""The configuration in force, as the components read it: a source that SIGHUP swaps.

A component is given a `ConfigSource` when it is built and reads `.config` each time it
needs a setting, so a reload (the daemon's holder, smtprelay.app.live) has nothing to
push into it. What a component makes from the configuration that is too costly to make
on every use (a lookup table, client settings, a policy) it keeps in a `Derived`, made
again on the first use after a swap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from smtprelay.config.schema import Config

T = TypeVar("T")


class ConfigSource(Protocol):
    """Where the configuration in force is read: the daemon's holder, or a fixed one."""

    @property
    def config(self) -> Config: ...


class Derived(Generic[T]):
    """A value made from the configuration in force: made now, and again on the first
    call after the source's configuration was swapped.

    The configuration is compared by identity (a loaded Config is frozen; a reload
    swaps in another object), so nothing has to tell the component of a reload.
    """

    def __init__(self, source: ConfigSource, make: Callable[[Config], T]) -> None:
        self._source = source
        self._make = make
        self._made_from = source.config
        self._value = make(self._made_from)

    def __call__(self) -> T:
        config = self._source.config
        if config is not self._made_from:
            # Made before it is remembered: a make() that raises keeps the old value
            # and is tried again at the next call.
            value = self._make(config)
            self._value, self._made_from = value, config
        return self._value
