"""`smtprelay dns-check DOMAIN`: are a sending domain's DNS records published, and right?

SES will not send for an identity until it has seen its records; smtprelay cannot
stop an operator from sending before publishing, so this is the same "verify
identity" step as a command. It asks DNS what receivers will ask, and turns each
answer into a finding that says what to publish:

- DKIM: the TXT record of every configured key, compared with the public half of
  the key file (so a record copied from an older key is caught, not only a missing
  one), expected text exactly as `smtprelay dkim keygen` prints it;
- SPF of the domain and of its MAIL FROM domain: one record, and the relay's own
  sending addresses authorised by it. A record that exists but does not list the
  relay is the usual mistake, so the record is evaluated with RFC 7208 check_host;
  our evaluator rather than pyspf, so that lookups go through the same configured
  resolver and async loop, and each verdict says which term decided it;
- DMARC, the MAIL FROM MX, and the tracking hosts' addresses;
- each IP pool address's PTR record, forward-confirmed (FCrDNS: an A/AAAA record of
  the PTR name holds the address) and naming the address's HELO name, as receivers
  check a sending IP (the pool addresses are also the ones SPF must authorise).

A lookup that fails (timeout, SERVFAIL) is reported as a failed lookup, never as a
missing record: telling an operator to publish what is already there is worse than
saying DNS did not answer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import dns.reversename
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from smtprelay.config import Config, IdentityConfig, check_domain, parse_nameserver
from smtprelay.delivery.dns import stub_resolver
from smtprelay.transform import dkim

Status = Literal["ok", "warning", "error"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

TTL = 3600  # in suggested records, as `dkim keygen` prints


class UsageError(ValueError):
    """The command cannot run as asked (unknown domain, bad --ip); says what to change."""


# --- findings --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """A record to publish, and the zone-file line that publishes it."""

    type: str
    name: str
    value: str
    line: str

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "name": self.name, "value": self.value, "line": self.line}


def record(rtype: str, name: str, value: str) -> Record:
    shown = dkim.txt_strings(value) if rtype == "TXT" else value
    return Record(rtype, name, value, f"{name}.  {TTL}  IN  {rtype}  {shown}")


@dataclass(frozen=True, slots=True)
class Finding:
    """One verdict on one DNS name: what was found and, unless ok, what to do."""

    check: str  # addresses | dkim | spf | dmarc | mail-from-mx | mail-from-spf | tracking
    status: Status
    name: str  # the DNS name looked at
    found: str
    fix: str = ""
    publish: tuple[Record, ...] = ()
    config_key: str = ""  # the configuration key this finding is about, if any

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_json(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "name": self.name,
                "found": self.found, "fix": self.fix, "config_key": self.config_key,
                "publish": [r.as_json() for r in self.publish]}


def render(findings: Sequence[Finding]) -> str:
    """Human output: one line per finding, then indented fix: and publish: lines."""
    width = max((len(f.check) for f in findings), default=0)
    lines: list[str] = []
    for f in findings:
        lines.append(f"{f.status:<7}  {f.check:<{width}}  {f.name}: {f.found}")
        if f.fix:
            lines.append(f"    fix: {f.fix}")
        lines.extend(f"    publish: {r.line}" for r in f.publish)
    bad = sum(1 for f in findings if not f.ok)
    lines.append(f"{bad} of {len(findings)} findings need action" if bad
                 else f"all {len(findings)} findings ok")
    return "\n".join(lines)


# --- DNS -------------------------------------------------------------------------------


class Kind(StrEnum):
    ANSWER = "answer"
    NODATA = "nodata"  # the name exists without records of the type
    NXDOMAIN = "nxdomain"
    FAILED = "failed"  # timeout, SERVFAIL, REFUSED: DNS could not say


@dataclass(frozen=True, slots=True)
class Answer:
    kind: Kind
    values: tuple[str, ...] = ()  # addresses, TXT texts (strings joined), PTR/CNAME targets
    mx: tuple[tuple[int, str], ...] = ()
    canonical: str = ""  # the name after CNAMEs
    detail: str = ""  # for FAILED: "SERVFAIL from 127.0.0.1:5353"

    @property
    def void(self) -> bool:
        return self.kind in (Kind.NODATA, Kind.NXDOMAIN)


def _show(name: dns.name.Name) -> str:
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _server_text(server: str) -> str:
    """dnspython's "Do53:127.0.0.1@5353" as "127.0.0.1:5353" ("[::1]:53" for IPv6)."""
    server = server.removeprefix("Do53:")
    host, sep, port = server.rpartition("@")
    if sep:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return server


def _failure(exc: dns.resolver.NoNameservers) -> str:
    """dnspython's per-server error list as "SERVFAIL from 127.0.0.1:5353"."""
    seen: list[str] = []
    for entry in exc.kwargs.get("errors") or ():
        try:
            server, error = _server_text(str(entry[0])), entry[3]
        except (IndexError, TypeError):
            continue
        what = error if isinstance(error, str) else (
            "no answer" if isinstance(error, dns.exception.Timeout)
            else str(error) or type(error).__name__)
        text = f"{what} from {server}"
        if text not in seen:
            seen.append(text)
    return "; ".join(seen) or "every nameserver failed"


class Lookups:
    """The resolver for one run, with a cache: SPF evaluation asks for names repeatedly."""

    def __init__(self, nameservers: Sequence[str] = (), timeout: float = 5.0) -> None:
        """``nameservers`` empty: the system resolver. UsageError for a bad address, or
        when there is no system configuration to use."""
        try:
            self._resolver = stub_resolver(nameservers, timeout)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except dns.exception.DNSException as exc:
            raise UsageError(f"no system resolver ({exc}); give one with "
                             "--nameserver HOST[:PORT] or delivery.dns.nameservers") from None
        self.timeout = timeout
        self._cache: dict[tuple[str, str], asyncio.Task[Answer]] = {}

    @property
    def servers(self) -> list[str]:
        return [_server_text(str(s)) for s in self._resolver.nameservers]

    def no_answer(self, answer: Answer) -> bool:
        """The failure was silence (every server timed out), not an error reply."""
        return answer.kind is Kind.FAILED and (
            answer.detail.startswith("no answer") or all(
                part.startswith("no answer") for part in answer.detail.split("; ")))

    async def query(self, name: str, rdtype: str) -> Answer:
        key = (name.lower().rstrip("."), rdtype)
        task = self._cache.get(key)
        if task is None:
            task = asyncio.ensure_future(self._query(*key))
            self._cache[key] = task
        return await asyncio.shield(task)

    async def _query(self, name: str, rdtype: str) -> Answer:
        try:
            qname = dns.name.from_text(name, origin=dns.name.root)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return Answer(Kind.NXDOMAIN, detail=f"{name!r} is not a valid DNS name")
        try:
            answer = await self._resolver.resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer(Kind.NXDOMAIN)
        except dns.resolver.NoNameservers as exc:
            return Answer(Kind.FAILED, detail=_failure(exc))
        except dns.exception.Timeout:
            return Answer(Kind.FAILED, detail=f"no answer within {self.timeout:g}s")
        except dns.exception.DNSException as exc:
            return Answer(Kind.FAILED, detail=str(exc) or type(exc).__name__)
        canonical = _show(answer.canonical_name)
        if answer.rrset is None or not len(answer.rrset):
            return Answer(Kind.NODATA, canonical=canonical)
        values: list[str] = []
        mx: list[tuple[int, str]] = []
        for rdata in answer.rrset:
            if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
                values.append(str(rdata.address))
            elif isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
                values.append(b"".join(rdata.strings).decode("utf-8", "replace"))
            elif isinstance(rdata, dns.rdtypes.ANY.MX.MX):
                mx.append((rdata.preference, _show(rdata.exchange)))
            elif isinstance(rdata, dns.rdtypes.ANY.PTR.PTR | dns.rdtypes.ANY.CNAME.CNAME):
                values.append(_show(rdata.target))
        return Answer(Kind.ANSWER, tuple(values), tuple(sorted(mx)), canonical)


# --- SPF (RFC 7208 check_host) ---------------------------------------------------------


class SPFResult(StrEnum):
    PASS = "pass"  # noqa: S105 - an SPF result, not a password
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


MAX_LOOKUPS = 10  # RFC 7208 4.6.4: include, a, mx, ptr, exists and redirect together
MAX_VOID_LOOKUPS = 2  # RFC 7208 4.6.4: answers with no records
MAX_NAMES = 10  # RFC 7208 4.6.4: MX hosts per mx, PTR names per ptr

_QUALIFIERS = {"+": SPFResult.PASS, "-": SPFResult.FAIL, "~": SPFResult.SOFTFAIL,
               "?": SPFResult.NEUTRAL}
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_COSTLY = ("include", "a", "mx", "ptr", "exists")
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)", re.S)
_MACRO = re.compile(r"%(?:\{([A-Za-z])(\d*)(r?)([.\-+,/_=]*)\}|(.))", re.I)
_CIDR = re.compile(r"(.*?)(?:/(0|[1-9]\d{0,2}))?(?://(0|[1-9]\d{0,2}))?", re.S)
_TOPLABEL = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?")


class SPFError(Exception):
    """Ends evaluation with permerror or temperror (RFC 7208 4.6, 5)."""

    def __init__(self, result: SPFResult, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Term:
    text: str
    qualifier: SPFResult
    mechanism: str
    target: str | None = None  # domain-spec (unexpanded), or the network for ip4/ip6
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class SPFRecord:
    terms: tuple[Term, ...]
    redirect: str | None


def is_spf(text: str) -> bool:
    """A TXT record that is an SPF record (RFC 7208 4.5: "v=spf1" then space or end)."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _check_domain_spec(spec: str, term: str) -> None:
    """RFC 7208 7.1: valid macros, and a domain-end that is a top label or a macro."""
    pos = spec.find("%")
    while pos >= 0:
        match = _MACRO.match(spec, pos)
        if match is None:
            raise SPFError(SPFResult.PERMERROR, f"a lone % at the end of {term!r}")
        letter, single = match.group(1), match.group(5)
        if single is not None and single not in "%_-":
            raise SPFError(SPFResult.PERMERROR, f"bad macro %{single} in {term!r}")
        if letter is not None and letter.lower() not in "slodiphv":
            raise SPFError(SPFResult.PERMERROR, f"macro %{{{letter}}} is not allowed in "
                                                f"{term!r} (only in exp=)")
        if match.group(2) and int(match.group(2)) == 0:
            raise SPFError(SPFResult.PERMERROR, f"a macro keeps 0 parts in {term!r}")
        pos = spec.find("%", match.end())
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in spec):
        raise SPFError(SPFResult.PERMERROR, f"bad character in {term!r}")
    if spec.endswith("}"):
        return
    last = spec.rstrip(".").rpartition(".")
    if not last[1] or not _TOPLABEL.fullmatch(last[2]):
        raise SPFError(SPFResult.PERMERROR, f"{term!r} does not name a domain")


def parse_spf(text: str) -> SPFRecord:
    """The terms of an SPF record; SPFError(permerror) for any syntax error (RFC 7208 4.6)."""
    if not is_spf(text):
        raise SPFError(SPFResult.PERMERROR, "not an SPF record (no v=spf1)")
    terms: list[Term] = []
    modifiers: dict[str, str] = {}
    for word in text[6:].split(" "):
        if not word:
            continue
        modifier = _MODIFIER.fullmatch(word)
        if modifier is not None:
            name, value = modifier.group(1).lower(), modifier.group(2)
            if name in ("redirect", "exp"):
                if name in modifiers:
                    raise SPFError(SPFResult.PERMERROR, f"{name}= appears twice")
                _check_domain_spec(value, word)
                modifiers[name] = value
            continue  # unknown modifiers are ignored (RFC 7208 6)
        terms.append(_parse_mechanism(word))
    return SPFRecord(tuple(terms), modifiers.get("redirect"))


def _parse_mechanism(word: str) -> Term:
    qualifier = _QUALIFIERS.get(word[0])
    body = word[1:] if qualifier is not None else word
    name, sep, arg = body.partition(":")
    cidr_text = ""
    if not sep and "/" in name:
        name, _, rest = name.partition("/")
        cidr_text = "/" + rest
    name = name.lower()
    if name not in _MECHANISMS:
        raise SPFError(SPFResult.PERMERROR, f"unknown mechanism {word!r}")
    result = qualifier or SPFResult.PASS
    if name == "all":
        if sep or cidr_text:
            raise SPFError(SPFResult.PERMERROR, f"{word!r}: all takes no argument")
        return Term(word, result, name)
    if name in ("ip4", "ip6"):
        if not sep:
            raise SPFError(SPFResult.PERMERROR, f"{word!r}: {name} needs an address")
        try:
            network: ipaddress.IPv4Network | ipaddress.IPv6Network = (
                ipaddress.IPv4Network(arg, strict=False) if name == "ip4"
                else ipaddress.IPv6Network(arg, strict=False))
        except ValueError:
            raise SPFError(SPFResult.PERMERROR, f"{word!r}: not an {name} network") from None
        if "/" in arg and not re.fullmatch(r"0|[1-9]\d{0,2}", arg.rpartition("/")[2]):
            raise SPFError(SPFResult.PERMERROR, f"{word!r}: bad prefix length")
        return Term(word, result, name, str(network))
    if name in ("include", "exists") and (not sep or not arg):
        raise SPFError(SPFResult.PERMERROR, f"{word!r}: {name} needs a domain")
    if name in ("include", "exists", "ptr"):
        if sep:
            _check_domain_spec(arg, word)
        return Term(word, result, name, arg if sep else None)
    # a and mx: [":" domain-spec] [ip4-cidr] ["/" ip6-cidr]
    spec, cidr4, cidr6 = arg, None, None
    match = _CIDR.fullmatch(arg if sep else cidr_text)
    if match is not None:
        spec, cidr4, cidr6 = match.group(1), match.group(2), match.group(3)
    if not sep and spec:
        raise SPFError(SPFResult.PERMERROR, f"bad term {word!r}")
    v4 = int(cidr4) if cidr4 is not None else 32
    v6 = int(cidr6) if cidr6 is not None else 128
    if v4 > 32 or v6 > 128:
        raise SPFError(SPFResult.PERMERROR, f"{word!r}: prefix length out of range")
    if sep:
        if not spec:
            raise SPFError(SPFResult.PERMERROR, f"{word!r}: empty domain")
        _check_domain_spec(spec, word)
    return Term(word, result, name, spec if sep else None, v4, v6)


@dataclass(frozen=True, slots=True)
class SPFVerdict:
    result: SPFResult
    reason: str  # the deciding terms ("include:_spf.example.net > ip4:192.0.2.0/24"), or why
    lookups: int  # DNS-querying terms evaluated
    term: str = ""  # the mechanism that decided, as written; "" when none did


def expand_macros(spec: str, ip: IPAddress, sender: str, domain: str, helo: str = "") -> str:
    """RFC 7208 7: a domain-spec with its macros expanded; over 253 bytes, labels go from
    the left. The spec is one parse_spf accepted."""
    local, _, sender_domain = sender.rpartition("@")
    values = {"s": sender, "l": local, "o": sender_domain, "d": domain,
              "i": ".".join(ip.exploded.replace(":", "")) if ip.version == 6 else str(ip),
              "p": "unknown",  # RFC 7208 7.3: the validated PTR name; its use is discouraged
              "v": "in-addr" if ip.version == 4 else "ip6", "h": helo}

    def one(match: re.Match[str]) -> str:
        single = match.group(5)
        if single is not None:
            return {"%": "%", "_": " ", "-": "%20"}[single]
        letter, digits, reverse, delimiters = match.group(1, 2, 3, 4)
        parts = re.split("[" + re.escape(delimiters or ".") + "]", values[letter.lower()])
        if reverse:
            parts.reverse()
        if digits:
            parts = parts[-int(digits):]
        text = ".".join(parts)
        return urllib.parse.quote(text, safe="") if letter.isupper() else text

    name = _MACRO.sub(one, spec).rstrip(".")
    while len(name) > 253 and "." in name:
        name = name.partition(".")[2]
    return name


@dataclass
class _Evaluation:
    """One check_host run: the limits count across includes and redirects."""

    lookups: Lookups
    ip: IPAddress
    sender: str
    helo: str
    terms: int = 0
    void: int = 0
    term: str = ""  # the last mechanism that matched

    def count(self, term: str) -> None:
        self.terms += 1
        if self.terms > MAX_LOOKUPS:
            raise SPFError(SPFResult.PERMERROR, f"more than {MAX_LOOKUPS} DNS lookups "
                                                f"(the one too many: {term!r}; RFC 7208 4.6.4)")

    async def query(self, name: str, rdtype: str) -> Answer:
        answer = await self.lookups.query(name, rdtype)
        if answer.kind is Kind.FAILED:
            raise SPFError(SPFResult.TEMPERROR, f"{rdtype} lookup for {name} failed: "
                                                f"{answer.detail}")
        if answer.void:
            self.count_void(f"{rdtype} {name}")
        return answer

    def count_void(self, what: str) -> None:
        self.void += 1
        if self.void > MAX_VOID_LOOKUPS:
            raise SPFError(SPFResult.PERMERROR, f"more than {MAX_VOID_LOOKUPS} lookups found "
                                                f"nothing (the last: {what}; RFC 7208 4.6.4)")

    def expand(self, spec: str, domain: str) -> str:
        return expand_macros(spec, self.ip, self.sender, domain, self.helo)

    async def check_host(self, domain: str, depth: int = 0) -> tuple[SPFResult, str]:
        answer = await self.lookups.query(domain, "TXT")
        if answer.kind is Kind.FAILED:
            raise SPFError(SPFResult.TEMPERROR, f"TXT lookup for {domain} failed: "
                                                f"{answer.detail}")
        if depth and answer.void:  # an include or redirect target that does not exist
            self.count_void(f"TXT {domain}")
        records = [text for text in answer.values if is_spf(text)]
        if not records:
            return SPFResult.NONE, f"no SPF record at {domain}"
        if len(records) > 1:
            raise SPFError(SPFResult.PERMERROR, f"{len(records)} SPF records at {domain} "
                                                "(RFC 7208 4.5)")
        try:
            spf = parse_spf(records[0])
        except SPFError as exc:
            raise SPFError(exc.result, f"{exc.reason} at {domain}") from None
        for term in spf.terms:
            if term.mechanism in _COSTLY:
                self.count(term.text)
            matched = await self._matches(term, domain, depth)
            if matched is not None:
                return term.qualifier, matched
        if spf.redirect is not None and not any(t.mechanism == "all" for t in spf.terms):
            self.count(f"redirect={spf.redirect}")
            target = self.expand(spf.redirect, domain)
            result, reason = await self.check_host(target, depth + 1)
            if result is SPFResult.NONE:
                raise SPFError(SPFResult.PERMERROR, f"redirect={spf.redirect} at {domain}: "
                                                    f"{reason}")
            return result, f"redirect={target} > {reason}"
        return SPFResult.NEUTRAL, f"no term matched at {domain} (default neutral)"

    async def _matches(self, term: Term, domain: str, depth: int) -> str | None:
        """None, or how the term matched: the term, and for include what matched inside."""
        if term.mechanism == "include":
            target = self.expand(term.target or "", domain)
            result, reason = await self.check_host(target, depth + 1)
            if result in (SPFResult.PERMERROR, SPFResult.NONE):
                raise SPFError(SPFResult.PERMERROR, f"{term.text} at {domain}: {reason}")
            if result is SPFResult.PASS:
                return f"{term.text} > {reason}"
            self.term = ""  # what ended the included record did not decide this one
            return None
        if not await self._mechanism_matches(term, domain):
            return None
        self.term = term.text
        return term.text if depth == 0 else f"{term.text} at {domain}"

    async def _mechanism_matches(self, term: Term, domain: str) -> bool:
        kind = term.mechanism
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            assert term.target is not None
            return self.ip in ipaddress.ip_network(term.target)
        target = self.expand(term.target, domain) if term.target is not None else domain
        if kind == "exists":
            return (await self.query(target, "A")).kind is Kind.ANSWER
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        prefix = term.cidr4 if self.ip.version == 4 else term.cidr6
        if kind == "a":
            return self._in(await self.query(target, rdtype), prefix)
        if kind == "mx":
            answer = await self.query(target, "MX")
            hosts = [host for _, host in answer.mx if host != "."]
            if len(hosts) > MAX_NAMES:
                raise SPFError(SPFResult.PERMERROR, f"{term.text}: {target} has more than "
                                                    f"{MAX_NAMES} MX hosts (RFC 7208 4.6.4)")
            for host in hosts:
                if self._in(await self._addresses(host, rdtype), prefix):
                    return True
            return False
        return await self._ptr(target)

    async def _addresses(self, host: str, rdtype: str) -> Answer:
        answer = await self.lookups.query(host, rdtype)
        if answer.kind is Kind.FAILED:
            raise SPFError(SPFResult.TEMPERROR, f"{rdtype} lookup for {host} failed: "
                                                f"{answer.detail}")
        return answer

    def _in(self, answer: Answer, prefix: int) -> bool:
        for value in answer.values:
            network = ipaddress.ip_network(f"{value}/{prefix}", strict=False)
            if self.ip in network:
                return True
        return False

    async def _ptr(self, target: str) -> bool:
        """RFC 7208 5.5: a validated PTR name at or under target (errors: no match)."""
        reverse = dns.reversename.from_address(str(self.ip)).to_text(omit_final_dot=True)
        answer = await self.lookups.query(reverse, "PTR")
        if answer.kind is Kind.FAILED:
            return False
        if answer.void:
            self.count_void(f"PTR {reverse}")
        rdtype = "A" if self.ip.version == 4 else "AAAA"
        for name in answer.values[:MAX_NAMES]:
            if name != target and not name.endswith("." + target):
                continue
            addresses = await self.lookups.query(name, rdtype)
            if any(ipaddress.ip_address(a) == self.ip for a in addresses.values):
                return True
        return False


def _address(ip: str | IPAddress) -> IPAddress:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # RFC 7208 5: ::ffff:a.b.c.d is checked as IPv4
    return address


async def check_host(lookups: Lookups, ip: str | IPAddress, domain: str,
                     sender: str | None = None, helo: str = "") -> SPFVerdict:
    """RFC 7208 check_host(ip, domain, sender): the SPF result for mail from ``ip``.

    ``sender`` defaults to postmaster@domain, what RFC 7208 4.3 uses without a local
    part; ``helo`` only feeds the %{h} macro.
    """
    evaluation = _Evaluation(lookups, _address(ip), sender or f"postmaster@{domain}", helo)
    try:
        result, reason = await evaluation.check_host(domain.lower().rstrip("."))
    except SPFError as exc:
        return SPFVerdict(exc.result, exc.reason, evaluation.terms)
    return SPFVerdict(result, reason, evaluation.terms, evaluation.term)


# --- what to check ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What dns-check looks at for one domain, decided from the configuration alone."""

    domain: str
    identity_key: str  # "identities.<domain>", the entry that signs and sets MAIL FROM
    identity: IdentityConfig
    hostname: str
    ips: tuple[IPAddress, ...]  # given with --ip; empty: server.hostname's addresses
    tracking_hosts: tuple[tuple[str, str], ...]  # (host, the config key naming it)
    smarthost: bool
    nameservers: tuple[str, ...]
    timeout: float
    # The IP pools' addresses: (address, HELO name, the config key naming them).
    pool_addresses: tuple[tuple[IPAddress, str, str], ...] = ()
    # False: no configuration file was given; the relay's keys, hostname and sets are
    # unknown, and only what DNS says of the domain itself is checked.
    configured: bool = True


def plan_without_config(domain: str, *, ips: Sequence[str] = (),
                        nameservers: Sequence[str] = (), hostname: str | None = None,
                        timeout: float = 5.0) -> Plan:
    """The checks for ``domain`` when there is no configuration file: SPF (for --ip,
    else this host's name's addresses), DMARC, and whether DKIM records exist."""
    try:
        domain = check_domain(domain)
        addresses = tuple(_address(ip.strip()) for ip in ips)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for server in nameservers:
        try:
            parse_nameserver(server)
        except ValueError as exc:
            raise UsageError(f"--nameserver: {exc}") from None
    return Plan(domain, f"identities.{domain}", IdentityConfig(),
                hostname or socket.getfqdn(), addresses, (), False, tuple(nameservers),
                timeout, configured=False)


def plan(config: Config, domain: str, *, ips: Sequence[str] = (),
         nameservers: Sequence[str] = ()) -> Plan:
    """The checks for ``domain``; UsageError if it is not a sending identity."""
    try:
        domain = check_domain(domain)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # The entry that applies is the most specific one, as the signer picks keys.
    parent: str | None = domain
    while parent and parent not in config.identities:
        parent = parent.partition(".")[2] or None
    covered = any(identity == domain or domain.endswith("." + identity)
                  or identity.endswith("@" + domain)
                  for account in config.accounts.values() for identity in account.identities)
    if parent is None and not covered:
        raise UsageError(f"{domain} is not a sending identity in the configuration: add it "
                         f"under identities.{domain} (with its dkim keys) or to an account's "
                         "identities (accounts.<name>.identities)")
    key = parent or domain
    try:
        addresses = tuple(_address(ip.strip()) for ip in ips)
    except ValueError as exc:
        raise UsageError(f"--ip: {exc}") from None
    for server in nameservers:
        try:
            parse_nameserver(server)
        except ValueError as exc:
            raise UsageError(f"--nameserver: {exc}") from None
    tracking: dict[str, str] = {}
    for name, settings in config.configuration_sets.items():
        for field_name, host in (("tracking.domain", settings.tracking.domain),
                                 ("unsubscribe.domain", settings.unsubscribe.domain)):
            if host is not None:
                tracking.setdefault(host.partition(":")[0],
                                    f"configuration_sets.{name}.{field_name}")
    for name, contact_list in config.contact_lists.items():
        tracking.setdefault(contact_list.unsubscribe_domain.partition(":")[0],
                            f"contact_lists.{name}.unsubscribe_domain")
    return Plan(domain, f"identities.{key}", config.identities.get(key) or IdentityConfig(),
                config.server.hostname, addresses, tuple(sorted(tracking.items())),
                config.delivery.mode == "smarthost",
                tuple(nameservers or config.delivery.dns.nameservers),
                config.delivery.dns.timeout,
                tuple((_address(entry.address), entry.helo, f"ip_pools.{name}.addresses[{i}]")
                      for name, pool in config.ip_pools.items()
                      for i, entry in enumerate(pool.addresses)))


async def run(checks: Plan, lookups: Lookups | None = None) -> list[Finding]:
    """Every finding for the plan, in a stable order. UsageError if there is no resolver."""
    if lookups is None:
        lookups = Lookups(checks.nameservers, checks.timeout)
    domain = checks.domain
    # One question first: a resolver that does not answer at all would otherwise make
    # every check wait its whole timeout and then blame the records.
    probe = await lookups.query(domain, "SOA")
    if probe.kind is Kind.FAILED and lookups.no_answer(probe):
        source = ("given with --nameserver or delivery.dns.nameservers" if checks.nameservers
                  else "the system resolver, from /etc/resolv.conf")
        return [Finding("resolver", "error", ", ".join(lookups.servers),
                        f"the DNS server ({source}) did not answer: {probe.detail}; "
                        "nothing was checked",
                        "check that it runs and is reachable from here, or ask another "
                        "with --nameserver HOST[:PORT]",
                        config_key="delivery.dns.nameservers" if checks.configured else "")]
    addresses, ips = await _sending_addresses(lookups, checks)
    signing = checks.identity_key.removeprefix("identities.")
    tasks: list[Any] = [_dkim(lookups, signing, f"{checks.identity_key}.dkim[{i}]",
                              entry.selector, entry.key_file)
                        for i, entry in enumerate(checks.identity.dkim)]
    if not checks.configured:
        tasks.append(_dkim_unknown(lookups, checks))
    elif not checks.identity.dkim:
        tasks.append(_no_dkim(checks))
    tasks.append(_spf(lookups, "spf", domain, ips, checks.hostname, ""))
    tasks.append(_dmarc(lookups, domain))
    mail_from = checks.identity.mail_from_domain
    if mail_from is not None:
        key = f"{checks.identity_key}.mail_from_domain"
        tasks.append(_mail_from_mx(lookups, mail_from, checks.hostname, key))
        tasks.append(_spf(lookups, "mail-from-spf", mail_from, ips, checks.hostname, key))
    tasks.extend(_tracking(lookups, host, key, checks.hostname)
                 for host, key in checks.tracking_hosts)
    tasks.extend(_pool_ptr(lookups, address, helo, key)
                 for address, helo, key in checks.pool_addresses)
    found: list[Finding] = await asyncio.gather(*tasks)
    return [addresses, *found]


async def _no_dkim(checks: Plan) -> Finding:
    return Finding(
        "dkim", "warning", f"_domainkey.{checks.domain}",
        f"no DKIM keys under {checks.identity_key}.dkim: mail from {checks.domain} goes out "
        "unsigned, and DMARC can then pass only through aligned SPF",
        f"create a key with `smtprelay dkim keygen {checks.domain} --selector S -c FILE`, "
        f"publish the record it prints and add the key under {checks.identity_key}.dkim",
        config_key=f"{checks.identity_key}.dkim")


async def _dkim_unknown(lookups: Lookups, checks: Plan) -> Finding:
    del lookups  # the selectors are in the configuration, which was not given
    return Finding(
        "dkim", "warning", f"_domainkey.{checks.domain}",
        "no configuration file: the relay's DKIM selectors and keys are unknown, so the "
        "published DKIM records were not compared with them",
        "run again with -c FILE (or SMTPRELAY_CONFIG) to check them")


async def _sending_addresses(lookups: Lookups,
                             checks: Plan) -> tuple[Finding, tuple[IPAddress, ...]]:
    if checks.ips:
        shown = ", ".join(str(ip) for ip in checks.ips)
        return Finding("addresses", "ok", checks.hostname,
                       f"SPF is checked for the addresses given with --ip: {shown}"), checks.ips
    if checks.pool_addresses:
        ips = tuple(dict.fromkeys(address for address, _, _ in checks.pool_addresses))
        shown = ", ".join(str(ip) for ip in ips)
        return Finding("addresses", "ok", checks.hostname,
                       f"SPF is checked for the IP pools' addresses: {shown} (--ip ADDR "
                       "checks others)", config_key="ip_pools"), ips
    how = "give the relay's outbound addresses with --ip ADDR (repeat for each)"
    if checks.smarthost:
        return Finding("addresses", "warning", checks.hostname,
                       "delivery.mode is smarthost: receivers see the upstream's addresses, "
                       "not the relay's, so the SPF address check was skipped",
                       f"{how}: the upstream's outbound addresses (its operator says which)",
                       config_key="delivery.mode"), ()
    v4, v6 = await asyncio.gather(lookups.query(checks.hostname, "A"),
                                  lookups.query(checks.hostname, "AAAA"))
    ips = tuple(_address(v) for v in (*v4.values, *v6.values))
    if ips:
        shown = ", ".join(str(ip) for ip in ips)
        return Finding("addresses", "ok", checks.hostname,
                       f"SPF is checked for the addresses of server.hostname: {shown} "
                       "(--ip ADDR checks others)", config_key="server.hostname"), ips
    failed = [f"{kind} lookup failed: {a.detail}" for kind, a in (("A", v4), ("AAAA", v6))
              if a.kind is Kind.FAILED]
    what = "; ".join(failed) if failed else "no A or AAAA record"
    # A lookup that failed says nothing about the records: do not ask to publish them.
    fix = ("the lookup failed, not the records: check the resolver "
           f"({', '.join(lookups.servers)}) and try again, or {how}" if failed
           else f"publish the relay's A/AAAA records (see docs/dns.md), or {how}")
    name = "server.hostname" if checks.configured else "this host's name"
    return Finding("addresses", "warning" if not failed else "error", checks.hostname,
                   f"{name} {checks.hostname}: {what}; the SPF address check was skipped",
                   fix, config_key="server.hostname" if checks.configured else ""), ()


def parse_tags(text: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip(), value.strip())
    return tags


def _public_bytes(key: dkim.PrivateKey) -> tuple[str, bytes]:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        return "ed25519", public.public_bytes(serialization.Encoding.Raw,
                                              serialization.PublicFormat.Raw)
    return "rsa", public.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)


def dkim_verdict(text: str, key: dkim.PrivateKey, key_file: Path) -> tuple[Status, str]:
    """One TXT record against the configured key: (status, what was found)."""
    tags = parse_tags(text)
    kind, expected = _public_bytes(key)
    if "v" in tags and tags["v"] != "DKIM1":
        return "error", f"v={tags['v']}, not v=DKIM1: receivers ignore this record"
    if "p" not in tags:
        return "error", f"not a DKIM key record (no p= tag): {text[:60]!r}"
    p = re.sub(r"\s+", "", tags["p"])
    if not p:
        return "error", "the key is revoked (empty p=): receivers fail every signature by it"
    published = tags.get("k", "rsa").lower()  # RFC 6376 3.6.1: k= defaults to rsa
    if published != kind:
        return "error", f"k={published}, but {key_file} holds an {kind} key"
    try:
        data = base64.b64decode(p, validate=True)
    except (binascii.Error, ValueError):
        return "error", "p= is not valid base64"
    if kind == "ed25519":
        matches = data == expected
    else:
        try:
            public = serialization.load_der_public_key(data)
        except (ValueError, TypeError):
            return "error", "p= is not an RSA public key"
        own = key.public_key()
        matches = (isinstance(public, rsa.RSAPublicKey) and isinstance(own, rsa.RSAPublicKey)
                   and public.public_numbers() == own.public_numbers())
    if not matches:
        return "error", (f"key mismatch: the published p= is not the public half of "
                         f"{key_file} (a record of another key?)")
    if "y" in [flag.strip() for flag in tags.get("t", "").split(":")]:
        return "warning", (f"matches {key_file}, but t=y marks the key as testing: "
                           "receivers may ignore its signatures")
    return "ok", f"published, matches {key_file} ({kind})"


async def _dkim(lookups: Lookups, domain: str, config_key: str, selector: str,
                key_file: Path) -> Finding:
    name = f"{selector}._domainkey.{domain}"
    try:
        _, key = dkim.read_key(key_file, keygen=(
            f"create it with `smtprelay dkim keygen {domain} --selector {selector} "
            f"--out {key_file}`"))
    except dkim.DKIMKeyError as exc:
        return Finding("dkim", "error", name, f"cannot check: {config_key}.key_file: {exc}",
                       f"fix {config_key}.key_file", config_key=f"{config_key}.key_file")
    expected = dkim.public_record(key)
    wanted = Record("TXT", name, expected, dkim.dns_record(domain, selector, key))
    answer = await lookups.query(name, "TXT")
    if answer.kind is Kind.FAILED:
        return Finding("dkim", "error", name, f"TXT lookup failed: {answer.detail} (not "
                       "the same as missing: DNS did not answer)",
                       "check the nameservers (delivery.dns.nameservers or --nameserver)",
                       config_key=config_key)
    if not answer.values:
        return Finding("dkim", "error", name,
                       f"no TXT record: signatures by {key_file} fail at receivers",
                       "publish the record below (as `smtprelay dkim keygen` printed it)",
                       (wanted,), config_key)
    verdicts = [dkim_verdict(text, key, key_file) for text in answer.values]
    good = [v for v in verdicts if v[0] != "error"]
    if good:
        status, found = good[0]
        if len(answer.values) > 1:
            return Finding("dkim", "warning", name,
                           f"{found}; but {len(answer.values)} TXT records are published "
                           "there and receivers may pick any", "remove the other records",
                           (wanted,), config_key)
        return Finding("dkim", status, name, found, "" if status == "ok" else
                       "publish the record without t=y", () if status == "ok" else (wanted,),
                       config_key)
    status, found = verdicts[0]
    if "revoked" in found:
        fix = (f"publish the record below, or take {config_key} out of the configuration "
               "(a revoked key signs in vain)")
    else:
        fix = "replace the record with the one below"
    return Finding("dkim", "error", name, found, fix, (wanted,), config_key)


def _suggest_spf(ips: Sequence[IPAddress], hostname: str) -> str:
    terms = [f"ip{ip.version}:{ip}" for ip in ips] or [f"a:{hostname}"]
    return " ".join(["v=spf1", *terms, "-all"])


def _add_ips(text: str, ips: Sequence[IPAddress]) -> str:
    """The record with the missing ip4:/ip6: terms first, where no earlier term can hide
    them."""
    words = text.split()
    add = [f"ip{ip.version}:{ip}" for ip in ips if f"ip{ip.version}:{ip}" not in words]
    return " ".join([words[0], *add, *words[1:]])


def _merge_spf(records: Sequence[str], ips: Sequence[IPAddress]) -> str:
    """Several SPF records as one: every term once, ended by the strictest all.

    DNS returns records in any order, so they are taken sorted: the suggestion must not
    change from one run to the next.
    """
    terms: list[str] = []
    endings: set[str] = set()
    for text in sorted(records):
        for word in text.split()[1:]:
            lowered = word.lower()
            if lowered.lstrip("+-~?") == "all":
                endings.add(lowered[0] if lowered[0] in "+-~?" else "+")
            elif not lowered.startswith(("redirect=", "exp=")) and word not in terms:
                terms.append(word)
    final = next((f"{q}all" for q in "-~?" if q in endings), "~all")
    return _add_ips(" ".join(["v=spf1", *terms, final]), ips)


async def _spf(lookups: Lookups, check: str, domain: str, ips: Sequence[IPAddress],
               hostname: str, config_key: str) -> Finding:
    answer = await lookups.query(domain, "TXT")
    if answer.kind is Kind.FAILED:
        return Finding(check, "error", domain, f"TXT lookup failed: {answer.detail} (SPF "
                       "temperror: receivers defer or accept unauthenticated)",
                       "check the nameservers (delivery.dns.nameservers or --nameserver)",
                       config_key=config_key)
    records = [text for text in answer.values if is_spf(text)]
    if not records:
        return Finding(check, "error", domain,
                       "no SPF record (no TXT record starting with v=spf1)",
                       "publish the record below (merge other senders of this domain in)",
                       (record("TXT", domain, _suggest_spf(ips, hostname)),), config_key)
    if len(records) > 1:
        shown = "; ".join(f'"{text}"' for text in records)
        return Finding(check, "error", domain,
                       f"{len(records)} SPF records ({shown}): receivers return permerror "
                       "(RFC 7208 4.5 allows one)",
                       "replace them with one record, such as the one below",
                       (record("TXT", domain, _merge_spf(records, ips)),), config_key)
    text = records[0]
    try:
        parse_spf(text)
    except SPFError as exc:
        return Finding(check, "error", domain, f'"{text}": permerror: {exc.reason}',
                       "fix the record's syntax (RFC 7208); receivers treat permerror as "
                       "a failure", config_key=config_key)
    if not ips:
        return Finding(check, "warning", domain, f'"{text}"; no sending address to check it '
                       "against (see the addresses finding)",
                       "give the relay's outbound addresses with --ip ADDR",
                       config_key=config_key)
    verdicts = await asyncio.gather(*(check_host(lookups, ip, domain, helo=hostname)
                                      for ip in ips))
    shown = "; ".join(f"{ip}: {v.result} ({v.reason})" for ip, v in zip(ips, verdicts,
                                                                         strict=True))
    results = {v.result for v in verdicts}
    if SPFResult.TEMPERROR in results:
        return Finding(check, "error", domain, f'"{text}": a lookup failed: {shown}',
                       "check the nameservers (delivery.dns.nameservers or --nameserver) "
                       "and the names the record refers to", config_key=config_key)
    if SPFResult.PERMERROR in results:
        return Finding(check, "error", domain, f'"{text}": permerror: {shown}',
                       "fix the record: receivers treat permerror as a failure (with more "
                       "than 10 lookups, replace include:, a and mx terms by ip4:/ip6: "
                       "terms)", config_key=config_key)
    if results != {SPFResult.PASS}:
        missing = [ip for ip, v in zip(ips, verdicts, strict=True)
                   if v.result is not SPFResult.PASS]
        return Finding(check, "error", domain,
                       f'"{text}" does not authorise the relay: {shown}',
                       "add the relay's addresses to the record, as below",
                       (record("TXT", domain, _add_ips(text, missing)),), config_key)
    if any(v.term.lstrip("+").lower() == "all" for v in verdicts):
        return Finding(check, "warning", domain, f'"{text}" passes with +all: any host on '
                       f"the Internet may send as {domain}: {shown}",
                       "end the record with -all or ~all after the relay's addresses",
                       (record("TXT", domain, _suggest_spf(ips, hostname)),), config_key)
    return Finding(check, "ok", domain, f'"{text}": {shown}', config_key=config_key)


async def _dmarc(lookups: Lookups, domain: str) -> Finding:
    name = f"_dmarc.{domain}"
    answer = await lookups.query(name, "TXT")
    suggested = (record("TXT", name, f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}"),)
    if answer.kind is Kind.FAILED:
        return Finding("dmarc", "error", name, f"TXT lookup failed: {answer.detail}",
                       "check the nameservers (delivery.dns.nameservers or --nameserver)")
    records = [t for t in answer.values if re.match(r"v\s*=\s*DMARC1\s*(;|$)", t)]
    if not records:
        return Finding(
            "dmarc", "warning", name,
            "no DMARC record (dns-check does not look at the organisational domain's, "
            "which receivers use when the domain has none)",
            "publish a DMARC record; start with p=none and read the reports (Gmail and "
            "Yahoo require one from bulk senders)", suggested)
    if len(records) > 1:
        return Finding("dmarc", "error", name, f"{len(records)} DMARC records: receivers "
                       "ignore them all (RFC 7489 6.6.3)", "keep one", suggested)
    tags = {k.lower(): v for k, v in parse_tags(records[0]).items()}
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Finding("dmarc", "error", name, f'"{records[0]}": p= is '
                       f"{tags.get('p', 'missing')!r}, not none, quarantine or reject",
                       "fix the p= tag", suggested)
    extra = "".join(f", {tag}={tags[tag]}" for tag in ("sp", "pct", "rua") if tag in tags)
    return Finding("dmarc", "ok", name, f"policy p={policy}{extra}")


async def _mail_from_mx(lookups: Lookups, domain: str, hostname: str,
                        config_key: str) -> Finding:
    answer = await lookups.query(domain, "MX")
    wanted = (record("MX", domain, f"10 {hostname}."),)
    if answer.kind is Kind.FAILED:
        return Finding("mail-from-mx", "error", domain, f"MX lookup failed: {answer.detail}",
                       "check the nameservers (delivery.dns.nameservers or --nameserver)",
                       config_key=config_key)
    hosts = [host for _, host in answer.mx if host != "."]
    if not hosts:
        what = "a null MX (accepts no mail)" if answer.mx else "no MX record"
        return Finding("mail-from-mx", "error", domain,
                       f"{what}: bounces to the MAIL FROM domain ({config_key}) are lost, "
                       "and receivers may refuse its mail", "publish an MX pointing at the "
                       "relay, whose feedback listener receives the bounces", wanted,
                       config_key)
    shown = ", ".join(f"{pref} {host}" for pref, host in answer.mx)
    note = "" if hostname in hosts else (f"; not {hostname} (server.hostname): those hosts "
                                         "must run smtprelay's feedback listener")
    return Finding("mail-from-mx", "ok", domain, f"MX {shown}{note}", config_key=config_key)


async def _tracking(lookups: Lookups, host: str, config_key: str, hostname: str) -> Finding:
    v4, v6 = await asyncio.gather(lookups.query(host, "A"), lookups.query(host, "AAAA"))
    failed = [f"{kind} lookup failed: {a.detail}" for kind, a in (("A", v4), ("AAAA", v6))
              if a.kind is Kind.FAILED]
    found = [f"{kind} {', '.join(a.values)}" for kind, a in (("A", v4), ("AAAA", v6))
             if a.values]
    via = next((a.canonical for a in (v4, v6) if a.canonical and a.canonical != host), "")
    through = f" (through CNAME {via})" if via else ""
    if found:
        return Finding("tracking", "ok", host, "; ".join(found) + through,
                       config_key=config_key)
    if failed:
        return Finding("tracking", "error", host, "; ".join(failed),
                       "check the nameservers (delivery.dns.nameservers or --nameserver)",
                       config_key=config_key)
    return Finding("tracking", "error", host,
                   f"no A or AAAA record{through}: tracked links and the unsubscribe URL "
                   "on this host do not open",
                   "point the name at the host serving the relay's HTTP listener (or the "
                   "proxy in front of it), e.g. with the CNAME below",
                   (record("CNAME", host, f"{hostname}."),), config_key)


async def _pool_ptr(lookups: Lookups, address: IPAddress, helo: str,
                    config_key: str) -> Finding:
    """A pool address's reverse DNS: a PTR record, forward-confirmed, naming its HELO."""
    reverse = _show(dns.reversename.from_address(str(address)))
    answer = await lookups.query(reverse, "PTR")
    publish = (record("PTR", reverse, f"{helo}."),)
    if answer.kind is Kind.FAILED:
        return Finding("ptr", "error", reverse, f"PTR lookup failed: {answer.detail}",
                       "check the nameservers (delivery.dns.nameservers or --nameserver)",
                       config_key=config_key)
    if not answer.values:
        return Finding("ptr", "error", reverse,
                       f"no PTR record for {address}: receivers refuse or junk mail from "
                       "an address without reverse DNS",
                       f"ask whoever runs {address}'s network (the hosting provider) for "
                       f"the PTR record below, naming the HELO name {helo}", publish,
                       config_key)
    confirmed: list[str] = []
    failed: list[str] = []
    for name in answer.values:
        forward = await lookups.query(name, "AAAA" if address.version == 6 else "A")
        if forward.kind is Kind.FAILED:
            failed.append(f"{name}: lookup failed: {forward.detail}")
        elif str(address) in {str(_address(v)) for v in forward.values}:
            confirmed.append(name)
    names = ", ".join(answer.values)
    if not confirmed:
        why = "; ".join(failed) or (f"no {'AAAA' if address.version == 6 else 'A'} record "
                                    f"of {names} holds {address}")
        return Finding("ptr", "error", reverse,
                       f"PTR {names}, not forward-confirmed ({why})",
                       f"publish the address record below, so that the PTR name leads "
                       f"back to {address}",
                       tuple(record("AAAA" if address.version == 6 else "A", name, str(address))
                             for name in answer.values), config_key)
    if helo not in confirmed:
        return Finding("ptr", "warning", reverse,
                       f"PTR {names} (forward-confirmed), but the address says EHLO {helo}",
                       f"set {config_key}.helo to {confirmed[0]}, or change the PTR record "
                       f"to {helo} (and give {helo} the address)", publish, config_key)
    return Finding("ptr", "ok", reverse,
                   f"PTR {helo}, forward-confirmed to {address}, the address's HELO name",
                   config_key=config_key)
