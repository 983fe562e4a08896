"""A small Internet on loopback for delivery tests: DNS, MX hosts and the relay.

`World` gives a relay in mx mode whose resolver is a real DNS server (tests.dnsserver)
and whose remote port is shared by every MX host, each on its own 127.0.0.N address
(the relay has one `delivery.port`, as it would have 25 on the Internet). Mail is
submitted over STARTTLS + AUTH like any client would, and the spool is read with a
connection of its own, as the CLI does.
"""

from __future__ import annotations

import contextlib
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from smtprelay.config import load_config
from smtprelay.spool.model import Outcome, QueuedMessage
from smtprelay.spool.store import get_message, get_outcomes, list_messages, open_for_cli
from tests.dnsserver import TestDNSServer
from tests.sinks import RawHandler, RawSink, Script, SinkFactory, SmtpSink
from tests.support import (
    Credential,
    RunningRelay,
    base_config,
    client_context,
    free_port,
    message,
    write_config,
)

T = TypeVar("T")

# Fast retries so a test sees a deferral turn into a delivery within seconds.
FAST_DELIVERY: dict[str, Any] = {
    "retry": {"first": "1s", "max_interval": "2s", "max_lifetime": "1h"},
    "connect_timeout": "3s",
    "command_timeout": "3s",
    "idle_timeout": "2s",
}


def wait_for(check: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


class World:
    def __init__(self, tmp_path: Path, dns: TestDNSServer, sinks: SinkFactory) -> None:
        self.tmp_path = tmp_path
        self.dns = dns
        self.sinks = sinks
        self.port = free_port()
        self.relay: RunningRelay | None = None
        self._cred: Credential | None = None
        self._next_host = 2

    # ------------------------------------------------------------------- the net

    def address(self) -> str:
        """A fresh loopback address for one more MX host."""
        address = f"127.0.0.{self._next_host}"
        self._next_host += 1
        return address

    def mx(self, domain: str, *hosts: tuple[int, str, str | None]) -> None:
        """MX records for `domain`: (preference, host name, address or None for no A)."""
        for preference, host, address in hosts:
            self.dns.add(domain, "MX", f"{preference} {host}.", ttl=60)
            if address is not None:
                self.dns.add(host, "A", address, ttl=60)

    def smtp_host(self, domain: str, script: Script | None = None, *, preference: int = 10,
                  **options: Any) -> SmtpSink:
        """A new MX host for `domain` on its own address, running an SMTP sink."""
        address = self.address()
        sink = self.sinks.smtp(script, host=address, port=self.port, **options)
        self.mx(domain, (preference, f"mx{address.rsplit('.', 1)[1]}.{domain}", address))
        return sink

    def raw_host(self, domain: str, handler: RawHandler, *, preference: int = 10) -> RawSink:
        address = self.address()
        sink = self.sinks.raw(handler, host=address, port=self.port)
        self.mx(domain, (preference, f"mx{address.rsplit('.', 1)[1]}.{domain}", address))
        return sink

    # ------------------------------------------------------------------- the relay

    def config(self, *, top: dict[str, Any] | None = None, **delivery: Any) -> Path:
        """Write the relay's config: mx mode on this world's DNS and port, `delivery`
        keys on top, and `top` for other top-level sections."""
        settings = {"mode": "mx", "port": self.port,
                    "dns": {"nameservers": [self.dns.nameserver], "timeout": "2s"},
                    **FAST_DELIVERY, **delivery}
        return write_config(self.tmp_path / "smtprelay.yaml",
                            base_config(self.tmp_path / "var", delivery=settings, **(top or {})))

    def start(self, *, top: dict[str, Any] | None = None, **delivery: Any) -> RunningRelay:
        path = self.config(top=top, **delivery)
        self.relay = RunningRelay(load_config(path).config).start()
        return self.relay

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None

    def submit(self, recipients: list[str], *, sender: str = "app@example.com",
               data: bytes | None = None) -> str:
        assert self.relay is not None
        if self._cred is None:
            self._cred = self.relay.credential("acme")
        with smtplib.SMTP("127.0.0.1", self.relay.submission_port, timeout=10) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(self._cred.username, self._cred.password)
            smtp.mail(sender)
            for rcpt in recipients:
                code, text = smtp.rcpt(rcpt)
                assert code == 250, (rcpt, code, text)
            code, text = smtp.data(data or message(subject="delivery test", sender=sender))
        assert code == 250, text
        return text.decode().split()[-1]

    # ------------------------------------------------------------------- the spool

    def _read(self, fn: Callable[[Any], T]) -> T:
        assert self.relay is not None
        conn = open_for_cli(self.relay.config.spool_path)
        try:
            return fn(conn)
        finally:
            conn.close()

    def message(self, message_id: str) -> QueuedMessage:
        found = self._read(lambda conn: get_message(conn, message_id))
        assert found is not None
        return found

    def states(self, message_id: str) -> dict[str, str]:
        return {r.address: r.state.value for r in self.message(message_id).recipients}

    def outcomes(self, message_id: str) -> list[Outcome]:
        return self._read(lambda conn: get_outcomes(conn, message_id))

    def messages(self) -> list[QueuedMessage]:
        return self._read(lambda conn: list_messages(conn))

    def wait_states(self, message_id: str, expected: dict[str, str],
                    timeout: float = 15.0) -> dict[str, str]:
        wait_for(lambda: self.states(message_id) == expected, timeout)
        return self.states(message_id)

    def wait_final(self, message_id: str, timeout: float = 15.0) -> dict[str, str]:
        def final() -> dict[str, str] | None:
            states = self.states(message_id)
            pending = {"queued", "deferred", "sending"}
            return None if pending & set(states.values()) else states
        wait_for(final, timeout)
        return self.states(message_id)


@contextlib.contextmanager
def world(tmp_path: Path, dns: TestDNSServer, sinks: SinkFactory) -> Iterator[World]:
    w = World(tmp_path, dns, sinks)
    try:
        yield w
    finally:
        w.stop()
