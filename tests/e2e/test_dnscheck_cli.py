"""`smtprelay dns-check DOMAIN` as an operator runs it, against a real DNS server.

The CLI runs as a subprocess; its resolver asks the test DNS server (tests/dnsserver.py)
named in delivery.dns.nameservers. DKIM keys are made with `smtprelay dkim keygen`, and
the records published are the lines keygen printed, so these tests also hold the two
commands to the same record text.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import TestDNSServer
from tests.support import base_config, free_port, write_config

IP = "192.0.2.25"
IP6 = "2001:db8::25"


def smtprelay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtprelay", *args],
                          capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class Key:
    selector: str
    path: Path
    line: str  # the zone-file line keygen printed

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.example.com"

    @property
    def strings(self) -> str:
        """The record's quoted strings, as a zone file (and TestDNSServer.add) takes them."""
        return self.line.split("  IN  TXT  ", 1)[1]


def keygen(directory: Path, selector: str, kind: str) -> Key:
    path = directory / f"example.com.{selector}.pem"
    run = smtprelay("dkim", "keygen", "example.com", "--selector", selector, "--type", kind,
                    "--out", str(path))
    assert run.returncode == 0, run.stderr
    line = next(x for x in run.stdout.splitlines() if x.startswith(f"{selector}._domainkey."))
    return Key(selector, path, line)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("dkim")
    return {"rsa": keygen(directory, "r2026", "rsa"),
            "ed25519": keygen(directory, "e2026", "ed25519"),
            "other": keygen(directory, "o2026", "rsa")}


class World:
    """A configuration for example.com and DNS publishing everything it needs."""

    def __init__(self, tmp_path: Path, server: TestDNSServer, keys: dict[str, Key]) -> None:
        self.tmp_path = tmp_path
        self.dns = server
        self.keys = keys
        self.config = base_config(
            tmp_path / "var",
            identities={"example.com": {
                "dkim": [{"selector": keys["rsa"].selector, "key_file": str(keys["rsa"].path)},
                         {"selector": keys["ed25519"].selector,
                          "key_file": str(keys["ed25519"].path)}],
                "mail_from_domain": "bounce.example.com"}},
            configuration_sets={"transactional": {
                "tracking": {"open": True, "click": True, "domain": "links.example.com"},
                "unsubscribe": {"one_click": True, "domain": "unsub.example.com:8443"}}},
            tracking_domains={"links.example.com": {}, "unsub.example.com:8443": {}},
            delivery={"mode": "hold", "dns": {"nameservers": [server.nameserver],
                                              "timeout": "2s"}})
        server.add("relay.test", "A", IP)
        server.add("relay.test", "AAAA", IP6)
        for key in (keys["rsa"], keys["ed25519"]):
            server.add(key.name, "TXT", key.strings)
        self.txt("example.com", f"v=spf1 ip4:{IP} ip6:{IP6} -all")
        self.txt("_dmarc.example.com", "v=DMARC1; p=quarantine; rua=mailto:d@example.com")
        server.add("bounce.example.com", "MX", "10 relay.test.")
        self.txt("bounce.example.com", "v=spf1 a:relay.test -all")
        server.add("links.example.com", "CNAME", "relay.test.")
        server.add("unsub.example.com", "A", IP)

    def txt(self, name: str, value: str) -> None:
        self.dns.add(name, "TXT", f'"{value}"')

    def check(self, *args: str, domain: str = "example.com") -> subprocess.CompletedProcess[str]:
        path = write_config(self.tmp_path / "smtprelay.yaml", self.config)
        run = smtprelay("dns-check", domain, "-c", str(path), *args)
        assert "Traceback" not in run.stderr, run.stderr
        return run

    def findings(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        run = self.check("--json", *args)
        return run.returncode, json.loads(run.stdout)


@pytest.fixture
def world(tmp_path: Path, dns_server: TestDNSServer,
          keys: dict[str, Key]) -> World:
    return World(tmp_path, dns_server, keys)


def finding(findings: list[dict[str, Any]], check: str, name: str = "") -> dict[str, Any]:
    found = [f for f in findings if f["check"] == check and (not name or f["name"] == name)]
    assert len(found) == 1, findings
    return found[0]


def line_of(output: str, check: str, name: str) -> str:
    """The finding line for (check, name) and its indented lines, from human output."""
    lines = output.splitlines()
    pattern = re.compile(rf"^\S+\s+{re.escape(check)}\s+{re.escape(name)}:")
    for index, line in enumerate(lines):
        if pattern.match(line):
            block = [line]
            for more in lines[index + 1:]:
                if not more.startswith("    "):
                    break
                block.append(more)
            return "\n".join(block)
    raise AssertionError(f"no {check} finding for {name} in:\n{output}")


def test_a_fully_published_domain_passes(world: World) -> None:
    run = world.check()
    assert run.returncode == 0, run.stdout
    lines = run.stdout.splitlines()
    assert lines[-1] == "all 9 findings ok"
    assert all(line.startswith("ok ") for line in lines[:-1]), run.stdout
    assert f"addresses of server.hostname: {IP}, {IP6}" in run.stdout
    assert "policy p=quarantine" in run.stdout
    assert "through CNAME relay.test" in line_of(run.stdout, "tracking", "links.example.com")
    assert "unsub.example.com:" in run.stdout  # the port is not part of the DNS name


def test_missing_dkim_record_prints_what_keygen_printed(world: World) -> None:
    world.dns.remove(world.keys["ed25519"].name)
    run = world.check()
    assert run.returncode == 1
    block = line_of(run.stdout, "dkim", world.keys["ed25519"].name)
    assert block.startswith("error")
    assert "no TXT record" in block
    assert f"    publish: {world.keys['ed25519'].line}" in block.splitlines()


def test_mismatched_dkim_key_names_the_key_file(world: World) -> None:
    rsa = world.keys["rsa"]
    world.dns.remove(rsa.name)
    world.dns.add(rsa.name, "TXT", world.keys["other"].strings)
    code, findings = world.findings()
    assert code == 1
    dkim = finding(findings, "dkim", rsa.name)
    assert dkim["status"] == "error"
    assert "key mismatch" in dkim["found"] and str(rsa.path) in dkim["found"]
    assert dkim["config_key"] == "identities.example.com.dkim[0]"
    assert [p["line"] for p in dkim["publish"]] == [rsa.line]


def test_revoked_dkim_key(world: World) -> None:
    ed = world.keys["ed25519"]
    world.dns.remove(ed.name)
    world.txt(ed.name, "v=DKIM1; k=ed25519; p=")
    code, findings = world.findings()
    assert code == 1
    dkim = finding(findings, "dkim", ed.name)
    assert dkim["status"] == "error" and "revoked" in dkim["found"]


def test_wrong_key_type(world: World) -> None:
    ed = world.keys["ed25519"]
    world.dns.remove(ed.name)
    world.dns.add(ed.name, "TXT", ed.strings.replace("k=ed25519", "k=rsa"))
    code, findings = world.findings()
    assert code == 1
    assert "k=rsa" in finding(findings, "dkim", ed.name)["found"]


def test_unreadable_key_file_is_a_finding_not_a_traceback(world: World) -> None:
    world.config["identities"]["example.com"]["dkim"][0]["key_file"] = str(
        world.tmp_path / "nope.pem")
    run = world.check()
    assert run.returncode == 1
    block = line_of(run.stdout, "dkim", world.keys["rsa"].name)
    assert "identities.example.com.dkim[0].key_file" in block and "does not exist" in block


def test_two_spf_records(world: World) -> None:
    world.txt("example.com", "v=spf1 include:_spf.mailer.example.net ~all")
    code, findings = world.findings()
    assert code == 1
    spf = finding(findings, "spf")
    assert spf["status"] == "error"
    assert "2 SPF records" in spf["found"] and "RFC 7208 4.5" in spf["found"]
    assert spf["publish"][0]["value"] == (  # sorted, so the same on every run
        f"v=spf1 include:_spf.mailer.example.net ip4:{IP} ip6:{IP6} -all")


def test_spf_not_listing_the_relay(world: World) -> None:
    world.dns.remove("example.com", "TXT")
    world.txt("example.com", "v=spf1 ip4:198.51.100.7 include:_spf.mailer.example.net ~all")
    world.txt("_spf.mailer.example.net", "v=spf1 ip4:198.51.100.0/24 -all")
    run = world.check()
    assert run.returncode == 1
    block = line_of(run.stdout, "spf", "example.com")
    assert block.startswith("error")
    assert f"{IP}: softfail (~all)" in block
    assert ('    publish: example.com.  3600  IN  TXT  "v=spf1 ip4:192.0.2.25 ip6:2001:db8::25 '
            'ip4:198.51.100.7 include:_spf.mailer.example.net ~all"') in block.splitlines()


@pytest.mark.parametrize("published", [
    "v=spf1 include:_spf.example.net -all",
    "v=spf1 redirect=_spf.example.net",
])
def test_spf_through_include_and_redirect(world: World, published: str) -> None:
    world.dns.remove("example.com", "TXT")
    world.txt("example.com", published)
    world.txt("_spf.example.net", "v=spf1 a:relay.test -all")
    code, findings = world.findings()
    spf = finding(findings, "spf")
    assert spf["status"] == "ok", spf
    assert "_spf.example.net" in spf["found"] and "pass" in spf["found"]
    assert code == 0


def test_spf_with_eleven_lookups_is_permerror(world: World) -> None:
    world.dns.remove("example.com", "TXT")
    terms = " ".join(f"a:h{n}.example.net" for n in range(11))
    world.txt("example.com", f"v=spf1 {terms} -all")
    for n in range(11):
        world.dns.add(f"h{n}.example.net", "A", "198.51.100.1")
    code, findings = world.findings()
    assert code == 1
    spf = finding(findings, "spf")
    assert spf["status"] == "error"
    assert "permerror" in spf["found"] and "more than 10 DNS lookups" in spf["found"]


def test_addresses_given_with_ip(world: World) -> None:
    code, findings = world.findings("--ip", "198.51.100.9")
    assert code == 1
    assert "--ip: 198.51.100.9" in finding(findings, "addresses")["found"]
    assert "198.51.100.9: fail" in finding(findings, "spf")["found"]


def test_missing_dmarc_suggests_a_record(world: World) -> None:
    world.dns.remove("_dmarc.example.com")
    run = world.check()
    assert run.returncode == 1
    block = line_of(run.stdout, "dmarc", "_dmarc.example.com")
    assert block.startswith("warning")
    assert "organisational domain" in block
    assert ('    publish: _dmarc.example.com.  3600  IN  TXT  '
            '"v=DMARC1; p=none; rua=mailto:dmarc@example.com"') in block.splitlines()


def test_mail_from_domain_without_mx(world: World) -> None:
    world.dns.remove("bounce.example.com", "MX")
    code, findings = world.findings()
    assert code == 1
    mx = finding(findings, "mail-from-mx")
    assert mx["status"] == "error"
    assert mx["config_key"] == "identities.example.com.mail_from_domain"
    assert [(p["type"], p["name"], p["value"]) for p in mx["publish"]] == [
        ("MX", "bounce.example.com", "10 relay.test.")]
    assert finding(findings, "mail-from-spf")["status"] == "ok"


def test_tracking_domain_without_address(world: World) -> None:
    world.dns.remove("unsub.example.com")
    code, findings = world.findings()
    assert code == 1
    tracking = finding(findings, "tracking", "unsub.example.com")
    assert tracking["status"] == "error"
    assert tracking["config_key"] == "configuration_sets.transactional.unsubscribe.domain"
    assert tracking["publish"][0]["line"] == "unsub.example.com.  3600  IN  CNAME  relay.test."


def test_servfail_is_a_failed_lookup_not_a_missing_record(world: World) -> None:
    world.dns.fail("example.com", "SERVFAIL", "TXT")
    world.dns.fail("_spf.example.net", "SERVFAIL")
    world.dns.remove("bounce.example.com", "TXT")
    world.txt("bounce.example.com", "v=spf1 include:_spf.example.net -all")
    code, findings = world.findings()
    assert code == 1
    spf = finding(findings, "spf")
    assert spf["status"] == "error"
    assert "lookup failed" in spf["found"] and "SERVFAIL" in spf["found"]
    assert "temperror" in spf["found"] and spf["publish"] == []
    nested = finding(findings, "mail-from-spf")
    assert "temperror" in nested["found"] and "SERVFAIL" in nested["found"]


def test_dns_down_is_reported_without_traceback(world: World) -> None:
    world.config["delivery"]["dns"] = {"nameservers": [f"127.0.0.1:{free_port()}"],
                                       "timeout": "0.5s"}
    run = world.check()
    assert run.returncode == 1
    assert "no SPF record" not in run.stdout and "publish" not in run.stdout
    resolver = line_of(run.stdout, "resolver", world.config["delivery"]["dns"]["nameservers"][0])
    assert "did not answer: no answer within 0.5s; nothing was checked" in resolver
    assert "fix: check that it runs and is reachable from here" in resolver
    assert len(run.stdout.strip().splitlines()) == 3  # the finding, its fix, the count
    # --nameserver overrides the configuration.
    run = world.check("--nameserver", world.dns.nameserver)
    assert run.returncode == 0, run.stdout


def test_a_failed_address_lookup_asks_to_check_the_resolver_not_to_publish(
        world: World) -> None:
    world.dns.fail("relay.test", "SERVFAIL")
    run = world.check()
    addresses = line_of(run.stdout, "addresses", "relay.test")
    assert "A lookup failed" in addresses and "SERVFAIL" in addresses
    assert "the lookup failed, not the records: check the resolver" in addresses
    assert "publish the relay's A/AAAA records" not in addresses


def test_without_a_configuration_file_the_domain_alone_is_checked(world: World) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SMTPRELAY_CONFIG"}
    run = subprocess.run(
        [sys.executable, "-m", "smtprelay", "dns-check", "example.com", "--json",
         "--nameserver", world.dns.nameserver, "--ip", IP],
        capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "Traceback" not in run.stderr and "configuration" not in run.stderr, run.stderr
    findings = json.loads(run.stdout)
    assert [f["check"] for f in findings] == ["addresses", "dkim", "spf", "dmarc"]
    assert finding(findings, "spf")["status"] == "ok"
    assert finding(findings, "dmarc")["status"] == "ok"
    dkim = finding(findings, "dkim")
    assert dkim["status"] == "warning" and "-c FILE" in dkim["fix"]
    assert run.returncode == 1  # the DKIM records could not be checked


def test_on_a_terminal_it_says_what_it_waits_for_before_it_waits(world: World) -> None:
    path = write_config(world.tmp_path / "smtprelay.yaml", world.config)
    terminal, stderr = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "smtprelay", "dns-check", "example.com", "-c", str(path)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=60, check=False)
        os.close(stderr)
        said = b""
        while chunk := _read_terminal(terminal):
            said += chunk
    finally:
        os.close(terminal)
    assert run.returncode == 0, run.stdout
    assert (f"checking example.com with {world.dns.nameserver} (each lookup waits up to "
            "2s)...").encode() in said  # delivery.dns.timeout in the world


def _read_terminal(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other end is closed and everything was read
        return b""


def test_json_output_shape(world: World) -> None:
    world.dns.remove("_dmarc.example.com")
    code, findings = world.findings()
    assert code == 1
    assert isinstance(findings, list) and len(findings) == 9
    for item in findings:
        assert set(item) == {"check", "status", "name", "found", "fix", "config_key",
                             "publish"}
        assert item["status"] in ("ok", "warning", "error")
        for entry in item["publish"]:
            assert set(entry) == {"type", "name", "value", "line"}
    assert [f["check"] for f in findings] == [
        "addresses", "dkim", "dkim", "spf", "dmarc", "mail-from-mx", "mail-from-spf",
        "tracking", "tracking"]
    dmarc = finding(findings, "dmarc")
    assert (dmarc["status"], dmarc["fix"] != "") == ("warning", True)


def test_unknown_domain_is_a_usage_error(world: World) -> None:
    run = world.check(domain="elsewhere.example.net")
    assert run.returncode == 2
    assert "identities.elsewhere.example.net" in run.stderr
    assert run.stdout == ""
    run = world.check("--ip", "300.1.2.3")
    assert run.returncode == 2 and "--ip" in run.stderr
