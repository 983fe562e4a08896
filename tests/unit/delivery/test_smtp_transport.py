"""SMTPTransport end to end on loopback: real DNS (tests/dnsserver.py), real MX hosts.

Every MX host is a sink (aiosmtpd, or RawSMTP where a session must misbehave) on its
own 127.0.0.N address and the one shared port (the transport has one delivery.port,
as it has 25 on the Internet); the resolver is smtprelay's MXResolver asking the test
DNS server. Results are checked on both sides: what the transport reports per
recipient, and what the hosts received (sessions, transactions, TLS, AUTH).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay.config import Config
from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.ip_pools import SourceChooser
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.smtp_transport import (
    MAX_HOSTS_TRIED,
    SmarthostPasswordError,
    SMTPTransport,
    smarthost_password,
)
from smtprelay.state.warmup import LocalWarmup
from tests.dnsserver import ANSWER_TIMEOUT, TestDNSServer
from tests.sinks import MX_NAME, RawSink, Script, SinkFactory, SmtpSink
from tests.support import base_config, free_port
from tests.unit.delivery.kit import (
    BODY,
    SENDER,
    RawSMTP,
    live,
    make_config,
    mx,
    queued,
    sample,
    wait_until,
)


def txn(*recipients: str, data: bytes = BODY) -> Transaction:
    return Transaction(mail_from=SENDER, recipients=recipients, data=data)


class Net:
    """MX hosts for test domains, and transports configured to reach them."""

    def __init__(self, tmp_path: Path, dns: TestDNSServer, sinks: SinkFactory) -> None:
        self.tmp_path = tmp_path
        self.dns = dns
        self.sinks = sinks
        self.port = free_port()
        self.transports: list[SMTPTransport] = []
        self.pools: list[ConnectionPool] = []
        self._last = 1

    def address(self) -> str:
        self._last += 1
        return f"127.0.0.{self._last}"

    def _name(self, domain: str, address: str) -> str:
        return f"mx{address.rsplit('.', 1)[1]}.{domain}"

    def smtp_host(self, domain: str, *, preference: int = 10, script: Script | None = None,
                  **options: Any) -> SmtpSink:
        address = self.address()
        sink = self.sinks.smtp(script, host=address, port=self.port, **options)
        mx(self.dns, domain, (preference, self._name(domain, address), address))
        return sink

    def raw_host(self, domain: str, raw: RawSMTP, *, preference: int = 10) -> RawSink:
        address = self.address()
        sink = self.sinks.raw(raw.handler(), host=address, port=self.port)
        mx(self.dns, domain, (preference, self._name(domain, address), address))
        return sink

    def greeting_host(self, domain: str, reply: str, *, preference: int = 10) -> RawSink:
        address = self.address()
        sink = self.sinks.greeting(reply, host=address, port=self.port)
        mx(self.dns, domain, (preference, self._name(domain, address), address))
        return sink

    def dead_host(self, domain: str, *, preference: int = 10) -> str:
        """An MX host whose address has nothing listening: connections are refused."""
        address = self.address()
        mx(self.dns, domain, (preference, self._name(domain, address), address))
        return address

    def transport(self, *, configuration_sets: dict[str, Any] | None = None,
                  **delivery: Any) -> SMTPTransport:
        settings: dict[str, Any] = {"port": self.port, **delivery}
        config = make_config(self.tmp_path, configuration_sets=configuration_sets,
                             **settings)
        resolver = MXResolver([self.dns.nameserver], timeout=ANSWER_TIMEOUT, rng=random.Random(1))
        pool = ConnectionPool(max_connections=config.delivery.max_connections,
                              max_per_domain=config.delivery.max_connections_per_domain,
                              idle_timeout=30.0)
        transport = SMTPTransport(live(config), resolver, pool)
        self.transports.append(transport)
        self.pools.append(pool)
        return transport


@pytest.fixture
async def net(tmp_path: Path, dns_server: TestDNSServer,
              sinks: SinkFactory) -> AsyncIterator[Net]:
    n = Net(tmp_path, dns_server, sinks)
    yield n
    for transport in n.transports:
        await transport.close()


def verdicts(results: list[RecipientResult]) -> list[Verdict]:
    return [r.verdict for r in results]


# ------------------------------------------------------------------ mx routing

async def test_mx_mode_delivers_to_the_domains_mx_host(net: Net) -> None:
    sink = net.smtp_host("a.test")
    other = net.smtp_host("b.test")
    transport = net.transport()
    results = await transport.deliver(queued("x@a.test", "y@a.test"), "a.test",
                                      txn("x@a.test", "y@a.test"))
    assert verdicts(results) == [Verdict.DELIVERED] * 2
    assert [r.recipient for r in results] == ["x@a.test", "y@a.test"]
    assert results[0].remote_mta == f"mx2.a.test [{sink.host}]"
    (got,) = sink.received
    assert got.rcpt_tos == ("x@a.test", "y@a.test")
    assert got.mail_from == SENDER
    assert got.data == BODY
    assert other.sessions == []


@pytest.mark.parametrize(("helo_name", "expected"), [("out.relay.test", "out.relay.test"),
                                                     (None, "relay.test")])
async def test_ehlo_sends_helo_name_else_server_hostname(net: Net, helo_name: str | None,
                                                         expected: str) -> None:
    raw = RawSMTP()
    net.raw_host("a.test", raw)
    options: dict[str, Any] = {"helo_name": helo_name} if helo_name else {}
    await net.transport(**options).deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert raw.helo_names == [expected]


async def test_lower_preference_is_tried_first(net: Net) -> None:
    backup = net.smtp_host("a.test", preference=20)
    primary = net.smtp_host("a.test", preference=10)
    results = await net.transport().deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert verdicts(results) == [Verdict.DELIVERED]
    assert len(primary.received) == 1
    assert backup.sessions == []


@pytest.mark.parametrize(("setup", "verdict", "status"), [
    ("nxdomain", Verdict.BOUNCED, "5.1.2"),
    ("null-mx", Verdict.BOUNCED, "5.1.10"),
    ("servfail", Verdict.DEFERRED, "4.4.3"),
])
async def test_dns_outcome_decides_without_connecting(net: Net, setup: str, verdict: Verdict,
                                                      status: str) -> None:
    if setup == "null-mx":
        net.dns.add("nomail.test", "MX", "0 .")
    elif setup == "servfail":
        net.dns.fail("nomail.test", "SERVFAIL")
    before = sample("smtprelay_outbound_connects_total", {"result": "failed"})
    results = await net.transport().deliver(queued("x@nomail.test", "y@nomail.test"),
                                            "nomail.test", txn("x@nomail.test",
                                                               "y@nomail.test"))
    assert verdicts(results) == [verdict] * 2
    assert {r.status for r in results} == {status}
    assert all(r.diagnostic.startswith("x-dns; ") and r.code is None for r in results)
    assert sample("smtprelay_outbound_connects_total", {"result": "failed"}) == before


# ------------------------------------------------------------------ failover

async def test_refused_first_mx_fails_over_to_the_next(net: Net) -> None:
    net.dead_host("a.test", preference=10)
    alive = net.smtp_host("a.test", preference=20)
    before = sample("smtprelay_outbound_connects_total", {"result": "failed"})
    results = await net.transport().deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert verdicts(results) == [Verdict.DELIVERED]
    assert len(alive.received) == 1
    assert sample("smtprelay_outbound_connects_total", {"result": "failed"}) == before + 1


async def test_421_and_554_greetings_are_skipped_for_the_next_host(net: Net) -> None:
    busy = net.greeting_host("a.test", "421 4.7.0 busy, go away", preference=10)
    hostile = net.greeting_host("a.test", "554 5.7.1 not you", preference=20)
    alive = net.smtp_host("a.test", preference=30)
    results = await net.transport().deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert verdicts(results) == [Verdict.DELIVERED]
    assert len(alive.received) == 1
    assert len(busy.sessions) == len(hostile.sessions) == 1


async def test_every_host_refusing_for_good_bounces_with_the_last_reply(net: Net) -> None:
    net.greeting_host("a.test", "554 5.7.1 first says no", preference=10)
    last = net.greeting_host("a.test", "554 5.7.1 second says no", preference=20)
    results = await net.transport().deliver(queued("x@a.test", "y@a.test"), "a.test",
                                            txn("x@a.test", "y@a.test"))
    assert verdicts(results) == [Verdict.BOUNCED] * 2
    assert results[0].code == 554
    assert results[0].status == "5.7.1"
    assert "second says no" in results[0].diagnostic
    assert results[0].remote_mta == f"mx{last.host.rsplit('.', 1)[1]}.a.test [{last.host}]"


async def test_any_temporary_failure_defers_with_the_last_temporary_error(net: Net) -> None:
    net.greeting_host("a.test", "421 4.3.2 first is busy", preference=10)
    second = net.greeting_host("a.test", "421 4.7.0 second: try again in 2 minutes",
                               preference=20)
    net.greeting_host("a.test", "554 5.7.1 third says no", preference=30)
    results = await net.transport().deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    (result,) = results
    assert result.verdict is Verdict.DEFERRED
    assert result.code == 421
    assert result.status == "4.7.0"
    assert "second: try again" in result.diagnostic
    assert result.retry_after == 120.0
    assert result.remote_mta is not None and second.host in result.remote_mta


async def test_refused_connections_only_defer_with_the_connect_error(net: Net) -> None:
    net.dead_host("a.test", preference=10)
    last = net.dead_host("a.test", preference=20)
    (result,) = await net.transport().deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DEFERRED
    assert result.code is None
    assert result.status == "4.4.1"
    assert f"[{last}]" in result.diagnostic


@pytest.mark.parametrize(("dead", "reached"), [(MAX_HOSTS_TRIED - 1, True),
                                               (MAX_HOSTS_TRIED, False)])
async def test_at_most_max_hosts_tried_per_attempt(net: Net, dead: int,
                                                   reached: bool) -> None:
    assert MAX_HOSTS_TRIED == 5
    for i in range(dead):
        net.dead_host("many.test", preference=10 + i)
    alive = net.smtp_host("many.test", preference=90)
    (result,) = await net.transport().deliver(queued("x@many.test"), "many.test",
                                              txn("x@many.test"))
    if reached:
        assert result.verdict is Verdict.DELIVERED
        assert len(alive.received) == 1
    else:
        assert result.verdict is Verdict.DEFERRED
        assert result.status == "4.4.1"
        assert alive.sessions == []


async def test_a_host_refusing_mid_transaction_is_not_left_for_another(net: Net) -> None:
    # Once a session is established the results are final for this attempt.
    first = net.smtp_host("a.test", preference=10,
                          rcpt_replies={"x@a.test": "550 5.1.1 no such user"})
    second = net.smtp_host("a.test", preference=20)
    (result,) = await net.transport().deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.BOUNCED
    assert result.status == "5.1.1"
    assert len(first.sessions) == 1
    assert second.sessions == []


# ------------------------------------------------------------------ TLS policy

TLS_SETS = {"strict": {"tls": "require"}, "relaxed": {"tls": "opportunistic"},
            "plain": {}}


@pytest.mark.parametrize(("relay_tls", "configuration_set", "sent"), [
    ("opportunistic", None, True),
    ("opportunistic", "plain", True),
    ("opportunistic", "relaxed", True),
    ("opportunistic", "strict", False),  # a set can make delivery stricter
    ("opportunistic", "no-such-set", True),
    ("require", None, False),
    ("require", "plain", False),
    ("require", "relaxed", False),  # ... never looser than delivery.tls
    ("require", "strict", False),
])
async def test_tls_policy_per_configuration_set_on_a_host_without_starttls(
        net: Net, relay_tls: str, configuration_set: str | None, sent: bool) -> None:
    sink = net.smtp_host("a.test")  # no STARTTLS offered
    transport = net.transport(tls=relay_tls, configuration_sets=TLS_SETS)
    (result,) = await transport.deliver(
        queued("x@a.test", configuration_set=configuration_set), "a.test", txn("x@a.test"))
    if sent:
        assert result.verdict is Verdict.DELIVERED
        assert len(sink.received) == 1 and not sink.received[0].tls
    else:
        assert result.verdict is Verdict.DEFERRED
        assert result.status == "4.7.4"
        assert "TLS is required" in result.diagnostic
        assert sink.transactions == []


@pytest.mark.parametrize(("relay_tls", "configuration_set"), [
    ("opportunistic", None), ("opportunistic", "strict"), ("require", "relaxed")])
async def test_starttls_is_used_whatever_the_policy_when_offered(
        net: Net, relay_tls: str, configuration_set: str | None) -> None:
    sink = net.smtp_host("a.test", starttls=True)
    transport = net.transport(tls=relay_tls, configuration_sets=TLS_SETS)
    (result,) = await transport.deliver(
        queued("x@a.test", configuration_set=configuration_set), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DELIVERED
    assert sink.received[0].tls


async def test_a_clear_cached_session_is_not_used_for_a_message_that_requires_tls(
        net: Net) -> None:
    sink = net.smtp_host("a.test")
    transport = net.transport(configuration_sets=TLS_SETS)
    (first,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert first.verdict is Verdict.DELIVERED  # in clear; the session is now cached
    (second,) = await transport.deliver(queued("y@a.test", configuration_set="strict"),
                                        "a.test", txn("y@a.test"))
    assert second.verdict is Verdict.DEFERRED
    assert second.status == "4.7.4"
    assert [t.rcpt_tos for t in sink.transactions] == [("x@a.test",)]


# ------------------------------------------------------------------ session reuse

async def test_a_second_message_to_the_same_host_reuses_the_session(net: Net) -> None:
    sink = net.smtp_host("a.test")
    transport = net.transport()
    before = sample("smtprelay_outbound_connects_total", {"result": "ok"})
    for rcpt in ("x@a.test", "y@a.test", "z@a.test"):
        (result,) = await transport.deliver(queued(rcpt), "a.test", txn(rcpt))
        assert result.verdict is Verdict.DELIVERED
    assert len(sink.sessions) == 1
    assert [t.session for t in sink.received] == [0, 0, 0]
    assert "QUIT" not in sink.sessions[0].commands  # kept open, idle, for the next one
    assert sample("smtprelay_outbound_connects_total", {"result": "ok"}) == before + 1
    pool = net.pools[-1]
    assert (pool.open_count, pool.idle_count) == (1, 1)


async def test_messages_from_a_pool_address_share_its_session(net: Net) -> None:
    """With an IP pool the session key holds settings made for the pool address: one
    object per address (not a copy per transaction), still one session for every
    message, leaving from the address with its HELO name."""
    sink = net.smtp_host("a.test")
    config = Config.model_validate(base_config(
        net.tmp_path / "var", delivery={"mode": "mx", "port": net.port,
                                        "connect_timeout": "2s", "command_timeout": "2s",
                                        "ip_pool": "bulk"},
        ip_pools={"bulk": {"addresses": [
            {"address": "127.0.1.71", "helo": "o71.relay.test", "warm": True},
            {"address": "127.0.1.72", "helo": "o72.relay.test", "warm": True}]}}))
    resolver = MXResolver([net.dns.nameserver], timeout=ANSWER_TIMEOUT, rng=random.Random(1))
    pool = ConnectionPool(max_connections=10, max_per_domain=10, idle_timeout=30.0)
    transport = SMTPTransport(live(config), resolver, pool, SourceChooser(LocalWarmup()))
    net.transports.append(transport)
    for rcpt in ("w@a.test", "x@a.test", "y@a.test", "z@a.test"):
        (result,) = await transport.deliver(queued(rcpt), "a.test", txn(rcpt))
        assert result.verdict is Verdict.DELIVERED
        assert result.outgoing_ip == "127.0.1.71"
    assert len(sink.sessions) == 1
    assert (sink.sessions[0].peer, sink.sessions[0].helo) == ("127.0.1.71", "o71.relay.test")
    assert len(sink.received) == 4


async def test_domains_on_the_same_mx_host_share_its_session(net: Net) -> None:
    address = net.address()
    sink = net.sinks.smtp(host=address, port=net.port)
    for domain in ("one.test", "two.test"):
        mx(net.dns, domain, (10, "mx.shared.test", None))
    net.dns.add("mx.shared.test", "A", address)
    transport = net.transport()
    for domain in ("one.test", "two.test"):
        rcpt = f"x@{domain}"
        (result,) = await transport.deliver(queued(rcpt), domain, txn(rcpt))
        assert result.verdict is Verdict.DELIVERED
    assert len(sink.sessions) == 1
    assert len(sink.received) == 2


async def test_a_refused_transaction_leaves_the_session_reusable(net: Net) -> None:
    sink = net.smtp_host("a.test", rcpt_replies={"gone@a.test": "550 5.1.1 no such user"})
    transport = net.transport()
    (bounced,) = await transport.deliver(queued("gone@a.test"), "a.test", txn("gone@a.test"))
    assert bounced.verdict is Verdict.BOUNCED
    (ok,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert ok.verdict is Verdict.DELIVERED
    assert len(sink.sessions) == 1
    assert "RSET" in sink.sessions[0].commands


async def test_cached_session_that_died_idle_is_retried_on_a_fresh_one(
        net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtprelay.delivery")
    raw = RawSMTP(drop_on_mail_after=1)  # the cached session dies at the next MAIL
    net.raw_host("a.test", raw)
    transport = net.transport()
    (first,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    (second,) = await transport.deliver(queued("y@a.test"), "a.test", txn("y@a.test"))
    assert (first.verdict, second.verdict) == (Verdict.DELIVERED, Verdict.DELIVERED)
    assert raw.sessions == 2
    assert [(s, r) for s, _, r, _ in raw.messages] == [(0, ("x@a.test",)),
                                                       (1, ("y@a.test",))]
    assert "had closed; opening a new one" in caplog.text
    assert net.pools[-1].open_count == 1  # the dead session's place was given back


async def test_cached_session_the_server_hung_up_is_not_used(net: Net) -> None:
    raw = RawSMTP(close_after=1)
    net.raw_host("a.test", raw)
    transport = net.transport()
    (first,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    await asyncio.sleep(0.05)  # the hang-up reaches the client
    (second,) = await transport.deliver(queued("y@a.test"), "a.test", txn("y@a.test"))
    assert (first.verdict, second.verdict) == (Verdict.DELIVERED, Verdict.DELIVERED)
    assert raw.sessions == 2
    assert [s for s, _, _, _ in raw.messages] == [0, 1]
    assert net.pools[-1].open_count == 1


async def test_cached_session_lost_after_the_body_started_is_not_resent(net: Net) -> None:
    raw = RawSMTP(drop_in_body_after=1)
    net.raw_host("a.test", raw)
    transport = net.transport()
    (first,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    (second,) = await transport.deliver(queued("y@a.test"), "a.test", txn("y@a.test"))
    assert first.verdict is Verdict.DELIVERED
    assert second.verdict is Verdict.DEFERRED
    assert second.code is None
    assert "lost connection" in second.diagnostic
    assert raw.sessions == 1  # no second session: the message may have got through
    assert len(raw.messages) == 1
    pool = net.pools[-1]
    assert (pool.open_count, pool.idle_count) == (0, 0)


async def test_cancelled_delivery_on_a_cached_session_gives_its_place_back(
        net: Net) -> None:
    raw = RawSMTP(stall_final_after=1)  # the second "." is never answered
    net.raw_host("a.test", raw)
    transport = net.transport()
    pool = net.pools[-1]
    (first,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert first.verdict is Verdict.DELIVERED
    task = asyncio.create_task(transport.deliver(queued("y@a.test"), "a.test",
                                                 txn("y@a.test")))
    assert await wait_until(lambda: raw.stalled == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.active("a.test") == 0
    assert pool.open_count == 0


async def test_cancelled_delivery_on_a_new_session_gives_its_place_back(net: Net) -> None:
    raw = RawSMTP(stall_final_after=0)
    net.raw_host("a.test", raw)
    transport = net.transport()
    pool = net.pools[-1]
    task = asyncio.create_task(transport.deliver(queued("x@a.test"), "a.test",
                                                 txn("x@a.test")))
    assert await wait_until(lambda: raw.stalled == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.active("a.test") == 0
    assert pool.open_count == 0


# ------------------------------------------------------------------ concurrency

async def test_mx_mode_holds_a_domain_to_max_connections_per_domain(net: Net) -> None:
    raw = RawSMTP(final_delay=0.15)
    net.raw_host("a.test", raw)
    transport = net.transport(max_connections=3, max_connections_per_domain=1)
    rcpts = [f"r{i}@a.test" for i in range(3)]
    results = await asyncio.gather(*(transport.deliver(queued(r), "a.test", txn(r))
                                     for r in rcpts))
    assert [r.verdict for (r,) in results] == [Verdict.DELIVERED] * 3
    assert raw.max_in_data == 1
    assert raw.sessions == 1  # one at a time, each reusing the cached session


async def test_smarthost_uses_the_relay_wide_limit_not_the_per_domain_one(net: Net) -> None:
    raw = RawSMTP(gather=3)  # each "." waits (up to 1 s) until all three are in DATA
    sink = net.sinks.raw(raw.handler())
    transport = net.transport(
        mode="smarthost", max_connections=3, max_connections_per_domain=1,
        smarthost={"host": "127.0.0.1", "port": sink.port, "tls": "none"})
    rcpts = [f"r{i}@a.test" for i in range(3)]
    results = await asyncio.gather(*(transport.deliver(queued(r), "a.test", txn(r))
                                     for r in rcpts))
    assert [r.verdict for (r,) in results] == [Verdict.DELIVERED] * 3
    assert raw.max_in_data == 3
    assert raw.sessions == 3


# ------------------------------------------------------------------ smarthost

async def test_smarthost_gets_every_domain_without_any_mx_lookup(net: Net) -> None:
    net.smtp_host("a.test")  # an MX that must not be used
    sink = net.sinks.smtp()
    transport = net.transport(
        mode="smarthost", smarthost={"host": "127.0.0.1", "port": sink.port, "tls": "none"})
    for domain in ("a.test", "b.example", "nxdomain.invalid"):
        rcpt = f"x@{domain}"
        (result,) = await transport.deliver(queued(rcpt), domain, txn(rcpt))
        assert result.verdict is Verdict.DELIVERED, result
    assert [t.rcpt_tos for t in sink.received] == [("x@a.test",), ("x@b.example",),
                                                   ("x@nxdomain.invalid",)]
    assert len(sink.sessions) == 1
    assert net.dns.queries == []


async def test_smarthost_starttls_with_verified_certificate_and_auth_from_env(
        net: Net, sink_tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTHOST_TEST_PASSWORD", "s3cret")
    sink = net.sinks.smtp(starttls=True, auth={"relay": "s3cret"})
    net.dns.add(MX_NAME, "A", "127.0.0.1")
    transport = net.transport(mode="smarthost", smarthost={
        "host": MX_NAME, "port": sink.port, "tls": "starttls", "verify_certificate": True,
        "ca_file": str(sink_tls_dir / "sink-cert.pem"), "username": "relay",
        "password_env": "SMARTHOST_TEST_PASSWORD"})
    (result,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DELIVERED, result
    (got,) = sink.received
    assert got.tls and got.auth_login == "relay"
    assert net.dns.count(MX_NAME, "A") >= 1
    assert net.dns.count("a.test", "MX") == 0


async def test_smarthost_certificate_not_trusted_defers_and_sends_nothing(
        net: Net) -> None:
    sink = net.sinks.smtp(starttls=True)
    net.dns.add(MX_NAME, "A", "127.0.0.1")
    transport = net.transport(mode="smarthost", smarthost={
        "host": MX_NAME, "port": sink.port, "tls": "starttls", "verify_certificate": True})
    (result,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DEFERRED
    assert result.status == "4.7.5"
    assert sink.transactions == []


async def test_smarthost_starttls_is_required_even_when_not_offered(net: Net) -> None:
    sink = net.sinks.smtp()  # no STARTTLS
    transport = net.transport(mode="smarthost", smarthost={
        "host": "127.0.0.1", "port": sink.port, "tls": "starttls",
        "verify_certificate": False})
    (result,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DEFERRED
    assert result.status == "4.7.4"
    assert sink.transactions == []


async def test_smarthost_implicit_tls_with_auth_from_password_file(
        net: Net, tmp_path: Path) -> None:
    secret = tmp_path / "smarthost.pw"
    secret.write_text("from-a-file\n")  # the trailing newline is not part of it
    sink = net.sinks.smtp(implicit_tls=True, auth={"relay": "from-a-file"})
    transport = net.transport(mode="smarthost", smarthost={
        "host": "127.0.0.1", "port": sink.port, "tls": "implicit",
        "verify_certificate": False, "username": "relay", "password_file": str(secret)})
    (result,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DELIVERED, result
    (got,) = sink.received
    assert got.tls and got.auth_login == "relay"


async def test_smarthost_wrong_password_defers(net: Net,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTHOST_TEST_PASSWORD", "wrong")
    sink = net.sinks.smtp(starttls=True, auth={"relay": "right"})
    transport = net.transport(mode="smarthost", smarthost={
        "host": "127.0.0.1", "port": sink.port, "verify_certificate": False,
        "username": "relay", "password_env": "SMARTHOST_TEST_PASSWORD"})
    (result,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DEFERRED  # the operator's to fix: mail waits
    assert result.code == 535
    assert sink.transactions == []


def smarthost_config(tmp_path: Path, **smarthost: Any) -> Config:
    return make_config(tmp_path, mode="smarthost", smarthost={
        "host": "127.0.0.1", "port": 2525, "verify_certificate": False, "username": "relay",
        **smarthost})


def new_transport(config: Config) -> SMTPTransport:
    pool = ConnectionPool(max_connections=2, max_per_domain=2)
    return SMTPTransport(live(config), MXResolver(["127.0.0.1:9"], timeout=0.5), pool)


def test_missing_password_env_names_the_key_and_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMARTHOST_TEST_MISSING", raising=False)
    config = smarthost_config(tmp_path, password_env="SMARTHOST_TEST_MISSING")
    with pytest.raises(SmarthostPasswordError) as raised:
        new_transport(config)
    assert "delivery.smarthost.password_env" in str(raised.value)
    assert "SMARTHOST_TEST_MISSING" in str(raised.value)


def test_empty_password_env_is_refused(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTHOST_TEST_EMPTY", "")
    config = smarthost_config(tmp_path, password_env="SMARTHOST_TEST_EMPTY")
    with pytest.raises(SmarthostPasswordError, match=r"delivery\.smarthost\.password_env"):
        new_transport(config)


def test_unreadable_password_file_names_the_key_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    config = smarthost_config(tmp_path, password_file=str(missing))
    with pytest.raises(SmarthostPasswordError) as raised:
        new_transport(config)
    assert "delivery.smarthost.password_file" in str(raised.value)
    assert str(missing) in str(raised.value)


def test_empty_password_file_names_the_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pw"
    empty.write_text("\n")
    config = smarthost_config(tmp_path, password_file=str(empty))
    with pytest.raises(SmarthostPasswordError, match=r"password_file: .* is empty"):
        new_transport(config)


def test_no_password_needed_without_username(tmp_path: Path) -> None:
    config = make_config(tmp_path, mode="smarthost",
                         smarthost={"host": "127.0.0.1", "tls": "none"})
    new_transport(config)  # no error


async def test_reload_with_a_missing_password_keeps_the_old_one(
        net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTHOST_TEST_PASSWORD", "s3cret")
    sink = net.sinks.smtp(starttls=True, auth={"relay": "s3cret"})
    smarthost = {"host": "127.0.0.1", "port": sink.port, "verify_certificate": False,
                 "username": "relay", "password_env": "SMARTHOST_TEST_PASSWORD"}
    transport = net.transport(mode="smarthost", smarthost=smarthost)
    monkeypatch.delenv("SMARTHOST_TEST_PASSWORD")
    new = make_config(net.tmp_path, mode="smarthost", smarthost=smarthost)
    with pytest.raises(SmarthostPasswordError):
        smarthost_password(new)  # what a reload reads first: refused, the holder keeps the old
    (result,) = await transport.deliver(queued("x@a.test"), "a.test", txn("x@a.test"))
    assert result.verdict is Verdict.DELIVERED, result
    assert sink.received[0].auth_login == "relay"
