"""Pausing and resuming configuration sets and accounts, one set of rules for both.

A pause refuses new mail (554 5.7.1) until an operator lifts it; queued mail still
goes. Only what the configuration has can be paused; a pause outlives its set or
account leaving the configuration, so such names are still listed and resumable.

The calls work on a `PauseBook`: the CLI's `PauseStore`, or the daemon's
`PausedSets`, which also changes its in-memory copy at once. Blocking (SQLite).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from smtprelay.config import Config
from smtprelay.operations.errors import (
    AlreadyPaused,
    NotPaused,
    TooLong,
    configured_names,
    require_configured,
)
from smtprelay.policy import pauses
from smtprelay.policy.pauses import MAX_DETAIL, Pause, Scope


class PauseBook(Protocol):
    def all(self, scope: Scope = "set") -> Mapping[str, Pause]: ...

    def pause(self, name: str, *, reason: pauses.Reason = "manual", detail: str = "",
              by: str, scope: Scope = "set") -> Pause: ...

    def resume(self, name: str, *, scope: Scope = "set") -> Pause | None: ...


@dataclass(frozen=True, slots=True)
class Target:
    """A configuration set or an account, and whether it takes new mail."""

    scope: Scope
    name: str
    configured: bool  # False: paused, and no longer in the configuration
    pause: Pause | None
    # A set's sending_enabled in the configuration (None: an account, or not configured).
    sending_enabled: bool | None = None
    publishes_events: bool = False

    @property
    def accepting(self) -> bool:
        """Not paused, and for a set, enabled in the configuration."""
        if self.pause is not None:
            return False
        return self.scope == "account" or bool(self.sending_enabled)

    def as_json(self) -> dict[str, Any]:
        """What the CLI and the admin API both show of it; each adds its own fields."""
        paused = self.pause.as_json() if self.pause is not None else None
        if self.scope == "account":
            return {"name": self.name, "paused": paused}
        return {"name": self.name, "configured": self.configured,
                "sending_enabled": self.sending_enabled, "paused": paused,
                "accepting": self.accepting}


@dataclass(frozen=True, slots=True)
class Resumed:
    target: Target  # as it is now
    lifted: Pause


def target(config: Config, scope: Scope, name: str, pause: Pause | None) -> Target:
    if scope == "account":
        return Target(scope, name, name in config.accounts, pause)
    settings = config.configuration_sets.get(name)
    return Target(scope, name, settings is not None, pause,
                  sending_enabled=settings.sending_enabled if settings is not None else None,
                  publishes_events=settings.publishes if settings is not None else False)


def listing(book: PauseBook, config: Config, scope: Scope) -> list[Target]:
    """Every configured set (or account), and those still paused that it no longer has."""
    paused = book.all(scope)
    return [target(config, scope, name, paused.get(name))
            for name in sorted(set(configured_names(config, scope)) | set(paused))]


def find(book: PauseBook, config: Config, scope: Scope, name: str) -> Target:
    """One set or account: configured, or paused; NotConfigured otherwise."""
    paused = book.all(scope)
    if name not in paused:
        require_configured(config, scope, name)
    return target(config, scope, name, paused.get(name))


def pause(book: PauseBook, config: Config, scope: Scope, name: str, *, detail: str,
          by: str) -> Target:
    """Pause a configured set or account, with the operator's `detail` and who (`by`)."""
    require_configured(config, scope, name)
    if len(detail) > MAX_DETAIL:
        raise TooLong("reason", MAX_DETAIL)
    try:
        done = book.pause(name, detail=detail, by=by, scope=scope)
    except pauses.AlreadyPaused as exc:
        raise AlreadyPaused(exc.pause) from None
    return target(config, scope, name, done)


def resume(book: PauseBook, config: Config, scope: Scope, name: str) -> Resumed:
    """Lift a pause, manual or the reputation guard's."""
    find(book, config, scope, name)
    lifted = book.resume(name, scope=scope)
    now = target(config, scope, name, None)
    if lifted is None:
        raise NotPaused(scope, name, disabled=now.sending_enabled is False)
    return Resumed(now, lifted)
