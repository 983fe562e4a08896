"""MX resolution against a real authoritative DNS server on loopback (tests/dnsserver.py).

Every resolver here is given the test server explicitly: this machine's resolv.conf
names an outside resolver, which no test may ask.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.delivery.dns import MXResolver, MXResult, Resolution, mail_domain
from smtprelay.delivery.model import Destination
from tests.dnsserver import ANSWER_TIMEOUT, TestDNSServer
from tests.support import examples


class Clock:
    """A monotonic clock the test moves by hand, so TTLs expire without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def resolver(dns_server: TestDNSServer, clock: Clock) -> MXResolver:
    return MXResolver([dns_server.nameserver], timeout=ANSWER_TIMEOUT, clock=clock,
                      rng=random.Random(7))


@pytest.fixture
def server(dns_server: TestDNSServer) -> TestDNSServer:
    return dns_server  # the shorter name; dns_server also checks the server had no errors


def addresses(result: MXResult) -> list[str]:
    return [d.address for d in result.destinations]


def hosts(result: MXResult) -> list[str]:
    return list(dict.fromkeys(d.host for d in result.destinations))


# --- MX records: order and addresses ----------------------------------------------------

async def test_mx_hosts_come_in_preference_order(server: TestDNSServer,
                                                 resolver: MXResolver) -> None:
    server.add("example.test", "MX", "20 mx2.example.test.")
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("example.test", "MX", "30 mx3.example.test.")
    for i in (1, 2, 3):
        server.add(f"mx{i}.example.test", "A", f"127.0.0.{i + 1}")
    result = await resolver.resolve("example.test")
    assert result.outcome is Resolution.OK and result.ok
    assert result.status == "2.0.0" and result.reason == ""
    assert result.destinations == (
        Destination("mx1.example.test", "127.0.0.2", 10),
        Destination("mx2.example.test", "127.0.0.3", 20),
        Destination("mx3.example.test", "127.0.0.4", 30),
    )


async def test_every_address_of_a_host_before_the_next_host_ipv4_first(
        server: TestDNSServer, resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("example.test", "MX", "20 mx2.example.test.")
    server.add("mx1.example.test", "AAAA", "::1")
    server.add("mx1.example.test", "A", "127.0.0.2")
    server.add("mx2.example.test", "A", "127.0.0.3")
    server.add("mx2.example.test", "AAAA", "::2")
    result = await resolver.resolve("example.test")
    assert addresses(result) == ["127.0.0.2", "::1", "127.0.0.3", "::2"]
    assert [d.preference for d in result.destinations] == [10, 10, 20, 20]


async def test_prefer_ipv6_puts_aaaa_first(server: TestDNSServer, clock: Clock) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("mx1.example.test", "A", "127.0.0.2")
    server.add("mx1.example.test", "AAAA", "::1")
    resolver = MXResolver([server.nameserver], timeout=ANSWER_TIMEOUT, prefer_ipv6=True,
                          clock=clock)
    assert addresses(await resolver.resolve("example.test")) == ["::1", "127.0.0.2"]


async def test_an_address_behind_two_mx_names_is_tried_once(server: TestDNSServer,
                                                            resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 a.example.test.")
    server.add("example.test", "MX", "20 b.example.test.")
    server.add("a.example.test", "A", "127.0.0.2")
    server.add("b.example.test", "A", "127.0.0.2")
    server.add("b.example.test", "A", "127.0.0.3")
    result = await resolver.resolve("example.test")
    assert result.destinations == (Destination("a.example.test", "127.0.0.2", 10),
                                   Destination("b.example.test", "127.0.0.3", 20))


async def test_equal_preferences_are_shuffled_reproducibly_under_a_seed(
        server: TestDNSServer, clock: Clock) -> None:
    server.add("example.test", "MX", "5 first.example.test.")
    server.add("first.example.test", "A", "127.0.1.1")
    names = [f"mx{i}.example.test" for i in range(5)]
    for i, name in enumerate(names):
        server.add("example.test", "MX", f"10 {name}.")
        server.add(name, "A", f"127.0.0.{i + 2}")

    def make(seed: int) -> MXResolver:
        return MXResolver([server.nameserver], timeout=ANSWER_TIMEOUT, clock=clock,
                          rng=random.Random(seed))

    one, same = make(1), make(1)
    orders = [hosts(await one.resolve("example.test")) for _ in range(30)]
    assert orders == [hosts(await same.resolve("example.test")) for _ in range(30)]
    for order in orders:
        assert order[0] == "first.example.test"  # a lower preference is never shuffled
        assert sorted(order[1:]) == names
    # Each resolve shuffles afresh (from the cached answer), so load spreads.
    assert len({tuple(order) for order in orders}) > 5
    assert {order[1] for order in orders} == set(names)
    assert server.count("example.test", "MX") == 2  # once per resolver, then cached


async def test_mx_and_host_names_through_cnames(server: TestDNSServer,
                                                resolver: MXResolver) -> None:
    server.add("alias.test", "CNAME", "example.test.")
    server.add("example.test", "MX", "10 mail.example.test.")
    server.add("mail.example.test", "CNAME", "real.example.test.")
    server.add("real.example.test", "A", "127.0.0.2")
    result = await resolver.resolve("alias.test")
    assert result.destinations == (Destination("mail.example.test", "127.0.0.2", 10),)


async def test_only_the_first_hosts_are_resolved(server: TestDNSServer, clock: Clock) -> None:
    for i in range(8):
        server.add("many.test", "MX", f"{i} mx{i}.many.test.")
        server.add(f"mx{i}.many.test", "A", f"127.0.0.{i + 2}")
    resolver = MXResolver([server.nameserver], timeout=ANSWER_TIMEOUT, clock=clock, max_mx_hosts=3)
    result = await resolver.resolve("many.test")
    assert hosts(result) == ["mx0.many.test", "mx1.many.test", "mx2.many.test"]
    assert server.count("mx3.many.test", "A") == 0


async def test_a_large_mx_answer_is_fetched_over_tcp(server: TestDNSServer,
                                                     resolver: MXResolver) -> None:
    long = "a-rather-long-host-name-to-fill-the-packet"
    for i in range(60):
        server.add("big.test", "MX", f"{100 - i} {long}-{i}.big.test.")
        server.add(f"{long}-{i}.big.test", "A", f"127.0.1.{i + 1}")
    result = await resolver.resolve("big.test")
    assert ("big.test", "MX") in server.tcp_queries  # UDP was truncated (TC), TCP retried
    assert [d.preference for d in result.destinations] == list(range(41, 51))
    assert result.destinations[0] == Destination(f"{long}-59.big.test", "127.0.1.60", 41)


# --- no MX: the implicit MX -------------------------------------------------------------

async def test_no_mx_records_falls_back_to_the_domains_own_addresses(
        server: TestDNSServer, resolver: MXResolver) -> None:
    server.add("plain.test", "A", "127.0.0.5")
    server.add("plain.test", "AAAA", "::1")
    server.add("plain.test", "TXT", '"v=spf1 -all"')
    result = await resolver.resolve("plain.test")
    assert result.destinations == (Destination("plain.test", "127.0.0.5", 0),
                                   Destination("plain.test", "::1", 0))
    assert server.queries[0] == ("plain.test", "MX")


async def test_no_mx_and_no_address_is_permanent(server: TestDNSServer,
                                                 resolver: MXResolver) -> None:
    server.add("textonly.test", "TXT", '"hello"')
    result = await resolver.resolve("textonly.test")
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.4.4")
    assert "textonly.test" in result.reason and "no MX records" in result.reason


async def test_empty_non_terminal_is_nodata_not_nxdomain(server: TestDNSServer,
                                                         resolver: MXResolver) -> None:
    server.add("host.sub.example.test", "A", "127.0.0.2")
    result = await resolver.resolve("sub.example.test")  # exists, without records
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.4.4")


# --- permanent verdicts from DNS --------------------------------------------------------

async def test_nxdomain_is_permanent_5_1_2(server: TestDNSServer,
                                          resolver: MXResolver) -> None:
    result = await resolver.resolve("no-such-domain.test")
    assert result == MXResult(Resolution.PERMANENT, (), "5.1.2",
                              "MX lookup for no-such-domain.test: domain does not exist "
                              "(NXDOMAIN)")
    assert server.queries == [("no-such-domain.test", "MX")]


async def test_null_mx_is_permanent_5_1_10(server: TestDNSServer,
                                          resolver: MXResolver) -> None:
    server.add("nomail.test", "MX", "0 .")
    server.add("nomail.test", "A", "127.0.0.2")  # a web site; no mail all the same
    result = await resolver.resolve("nomail.test")
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.1.10")
    assert "null MX" in result.reason
    assert server.queries == [("nomail.test", "MX")]  # no implicit-MX fallback


async def test_a_null_mx_beside_real_mx_records_is_ignored(server: TestDNSServer,
                                                          resolver: MXResolver) -> None:
    server.add("mixed.test", "MX", "0 .")
    server.add("mixed.test", "MX", "10 mx.mixed.test.")
    server.add("mx.mixed.test", "A", "127.0.0.2")
    assert addresses(await resolver.resolve("mixed.test")) == ["127.0.0.2"]


async def test_mx_pointing_to_a_name_with_no_address_is_permanent_5_4_4(
        server: TestDNSServer, resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 gone.example.test.")  # NXDOMAIN
    server.add("example.test", "MX", "20 bare.example.test.")  # exists, no A/AAAA
    server.add("bare.example.test", "TXT", '"no address here"')
    result = await resolver.resolve("example.test")
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.4.4")
    assert "gone.example.test: host not found (NXDOMAIN)" in result.reason
    assert "bare.example.test: no address of that type" in result.reason


async def test_mx_pointing_to_an_ip_address_is_not_a_host(server: TestDNSServer,
                                                         resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 127.0.0.2.")
    result = await resolver.resolve("example.test")
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.4.4")
    assert server.queries == [("example.test", "MX")]


async def test_one_of_two_mx_hosts_without_address_the_other_is_used(
        server: TestDNSServer, resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 gone.example.test.")
    server.add("example.test", "MX", "20 mx2.example.test.")
    server.add("mx2.example.test", "A", "127.0.0.3")
    result = await resolver.resolve("example.test")
    assert result.destinations == (Destination("mx2.example.test", "127.0.0.3", 20),)
    assert "gone.example.test" in result.reason  # noted as skipped


# --- temporary failures -----------------------------------------------------------------

@pytest.mark.parametrize("failure", ["SERVFAIL", "REFUSED"])
async def test_mx_lookup_error_is_temporary_4_4_3(server: TestDNSServer, resolver: MXResolver,
                                                  failure: str) -> None:
    server.fail("broken.test", failure)
    result = await resolver.resolve("broken.test")
    assert result == MXResult(Resolution.TEMPORARY, (), "4.4.3",
                              f"MX lookup for broken.test: {failure} from {server.nameserver}")


async def test_mx_lookup_timeout_is_temporary_and_quick(server: TestDNSServer,
                                                        clock: Clock) -> None:
    server.fail("slow.test", "TIMEOUT")
    resolver = MXResolver([server.nameserver], timeout=0.5, clock=clock)
    started = time.monotonic()
    result = await resolver.resolve("slow.test")
    assert time.monotonic() - started < 1.5
    assert (result.outcome, result.status) == (Resolution.TEMPORARY, "4.4.3")
    assert result.reason.startswith("MX lookup for slow.test: no answer within 0.5 s")


async def test_garbage_from_the_server_is_temporary(server: TestDNSServer,
                                                    clock: Clock) -> None:
    server.fail("garbled.test", "GARBAGE")
    resolver = MXResolver([server.nameserver], timeout=0.5, clock=clock)
    result = await resolver.resolve("garbled.test")
    # dnspython drops an unparsable datagram (it might be spoofed) and waits on.
    assert (result.outcome, result.status) == (Resolution.TEMPORARY, "4.4.3")


async def test_a_host_failing_temporarily_is_skipped(server: TestDNSServer,
                                                     resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("example.test", "MX", "20 mx2.example.test.")
    server.add("mx1.example.test", "A", "127.0.0.2")
    server.fail("mx1.example.test", "SERVFAIL")
    server.add("mx2.example.test", "A", "127.0.0.3")
    result = await resolver.resolve("example.test")
    assert addresses(result) == ["127.0.0.3"]
    assert "A lookup for mx1.example.test: SERVFAIL" in result.reason


async def test_every_host_failing_temporarily_is_temporary(server: TestDNSServer,
                                                           resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("example.test", "MX", "20 gone.example.test.")  # NXDOMAIN: no rescue
    server.fail("mx1.example.test", "SERVFAIL")
    result = await resolver.resolve("example.test")
    assert (result.outcome, result.status) == (Resolution.TEMPORARY, "4.4.3")
    assert "mx1.example.test" in result.reason and "gone.example.test" in result.reason


async def test_a_timeout_on_aaaa_alone_still_gives_the_ipv4_address(
        server: TestDNSServer, clock: Clock) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("mx1.example.test", "A", "127.0.0.2")
    server.fail("mx1.example.test", "TIMEOUT", rdtype="AAAA")
    # Each lookup has its own limit: the test waits this long for the AAAA to give up,
    # and the A has as long to be answered.
    resolver = MXResolver([server.nameserver], timeout=2.0, clock=clock)
    result = await resolver.resolve("example.test")
    assert addresses(result) == ["127.0.0.2"]


async def test_a_dead_first_nameserver_fails_over_to_the_next(server: TestDNSServer,
                                                              clock: Clock) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{unused.getsockname()[1]}"  # bound, never read: silence
        server.add("example.test", "A", "127.0.0.2")
        # 1.5 s of silence from the dead one, then 1.5 s for the live one to answer.
        resolver = MXResolver([dead, server.nameserver], timeout=3.0, clock=clock)
        assert addresses(await resolver.resolve("example.test")) == ["127.0.0.2"]


async def test_nameserver_on_ipv6_loopback(clock: Clock) -> None:
    with TestDNSServer(host="::1") as server6:
        server6.add("example.test", "AAAA", "::1")
        assert server6.nameserver.startswith("[::1]:")
        resolver = MXResolver([server6.nameserver], timeout=ANSWER_TIMEOUT, clock=clock)
        assert addresses(await resolver.resolve("example.test")) == ["::1"]


# --- caching ----------------------------------------------------------------------------

async def test_answers_are_cached_for_their_ttl(server: TestDNSServer, resolver: MXResolver,
                                                clock: Clock) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.", ttl=60)
    server.add("mx1.example.test", "A", "127.0.0.2", ttl=600)
    first = await resolver.resolve("example.test")
    assert await resolver.resolve("EXAMPLE.test.") == first  # one key, whatever the case
    assert server.count("example.test", "MX") == 1
    assert server.count("mx1.example.test", "A") == 1
    clock.advance(59)
    await resolver.resolve("example.test")
    assert server.count("example.test", "MX") == 1
    clock.advance(2)  # the MX's 60 s are over, the address's 600 s are not
    await resolver.resolve("example.test")
    assert server.count("example.test", "MX") == 2
    assert server.count("mx1.example.test", "A") == 1


async def test_ttl_zero_is_not_cached(server: TestDNSServer, resolver: MXResolver) -> None:
    server.add("example.test", "A", "127.0.0.2", ttl=0)
    await resolver.resolve("example.test")
    await resolver.resolve("example.test")
    assert server.count("example.test", "A") == 2


async def test_nxdomain_is_cached_for_the_soa_negative_ttl(server: TestDNSServer,
                                                           clock: Clock) -> None:
    server.add_zone("short.test", negative_ttl=120)
    resolver = MXResolver([server.nameserver], timeout=ANSWER_TIMEOUT, clock=clock)
    for _ in range(3):
        assert (await resolver.resolve("gone.short.test")).status == "5.1.2"
    assert server.count("gone.short.test", "MX") == 1
    clock.advance(119)
    await resolver.resolve("gone.short.test")
    assert server.count("gone.short.test", "MX") == 1
    clock.advance(2)
    await resolver.resolve("gone.short.test")
    assert server.count("gone.short.test", "MX") == 2


async def test_nodata_is_cached_and_5_minutes_without_soa(server: TestDNSServer,
                                                          clock: Clock) -> None:
    server.add_zone("nosoa.test", negative_ttl=None)
    server.add("plain.nosoa.test", "A", "127.0.0.2")
    resolver = MXResolver([server.nameserver], timeout=ANSWER_TIMEOUT, clock=clock)
    await resolver.resolve("plain.nosoa.test")
    await resolver.resolve("plain.nosoa.test")
    assert server.count("plain.nosoa.test", "MX") == 1  # the NODATA was cached
    assert server.count("plain.nosoa.test", "AAAA") == 1
    clock.advance(299)
    await resolver.resolve("plain.nosoa.test")
    assert server.count("plain.nosoa.test", "MX") == 1
    clock.advance(2)
    await resolver.resolve("plain.nosoa.test")
    assert server.count("plain.nosoa.test", "MX") == 2


async def test_temporary_failures_are_cached_briefly(server: TestDNSServer,
                                                     resolver: MXResolver,
                                                     clock: Clock) -> None:
    server.fail("flaky.test", "SERVFAIL")
    server.add("flaky.test", "A", "127.0.0.2")
    for _ in range(5):  # five queued messages: one query
        assert (await resolver.resolve("flaky.test")).outcome is Resolution.TEMPORARY
    assert server.count("flaky.test", "MX") == 1
    server.heal("flaky.test")
    clock.advance(29)
    assert (await resolver.resolve("flaky.test")).outcome is Resolution.TEMPORARY
    clock.advance(2)
    assert addresses(await resolver.resolve("flaky.test")) == ["127.0.0.2"]


async def test_the_cache_is_bounded_least_recently_used_first(server: TestDNSServer,
                                                              clock: Clock) -> None:
    for name in ("a.test", "b.test", "c.test"):
        server.add(name, "MX", f"10 {name}.")
        server.add(name, "A", "127.0.0.2")
    resolver = MXResolver([server.nameserver], timeout=ANSWER_TIMEOUT, clock=clock, cache_size=6)
    await resolver.resolve("a.test")  # 3 entries: MX, A, AAAA
    await resolver.resolve("b.test")  # 6
    await resolver.resolve("a.test")  # a is now the most recently used
    await resolver.resolve("c.test")  # evicts b's entries, not a's
    await resolver.resolve("a.test")
    assert server.count("a.test", "MX") == 1
    await resolver.resolve("b.test")
    assert server.count("b.test", "MX") == 2


async def test_concurrent_resolutions_share_one_query(server: TestDNSServer,
                                                      resolver: MXResolver) -> None:
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("mx1.example.test", "A", "127.0.0.2")
    results = await asyncio.gather(*(resolver.resolve("example.test") for _ in range(20)))
    assert {addresses(r)[0] for r in results} == {"127.0.0.2"}
    assert server.count("example.test", "MX") == 1
    assert server.count("mx1.example.test", "A") == 1


async def test_a_cancelled_resolution_does_not_break_the_others(server: TestDNSServer,
                                                                resolver: MXResolver) -> None:
    server.add("example.test", "A", "127.0.0.2")
    first = asyncio.create_task(resolver.resolve("example.test"))
    second = asyncio.create_task(resolver.resolve("example.test"))
    await asyncio.sleep(0)
    first.cancel()
    assert addresses(await second) == ["127.0.0.2"]
    with pytest.raises(asyncio.CancelledError):
        await first


# --- names and literals -----------------------------------------------------------------

@pytest.mark.parametrize(("literal", "address"), [
    ("[127.0.0.2]", "127.0.0.2"),
    ("[IPv6:::1]", "::1"),
    ("[ipv6:2001:DB8::1]", "2001:db8::1"),
    ("[::1]", "::1"),  # untagged: not RFC 5321, but unambiguous
])
async def test_domain_literals_are_their_address(server: TestDNSServer, resolver: MXResolver,
                                                 literal: str, address: str) -> None:
    result = await resolver.resolve(literal)
    assert result.destinations == (Destination(address, address, 0),)
    assert server.queries == []


@pytest.mark.parametrize("literal", ["[300.1.2.3]", "[IPv6:127.0.0.1]", "[example.test]",
                                     "[127.0.0.1", "[]", "[tag:value]", "[01.2.3.4]"])
async def test_bad_domain_literals_are_permanent(server: TestDNSServer, resolver: MXResolver,
                                                 literal: str) -> None:
    result = await resolver.resolve(literal)
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.1.3")


@pytest.mark.parametrize("domain", ["", ".", "a..test", ".example.test", "exa mple.test",
                                    "example.test..", "1.2.3.4", "x" * 64 + ".test",
                                    "a\\.b.test", "ex@mple.test", "\u2603\ufe0f.test",
                                    ("a" * 60 + ".") * 5 + "test"])
async def test_names_that_cannot_be_mail_domains_are_permanent_without_dns(
        server: TestDNSServer, resolver: MXResolver, domain: str) -> None:
    result = await resolver.resolve(domain)
    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.1.3"), result.reason
    assert server.queries == []


async def test_idn_domains_are_looked_up_in_idna_form(server: TestDNSServer,
                                                      resolver: MXResolver) -> None:
    server.add("xn--bcher-kva.test", "MX", "10 mx.xn--bcher-kva.test.")
    server.add("mx.xn--bcher-kva.test", "A", "127.0.0.2")
    server.add("xn--fa-hia.test", "A", "127.0.0.3")
    result = await resolver.resolve("Bücher.test")
    assert result.destinations == (Destination("mx.xn--bcher-kva.test", "127.0.0.2", 10),)
    # IDNA 2008 (UTS 46 non-transitional): ß stays ß, it does not become "ss".
    assert addresses(await resolver.resolve("faß.test")) == ["127.0.0.3"]
    assert mail_domain("faß.test").to_text() == "xn--fa-hia.test."


# --- relay hosts (smarthost mode) -------------------------------------------------------

async def test_resolve_host_gives_a_hosts_addresses_without_mx(server: TestDNSServer,
                                                              resolver: MXResolver) -> None:
    server.add("relay.example.test", "MX", "10 elsewhere.example.test.")
    server.add("relay.example.test", "A", "127.0.0.9")
    server.add("relay.example.test", "AAAA", "::1")
    result = await resolver.resolve_host("relay.example.test", 587)
    assert result.destinations == (Destination("relay.example.test", "127.0.0.9", 0),
                                   Destination("relay.example.test", "::1", 0))
    assert ("relay.example.test", "MX") not in server.queries


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.9", "127.0.0.9"), ("[127.0.0.9]", "127.0.0.9"), ("::1", "::1"),
    ("[::1]", "::1"), ("[IPv6:::1]", "::1")])
async def test_resolve_host_takes_addresses_as_they_are(server: TestDNSServer,
                                                        resolver: MXResolver, host: str,
                                                        address: str) -> None:
    result = await resolver.resolve_host(host)
    assert result.destinations == (Destination(address, address, 0),)
    assert server.queries == []


async def test_resolve_host_failures_are_all_temporary(server: TestDNSServer,
                                                       resolver: MXResolver) -> None:
    server.fail("broken.test", "SERVFAIL")
    missing = await resolver.resolve_host("missing.example.test")
    broken = await resolver.resolve_host("broken.test")
    invalid = await resolver.resolve_host("not a host")
    assert (missing.outcome, missing.status) == (Resolution.TEMPORARY, "4.4.4")
    assert (broken.outcome, broken.status) == (Resolution.TEMPORARY, "4.4.3")
    assert (invalid.outcome, invalid.status) == (Resolution.TEMPORARY, "4.3.5")


# --- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["dns.example.test", "127.0.0.1:0", "127.0.0.1:70000",
                                  "[::1]5353", "", "127.0.0.1:x", "[::1]:",
                                  "127.0.0.1:-53"])
def test_bad_nameservers_are_refused_at_construction(text: str) -> None:
    with pytest.raises(ValueError, match="bad nameserver"):
        MXResolver([text])


# --- robustness -------------------------------------------------------------------------

def _hold_the_gil(seconds: float) -> None:
    """Stall the whole test process, the DNS server's thread included, as a long full
    garbage collection does: no thread switch is offered until it ends."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(seconds + 1)
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            pass
    finally:
        sys.setswitchinterval(interval)


async def test_answers_outlast_a_stalled_test_process(server: TestDNSServer,
                                                      resolver: MXResolver) -> None:
    # CI failed this way: a 0.5 s limit, a stall, and most MX hosts dropped as timed out.
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("mx1.example.test", "A", "127.0.0.2")

    async def stall() -> None:
        await asyncio.sleep(0)  # the MX query is on the wire
        _hold_the_gil(0.7)

    result, _ = await asyncio.gather(resolver.resolve("example.test"), stall())
    assert addresses(result) == ["127.0.0.2"], result.reason


def test_resolve_never_raises_whatever_the_domain() -> None:
    with TestDNSServer() as server:
        server.add("example.test", "MX", "10 mx.example.test.")
        server.add("mx.example.test", "A", "127.0.0.2")
        resolver = MXResolver([server.nameserver], timeout=0.5)
        loop = asyncio.new_event_loop()

        @settings(max_examples=examples(300), deadline=None)
        @given(st.one_of(
            st.text(max_size=80),
            st.from_regex(r"\[?[A-Za-z0-9:.\-_\\ \]\[]{0,40}\]?", fullmatch=True),
            st.lists(st.from_regex(r"[a-z0-9\-]{0,12}", fullmatch=True), max_size=5).map(
                lambda labels: ".".join([*labels, "test"]))))
        def check(domain: str) -> None:
            result = loop.run_until_complete(resolver.resolve(domain))
            assert result.outcome in set(Resolution)
            assert "internal error" not in result.reason
            assert result.ok == bool(result.destinations)
            if not domain.strip().startswith("["):
                try:
                    mail_domain(domain.strip())
                except ValueError:
                    assert (result.outcome, result.status) == (Resolution.PERMANENT, "5.1.3")

        try:
            check()
        finally:
            loop.close()
        assert server.errors == []


async def test_a_bug_defers_the_message_instead_of_raising(
        resolver: MXResolver, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    async def broken(*args: object) -> MXResult:
        raise KeyError("oops")

    monkeypatch.setattr(resolver, "_resolve_domain", broken)
    monkeypatch.setattr(resolver, "_resolve_host", broken)
    for result in (await resolver.resolve("example.test"),
                   await resolver.resolve_host("relay.example.test")):
        assert (result.outcome, result.status) == (Resolution.TEMPORARY, "4.4.3")
        assert "internal error: KeyError('oops')" in result.reason
    assert "MX resolution of 'example.test' failed" in caplog.text


# --- the test server itself -------------------------------------------------------------

def test_test_server_ignores_garbage_and_keeps_answering(server: TestDNSServer) -> None:
    server.add("example.test", "A", "127.0.0.2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"", server.address)
        udp.sendto(b"\x00" * 3, server.address)
        udp.sendto(b"\xff" * 600, server.address)
    with socket.create_connection(server.address, timeout=2) as tcp:
        tcp.sendall(b"\x00\x05hello\x00")  # a bad message, then a cut-off length prefix
    query = dns.message.make_query("example.test", "A")
    reply = dns.query.udp(query, server.address[0], port=server.address[1], timeout=2)
    assert str(reply.answer[0][0]) == "127.0.0.2"
    reply = dns.query.tcp(query, server.address[0], port=server.address[1], timeout=2)
    assert str(reply.answer[0][0]) == "127.0.0.2"


@pytest.mark.parametrize(("name", "rcode"), [
    ("test", dns.rcode.NOERROR),  # a zone apex exists
    ("nothing.example.test", dns.rcode.NXDOMAIN),
    ("nothing.invalid", dns.rcode.NXDOMAIN),  # "invalid" is served too
    ("real-domain.org", dns.rcode.REFUSED),  # not ours: never pretend
])
def test_test_server_rcodes(server: TestDNSServer, name: str, rcode: dns.rcode.Rcode) -> None:
    query = dns.message.make_query(name, "MX")
    reply = dns.query.udp(query, server.address[0], port=server.address[1], timeout=2)
    assert reply.rcode() == rcode
    if rcode == dns.rcode.NXDOMAIN:
        assert reply.authority and reply.authority[0].rdtype == dns.rdatatype.SOA
