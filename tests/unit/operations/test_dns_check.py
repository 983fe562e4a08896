"""dns-check's logic: the RFC 7208 SPF evaluator, DKIM record checks, the plan.

Lookups go over real sockets to the test DNS server (tests/dnsserver.py); nothing of
dnspython is mocked. The resolver is always given the test server explicitly.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from smtprelay.config import Config, load_config
from smtprelay.operations.dns_check import (
    Finding,
    Lookups,
    SPFError,
    SPFResult,
    UsageError,
    check_host,
    dkim_verdict,
    expand_macros,
    is_spf,
    parse_spf,
    parse_tags,
    plan,
    record,
    render,
    run,
)
from smtprelay.transform import dkim
from tests.dnsserver import ANSWER_TIMEOUT, TestDNSServer
from tests.support import base_config, write_config

IP = "192.0.2.25"


@pytest.fixture
def server(dns_server: TestDNSServer) -> TestDNSServer:
    return dns_server


@pytest.fixture
def lookups(server: TestDNSServer) -> Lookups:
    return Lookups([server.nameserver], timeout=ANSWER_TIMEOUT)


def spf(server: TestDNSServer, name: str, text: str) -> None:
    server.add(name, "TXT", f'"{text}"')


async def result(lookups: Lookups, domain: str = "example.com", ip: str = IP) -> SPFResult:
    return (await check_host(lookups, ip, domain)).result


# --- SPF syntax ------------------------------------------------------------------------


def test_is_spf_wants_the_version_then_space_or_end() -> None:
    assert is_spf("v=spf1")
    assert is_spf("V=SPF1 -all")
    assert not is_spf("v=spf10 -all")
    assert not is_spf("spf1 -all")


def test_parse_spf_reads_mechanisms_cidrs_and_modifiers() -> None:
    parsed = parse_spf("v=spf1 +a -mx:example.net/24//64 ~ip4:192.0.2.0/24 ?ip6:2001:db8::/32 "
                       "a/28 include:_spf.%{d} exists:%{ir}.x.example.com ptr all "
                       "redirect=other.example.com unknown=%{d} exp=why.example.com")
    terms = [(t.qualifier.value, t.mechanism, t.target, t.cidr4, t.cidr6) for t in parsed.terms]
    assert terms == [
        ("pass", "a", None, 32, 128),
        ("fail", "mx", "example.net", 24, 64),
        ("softfail", "ip4", "192.0.2.0/24", 32, 128),
        ("neutral", "ip6", "2001:db8::/32", 32, 128),
        ("pass", "a", None, 28, 128),
        ("pass", "include", "_spf.%{d}", 32, 128),
        ("pass", "exists", "%{ir}.x.example.com", 32, 128),
        ("pass", "ptr", None, 32, 128),
        ("pass", "all", None, 32, 128),
    ]
    assert parsed.redirect == "other.example.com"


@pytest.mark.parametrize("text", [
    "v=spf1 ip4:300.1.1.1 -all",           # not an address
    "v=spf1 ip4:192.0.2.0/33",             # prefix too long
    "v=spf1 a/33",
    "v=spf1 mx//129",
    "v=spf1 foo:example.com",              # unknown mechanism
    "v=spf1 all:example.com",
    "v=spf1 include:",                     # include needs a domain
    "v=spf1 include",
    "v=spf1 a:localhost",                  # no "." toplabel at the end
    "v=spf1 a:192.0.2.1",                  # an address where a domain goes
    "v=spf1 include:%{x}.example.com",     # unknown macro letter
    "v=spf1 exists:%{c}.example.com",      # c is for exp= only
    "v=spf1 exists:%{d0}.example.com",     # keeps no part
    "v=spf1 include:example.com%",         # lone %
    "v=spf1 redirect=a.example.com redirect=b.example.com",
    "v=spf1 ip6:2001:db8::/129",
])
def test_parse_spf_refuses_bad_syntax_with_permerror(text: str) -> None:
    with pytest.raises(SPFError) as caught:
        parse_spf(text)
    assert caught.value.result is SPFResult.PERMERROR


# --- macros: RFC 7208 7.4's own examples -----------------------------------------------


@pytest.mark.parametrize(("spec", "expected"), [
    ("%{s}", "strong-bad@email.example.com"),
    ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"),
    ("%{d4}", "email.example.com"),
    ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"),
    ("%{d1}", "com"),
    ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"),
    ("%{l}", "strong-bad"),
    ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"),
    ("%{lr-}", "bad.strong"),
    ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ("%{S}", "strong-bad%40email.example.com"),
    ("a%%b%_c%-d.example.com", "a%b c%20d.example.com"),
])
def test_macros_expand_as_rfc_7208_shows(spec: str, expected: str) -> None:
    ip = ipaddress.ip_address("192.0.2.3")
    assert expand_macros(spec, ip, "strong-bad@email.example.com", "email.example.com") == expected


def test_ipv6_macro_is_dotted_nibbles() -> None:
    ip = ipaddress.ip_address("2001:db8::cb01")
    assert expand_macros("%{ir}.%{v}._spf.%{d2}", ip, "strong-bad@email.example.com",
                         "email.example.com") == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")


def test_an_expanded_name_over_253_bytes_loses_labels_on_the_left() -> None:
    ip = ipaddress.ip_address(IP)
    name = expand_macros("%{l}.example.com", ip, ("a." * 130) + "b@example.com", "example.com")
    assert len(name) <= 253
    assert name.endswith(".b.example.com")


# --- check_host against the test DNS server --------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (f"v=spf1 ip4:{IP} -all", SPFResult.PASS),
    ("v=spf1 ip4:192.0.2.0/24 -all", SPFResult.PASS),
    ("v=spf1 ip4:198.51.100.1 -all", SPFResult.FAIL),
    ("v=spf1 ip4:198.51.100.1 ~all", SPFResult.SOFTFAIL),
    ("v=spf1 ip4:198.51.100.1 ?all", SPFResult.NEUTRAL),
    ("v=spf1 ip4:198.51.100.1", SPFResult.NEUTRAL),   # nothing matched: neutral
    (f"v=spf1 -ip4:{IP} +all", SPFResult.FAIL),        # the first match decides
    ("v=spf1 ip6:2001:db8::/32 -all", SPFResult.FAIL),  # an IPv4 client never matches ip6
    ("v=spf1 a -all", SPFResult.PASS),
    ("v=spf1 a:relay.example.net -all", SPFResult.PASS),
    ("v=spf1 a:other.example.net/24 -all", SPFResult.PASS),
    ("v=spf1 a:other.example.net -all", SPFResult.FAIL),
    ("v=spf1 mx -all", SPFResult.PASS),
    ("v=spf1 mx:example.net/24 -all", SPFResult.PASS),
    ("v=spf1 exists:%{i}.allow.example.net -all", SPFResult.PASS),
    ("v=spf1 exists:%{ir}.allow.example.net -all", SPFResult.FAIL),
    ("v=spf1 -all", SPFResult.FAIL),
    ("v=spf1 ip4:192.0.2.25 ip4:bad -all", SPFResult.PERMERROR),  # syntax before evaluation
])
async def test_check_host_mechanisms_and_qualifiers(server: TestDNSServer, lookups: Lookups,
                                                    text: str, expected: SPFResult) -> None:
    spf(server, "example.com", text)
    server.add("example.com", "A", IP)
    server.add("example.com", "MX", "10 mx.example.com.")
    server.add("mx.example.com", "A", IP)
    server.add("relay.example.net", "A", IP)
    server.add("other.example.net", "A", "192.0.2.1")
    server.add("example.net", "MX", "10 mx.example.net.")
    server.add("mx.example.net", "A", "192.0.2.200")
    server.add(f"{IP}.allow.example.net", "A", "127.0.0.2")
    assert await result(lookups) is expected


async def test_ipv6_client_matches_ip6_and_aaaa(server: TestDNSServer, lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 ip4:192.0.2.0/24 a:v6.example.com/24//64 -all")
    server.add("v6.example.com", "AAAA", "2001:db8:1::1")
    assert await result(lookups, ip="2001:db8:1::99") is SPFResult.PASS
    assert await result(lookups, ip="2001:db8:2::99") is SPFResult.FAIL
    # An IPv4-mapped address is checked as the IPv4 address (RFC 7208 5).
    assert await result(lookups, ip=f"::ffff:{IP}") is SPFResult.PASS


async def test_include_passes_and_says_which_term(server: TestDNSServer,
                                                  lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 include:_spf.example.net -all")
    spf(server, "_spf.example.net", "v=spf1 ip4:192.0.2.0/24 -all")
    verdict = await check_host(lookups, IP, "example.com")
    assert verdict.result is SPFResult.PASS
    assert verdict.reason == "include:_spf.example.net > ip4:192.0.2.0/24 at _spf.example.net"
    assert verdict.lookups == 1


async def test_include_that_fails_does_not_match(server: TestDNSServer,
                                                 lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 include:_spf.example.net ~all")
    spf(server, "_spf.example.net", "v=spf1 ip4:198.51.100.0/24 -all")
    verdict = await check_host(lookups, IP, "example.com")
    assert verdict.result is SPFResult.SOFTFAIL
    assert verdict.term == "~all"


async def test_include_of_a_domain_without_spf_is_permerror(server: TestDNSServer,
                                                            lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 include:nospf.example.net -all")
    server.add("nospf.example.net", "TXT", '"google-site-verification=abc"')
    assert await result(lookups) is SPFResult.PERMERROR


async def test_redirect_evaluates_the_other_record(server: TestDNSServer,
                                                   lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 redirect=_spf.example.net")
    spf(server, "_spf.example.net", f"v=spf1 ip4:{IP} -all")
    verdict = await check_host(lookups, IP, "example.com")
    assert verdict.result is SPFResult.PASS
    assert verdict.reason.startswith("redirect=_spf.example.net > ")
    assert await result(lookups, ip="198.51.100.1") is SPFResult.FAIL


async def test_redirect_is_ignored_with_an_all(server: TestDNSServer, lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 ?all redirect=_spf.example.net")
    spf(server, "_spf.example.net", f"v=spf1 ip4:{IP} -all")
    assert await result(lookups) is SPFResult.NEUTRAL
    assert server.count("_spf.example.net", "TXT") == 0


async def test_redirect_to_a_domain_without_spf_is_permerror(server: TestDNSServer,
                                                             lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 redirect=_spf.example.net")
    server.add("_spf.example.net", "A", "192.0.2.1")
    assert await result(lookups) is SPFResult.PERMERROR


async def test_ten_lookups_pass_and_eleven_are_permerror(server: TestDNSServer,
                                                         lookups: Lookups) -> None:
    for n in range(11):
        server.add(f"h{n}.example.net", "A", f"198.51.100.{n + 1}")
    ten = " ".join(f"a:h{n}.example.net" for n in range(10))
    spf(server, "ten.example.com", f"v=spf1 {ten} ip4:{IP} -all")
    spf(server, "eleven.example.com", f"v=spf1 {ten} a:h10.example.net ip4:{IP} -all")
    verdict = await check_host(lookups, IP, "ten.example.com")
    assert (verdict.result, verdict.lookups) == (SPFResult.PASS, 10)
    verdict = await check_host(lookups, IP, "eleven.example.com")
    assert verdict.result is SPFResult.PERMERROR
    assert "more than 10 DNS lookups" in verdict.reason


async def test_lookups_count_across_includes(server: TestDNSServer, lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 include:a.example.net include:b.example.net -all")
    for name in ("a", "b"):
        terms = " ".join(f"a:{name}{n}.example.net" for n in range(5))
        spf(server, f"{name}.example.net", f"v=spf1 {terms} -all")
        for n in range(5):
            server.add(f"{name}{n}.example.net", "A", "198.51.100.1")
    verdict = await check_host(lookups, IP, "example.com")  # 2 includes + 10 a terms
    assert verdict.result is SPFResult.PERMERROR


async def test_more_than_two_void_lookups_are_permerror(server: TestDNSServer,
                                                        lookups: Lookups) -> None:
    spf(server, "two.example.com", "v=spf1 a:gone1.example.net a:gone2.example.net -all")
    spf(server, "three.example.com",
        "v=spf1 a:gone1.example.net a:gone2.example.net mx:gone3.example.net -all")
    assert await result(lookups, "two.example.com") is SPFResult.FAIL
    verdict = await check_host(lookups, IP, "three.example.com")
    assert verdict.result is SPFResult.PERMERROR
    assert "found nothing" in verdict.reason


async def test_mx_with_more_than_ten_hosts_is_permerror(server: TestDNSServer,
                                                        lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 mx -all")
    for n in range(11):
        server.add("example.com", "MX", f"{n} mx{n}.example.com.")
        server.add(f"mx{n}.example.com", "A", "198.51.100.1")
    assert await result(lookups) is SPFResult.PERMERROR


async def test_ptr_matches_a_validated_name(server: TestDNSServer, lookups: Lookups) -> None:
    server.add_zone("in-addr.arpa")
    server.add("25.2.0.192.in-addr.arpa", "PTR", "out.example.com.")
    server.add("out.example.com", "A", IP)
    spf(server, "example.com", "v=spf1 ptr -all")
    spf(server, "example.net", "v=spf1 ptr -all")
    assert await result(lookups) is SPFResult.PASS
    assert await result(lookups, "example.net") is SPFResult.FAIL  # name not under it


async def test_no_record_and_two_records(server: TestDNSServer, lookups: Lookups) -> None:
    server.add("example.com", "TXT", '"some verification token"')
    assert await result(lookups) is SPFResult.NONE
    assert await result(lookups, "nothing.example.com") is SPFResult.NONE
    spf(server, "two.example.com", f"v=spf1 ip4:{IP} -all")
    spf(server, "two.example.com", "v=spf1 -all")
    verdict = await check_host(lookups, IP, "two.example.com")
    assert verdict.result is SPFResult.PERMERROR
    assert "2 SPF records" in verdict.reason


async def test_record_split_in_strings_is_joined(server: TestDNSServer,
                                                 lookups: Lookups) -> None:
    server.add("example.com", "TXT", f'"v=spf1 ip4:198.51.100.1 " "ip4:{IP} -all"')
    assert await result(lookups) is SPFResult.PASS


async def test_servfail_is_temperror(server: TestDNSServer, lookups: Lookups) -> None:
    server.fail("example.com", "SERVFAIL")
    verdict = await check_host(lookups, IP, "example.com")
    assert verdict.result is SPFResult.TEMPERROR
    assert "SERVFAIL" in verdict.reason
    spf(server, "example.net", "v=spf1 include:broken.example.org -all")
    server.fail("broken.example.org", "SERVFAIL", "TXT")
    assert await result(lookups, "example.net") is SPFResult.TEMPERROR
    spf(server, "a.example.net", "v=spf1 a:broken.example.org -all")
    server.fail("broken.example.org", "SERVFAIL", "A")
    assert await result(lookups, "a.example.net") is SPFResult.TEMPERROR


async def test_a_silent_server_is_temperror_within_the_timeout(server: TestDNSServer) -> None:
    server.fail("example.com", "TIMEOUT")
    verdict = await check_host(Lookups([server.nameserver], timeout=0.3), IP, "example.com")
    assert verdict.result is SPFResult.TEMPERROR
    assert "no answer" in verdict.reason


# --- DKIM records ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> dkim.PrivateKey:
    return dkim.generate_key("rsa")


@pytest.fixture(scope="module")
def ed_key() -> dkim.PrivateKey:
    return dkim.generate_key("ed25519")


def test_parse_tags_strips_spaces() -> None:
    assert parse_tags(" v = DKIM1 ;k=rsa; p= AB CD ;") == {"v": "DKIM1", "k": "rsa", "p": "AB CD"}


def test_dkim_verdicts(rsa_key: dkim.PrivateKey, ed_key: dkim.PrivateKey) -> None:
    path = Path("/keys/k.pem")
    own = dkim.public_record(rsa_key)
    other = dkim.public_record(dkim.generate_key("rsa"))
    ed = dkim.public_record(ed_key)
    assert dkim_verdict(own, rsa_key, path)[0] == "ok"
    # k= defaults to rsa; spaces inside p= are folding whitespace (RFC 6376 3.6.1).
    p = own.partition("p=")[2]
    assert dkim_verdict(f"p={p[:50]} {p[50:]}", rsa_key, path)[0] == "ok"
    assert dkim_verdict(ed, ed_key, path)[0] == "ok"
    status, found = dkim_verdict(other, rsa_key, path)
    assert status == "error" and "key mismatch" in found and str(path) in found
    status, found = dkim_verdict("v=DKIM1; k=rsa; p=", rsa_key, path)
    assert status == "error" and "revoked" in found
    status, found = dkim_verdict(ed.replace("k=ed25519", "k=rsa"), ed_key, path)
    assert status == "error" and "k=rsa" in found
    status, found = dkim_verdict(own.replace("DKIM1", "DKIM2"), rsa_key, path)
    assert status == "error" and "v=DKIM2" in found
    assert "base64" in dkim_verdict("v=DKIM1; p=!!!", rsa_key, path)[1]
    assert dkim_verdict(own + "; t=y", rsa_key, path)[0] == "warning"
    assert "no p=" in dkim_verdict("k=rsa; h=sha256", rsa_key, path)[1]


def test_dkim_dns_record_is_the_keygen_line(rsa_key: dkim.PrivateKey) -> None:
    line = dkim.dns_record("example.com", "r1", rsa_key)
    assert line.startswith("r1._domainkey.example.com.  3600  IN  TXT  \"v=DKIM1; k=rsa; p=")
    assert record("TXT", "r1._domainkey.example.com", dkim.public_record(rsa_key)).line == line


# --- the plan and a whole run ------------------------------------------------------------


def config(tmp_path: Path, **overrides: object) -> Config:
    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "var", **overrides))
    return load_config(path).config


def test_plan_accepts_identities_and_account_identities(tmp_path: Path) -> None:
    cfg = config(tmp_path, identities={"example.net": {"mail_from_domain": "mf.example.net"}})
    assert plan(cfg, "Example.NET.").identity_key == "identities.example.net"
    assert plan(cfg, "sub.example.net").identity_key == "identities.example.net"
    assert plan(cfg, "example.com").identity_key == "identities.example.com"  # acme's
    assert plan(cfg, "mail.example.com").identity.dkim == []
    assert plan(cfg, "example.org").domain == "example.org"  # news@example.org
    with pytest.raises(UsageError, match=r"identities\.example\.invalid"):
        plan(cfg, "example.invalid")
    with pytest.raises(UsageError, match="--ip"):
        plan(cfg, "example.com", ips=["not-an-ip"])
    with pytest.raises(UsageError, match="--nameserver"):
        plan(cfg, "example.com", nameservers=["dns.example.com"])
    with pytest.raises(UsageError):
        plan(cfg, "not a domain")


def test_plan_lists_tracking_hosts_without_ports(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        configuration_sets={
            "a": {"tracking": {"click": True, "domain": "links.example.com:8443"}},
            "b": {"unsubscribe": {"one_click": True, "domain": "unsub.example.com"}},
            "c": {}},
        contact_lists={"news": {"account": "acme", "unsubscribe_domain": "lists.example.com"}},
        tracking_domains={"links.example.com:8443": {}, "unsub.example.com": {},
                          "lists.example.com": {}})
    assert plan(cfg, "example.com").tracking_hosts == (
        ("links.example.com", "configuration_sets.a.tracking.domain"),
        ("lists.example.com", "contact_lists.news.unsubscribe_domain"),
        ("unsub.example.com", "configuration_sets.b.unsubscribe.domain"))


async def test_run_reports_every_check(tmp_path: Path, server: TestDNSServer,
                                       lookups: Lookups, rsa_key: dkim.PrivateKey) -> None:
    key_file = tmp_path / "r1.pem"
    dkim.write_key(key_file, rsa_key)
    cfg = config(tmp_path, identities={"example.com": {
        "dkim": [{"selector": "r1", "key_file": str(key_file)},
                 {"selector": "gone", "key_file": str(tmp_path / "missing.pem")}],
        "mail_from_domain": "bounce.example.com"}})
    server.add("relay.test", "A", IP)
    value = dkim.public_record(rsa_key)
    server.add("r1._domainkey.example.com", "TXT",
               " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255)))
    spf(server, "example.com", f"v=spf1 ip4:{IP} -all")
    server.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject; rua=mailto:d@example.com"')
    server.add("bounce.example.com", "MX", "10 relay.test.")
    spf(server, "bounce.example.com", "v=spf1 a:relay.test -all")
    findings = await run(plan(cfg, "example.com"), lookups)
    got = [(f.check, f.status, f.name) for f in findings]
    assert got == [("addresses", "ok", "relay.test"),
                   ("dkim", "ok", "r1._domainkey.example.com"),
                   ("dkim", "error", "gone._domainkey.example.com"),
                   ("spf", "ok", "example.com"),
                   ("dmarc", "ok", "_dmarc.example.com"),
                   ("mail-from-mx", "ok", "bounce.example.com"),
                   ("mail-from-spf", "ok", "bounce.example.com")]
    missing = findings[2]
    assert missing.config_key == "identities.example.com.dkim[1].key_file"
    assert "does not exist" in missing.found
    assert "p=reject" in findings[4].found


async def test_run_without_keys_or_address(tmp_path: Path, server: TestDNSServer,
                                           lookups: Lookups) -> None:
    spf(server, "example.com", "v=spf1 a:relay.test -all")
    findings = await run(plan(config(tmp_path), "example.com"), lookups)
    by_check = {f.check: f for f in findings}
    assert by_check["addresses"].status == "warning"
    assert "--ip" in by_check["addresses"].fix
    assert by_check["dkim"].status == "warning"
    assert "identities.example.com.dkim" in by_check["dkim"].found
    assert by_check["spf"].status == "warning"  # found, but nothing to check it against


async def test_smarthost_mode_skips_the_relay_addresses(tmp_path: Path,
                                                        lookups: Lookups) -> None:
    cfg = config(tmp_path, delivery={"mode": "smarthost",
                                     "smarthost": {"host": "smtp.example.net"}})
    findings = await run(plan(cfg, "example.com"), lookups)
    assert findings[0].status == "warning"
    assert "delivery.mode is smarthost" in findings[0].found
    with_ip = await run(plan(cfg, "example.com", ips=[IP]), lookups)
    assert with_ip[0].status == "ok"


def test_render_prints_one_line_per_finding_and_publish_lines() -> None:
    findings = [
        Finding("spf", "ok", "example.com", '"v=spf1 -all"'),
        Finding("dmarc", "warning", "_dmarc.example.com", "no DMARC record", "publish one",
                (record("TXT", "_dmarc.example.com", "v=DMARC1; p=none"),)),
    ]
    assert render(findings).splitlines() == [
        'ok       spf    example.com: "v=spf1 -all"',
        "warning  dmarc  _dmarc.example.com: no DMARC record",
        "    fix: publish one",
        '    publish: _dmarc.example.com.  3600  IN  TXT  "v=DMARC1; p=none"',
        "1 of 2 findings need action",
    ]


async def test_run_warns_about_plus_all_and_extra_records(
        tmp_path: Path, server: TestDNSServer, lookups: Lookups,
        ed_key: dkim.PrivateKey) -> None:
    key_file = tmp_path / "e1.pem"
    dkim.write_key(key_file, ed_key)
    cfg = config(tmp_path, identities={"example.com": {
        "dkim": [{"selector": "e1", "key_file": str(key_file)}]}})
    server.add("e1._domainkey.example.com", "TXT", f'"{dkim.public_record(ed_key)}"')
    server.add("e1._domainkey.example.com", "TXT", '"v=DKIM1; k=ed25519; p=old"')
    spf(server, "example.com", "v=spf1 +all")
    server.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=none"')
    server.add("_dmarc.example.com", "TXT", '"v=DMARC1; p=reject"')
    findings = {f.check: f for f in await run(plan(cfg, "example.com", ips=[IP]), lookups)}
    assert findings["dkim"].status == "warning"
    assert "2 TXT records" in findings["dkim"].found
    assert findings["spf"].status == "warning" and "+all" in findings["spf"].found
    assert findings["dmarc"].status == "error" and "2 DMARC records" in findings["dmarc"].found
