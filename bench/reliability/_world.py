"""What the reliability scripts share: a relay process that delivers, through a DNS server
of our own, to an SMTP sink that outlives it; and the reconciliation of what the relay
acknowledged against what the sink received.

The DNS server (tests/dnsserver.py) and the sink (tests/sinks.py, aiosmtpd) run in
threads of the script, so killing the relay leaves them, and their record, untouched.
example.net's MX is the sink on 127.0.0.2 (tests/load.py sends to someone@example.net).
"""

from __future__ import annotations

import bisect
import re
import sqlite3
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtprelay.infra.tls import ensure_self_signed, server_context
from smtprelay.spool.store import count_pending, open_for_cli
from tests.dnsserver import TestDNSServer
from tests.sinks import MX_NAME, Received, SinkFactory, SmtpSink
from tests.support import free_port

SINK_ADDRESS = "127.0.0.2"
_SUBJECT = re.compile(rb"^Subject: (\S+)\r$", re.MULTILINE)
# The relay's Received field names its queue id: "with ESMTPSA id <id>".
_RELAY_ID = re.compile(rb"\bwith ESMTPS?A? id ([0-9a-f]{12}-[0-9a-f]{16})")


class SinkWorld:
    """A DNS server and one SMTP sink as example.net's MX; `delivery` is the relay's
    delivery section that sends there, retrying within a second or two."""

    def __init__(self, directory: Path) -> None:
        ensure_self_signed(directory / "sink-cert.pem", directory / "sink-key.pem", MX_NAME)
        self.dns = TestDNSServer().start()
        self.sinks = SinkFactory(server_context(directory / "sink-cert.pem",
                                                directory / "sink-key.pem"))
        self.sink: SmtpSink = self.sinks.smtp(host=SINK_ADDRESS, port=free_port())
        self.dns.add("example.net", "MX", "10 mx.example.net.", ttl=60)
        self.dns.add("mx.example.net", "A", SINK_ADDRESS, ttl=60)
        # Where each cycle begins, as indexes into sink.sessions: a copy belongs to the
        # cycle of the connection it came on. (By the time the sink records a copy the
        # relay that sent it may be dead, and the next one started: a relay killed just
        # after its final dot is read by the sink a moment later. A connection that got
        # as far as a final dot was accepted while its relay lived.)
        self.marks: list[int] = []

    @property
    def delivery(self) -> dict[str, Any]:
        return {"mode": "mx", "port": self.sink.port,
                "dns": {"nameservers": [self.dns.nameserver], "timeout": "2s"},
                "retry": {"first": "1s", "max_interval": "2s", "max_lifetime": "1h"},
                "connect_timeout": "3s", "command_timeout": "10s", "idle_timeout": "2s",
                # The load's sender has no MX here: a DSN could go nowhere.
                "dsn": {"enabled": False}}

    def mark(self) -> None:
        """Call while the relay is down: connections from now on are the next cycle's."""
        self.marks.append(len(self.sink.sessions))

    def cycle_of(self, txn: Received) -> int:
        return bisect.bisect_right(self.marks, txn.session) - 1

    def stop(self) -> None:
        self.sinks.stop()
        self.dns.stop()


def temp_root(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def pending(spool_path: Path) -> int:
    """Messages with a recipient still to be delivered, read as the CLI reads them."""
    conn = open_for_cli(spool_path)
    try:
        return count_pending(conn)
    finally:
        conn.close()


def wait_drained(spool_path: Path, timeout: float) -> tuple[bool, float]:
    """Poll until no message waits for delivery; (drained, seconds it took)."""
    started = time.monotonic()
    while True:
        try:
            left = pending(spool_path)
        except sqlite3.OperationalError:
            left = -1  # the relay holds a write lock this instant: ask again
        waited = time.monotonic() - started
        if left == 0 or waited > timeout:
            return left == 0, waited
        time.sleep(0.25)


@dataclass
class Reconciliation:
    acknowledged: int
    delivered: int  # acknowledged and received at least once
    lost: list[str]  # acknowledged, never received (message ids)
    duplicated: dict[str, list[int]]  # token -> the cycle of each copy, when > 1 copy
    # Copies with no kill between them: token -> (cycle, sink session) of each copy.
    unexplained_duplicates: dict[str, list[tuple[int, int]]]
    wrong_id: list[str]  # the copy's Received names another queue id than the 250 did
    unacknowledged_delivered: int  # in doubt (no reply read) yet delivered: allowed
    refused_delivered: list[str]  # refused (4xx/5xx), yet delivered: a phantom
    strangers: int  # copies whose token no attempt made

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexplained_duplicates or self.wrong_id
                    or self.refused_delivered or self.strangers)


def reconcile(world: SinkWorld, acked: dict[str, str], attempted: set[str],
              refused: set[str]) -> Reconciliation:
    """Every acknowledged message (id -> token) against the sink's copies."""
    copies: dict[str, list[tuple[int, bytes | None, int]]] = defaultdict(list)
    strangers = 0
    transactions: list[Received] = list(world.sink.transactions)
    for txn in transactions:
        if not txn.accepted:
            continue
        subject = _SUBJECT.search(txn.data)
        if subject is None:
            strangers += 1
            continue
        relay_id = _RELAY_ID.search(txn.data)
        copies[subject.group(1).decode()].append(
            (world.cycle_of(txn), relay_id.group(1) if relay_id else None, txn.session))
    counts = Counter({token: len(found) for token, found in copies.items()})
    lost = [mid for mid, token in acked.items() if counts[token] == 0]
    duplicated = {token: [cycle for cycle, _, _ in found] for token, found in copies.items()
                  if len(found) > 1}
    # A second copy is explained by a kill between the sink's 250 and the relay's record
    # of it: the copies are then in different cycles (each cycle ends with a kill).
    unexplained = {token: [(cycle, session) for cycle, _, session in copies[token]]
                   for token, cycles in duplicated.items() if len(set(cycles)) < len(cycles)}
    wrong_id = [mid for mid, token in acked.items()
                if any(relay_id != mid.encode() for _, relay_id, _ in copies.get(token, []))]
    acked_tokens = set(acked.values())
    return Reconciliation(
        acknowledged=len(acked),
        delivered=sum(1 for token in acked_tokens if counts[token] > 0),
        lost=lost,
        duplicated=duplicated,
        unexplained_duplicates=unexplained,
        wrong_id=wrong_id,
        unacknowledged_delivered=sum(1 for token in copies
                                     if token in attempted and token not in acked_tokens
                                     and token not in refused),
        refused_delivered=sorted(token for token in copies if token in refused),
        strangers=strangers + sum(1 for token in copies if token not in attempted),
    )
