"""Traffic shaping over real sockets: the transport, real DNS, MX hosts on 127.0.0.N.

Providers are recognised by the MX host names the test DNS server gives out, either
the real providers' names (aspmx.l.google.com, answered by the test server) or test
names mapped to providers by an operator's rules file (mx.p1.test). Each test checks
both sides: what the transport reports and what the MX hosts saw.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtprelay.config import Config
from smtprelay.delivery.client import ClientSettings
from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.retry import delay_type
from smtprelay.delivery.shaping import SENDING_DEFERRAL, Shaper
from smtprelay.delivery.smtp_transport import SMTPTransport
from tests.dnsserver import ANSWER_TIMEOUT, TestDNSServer
from tests.sinks import RawHandler, Script, SinkFactory, SmtpSink
from tests.support import free_port
from tests.unit.delivery.kit import BODY, SENDER, RawSMTP, live, make_config, queued, sample
from tests.unit.provider_replies import GMAIL_RATE, YAHOO_DEFERRED


@dataclass
class Holder:
    """The configuration in force, swapped by the test as a SIGHUP would."""

    config: Config
    smarthost_password: str | None = None


def txn(*recipients: str) -> Transaction:
    return Transaction(mail_from=SENDER, recipients=recipients, data=BODY)


class SourcedTransport(SMTPTransport):
    """A transport whose sessions count as leaving from `source` (as delivery.ip_pools
    will make them), so that two of them sharing a Shaper are two source addresses."""

    source: str | None = None

    def _source(self, settings: ClientSettings) -> str | None:
        return self.source


@dataclass
class Counting:
    """A raw SMTP host that counts its open sessions (the provider's view)."""

    raw: RawSMTP = field(default_factory=RawSMTP)
    open: int = 0
    max_open: int = 0

    def handler(self) -> RawHandler:
        inner = self.raw.handler()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.open += 1
            self.max_open = max(self.max_open, self.open)
            try:
                await inner(reader, writer)
            finally:
                self.open -= 1

        return serve

    def per_session(self) -> list[int]:
        counts: dict[int, int] = {}
        for session, *_ in self.raw.messages:
            counts[session] = counts.get(session, 0) + 1
        return list(counts.values())


class World:
    def __init__(self, tmp_path: Path, dns: TestDNSServer, sinks: SinkFactory) -> None:
        self.tmp_path = tmp_path
        self.dns = dns
        self.sinks = sinks
        self.port = free_port()
        self.transports: list[SMTPTransport] = []
        self._last = 1
        # Real providers' MX names, answered by the test server like any other.
        for zone in ("google.com", "yahoodns.net"):
            dns.add_zone(zone)

    def _address(self) -> str:
        self._last += 1
        return f"127.0.0.{self._last}"

    def domain(self, domain: str, mx_host: str) -> None:
        self.dns.add(domain, "MX", f"10 {mx_host}.", ttl=60)

    def host(self, name: str, script: Script | None = None) -> SmtpSink:
        address = self._address()
        self.dns.add(name, "A", address, ttl=60)
        return self.sinks.smtp(script, host=address, port=self.port)

    def counting_host(self, *names: str) -> Counting:
        """One host known by every name in `names` (several MX names, one machine)."""
        address = self._address()
        for name in names:
            self.dns.add(name, "A", address, ttl=60)
        counting = Counting()
        self.sinks.raw(counting.handler(), host=address, port=self.port)
        return counting

    def rules(self, providers: dict[str, Any]) -> Path:
        path = self.tmp_path / "providers.yaml"
        path.write_text(yaml.safe_dump({"providers": providers}))
        return path

    def transport(self, *, rules: dict[str, Any] | None = None, source: str | None = None,
                  shaper: Shaper | None = None, **delivery: Any) -> SourcedTransport:
        if rules is not None:
            delivery["shaping"] = {"rules_file": str(self.rules(rules))}
        config = make_config(self.tmp_path, port=self.port, **delivery)
        resolver = MXResolver([self.dns.nameserver], timeout=ANSWER_TIMEOUT, rng=random.Random(1))
        pool = ConnectionPool(max_connections=config.delivery.max_connections,
                              max_per_domain=config.delivery.max_connections_per_domain,
                              idle_timeout=30.0)
        transport = SourcedTransport(live(config), resolver, pool, shaper=shaper)
        transport.source = source
        self.transports.append(transport)
        return transport


@pytest.fixture
async def world(tmp_path: Path, dns_server: TestDNSServer,
                sinks: SinkFactory) -> AsyncIterator[World]:
    w = World(tmp_path, dns_server, sinks)
    yield w
    for transport in w.transports:
        await transport.close()


async def send(transport: SMTPTransport, domain: str, local: str = "a") -> RecipientResult:
    address = f"{local}@{domain}"
    [result] = await transport.deliver(queued(address), domain, txn(address))
    return result


async def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


P1_P2 = {
    "p1": {"mx": ["*.p1.test"], "limits": {"connections": 5},
           "rules": [{"name": "p1-rate", "match": r"4\.7\.28", "action": "suspend",
                      "duration": "1h"}]},
    "p2": {"mx": ["*.p2.test"], "limits": {"connections": 5}},
}


# ------------------------------------------------------------------ reply rules

async def test_a_rate_limit_reply_suspends_the_provider_for_that_source_only(
        world: World) -> None:
    angry = world.host("mx1.p1.test", Script(data_reply="421 4.7.28 unusual rate, slow down"))
    calm = world.host("mx2.p1.test")
    other = world.host("mx.p2.test")
    world.domain("angry.example", "mx1.p1.test")
    world.domain("calm.example", "mx2.p1.test")
    world.domain("other.example", "mx.p2.test")
    shaper = Shaper()
    first = world.transport(rules=P1_P2, source="192.0.2.1", shaper=shaper)
    second = world.transport(rules=P1_P2, source="192.0.2.2", shaper=shaper)
    hits = sample("smtprelay_shaping_rule_hits_total",
                  {"provider": "p1", "rule": "p1-rate", "action": "suspend"})

    tripped = await send(first, "angry.example")
    assert tripped.verdict is Verdict.DEFERRED and tripped.code == 421
    assert tripped.retry_after is not None and tripped.retry_after > 3500  # waits it out
    assert sample("smtprelay_provider_suspended",
                  {"provider": "p1", "source": "192.0.2.1"}) == 1
    assert sample("smtprelay_shaping_rule_hits_total",
                  {"provider": "p1", "rule": "p1-rate", "action": "suspend"}) == hits + 1

    # Another p1 domain from the same source: deferred at once, nothing sent.
    held = await send(first, "calm.example")
    assert held.verdict is Verdict.DEFERRED and held.code is None
    assert held.delay_type == SENDING_DEFERRAL and delay_type(held) == "SendingDeferral"
    assert "p1" in held.diagnostic and "p1-rate" in held.diagnostic
    assert held.retry_after is not None and held.retry_after > 3500
    assert calm.received == [] and calm.sessions == []
    # The same provider from the other source address, and another provider: flowing.
    assert (await send(second, "calm.example")).verdict is Verdict.DELIVERED
    assert (await send(first, "other.example")).verdict is Verdict.DELIVERED
    assert len(calm.received) == 1 and len(other.received) == 1
    assert sample("smtprelay_provider_suspended",
                  {"provider": "p1", "source": "192.0.2.2"}) == 0
    assert len(angry.transactions) == 1 and angry.received == []  # the one that tripped it


async def test_gmails_own_rate_limit_reply_trips_the_bundled_rule(world: World) -> None:
    """The bundled table, no operator file: Gmail's MX names and its multi-line reply."""
    script = Script(data_reply=GMAIL_RATE.replace("\r\n", "\n").split("\n")[-1])
    world.host("gmail-smtp-in.l.google.com", script)
    world.host("alt1.gmail-smtp-in.l.google.com")
    world.domain("gmail.example", "gmail-smtp-in.l.google.com")
    world.domain("workspace.example", "alt1.gmail-smtp-in.l.google.com")
    transport = world.transport()
    first = await send(transport, "gmail.example")
    assert first.verdict is Verdict.DEFERRED and first.code == 421
    held = await send(transport, "workspace.example")  # a Workspace domain: Google too
    assert held.delay_type == SENDING_DEFERRAL and "gmail-rate-limited" in held.diagnostic


async def test_a_greeting_refusal_trips_the_rule_and_spares_the_next_host(
        world: World) -> None:
    """Yahoo's [TSS04] as the greeting: the provider is suspended, so its other MX host
    is not tried (it would say the same)."""
    refusing = world._address()
    world.dns.add("mta5.am0.yahoodns.net", "A", refusing, ttl=60)
    world.sinks.greeting(YAHOO_DEFERRED, host=refusing, port=world.port)
    second = world.host("mta6.am0.yahoodns.net")
    world.dns.add("yahoo.example", "MX", "1 mta5.am0.yahoodns.net.", ttl=60)
    world.dns.add("yahoo.example", "MX", "5 mta6.am0.yahoodns.net.", ttl=60)
    transport = world.transport()
    result = await send(transport, "yahoo.example")
    assert result.verdict is Verdict.DEFERRED and "TSS04" in result.diagnostic
    assert result.retry_after is not None and result.retry_after > 3500
    assert second.sessions == []


async def test_the_end_of_a_suspension_is_logged_and_the_provider_flows_again(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    rules = {"p1": {"mx": ["*.p1.test"], "rules": [
        # Long enough for the next send to find it suspended on a loaded machine.
        {"match": "slow down", "action": "suspend", "duration": "2s"}]}}
    sink = world.host("mx.p1.test", Script(data_reply="451 4.7.0 slow down"))
    world.domain("p1.example", "mx.p1.test")
    transport = world.transport(rules=rules)
    caplog.set_level("INFO", logger="smtprelay.delivery")
    await send(transport, "p1.example")
    assert (await send(transport, "p1.example")).delay_type == SENDING_DEFERRAL
    await wait_for(lambda: "suspension ended" in caplog.text, timeout=15)
    started = [r for r in caplog.records if "suspended for" in r.getMessage()]
    assert len(started) == 1 and "provider=p1 source=default" in started[0].getMessage()
    assert sample("smtprelay_provider_suspended", {"provider": "p1", "source": "default"}) == 0
    sink.script.data_reply = None
    assert (await send(transport, "p1.example")).verdict is Verdict.DELIVERED


async def test_a_throttle_halves_the_providers_connections(world: World) -> None:
    rules = {"p1": {"mx": ["*.p1.test"], "limits": {"connections": 4}, "rules": [
        {"match": "too busy", "action": "throttle", "factor": 0.5, "duration": "1h"}]}}
    world.host("mx.p1.test", Script(rcpt_replies={"busy@p1.example": "451 4.7.0 too busy"}))
    world.domain("p1.example", "mx.p1.test")
    transport = world.transport(rules=rules)
    [lane] = [transport.shaper.lane("mx.p1.test", None)]
    assert lane is not None and lane.connections == 4
    result = await send(transport, "p1.example", "busy")
    assert result.verdict is Verdict.DEFERRED and result.delay_type is None  # the reply's
    assert lane.connections == 2
    assert sample("smtprelay_provider_throttle_factor",
                  {"provider": "p1", "source": "default"}) == 0.5


async def test_the_snapshot_shows_each_lanes_suspension_throttle_and_limits(
        world: World) -> None:
    """What the console shows: per provider and source address the limits in force, the
    suspension or throttle, how long it has left and the reply that started it."""
    rules = {"p1": {"mx": ["*.p1.test"], "limits": {"connections": 4, "per_minute": 100},
                    "rules": [{"name": "p1-busy", "match": "too busy", "action": "throttle",
                               "factor": 0.5, "duration": "1h"},
                              {"name": "p1-rate", "match": r"4\.7\.28",
                               "action": "suspend", "duration": "30m"}]}}
    world.host("mx1.p1.test", Script(data_reply="451 4.7.0 too busy"))
    world.host("mx2.p1.test", Script(data_reply="421 4.7.28 unusual rate"))
    world.domain("busy.example", "mx1.p1.test")
    world.domain("rate.example", "mx2.p1.test")
    now = [1000.0]
    shaper = Shaper(clock=lambda: now[0])
    limits = {"rate.example": {"per_hour": 50}}
    first = world.transport(rules=rules, source="192.0.2.1", shaper=shaper,
                            destinations=limits)
    second = world.transport(rules=rules, source="192.0.2.2", shaper=shaper,
                             destinations=limits)
    assert shaper.snapshot().lanes == ()  # nothing sent yet
    await send(first, "busy.example")
    await send(second, "rate.example")

    state = shaper.snapshot()
    assert state.enabled and state.table.get("p1") is not None and "google" in state.table
    assert dict(state.destinations)["rate.example"].per_hour == 50
    throttled, suspended = state.lanes
    assert (throttled.provider, throttled.source, throttled.factor) == ("p1", "192.0.2.1", 0.5)
    assert (throttled.connections, throttled.per_minute, throttled.per_hour) == (2, 50, None)
    assert throttled.limits.connections == 4 and throttled.limits.per_minute == 100
    assert throttled.throttled_for == 3600 and throttled.suspended_for == 0
    assert throttled.throttled_by == "rule p1-busy: smtp; 451 4.7.0 too busy"
    assert (suspended.source, suspended.suspended_for, suspended.factor) == (
        "192.0.2.2", 1800, 1.0)
    assert suspended.suspended_by == "rule p1-rate: smtp; 421 4.7.28 unusual rate"
    assert (suspended.connections, suspended.throttled_for, suspended.throttled_by) == (
        4, 0, "")

    now[0] += 1000  # the suspension has 800 s left; past its end, it is over
    assert shaper.snapshot().lanes[1].suspended_for == 800
    now[0] += 800
    over = shaper.snapshot().lanes[1]
    assert (over.suspended_for, over.suspended_by) == (0, "")


# ------------------------------------------------------------------ provider limits

async def test_provider_connections_and_messages_per_connection_hold(world: World) -> None:
    """Four domains on one provider, 24 messages at once: never more than 2 sessions
    open at the provider's host (idle ones included), at most 3 messages each."""
    names = [f"mx{i}.p1.test" for i in range(4)]
    host = world.counting_host(*names)
    for i, name in enumerate(names):
        world.domain(f"d{i}.example", name)
    rules = {"p1": {"mx": ["*.p1.test"],
                    "limits": {"connections": 2, "messages_per_connection": 3}}}
    transport = world.transport(rules=rules)
    results = await asyncio.gather(*(send(transport, f"d{n % 4}.example", f"u{n}")
                                     for n in range(24)))
    assert {r.verdict for r in results} == {Verdict.DELIVERED}
    assert len(host.raw.messages) == 24
    assert host.max_open <= 2
    assert max(host.per_session()) <= 3
    assert host.raw.sessions >= 8  # 24 messages, 3 a session


async def test_provider_rate_per_minute_defers_the_rest_until_there_is_room(
        world: World) -> None:
    host = world.counting_host("mx.p1.test", "mx.p2.test")
    world.domain("p1.example", "mx.p1.test")
    world.domain("p2.example", "mx.p2.test")
    rules = {"p1": {"mx": ["*.p1.test"], "limits": {"per_minute": 5}},
             "p2": {"mx": ["*.p2.test"]}}
    transport = world.transport(rules=rules)
    results = [await send(transport, "p1.example", f"u{n}") for n in range(8)]
    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 5 + [Verdict.DEFERRED] * 3
    for held in results[5:]:
        assert held.delay_type == SENDING_DEFERRAL and "rate limit of p1" in held.diagnostic
        assert held.retry_after is not None and 55 <= held.retry_after <= 80
    assert len(host.raw.messages) == 5
    # Another provider is not held back by p1's count.
    assert (await send(transport, "p2.example")).verdict is Verdict.DELIVERED


# ------------------------------------------------------------------ per-domain limits

async def test_domain_rate_per_second_spaces_messages(world: World) -> None:
    """8 messages at once, 4 a second: the second four wait (under MAX_WAIT) for the
    next second, and none is deferred."""
    stamps: list[float] = []
    host = world.counting_host("mx.slow.test")
    world.domain("slow.example", "mx.slow.test")
    transport = world.transport(destinations={"slow.example": {"per_second": 4}})
    started = time.monotonic()

    async def timed(n: int) -> RecipientResult:
        result = await send(transport, "slow.example", f"u{n}")
        stamps.append(time.monotonic() - started)
        return result

    waits = sample("smtprelay_shaping_waits_total")
    results = await asyncio.gather(*(timed(n) for n in range(8)))
    assert {r.verdict for r in results} == {Verdict.DELIVERED}
    stamps.sort()
    # The first booking was after `started`: the fifth cannot be done within a second.
    assert stamps[4] >= 1.0
    assert sample("smtprelay_shaping_waits_total") == waits + 4
    assert len(host.raw.messages) == 8


async def test_domain_rate_per_minute_and_connections(world: World) -> None:
    host = world.counting_host("mx.slow.test")
    world.domain("slow.example", "mx.slow.test")
    world.domain("other.example", "mx.slow.test")
    transport = world.transport(
        destinations={"slow.example": {"per_minute": 3, "max_connections": 1}})
    results = await asyncio.gather(*(send(transport, "slow.example", f"u{n}")
                                     for n in range(5)))
    verdicts = sorted(r.verdict.value for r in results)
    assert verdicts == ["deferred"] * 2 + ["delivered"] * 3
    held = [r for r in results if r.verdict is Verdict.DEFERRED]
    assert all("delivery.destinations.slow.example" in r.diagnostic
               and r.delay_type == SENDING_DEFERRAL for r in held)
    assert host.max_open == 1  # max_connections: 1, one session in use at a time
    # The limit is slow.example's: another domain on the same host is not held back.
    assert (await send(transport, "other.example")).verdict is Verdict.DELIVERED


# ------------------------------------------------------------------ operator file

async def test_operator_file_overrides_a_bundled_provider_and_adds_a_rule(
        world: World) -> None:
    """Google's connections lowered to 1 (its messages_per_connection kept), a new rule
    on Google, and Google's bundled rules still after it."""
    rules = {"google": {"limits": {"connections": 1}, "rules": [
        {"name": "mine", "match": "quota for the day", "action": "suspend",
         "duration": "2h"}]}}
    host = world.counting_host("aspmx.l.google.com", "alt2.aspmx.l.google.com")
    world.domain("a.example", "aspmx.l.google.com")
    world.domain("b.example", "alt2.aspmx.l.google.com")
    transport = world.transport(rules=rules)
    google = transport.shaper.table.get("google")
    assert google is not None
    assert google.limits.connections == 1 and google.limits.messages_per_connection == 100
    assert [r.name for r in google.rules][:2] == ["mine", "gmail-rate-limited"]
    results = await asyncio.gather(*(send(transport, f"{'ab'[n % 2]}.example", f"u{n}")
                                     for n in range(6)))
    assert {r.verdict for r in results} == {Verdict.DELIVERED}
    assert host.max_open == 1
    # The added rule trips on its text, from another Google host.
    world.host("alt3.aspmx.l.google.com",
               Script(data_reply="452 4.5.3 you have used your quota for the day"))
    world.domain("c.example", "alt3.aspmx.l.google.com")
    assert (await send(transport, "c.example")).code == 452
    held = await send(transport, "a.example")
    assert held.delay_type == SENDING_DEFERRAL and "rule mine" in held.diagnostic
    assert held.retry_after is not None and held.retry_after > 7000


async def test_a_reload_reads_the_rules_file_again_and_a_bad_one_changes_nothing(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A file broken after the start (preflight refuses it at start and reload; this is
    the race where it breaks in between): the transport keeps the table it had."""
    holder = Holder(make_config(world.tmp_path, port=world.port, shaping={
        "rules_file": str(world.rules(P1_P2))}))
    resolver = MXResolver([world.dns.nameserver], timeout=ANSWER_TIMEOUT)
    transport = SMTPTransport(holder, resolver, ConnectionPool(max_connections=5,
                                                               max_per_domain=5))
    world.transports.append(transport)
    assert "p1" in transport.shaper.table
    (world.tmp_path / "providers.yaml").write_text("providers: {p1: {mx: 3}}\n")
    holder.config = make_config(world.tmp_path, port=world.port, max_concurrent=7, shaping={
        "rules_file": str(world.tmp_path / "providers.yaml")})
    world.domain("p1.example", "mx.p1.test")
    world.host("mx.p1.test")
    await send(transport, "p1.example")  # a delivery reads the configuration in force
    await wait_for(lambda: "keeping the provider table in force" in caplog.text)
    assert "p1" in transport.shaper.table
    # Mended, and reloaded again: the new table is in force, what was counted stays.
    lane = transport.shaper.lane("mx.p1.test", None)
    world.rules({"p1": {"mx": ["*.p1.test"], "limits": {"connections": 3}}})
    holder.config = make_config(world.tmp_path, port=world.port, max_concurrent=8, shaping={
        "rules_file": str(world.tmp_path / "providers.yaml")})
    await send(transport, "p1.example")
    await wait_for(lambda: lane is not None and lane.connections == 3)
    assert transport.shaper.lane("mx.p1.test", None) is lane

