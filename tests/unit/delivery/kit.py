"""Shared pieces for the delivery unit tests: clocks, messages, configs, a raw SMTP peer.

Everything here drives the real code: configurations go through the pydantic model
(`smtprelay.config.Config`), messages are the spool's own dataclasses, and `RawSMTP`
is a small hand-written SMTP server (run by tests/sinks.py's RawSink) for the
misbehaviour aiosmtpd will not script: a session that dies when the next MAIL
arrives, a reply that takes a while, a final "." that is never answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from smtprelay.app.live import Live
from smtprelay.config import Config
from smtprelay.delivery.smtp_transport import smarthost_password
from smtprelay.spool.model import (
    MessageAttributes,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
)
from tests.dnsserver import TestDNSServer
from tests.sinks import RawHandler
from tests.support import base_config

SENDER = "app@example.com"
BODY = (b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: kit\r\n"
        b"Message-ID: <kit@example.com>\r\n\r\nHello.\r\n")


class MonotonicClock:
    """A clock that stands still unless moved, on time.monotonic()'s scale (it starts at
    time.monotonic(); Connection.opened_at is taken from time.monotonic())."""

    def __init__(self) -> None:
        self.base = time.monotonic()
        self.offset = 0.0

    def __call__(self) -> float:
        return self.base + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class WallClock:
    """A wall clock that only moves when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def set(self, now: float) -> None:
        self.now = now


def mx(dns: TestDNSServer, domain: str, *hosts: tuple[int, str, str | None]) -> None:
    """MX records for `domain`: (preference, host name, address or None for no A record)."""
    for preference, host, address in hosts:
        dns.add(domain, "MX", f"{preference} {host}.", ttl=60)
        if address is not None:
            dns.add(host, "A", address, ttl=60)


def live(config: Config) -> Live:
    """The holder of `config` and its smarthost password, as the daemon's start reads it
    (SmarthostPasswordError when it cannot be)."""
    return Live(config, smarthost_password=smarthost_password(config))


def make_config(tmp_path: Path, *, configuration_sets: dict[str, Any] | None = None,
                **delivery: Any) -> Config:
    """A validated Config with the given `delivery` section (fast timeouts by default)."""
    settings: dict[str, Any] = {"mode": "mx", "connect_timeout": "2s",
                                "command_timeout": "2s", **delivery}
    overrides: dict[str, Any] = {"delivery": settings}
    if configuration_sets is not None:
        overrides["configuration_sets"] = configuration_sets
    return Config.model_validate(base_config(tmp_path / "var", **overrides))


def queued(*recipients: str, configuration_set: str | None = None,
           mail_from: str = SENDER, received_at: float | None = None) -> QueuedMessage:
    """A spooled message as the scheduler hands it to a transport."""
    at = time.time() if received_at is None else received_at
    rcpts = recipients or ("someone@example.net",)
    return QueuedMessage(
        message_id="0000000000aa-00000000000000bb", account="acme",
        configuration_set=configuration_set, mail_from=mail_from, received_at=at,
        size=len(BODY), client_ip="127.0.0.1", client_helo="client.test", auth_user="u",
        listener="submission", smtputf8=False, body_8bitmime=False,
        attrs=MessageAttributes(),
        recipients=tuple(
            QueuedRecipient(index=i, address=a, state=RecipientState.SENDING, attempts=0,
                            next_attempt=at, last_attempt=None, last_reply=None)
            for i, a in enumerate(rcpts)))


async def wait_until(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """A metric's current value from the default registry (0.0 when absent)."""
    value = REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def has_sample(name: str, labels: dict[str, str]) -> bool:
    return REGISTRY.get_sample_value(name, labels) is not None


# ----------------------------------------------------------------- raw SMTP peer

@dataclass
class RawSMTP:
    """A minimal SMTP server (no PIPELINING, no STARTTLS) with per-session misbehaviour.

    `drop_on_mail_after=n`: a session that already carried n transactions closes the
    connection, without a reply, when the next MAIL arrives (it "died while idle").
    `drop_in_body_after=n`: likewise, but only after the 354 and part of the body.
    `stall_final_after=n`: the final "." of transaction n+1 is never answered.
    `close_after=n`: the server hangs up right after answering transaction n.
    `final_delay`: seconds before the reply to the final ".".
    `gather=n`: the final "." is answered once n transactions wait for it (or after 1 s).
    """

    greeting: str = "220 raw.sink.test ESMTP"
    final_delay: float = 0.0
    drop_on_mail_after: int | None = None
    drop_in_body_after: int | None = None
    stall_final_after: int | None = None
    close_after: int | None = None
    gather: int = 0
    sessions: int = 0
    messages: list[tuple[int, str, tuple[str, ...], bytes]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    helo_names: list[str] = field(default_factory=list)
    in_data: int = 0
    max_in_data: int = 0
    stalled: int = 0

    def handler(self) -> RawHandler:
        return self._serve

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.sessions
        self.sessions += 1
        log: list[str] = []
        self.commands.append(log)
        done = 0  # transactions finished on this session

        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await reply(self.greeting)
        mail_from = ""
        rcpts: list[str] = []
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\r\n")
            verb = line[:4].upper()
            log.append(verb)
            if verb in ("EHLO", "HELO"):
                self.helo_names.append(line[5:].strip())
                await reply("250-raw.sink.test\r\n250 ENHANCEDSTATUSCODES")
            elif verb == "MAIL":
                if self.drop_on_mail_after is not None and done >= self.drop_on_mail_after:
                    writer.transport.abort()
                    return
                mail_from = line.partition(":")[2].strip().strip("<>")
                rcpts = []
                await reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(line.partition(":")[2].strip().strip("<>"))
                await reply("250 2.1.5 Ok")
            elif verb == "DATA":
                await reply("354 go ahead")
                if self.drop_in_body_after is not None and done >= self.drop_in_body_after:
                    await reader.read(16)
                    writer.transport.abort()
                    return
                body = b""
                while True:
                    chunk = await reader.readline()
                    if not chunk:
                        return
                    if chunk == b".\r\n":
                        break
                    body += chunk
                self.in_data += 1
                self.max_in_data = max(self.max_in_data, self.in_data)
                try:
                    if self.stall_final_after is not None and done >= self.stall_final_after:
                        self.stalled += 1
                        await asyncio.Event().wait()  # until the sink loop shuts down
                    if self.final_delay:
                        await asyncio.sleep(self.final_delay)
                    for _ in range(100):
                        if self.max_in_data >= self.gather:
                            break
                        await asyncio.sleep(0.01)
                finally:
                    self.in_data -= 1
                self.messages.append((index, mail_from, tuple(rcpts), body))
                done += 1
                await reply(f"250 2.0.0 Ok: queued as {len(self.messages)}")
                if self.close_after is not None and done >= self.close_after:
                    writer.close()
                    return
            elif verb == "RSET":
                await reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                await reply("221 2.0.0 Bye")
                return
            else:
                await reply("502 5.5.2 Error: command not recognized")
