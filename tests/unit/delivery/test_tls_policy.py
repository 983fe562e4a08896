"""Outbound TLS policies end to end on loopback: require_encrypted/require_verified,
MTA-STS and DANE, through SMTPTransport to real MX sinks.

MX hosts are aiosmtpd sinks on 127.0.0.N presenting certificates from a test CA
(tests/tlspeers.py); MTA-STS policies come from an aiohttp HTTPS server with a
certificate from the same CA, found through the test DNS server; DANE answers come
from unbound validating DNSSEC-signed zones (tests/unbound.py). Each test checks what
the transport reported, what the sinks received and the TLSOutcome it made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.mta_sts import MtaSts
from smtprelay.delivery.mta_sts_store import StsPolicyStore
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.smtp_transport import SMTPTransport
from smtprelay.delivery.tls_outcome import TLSOutcome
from smtprelay.delivery.tls_policy import TLSPlanner
from tests.dnsserver import TestDNSServer
from tests.sinks import SinkFactory, SmtpSink
from tests.support import free_port
from tests.tlspeers import Issued, Issuer, PolicyServer, policy
from tests.unbound import Unbound
from tests.unit.delivery.kit import BODY, SENDER, MonotonicClock, live, make_config, queued

POLICY_HOST = "127.0.0.200"
WALL_START = 1_800_000_000.0
# The policy server's certificate names these domains' mta-sts hosts (not others).
STS_DOMAINS = ("enforce.test", "testing.test", "cached.test", "aged.test", "gone.test")


def txn(*recipients: str) -> Transaction:
    return Transaction(mail_from=SENDER, recipients=recipients, data=BODY)


class World:
    """MX hosts with chosen certificates, MTA-STS policies, and transports to them."""

    def __init__(self, tmp_path: Path, dns: TestDNSServer, sinks: SinkFactory,
                 issuer: Issuer, policies: PolicyServer) -> None:
        self.tmp_path = tmp_path
        self.dns = dns
        self.sinks = sinks
        self.issuer = issuer
        self.policies = policies
        self.port = free_port()
        self.outcomes: list[TLSOutcome] = []
        self.clock = MonotonicClock()
        # The wall clock moves with the monotonic one (MTA-STS expiry times on disk).
        self.wall = lambda: WALL_START + self.clock.offset
        self.transports: list[SMTPTransport] = []
        self.stores: list[StsPolicyStore] = []
        self.policy_caches: list[MtaSts] = []
        self._last = 1

    def address(self) -> str:
        self._last += 1
        return f"127.0.0.{self._last}"

    def mx_host(self, domain: str, name: str, cert: Issued | None = None, *,
                starttls: bool = True, dns: TestDNSServer | None = None) -> SmtpSink:
        """An MX host `name` of `domain`; `cert` None: the shared self-signed one."""
        address = self.address()
        sink = self.sinks.smtp(host=address, port=self.port, starttls=starttls,
                               tls_context=cert.context if cert else None)
        server = dns or self.dns
        server.add(domain, "MX", f"10 {name}.", ttl=60)
        server.add(name, "A", address, ttl=60)
        return sink

    def sts(self, domain: str, text: str, policy_id: str = "1") -> None:
        self.dns.add(f"_mta-sts.{domain}", "TXT", f'"v=STSv1; id={policy_id};"')
        self.dns.add(f"mta-sts.{domain}", "A", POLICY_HOST)
        self.policies.policies[domain] = text

    def sts_store(self, path: Path | None = None) -> StsPolicyStore:
        """The state database's MTA-STS tables, as a daemon start opens them."""
        store = StsPolicyStore(path or self.tmp_path / "state.db")
        self.stores.append(store)
        return store

    def transport(self, *, configuration_sets: dict[str, Any] | None = None,
                  nameserver: str | None = None, sts_store: StsPolicyStore | None = None,
                  **delivery: Any) -> SMTPTransport:
        settings: dict[str, Any] = {
            "port": self.port, "tls_ca_file": str(self.issuer.ca_file),
            "dns": {"nameservers": [nameserver or self.dns.nameserver], "timeout": "2s"},
            "mta_sts": {"port": self.policies.port, "fetch_timeout": "5s"}, **delivery}
        config = make_config(self.tmp_path, configuration_sets=configuration_sets,
                             **settings)
        holder = live(config)
        resolver = MXResolver(config.delivery.dns.nameservers, timeout=2.0,
                              rng=random.Random(1))
        pool = ConnectionPool(max_connections=10, max_per_domain=10, idle_timeout=30.0)
        transport = SMTPTransport(holder, resolver, pool, on_tls_outcome=self.outcomes.append,
                                  planner=TLSPlanner(holder, clock=self.clock,
                                                     sts_store=sts_store, wall=self.wall))
        self.transports.append(transport)
        return transport

    async def send(self, transport: SMTPTransport, domain: str,
                   configuration_set: str | None = None) -> RecipientResult:
        rcpt = f"someone@{domain}"
        results = await transport.deliver(queued(rcpt, configuration_set=configuration_set),
                                          domain, txn(rcpt))
        assert len(results) == 1
        return results[0]


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("tls-policy-ca"))


@pytest.fixture
async def world(tmp_path: Path, dns_server: TestDNSServer, sinks: SinkFactory,
                issuer: Issuer) -> AsyncIterator[World]:
    cert = issuer.issue(*(f"mta-sts.{d}" for d in STS_DOMAINS), "mta-sts.badcert.test")
    server = await PolicyServer(POLICY_HOST, free_port(), cert.context).start()
    w = World(tmp_path, dns_server, sinks, issuer, server)
    try:
        yield w
    finally:
        for transport in w.transports:
            await transport.close()
        for cache in w.policy_caches:
            await cache.close()
        for store in w.stores:
            store.close()
        await server.stop()


def spki_sha256(issued: Issued | bytes) -> str:
    from cryptography import x509
    cert = (issued.cert if isinstance(issued, Issued)
            else x509.load_der_x509_certificate(issued))
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


# -------------------------------------------------------- require_encrypted/verified

async def test_require_verified_defers_on_a_self_signed_certificate(world: World) -> None:
    sink = world.mx_host("strict.test", "mx.strict.test")  # self-signed
    transport = world.transport(tls="require_verified", mta_sts={"enabled": False})
    result = await world.send(transport, "strict.test")
    assert result.verdict is Verdict.DEFERRED and result.status == "4.7.5"
    assert "certificate" in result.diagnostic and "mx.strict.test" in result.diagnostic
    assert sink.received == []
    assert [o.failure for o in world.outcomes] == ["certificate-not-trusted"]


async def test_require_verified_defers_on_a_certificate_for_another_name(
        world: World) -> None:
    sink = world.mx_host("strict.test", "mx.strict.test",
                         world.issuer.issue("mx.elsewhere.test"))
    transport = world.transport(tls="require_verified", mta_sts={"enabled": False})
    result = await world.send(transport, "strict.test")
    assert result.verdict is Verdict.DEFERRED and result.status == "4.7.5"
    assert sink.received == []
    assert [o.failure for o in world.outcomes] == ["certificate-host-mismatch"]


async def test_require_verified_defers_on_an_expired_certificate(world: World) -> None:
    sink = world.mx_host("strict.test", "mx.strict.test",
                         world.issuer.issue("mx.strict.test", expired=True))
    transport = world.transport(tls="require_verified", mta_sts={"enabled": False})
    result = await world.send(transport, "strict.test")
    assert result.verdict is Verdict.DEFERRED and sink.received == []
    assert [o.failure for o in world.outcomes] == ["certificate-expired"]


async def test_require_verified_delivers_to_a_valid_certificate(world: World) -> None:
    sink = world.mx_host("strict.test", "mx.strict.test",
                         world.issuer.issue("mx.strict.test"))
    transport = world.transport(tls="require_verified", mta_sts={"enabled": False})
    result = await world.send(transport, "strict.test")
    assert result.verdict is Verdict.DELIVERED
    assert len(sink.received) == 1 and sink.received[0].tls
    assert [(o.policy_type, o.failure, o.mx_host) for o in world.outcomes] == [
        ("no-policy-found", None, "mx.strict.test")]


@pytest.mark.parametrize("name", ["require_encrypted", "require"])
async def test_require_encrypted_delivers_to_a_self_signed_certificate(
        world: World, name: str) -> None:
    sink = world.mx_host("plain.test", "mx.plain.test")  # self-signed
    transport = world.transport(tls=name, mta_sts={"enabled": False})
    result = await world.send(transport, "plain.test")
    assert result.verdict is Verdict.DELIVERED
    assert len(sink.received) == 1 and sink.received[0].tls


async def test_a_configuration_set_asks_for_verification(world: World) -> None:
    sink = world.mx_host("plain.test", "mx.plain.test")  # self-signed
    transport = world.transport(mta_sts={"enabled": False}, configuration_sets={
        "verified": {"tls": "require_verified"}})
    result = await world.send(transport, "plain.test", configuration_set="verified")
    assert result.verdict is Verdict.DEFERRED and sink.received == []
    # Without the set, the relay's opportunistic policy delivers.
    assert (await world.send(transport, "plain.test")).verdict is Verdict.DELIVERED


async def test_a_configuration_set_cannot_loosen_require_verified(world: World) -> None:
    sink = world.mx_host("plain.test", "mx.plain.test")  # self-signed
    transport = world.transport(tls="require_verified", mta_sts={"enabled": False},
                                configuration_sets={"loose": {"tls": "require_encrypted"}})
    result = await world.send(transport, "plain.test", configuration_set="loose")
    assert result.verdict is Verdict.DEFERRED and sink.received == []


# -------------------------------------------------------------------------- MTA-STS

async def test_mta_sts_enforce_delivers_to_a_matching_mx_with_a_valid_certificate(
        world: World) -> None:
    sink = world.mx_host("enforce.test", "mx1.enforce.test",
                         world.issuer.issue("mx1.enforce.test"))
    world.sts("enforce.test", policy("enforce", "*.enforce.test"))
    result = await world.send(world.transport(), "enforce.test")
    assert result.verdict is Verdict.DELIVERED
    assert len(sink.received) == 1 and sink.received[0].tls
    [outcome] = world.outcomes
    assert outcome.policy_type == "sts" and outcome.failure is None
    assert outcome.policy_domain == "enforce.test" and "mode: enforce" in outcome.policy_strings
    assert outcome.receiving_ip == sink.host and outcome.sending_ip is not None


async def test_mta_sts_enforce_defers_an_mx_the_policy_does_not_name(world: World) -> None:
    sink = world.mx_host("enforce.test", "mx.attacker.test",
                         world.issuer.issue("mx.attacker.test"))
    world.sts("enforce.test", policy("enforce", "mx1.enforce.test"))
    result = await world.send(world.transport(), "enforce.test")
    assert result.verdict is Verdict.DEFERRED and result.status == "4.7.5"
    assert "MTA-STS" in result.diagnostic and "mx.attacker.test" in result.diagnostic
    assert sink.sessions == []  # never even connected to
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [
        ("sts", "validation-failure")]


async def test_mta_sts_enforce_defers_a_matching_mx_with_a_wrong_certificate(
        world: World) -> None:
    sink = world.mx_host("enforce.test", "mx1.enforce.test")  # self-signed
    world.sts("enforce.test", policy("enforce", "mx1.enforce.test"))
    result = await world.send(world.transport(), "enforce.test")
    assert result.verdict is Verdict.DEFERRED and result.status == "4.7.5"
    assert sink.received == []
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [
        ("sts", "certificate-not-trusted")]


async def test_mta_sts_enforce_never_falls_back_to_clear_text(world: World) -> None:
    sink = world.mx_host("enforce.test", "mx1.enforce.test", starttls=False)
    world.sts("enforce.test", policy("enforce", "mx1.enforce.test"))
    result = await world.send(world.transport(), "enforce.test")
    assert result.verdict is Verdict.DEFERRED and sink.received == []
    assert [o.failure for o in world.outcomes] == ["starttls-not-supported"]


async def test_mta_sts_testing_delivers_despite_a_wrong_certificate_and_logs(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    sink = world.mx_host("testing.test", "mx1.testing.test")  # self-signed
    world.sts("testing.test", policy("testing", "mx1.testing.test"))
    with caplog.at_level(logging.WARNING):
        result = await world.send(world.transport(), "testing.test")
    assert result.verdict is Verdict.DELIVERED and len(sink.received) == 1
    assert sink.received[0].tls  # still encrypted: the opportunistic policy applies
    assert any("MTA-STS (mode testing)" in r.getMessage() for r in caplog.records)
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [
        ("sts", "certificate-not-trusted")]
    # The next message takes the session that went on without the policy, rather than
    # failing the same handshake again.
    sessions = len(sink.sessions)
    transport = world.transports[0]
    assert (await world.send(transport, "testing.test")).verdict is Verdict.DELIVERED
    assert len(sink.sessions) == sessions and len(sink.received) == 2


async def test_mta_sts_testing_delivers_to_an_mx_the_policy_does_not_name(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    sink = world.mx_host("testing.test", "mx.other.test")
    world.sts("testing.test", policy("testing", "mx1.testing.test"))
    with caplog.at_level(logging.WARNING):
        result = await world.send(world.transport(), "testing.test")
    assert result.verdict is Verdict.DELIVERED and len(sink.received) == 1
    assert any("delivering anyway (mode testing)" in r.getMessage() for r in caplog.records)
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [
        ("sts", "validation-failure")]


async def test_mta_sts_policy_is_cached_by_id(world: World) -> None:
    world.mx_host("cached.test", "mx1.cached.test", world.issuer.issue("mx1.cached.test"))
    world.sts("cached.test", policy("enforce", "mx1.cached.test"))
    transport = world.transport()
    assert (await world.send(transport, "cached.test")).verdict is Verdict.DELIVERED
    assert (await world.send(transport, "cached.test")).verdict is Verdict.DELIVERED
    assert world.policies.fetches["cached.test"] == 1  # the second needed no fetch
    # A new id in DNS says the policy changed: it is fetched again.
    world.dns.remove("_mta-sts.cached.test", "TXT")
    world.dns.add("_mta-sts.cached.test", "TXT", '"v=STSv1; id=2;"')
    world.clock.advance(301)  # the TXT answer's TTL (300 s) is over
    assert (await world.send(transport, "cached.test")).verdict is Verdict.DELIVERED
    assert world.policies.fetches["cached.test"] == 2


async def test_mta_sts_cached_policy_holds_for_max_age_then_expires(world: World) -> None:
    world.mx_host("aged.test", "mx.rogue.test", world.issuer.issue("mx.rogue.test"))
    world.sts("aged.test", policy("enforce", "mx1.aged.test", max_age=600))
    transport = world.transport()
    assert (await world.send(transport, "aged.test")).verdict is Verdict.DEFERRED
    # The record disappears (an attacker stripping it, or a real withdrawal): the cached
    # policy stays in force until its max_age is over, without fetching.
    world.dns.remove("_mta-sts.aged.test", "TXT")
    world.clock.advance(599)  # also past the TXT answer's TTL: "no record" is seen
    assert (await world.send(transport, "aged.test")).verdict is Verdict.DEFERRED
    assert world.policies.fetches["aged.test"] == 1
    world.clock.advance(2)
    assert (await world.send(transport, "aged.test")).verdict is Verdict.DELIVERED
    assert world.policies.fetches["aged.test"] == 1


async def test_mta_sts_policy_outlives_a_restart(world: World) -> None:
    world.mx_host("aged.test", "mx.rogue.test", world.issuer.issue("mx.rogue.test"))
    world.sts("aged.test", policy("enforce", "mx1.aged.test", max_age=600))
    before = world.transport(sts_store=world.sts_store())
    assert (await world.send(before, "aged.test")).verdict is Verdict.DEFERRED
    await before.close()
    # The relay restarts; an attacker now strips the TXT record and blocks the policy
    # host. The policy from before the restart still sends nothing to the rogue MX.
    world.dns.remove("_mta-sts.aged.test", "TXT")
    del world.policies.policies["aged.test"]
    world.clock.advance(599)
    after = world.transport(sts_store=world.sts_store())
    result = await world.send(after, "aged.test")
    assert result.verdict is Verdict.DEFERRED and "MTA-STS" in result.diagnostic
    assert world.policies.fetches["aged.test"] == 1
    world.clock.advance(2)  # its max_age is over, counted from the fetch before the restart
    assert (await world.send(after, "aged.test")).verdict is Verdict.DELIVERED


async def test_mta_sts_store_that_cannot_be_opened_leaves_the_policy_in_memory(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.mx_host("aged.test", "mx.rogue.test", world.issuer.issue("mx.rogue.test"))
    world.sts("aged.test", policy("enforce", "mx1.aged.test"))
    (world.tmp_path / "a-directory.db").mkdir()
    transport = world.transport(sts_store=world.sts_store(world.tmp_path / "a-directory.db"))
    with caplog.at_level(logging.ERROR):
        for _ in range(2):
            assert (await world.send(transport, "aged.test")).verdict is Verdict.DEFERRED
    assert world.policies.fetches["aged.test"] == 1
    assert "a-directory.db" in caplog.text and "not saved" in caplog.text
    assert caplog.text.count("not read from") == 1  # not once per message


def mta_sts(world: World) -> tuple[MtaSts, StsPolicyStore]:
    """An MtaSts on this world's DNS and policy server, with a store (both closed when
    the test ends)."""
    store = world.sts_store()
    sts = MtaSts([world.dns.nameserver], port=world.policies.port,
                 ca_file=str(world.issuer.ca_file), clock=world.clock, store=store,
                 wall=world.wall)
    world.policy_caches.append(sts)
    return sts, store


async def saved(store: StsPolicyStore, domain: str, now: float, *, after: float) -> float:
    """When the stored policy of `domain` was fetched, once that is later than `after`
    (a background refresh writes it)."""
    for _ in range(500):
        found = await asyncio.to_thread(store.get, domain, now)
        if found is not None and found.fetched_at > after:
            return found.fetched_at
        await asyncio.sleep(0.01)
    raise AssertionError(f"no policy of {domain} saved after {after}")


async def test_mta_sts_policy_in_use_is_refreshed_before_it_expires(world: World) -> None:
    world.sts("cached.test", policy("enforce", "mx1.cached.test", max_age=1000))
    sts, store = mta_sts(world)
    assert (await sts.lookup("cached.test")).policy is not None
    world.clock.advance(499)  # less than half its max_age: used as it is
    assert (await sts.lookup("cached.test")).policy is not None
    assert world.policies.fetches["cached.test"] == 1
    world.clock.advance(2)  # past half: used, and fetched again in the background
    assert (await sts.lookup("cached.test")).policy is not None
    assert await saved(store, "cached.test", world.wall(), after=WALL_START) == (
        WALL_START + 501)
    assert world.policies.fetches["cached.test"] == 2
    # The refresh counts max_age from itself: at 1100 s the policy is still in force
    # though the record and the policy host are gone.
    world.dns.remove("_mta-sts.cached.test", "TXT")
    del world.policies.policies["cached.test"]
    world.clock.advance(599)
    assert (await sts.lookup("cached.test")).policy is not None
    world.clock.advance(401)  # 1000 s after the refresh
    assert (await sts.lookup("cached.test")).policy is None


async def test_mta_sts_failed_refresh_keeps_the_policy_and_waits_an_hour(
        world: World) -> None:
    world.sts("cached.test", policy("enforce", "mx1.cached.test", max_age=86400))
    sts, store = mta_sts(world)
    assert (await sts.lookup("cached.test")).policy is not None
    del world.policies.policies["cached.test"]  # the policy host answers 404 now
    world.clock.advance(43201)
    assert (await sts.lookup("cached.test")).policy is not None
    for _ in range(500):  # the background refresh asks, and fails
        if world.policies.fetches["cached.test"] == 2:
            break
        await asyncio.sleep(0.01)
    world.clock.advance(3599)
    for _ in range(3):  # within the hour: not asked again
        assert (await sts.lookup("cached.test")).policy is not None
    assert world.policies.fetches["cached.test"] == 2
    world.policies.policies["cached.test"] = policy("enforce", "mx1.cached.test",
                                                    max_age=86400)
    world.clock.advance(2)
    assert (await sts.lookup("cached.test")).policy is not None
    assert await saved(store, "cached.test", world.wall(), after=WALL_START) == (
        WALL_START + 43201 + 3601)


async def test_mta_sts_forget_drops_the_policy_from_memory_and_store(world: World) -> None:
    world.sts("cached.test", policy("enforce", "mx1.cached.test", max_age=1000))
    sts, store = mta_sts(world)
    assert (await sts.lookup("cached.test")).policy is not None
    world.clock.advance(501)  # a background refresh starts; forget cancels it
    assert (await sts.lookup("cached.test")).policy is not None
    world.dns.remove("_mta-sts.cached.test", "TXT")
    assert await sts.forget("Cached.Test.")
    assert not await sts.forget("cached.test")
    assert store.listing(world.wall()) == []
    assert (await sts.lookup("cached.test")).policy is None  # looked up afresh
    assert store.listing(world.wall()) == []  # the cancelled refresh wrote nothing
    await sts.close()
    assert store.listing(world.wall()) == []


async def test_mta_sts_policy_host_with_a_wrong_certificate_is_no_policy(
        world: World) -> None:
    # mta-sts.badname.test is not in the policy server's certificate.
    sink = world.mx_host("badname.test", "mx.elsewhere.test")
    world.sts("badname.test", policy("enforce", "mx1.badname.test"))
    result = await world.send(world.transport(), "badname.test")
    assert result.verdict is Verdict.DELIVERED and len(sink.received) == 1
    assert world.policies.fetches.get("badname.test") is None  # TLS failed before GET
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [
        ("sts", "sts-webpki-invalid")]


async def test_mta_sts_disabled_ignores_policies(world: World) -> None:
    sink = world.mx_host("enforce.test", "mx.attacker.test")
    world.sts("enforce.test", policy("enforce", "mx1.enforce.test"))
    transport = world.transport(mta_sts={"enabled": False})
    assert (await world.send(transport, "enforce.test")).verdict is Verdict.DELIVERED
    assert len(sink.received) == 1 and world.policies.fetches == {}


# ----------------------------------------------------------------------------- DANE

def tlsa_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dane_transport(world: World, unbound: Unbound, **delivery: Any) -> SMTPTransport:
    return world.transport(nameserver=unbound.nameserver, dane=True,
                           dane_probe_name="dane.test", **delivery)


async def test_dane(world: World, unbound: Unbound, issuer: Issuer) -> None:
    """One signed zone, one resolver start, every DANE case (unbound's zones are fixed
    once it runs): each recipient domain below is one case."""
    port = world.port
    ee = issuer.issue("mx.ee.dane.test", self_signed=True)  # DANE-EE ignores CAs
    ee_full = issuer.issue("whatever.invalid", self_signed=True, expired=True)
    ta = issuer.issue("mx.ta.dane.test")  # from the CA, CA in the chain
    ta_wrong_name = issuer.issue("mx.other.test")
    other_ca = Issuer(world.tmp_path / "other-ca")
    ta_other = other_ca.issue("mx.taother.dane.test")
    hosts: dict[str, SmtpSink] = {}
    signed: list[str] = []
    unsigned: list[str] = []

    def host(zone: list[str], label: str, cert: Issued | None, tlsa: list[str],
             starttls: bool = True) -> None:
        address = world.address()
        hosts[label] = world.sinks.smtp(host=address, port=port, starttls=starttls,
                                        tls_context=cert.context if cert else None)
        zone += [f"{label} MX 10 mx.{label}", f"mx.{label} A {address}"]
        zone += [f"_{port}._tcp.mx.{label} TLSA {record}" for record in tlsa]

    host(signed, "ee", ee, [f"3 1 1 {spki_sha256(ee)}"])
    host(signed, "eefull", ee_full, [f"3 0 1 {tlsa_hash(ee_full.der)}"])
    host(signed, "bad", ee, [f"3 1 1 {'00' * 32}"])
    host(signed, "ta", ta, [f"2 1 1 {spki_sha256(issuer.ca_der)}"])
    host(signed, "tafull", issuer.issue("mx.tafull.dane.test"),
         [f"2 0 1 {tlsa_hash(issuer.ca_der)}"])
    host(signed, "taname", ta_wrong_name, [f"2 1 1 {spki_sha256(issuer.ca_der)}"])
    host(signed, "taother", ta_other, [f"2 1 1 {spki_sha256(issuer.ca_der)}"])
    host(signed, "unusable", None, [f"1 1 1 {'00' * 32}"], starttls=False)
    host(signed, "notlsa", None, [], starttls=False)
    host(signed, "nostarttls", None, [f"3 1 1 {spki_sha256(ee)}"], starttls=False)
    host(unsigned, "x", None, [f"3 1 1 {'00' * 32}"])
    unbound.zone("dane.test", signed, signed=True)
    unbound.zone("unsigned.test", unsigned, signed=False)
    unbound.start()
    transport = _dane_transport(world, unbound)

    async def send(domain: str) -> RecipientResult:
        world.outcomes.clear()
        return await world.send(transport, domain)

    # DANE-EE 3 1 1 on a self-signed certificate for the MX name: delivered over TLS.
    result = await send("ee.dane.test")
    assert result.verdict is Verdict.DELIVERED, result.diagnostic
    assert hosts["ee"].received[0].tls
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [("tlsa", None)]
    assert world.outcomes[0].policy_strings == (f"3 1 1 {spki_sha256(ee)}",)
    # DANE-EE 3 0 1 ignores names and expiry (RFC 7672 3.1.1).
    assert (await send("eefull.dane.test")).verdict is Verdict.DELIVERED
    # A TLSA record that matches nothing: deferred, nothing sent.
    result = await send("bad.dane.test")
    assert result.verdict is Verdict.DEFERRED and result.status == "4.7.5"
    assert "TLSA" in result.diagnostic and hosts["bad"].received == []
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [("tlsa", "tlsa-invalid")]
    # DANE-TA 2 1 1 and 2 0 1: the CA in the chain is the trust anchor.
    assert (await send("ta.dane.test")).verdict is Verdict.DELIVERED
    assert (await send("tafull.dane.test")).verdict is Verdict.DELIVERED
    # DANE-TA: the name must still be the MX host's; another CA is no anchor.
    assert (await send("taname.dane.test")).verdict is Verdict.DEFERRED
    assert (await send("taother.dane.test")).verdict is Verdict.DEFERRED
    assert hosts["taname"].received == [] and hosts["taother"].received == []
    # Only unusable records (PKIX-EE): TLS mandatory, not authenticated.
    result = await send("unusable.dane.test")
    assert result.verdict is Verdict.DEFERRED and "TLS is required" in result.diagnostic
    # No TLSA (a validated denial): opportunistic, so clear text is fine.
    assert (await send("notlsa.dane.test")).verdict is Verdict.DELIVERED
    assert [(o.policy_type, o.failure) for o in world.outcomes] == [
        ("no-policy-found", "starttls-not-supported")]
    # TLSA present, STARTTLS missing: never in clear.
    result = await send("nostarttls.dane.test")
    assert result.verdict is Verdict.DEFERRED and hosts["nostarttls"].received == []
    assert [o.failure for o in world.outcomes] == ["starttls-not-supported"]
    # A zone without DNSSEC: its TLSA record (no AD bit) is not DANE.
    assert (await send("x.unsigned.test")).verdict is Verdict.DELIVERED
    assert len(hosts["x"].received) == 1


async def test_dane_with_a_resolver_that_does_not_validate_is_not_applied(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    # The test DNS server never sets AD: a mismatching TLSA record must not count.
    sink = world.mx_host("nodnssec.test", "mx.nodnssec.test")
    world.dns.add(f"_{world.port}._tcp.mx.nodnssec.test", "TLSA", f"3 1 1 {'00' * 32}")
    transport = world.transport(dane=True, dane_probe_name="test")
    with caplog.at_level(logging.ERROR):
        result = await world.send(transport, "nodnssec.test")
    assert result.verdict is Verdict.DELIVERED and len(sink.received) == 1
    assert any("does not validate DNSSEC" in r.getMessage() for r in caplog.records)


def test_dane_needs_nameservers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dns\.nameservers"):
        make_config(tmp_path, dane=True)

