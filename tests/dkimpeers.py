"""Independent DKIM verifiers for tests: OpenDKIM and Perl's Mail::DKIM, asking real DNS.

Neither shares code with dkimpy. Both look the public key up at
<selector>._domainkey.<domain> on the test DNS server (tests/dnsserver.py), where a
test publishes the record `smtprelay dkim keygen` printed:
- OpenDKIM (Debian `opendkim`), in its test mode `opendkim -t FILE`, with
  `Nameservers 127.0.0.1@PORT`; it verifies rsa-sha256 and ed25519-sha256.
- Mail::DKIM (Debian `libmail-dkim-perl`) through a Net::DNS resolver on that port;
  Debian 12's version (1.20230212) knows rsa-sha256 only and reports an Ed25519
  signature as "invalid (unsupported algorithm ed25519-sha256)".
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import TestDNSServer
from tests.support import IN_CI, need_program

# One result per line in OpenDKIM's Authentication-Results, e.g.
#   dkim=pass (2048-bit key; unprotected) header.d=example.com header.i=@example.com
#   header.a=rsa-sha256 header.s=r2026 header.b=KuhT3xTw;
_AR_RESULT = re.compile(r"^\s*dkim=(\w+)\b.*?\bheader\.d=(\S+)\b.*?\bheader\.a=(\S+) "
                        r"header\.s=([^\s;]+)", re.MULTILINE)

_MAIL_DKIM = r"""
use strict;
use Mail::DKIM::Verifier;
use Net::DNS;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => [$ARGV[0]], port => $ARGV[1], recurse => 0, tcp_timeout => 5,
    udp_timeout => 5));
my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
local $/;
my $message = <STDIN>;
$verifier->PRINT($message);
$verifier->CLOSE;
foreach my $sig ($verifier->signatures) {
    printf "%s %s %s %s\n", $sig->domain, $sig->selector, $sig->algorithm,
        $sig->result_detail;
}
"""


@dataclass(frozen=True)
class Result:
    domain: str
    selector: str
    algorithm: str
    result: str  # pass, fail, neutral, invalid... as the verifier says it


def publish(dns: TestDNSServer, zone_line: str) -> None:
    """Serve a TXT record given as a zone file line (`smtprelay dkim keygen` prints one)."""
    name, ttl, klass, rdtype, value = zone_line.split(None, 4)
    assert (klass, rdtype) == ("IN", "TXT"), zone_line
    dns.add(name, "TXT", value, ttl=int(ttl))


def record_line(keygen_output: str) -> str:
    """The TXT record line from keygen's output."""
    lines = [line for line in keygen_output.splitlines() if "._domainkey." in line
             and " IN " in line]
    assert len(lines) == 1, keygen_output
    return lines[0]


# The keys the end-to-end tests sign with: an RSA and an Ed25519 key for example.com,
# made by `smtprelay dkim keygen` (tests/e2e/conftest.py's `keys` fixture).

@dataclass(frozen=True)
class Key:
    selector: str
    path: Path
    record: str  # the zone file line keygen printed


def identities(keys: dict[str, Key]) -> dict[str, Any]:
    return {"example.com": {"dkim": [{"selector": k.selector, "key_file": str(k.path)}
                                     for k in (keys["rsa"], keys["ed25519"])]}}


def ours(results: list[Result]) -> dict[str, str]:
    return {r.algorithm: r.result for r in results
            if r.domain == "example.com" and r.selector in ("r2026", "e2026")}


def opendkim(message: bytes, dns: TestDNSServer, workdir: Path) -> list[Result]:
    """Every signature's result as OpenDKIM writes it in Authentication-Results."""
    program = need_program("opendkim")
    host, port = dns.address
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "opendkim.conf"
    conf.write_text(f"Mode v\nNameservers {host}@{port}\nSyslog no\nAlwaysAddARHeader yes\n"
                    "AuthservID verifier.test\n")
    path = workdir / "message.eml"
    path.write_bytes(message)
    run = subprocess.run([program, "-x", str(conf), "-t", str(path), "-vvv"],
                         capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    headers = re.findall(r"hname='Authentication-Results' hvalue='([^']*)'", output)
    assert run.returncode == 0 and len(headers) == 1, \
        f"{shlex.join(run.args)} -> {run.returncode}:\n{output}"
    return [Result(d, s, a, result) for result, d, a, s in _AR_RESULT.findall(headers[0])]


def mail_dkim(message: bytes, dns: TestDNSServer) -> list[Result]:
    """Every signature's result as Mail::DKIM::Verifier details it."""
    perl = need_program("perl")
    if subprocess.run([perl, "-MMail::DKIM::Verifier", "-e", "1"],
                      capture_output=True).returncode != 0:
        message_ = "Mail::DKIM is not installed (libmail-dkim-perl; scripts/test installs it)"
        pytest.fail(message_) if IN_CI else pytest.skip(message_)
    host, port = dns.address
    run = subprocess.run([perl, "-e", _MAIL_DKIM, host, str(port)], input=message,
                         capture_output=True, timeout=60)
    output = run.stdout.decode(errors="replace")
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    results = []
    for line in output.splitlines():
        domain, selector, algorithm, detail = line.split(" ", 3)
        results.append(Result(domain, selector, algorithm, detail))
    return results
