"""A node's own state as operators act on it (drain, when it is safe to stop), and the
nodes of its cluster, for the CLI (over the control socket) and the admin API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


def safe_to_stop(status: dict[str, Any]) -> bool:
    """A draining node with nothing left to lose: no SMTP connection, nothing queued
    or being delivered."""
    return bool(status["queue_pending"] == 0 and status["connections"] == 0
                and status.get("delivering", 0) == 0)


@dataclass(frozen=True, slots=True)
class NodeControl:
    """What the admin API asks of the daemon it runs in (app.daemon)."""

    name: str  # store.node
    status: Callable[[], Awaitable[dict[str, Any]]]
    drain: Callable[[], Awaitable[dict[str, Any]]]
    undrain: Callable[[], Awaitable[dict[str, Any]]]
    # Every node of the cluster from the heartbeats (blocking; state.nodes.nodes),
    # None on a relay that is one node (store: sqlite).
    cluster: Callable[[], list[dict[str, Any]]] | None = None
