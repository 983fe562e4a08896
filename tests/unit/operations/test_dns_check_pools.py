"""dns-check on the IP pools' addresses: each one's PTR record, forward-confirmed
(FCrDNS) and naming the address's HELO name; and SPF checked for the pool addresses.
Over real sockets to the test DNS server (tests/dnsserver.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smtprelay.config import Config, load_config
from smtprelay.operations.dns_check import Finding, Lookups, plan, run
from tests.dnsserver import ANSWER_TIMEOUT, TestDNSServer
from tests.support import base_config, write_config

POOLS = {"bulk": {"addresses": [
    {"address": "192.0.2.10", "helo": "o10.example.com"},
    {"address": "192.0.2.11", "helo": "o11.example.com"},
    {"address": "2001:db8::25", "helo": "o25.example.com"},
    {"address": "192.0.2.12", "helo": "o12.example.com"},
    {"address": "192.0.2.13", "helo": "o13.example.com"}]}}


def config(tmp_path: Path, **overrides: Any) -> Config:
    path = write_config(tmp_path / "smtprelay.yaml",
                        base_config(tmp_path / "var", delivery={"mode": "mx"}, **overrides))
    return load_config(path).config


@pytest.fixture
def lookups(dns_server: TestDNSServer) -> Lookups:
    return Lookups([dns_server.nameserver], timeout=ANSWER_TIMEOUT)


async def test_each_pool_address_ptr_is_checked(tmp_path: Path, dns_server: TestDNSServer,
                                                lookups: Lookups) -> None:
    server = dns_server
    server.add_zone("in-addr.arpa")
    server.add_zone("ip6.arpa")
    # .10: right. .11: a PTR whose name does not lead back. ::25: right, over AAAA.
    # .12: forward-confirmed, but another name than its HELO. .13: no PTR at all.
    server.add("10.2.0.192.in-addr.arpa", "PTR", "o10.example.com.")
    server.add("o10.example.com", "A", "192.0.2.10")
    server.add("11.2.0.192.in-addr.arpa", "PTR", "o11.example.com.")
    server.add("o11.example.com", "A", "192.0.2.99")
    server.add("5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
               "PTR", "o25.example.com.")
    server.add("o25.example.com", "AAAA", "2001:db8::25")
    server.add("12.2.0.192.in-addr.arpa", "PTR", "mail.example.com.")
    server.add("mail.example.com", "A", "192.0.2.12")
    server.add("example.com", "TXT", '"v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"')
    findings = await run(plan(config(tmp_path, ip_pools=POOLS), "example.com"), lookups)
    addresses = findings[0]
    assert (addresses.status, addresses.config_key) == ("ok", "ip_pools")
    assert "192.0.2.10, 192.0.2.11, 2001:db8::25" in addresses.found
    assert next(f for f in findings if f.check == "spf").status == "ok"
    ptr: dict[str, Finding] = {f.config_key: f for f in findings if f.check == "ptr"}
    key = "ip_pools.bulk.addresses"
    assert {k: f.status for k, f in ptr.items()} == {
        f"{key}[0]": "ok", f"{key}[1]": "error", f"{key}[2]": "ok", f"{key}[3]": "warning",
        f"{key}[4]": "error"}
    assert ptr[f"{key}[0]"].found == ("PTR o10.example.com, forward-confirmed to "
                                      "192.0.2.10, the address's HELO name")
    assert ptr[f"{key}[0]"].name == "10.2.0.192.in-addr.arpa"
    assert "not forward-confirmed" in ptr[f"{key}[1]"].found
    assert [r.line for r in ptr[f"{key}[1]"].publish] == [
        "o11.example.com.  3600  IN  A  192.0.2.11"]
    assert "EHLO o12.example.com" in ptr[f"{key}[3]"].found
    assert f"set {key}[3].helo to mail.example.com" in ptr[f"{key}[3]"].fix
    assert "no PTR record for 192.0.2.13" in ptr[f"{key}[4]"].found
    assert [r.line for r in ptr[f"{key}[4]"].publish] == [
        "13.2.0.192.in-addr.arpa.  3600  IN  PTR  o13.example.com."]


async def test_a_failed_ptr_lookup_is_not_a_missing_record(
        tmp_path: Path, dns_server: TestDNSServer, lookups: Lookups) -> None:
    dns_server.add_zone("in-addr.arpa")
    dns_server.fail("10.2.0.192.in-addr.arpa", "SERVFAIL")
    pools = {"bulk": {"addresses": [{"address": "192.0.2.10", "helo": "o10.example.com"}]}}
    findings = await run(plan(config(tmp_path, ip_pools=pools), "example.com"), lookups)
    [ptr] = [f for f in findings if f.check == "ptr"]
    assert ptr.status == "error" and ptr.found.startswith("PTR lookup failed: SERVFAIL")
    assert not ptr.publish
