"""Where to deliver a domain's mail: MX resolution for the delivery scheduler.

``MXResolver.resolve(domain)`` turns a recipient domain into the ordered list of
``Destination`` (MX host, one address) to try, or a verdict on why there is none:

- MX records in preference order; hosts of equal preference shuffled (RFC 5321
  §5.1), so load spreads like Postfix's ``smtp_randomize_addresses``; each host's A
  and AAAA addresses, IPv4 first unless ``prefer_ipv6``, every address its own
  Destination, so the client fails over to the next address, then the next host.
- No MX records (NODATA): the domain itself is the implicit MX, preference 0.
- NXDOMAIN: PERMANENT 5.1.2. A null MX (a lone MX with exchange ".", RFC 7505):
  PERMANENT 5.1.10. SERVFAIL, REFUSED, timeouts, malformed answers: TEMPORARY 4.4.3.
- A host whose own lookups fail temporarily is skipped; if no host has an address
  and any failed temporarily: TEMPORARY 4.4.3 (it may work later). If every host
  (or, without MX, the domain itself) positively has no address (NXDOMAIN/NODATA):
  PERMANENT 5.4.4, what Postfix does ("Host or domain name not found"): DNS gave a
  definite answer, and retrying for days would only delay the bounce.
- A domain literal (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``) is that address; a
  name that cannot be a mail domain (bad syntax, IDNA error, numeric top label)
  is PERMANENT 5.1.3 without asking DNS.

Answers are cached per (name, type) for their TTL; negative answers for the SOA
minimum (RFC 2308; 5 minutes without SOA); temporary failures for 30 s, so a dead
DNS server is asked once per half-minute, not once per queued message. The cache is
an LRU bounded in entries, and concurrent lookups of one name share one query.
Everything goes through ``dns.asyncresolver``: the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from smtprelay.config import parse_nameserver
from smtprelay.delivery.model import Destination

log = logging.getLogger(__name__)

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
MX = dns.rdatatype.MX

DEFAULT_NEGATIVE_TTL = 300.0  # RFC 2308 §5 without an SOA: five minutes
MAX_NEGATIVE_TTL = 3 * 3600.0  # RFC 2308 §5: "one to three hours have been found to work well"
MAX_POSITIVE_TTL = 86400.0  # don't trust a week-long TTL across a long-running daemon
TEMPFAIL_TTL = 30.0

# UTS 46 non-transitional IDNA 2008, what browsers and mail clients use ("faß.de" stays
# "xn--fa-hia.de", not "fass.de"); dnspython falls back to IDNA 2003 without `idna`.
_IDNA = dns.name.IDNA_2008_Practical if dns.name.have_idna_2008 else dns.name.IDNA_2003_Practical
# Letters, digits, hyphen; underscore too, which Postfix tolerates and some MX names use.
_LABEL = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")


class Resolution(StrEnum):
    OK = "ok"
    PERMANENT = "permanent"  # bounce: DNS said definitely no
    TEMPORARY = "temporary"  # defer: DNS could not say


@dataclass(frozen=True, slots=True)
class MXResult:
    outcome: Resolution
    destinations: tuple[Destination, ...]  # in the order to try; empty unless OK
    status: str  # enhanced status: "2.0.0" when OK, else why not ("5.1.2", "4.4.3"...)
    reason: str  # text for the diagnostic; when OK, notes about hosts skipped (or "")

    @property
    def ok(self) -> bool:
        return self.outcome is Resolution.OK


class _Kind(Enum):
    ANSWER = "answer"
    NODATA = "nodata"  # the name exists, without records of this type
    NXDOMAIN = "nxdomain"
    FAILED = "failed"  # temporary: SERVFAIL, REFUSED, timeout, garbage


@dataclass(frozen=True, slots=True)
class _Lookup:
    """One (name, type) answer as cached: only what resolution needs, not the message."""

    kind: _Kind
    expires: float
    mx: tuple[tuple[int, dns.name.Name], ...] = ()
    addresses: tuple[str, ...] = ()
    detail: str = ""  # for FAILED: "SERVFAIL from 127.0.0.1:5353"


def mail_domain(text: str) -> dns.name.Name:
    """The DNS name of a mail domain (IDNA-encoded), or ValueError saying what is wrong."""
    if text.endswith("."):
        text = text[:-1]  # one final dot only names the root explicitly
    if not text or text.startswith(".") or text.endswith("."):
        raise ValueError("empty label")
    try:
        name = dns.name.from_text(text, origin=dns.name.root, idna_codec=_IDNA)
    except (dns.exception.DNSException, UnicodeError, ValueError) as e:
        raise ValueError(str(e) or type(e).__name__) from None
    problem = _host_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


def _host_name_problem(name: dns.name.Name) -> str:
    """Why ``name`` cannot be a mail domain or MX host, or "" if it can."""
    labels = name.labels[:-1]  # without the root
    if not labels or not all(_LABEL.fullmatch(label) for label in labels):
        return "not a valid host name"
    if labels[-1].isdigit():  # "192.0.2.1" without brackets: an address, not a name
        return "numeric top-level label"
    return ""


def _literal(text: str) -> str:
    """The address in a domain literal ("[192.0.2.1]", "[IPv6:::1]"), or ValueError."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if inner[:5].lower() == "ipv6:":
        return str(ipaddress.IPv6Address(inner[5:]))
    # RFC 5321 wants the "IPv6:" tag; an untagged IPv6 address is unambiguous, so take it.
    return str(ipaddress.ip_address(inner))


def _show(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _server(text: str) -> str:
    """dnspython's "Do53:127.0.0.1@5353" as "127.0.0.1:5353" ("[::1]:5353")."""
    address = text.removeprefix("Do53:")
    host, sep, port = address.rpartition("@")
    if not sep:
        return address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _errors(errors: Sequence[Any]) -> str:
    """dnspython's per-attempt error list as "SERVFAIL from 127.0.0.1:5353", deduplicated."""
    seen: list[str] = []
    for entry in errors:
        try:
            server, tcp, error = _server(str(entry[0])), bool(entry[1]), entry[3]
        except (IndexError, TypeError):
            continue
        if isinstance(error, str):
            what = error  # the rcode: "SERVFAIL", "REFUSED"...
        elif isinstance(error, dns.exception.Timeout):
            what = "no answer"
        elif isinstance(error, dns.exception.FormError | dns.message.Truncated):
            what = "malformed answer"
        else:
            what = str(error) or type(error).__name__
        text = f"{what} from {server}" + (" (TCP)" if tcp else "")
        if text not in seen:
            seen.append(text)
    return "; ".join(seen)


def _negative_ttl(response: Any) -> float:
    """RFC 2308 §5: min(SOA TTL, SOA MINIMUM) from the authority section, else 5 minutes."""
    for rrset in getattr(response, "authority", ()):
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, min(rdata.minimum for rdata in rrset)))
    return DEFAULT_NEGATIVE_TTL


def stub_resolver(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    """A resolver asking `nameservers` ("host" or "host:port"; the system's from
    /etc/resolv.conf when empty), each lookup bounded by `timeout`, without a cache of
    its own. Raises ValueError for a bad nameserver, dnspython's errors when there is
    no system configuration."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [parse_nameserver(s) for s in nameservers]
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    # Per attempt: at least two tries fit in the lifetime, so a lost datagram is resent
    # and a silent first nameserver leaves time to ask the next one.
    resolver.timeout = min(2.0, timeout / max(2, len(resolver.nameservers)))
    resolver.cache = None
    return resolver


class MXResolver:
    """MX and host resolution with an LRU cache; one per daemon (it is not thread-safe)."""

    def __init__(self, nameservers: list[str] | None = None, *, timeout: float = 5.0,
                 prefer_ipv6: bool = False, cache_size: int = 10000,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, tempfail_ttl: float = TEMPFAIL_TTL,
                 max_mx_hosts: int = 10) -> None:
        """``nameservers`` None or empty: the system's (/etc/resolv.conf).

        ``timeout`` bounds each lookup (an MX answer, then the hosts' A/AAAA in
        parallel: at most about twice that for one ``resolve``). ``rng`` makes the
        shuffle of equal preferences reproducible. ``max_mx_hosts`` caps how many MX
        hosts are resolved, so a domain with hundreds of MX records cannot make one
        message cost hundreds of queries (Postfix caps addresses at 5 by default).
        """
        # No dnspython cache: ours, below, runs on our clock and keeps less.
        self._resolver = stub_resolver(nameservers or (), timeout)
        self.timeout = timeout
        self.prefer_ipv6 = prefer_ipv6
        self.cache_size = cache_size
        self.tempfail_ttl = tempfail_ttl
        self.max_mx_hosts = max_mx_hosts
        self._clock = clock
        self._rng = rng or random.Random()
        self._cache: OrderedDict[tuple[dns.name.Name, dns.rdatatype.RdataType], _Lookup] = (
            OrderedDict())
        self._inflight: dict[tuple[dns.name.Name, dns.rdatatype.RdataType],
                             asyncio.Task[_Lookup]] = {}

    # --- public --------------------------------------------------------------------------

    async def resolve(self, domain: str) -> MXResult:
        """The destinations for mail to ``domain``. Never raises (but can be cancelled)."""
        try:
            return await self._resolve_domain(domain.strip())
        except Exception as e:  # a bug here must defer one message, not kill the scheduler
            log.exception("MX resolution of %r failed", domain)
            return MXResult(Resolution.TEMPORARY, (), "4.4.3",
                            f"MX lookup for {domain}: internal error: {e!r}")

    async def resolve_host(self, host: str, port_unused: int | None = None) -> MXResult:
        """The addresses of one host, no MX lookup: for a smarthost (relay host).

        Failures are all TEMPORARY: a relay host that does not resolve is our
        configuration (or DNS) problem, not the recipient's, so mail waits for it to
        be fixed rather than bouncing — "not found" is 4.4.4, a name that cannot be a
        host name 4.3.5 (configuration error).
        """
        del port_unused  # the caller knows its port; kept for the scheduler's call shape
        try:
            return await self._resolve_host(host.strip())
        except Exception as e:
            log.exception("resolution of relay host %r failed", host)
            return MXResult(Resolution.TEMPORARY, (), "4.4.3",
                            f"lookup of relay host {host}: internal error: {e!r}")

    async def mx_hosts(self, domain: str) -> list[str] | None:
        """The MX hosts ``domain`` publishes (empty: none, or only a null MX, or the
        domain does not exist); None when DNS could not say (a temporary failure)."""
        try:
            name = mail_domain(domain.strip())
        except ValueError:
            return []
        answer = await self._lookup(name, MX)
        if answer.kind is _Kind.FAILED:
            return None
        return [_show(host) for _, host in sorted(answer.mx) if host != dns.name.root]

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- domains -------------------------------------------------------------------------

    async def _resolve_domain(self, domain: str) -> MXResult:
        if domain.startswith("["):
            try:
                address = _literal(domain)
            except ValueError as e:
                return _permanent("5.1.3", f"bad address literal {domain}: {e}")
            return MXResult(Resolution.OK, (Destination(address, address, 0),), "2.0.0", "")
        try:
            name = mail_domain(domain)
        except ValueError as e:
            return _permanent("5.1.3", f"bad domain name {domain!r}: {e}")
        shown = _show(name)

        answer = await self._lookup(name, MX)
        if answer.kind is _Kind.FAILED:
            return _temporary("4.4.3", f"MX lookup for {shown}: {answer.detail}")
        if answer.kind is _Kind.NXDOMAIN:
            return _permanent("5.1.2", f"MX lookup for {shown}: domain does not exist "
                                       "(NXDOMAIN)")
        if answer.kind is _Kind.NODATA:
            hosts = [(0, name)]  # RFC 5321 §5.1: no MX, the domain is its own implicit MX
        else:
            # RFC 7505: a lone "." exchange says the domain accepts no mail. A "." next to
            # real MX records is a misconfiguration; those records are used, the "." is
            # dropped (it would have no address anyway).
            hosts = [(pref, host) for pref, host in answer.mx if host != dns.name.root]
            if not hosts:
                return _permanent("5.1.10", f"{shown} does not accept mail "
                                            "(null MX, RFC 7505)")
        hosts = self._order(hosts)[:self.max_mx_hosts]
        what = "MX host" if answer.kind is _Kind.ANSWER else "the domain (no MX records)"
        return await self._destinations(hosts, f"no {what} of {shown} has an address")

    def _order(self, hosts: list[tuple[int, dns.name.Name]]) -> list[tuple[int, dns.name.Name]]:
        """Preference order, equal preferences shuffled (RFC 5321 §5.1), duplicates dropped."""
        # Sorted first: servers rotate record order, and under a seeded rng the result
        # must depend on the records only.
        unique = sorted(set(hosts))
        self._rng.shuffle(unique)
        return sorted(unique, key=lambda h: h[0])  # stable: the shuffle survives within ties

    async def _destinations(self, hosts: list[tuple[int, dns.name.Name]],
                            none_found: str) -> MXResult:
        found = await asyncio.gather(*(self._host_addresses(host) for _, host in hosts))
        destinations: list[Destination] = []
        seen: set[str] = set()
        temporary: list[str] = []
        absent: list[str] = []
        for (pref, host), (addresses, failures, missing) in zip(hosts, found, strict=True):
            for address in self._spread(addresses):
                if address not in seen:  # two MX names for one address: try it once
                    seen.add(address)
                    destinations.append(Destination(_show(host), address, pref))
            if not addresses:
                temporary += failures
                if not failures:
                    absent += missing
        if destinations:
            skipped = "; ".join(temporary + absent)
            return MXResult(Resolution.OK, tuple(destinations), "2.0.0",
                            f"skipped: {skipped}" if skipped else "")
        if temporary:
            return _temporary("4.4.3", f"{none_found}: {'; '.join(temporary + absent)}")
        return _permanent("5.4.4", f"{none_found}: {'; '.join(absent)}")

    def _spread(self, families: list[tuple[str, ...]]) -> list[str]:
        """A host's addresses, family by family, each family shuffled.

        Postfix's smtp_randomize_addresses: load spreads over a host's addresses. Done
        here, host after host, rather than as lookups complete, so that a seeded rng
        gives the same order whatever the network's timing.
        """
        ordered: list[str] = []
        for family in families:
            shuffled = sorted(family)
            self._rng.shuffle(shuffled)
            ordered += shuffled
        return ordered

    async def _host_addresses(self, host: dns.name.Name) -> tuple[
            list[tuple[str, ...]], list[str], list[str]]:
        """(addresses by family in order of preference, temporary failures, "no address"
        notes)."""
        shown = _show(host)
        problem = _host_name_problem(host)
        if problem:
            # Postfix skips "malformed domain name in resource data of MX record" too;
            # an IP address as MX exchange (RFC 7505 §3 forbids it) lands here.
            return [], [], [f"{shown}: {problem}"]
        v4, v6 = await asyncio.gather(self._lookup(host, A), self._lookup(host, AAAA))
        addresses: list[tuple[str, ...]] = []
        failures: list[str] = []
        missing: list[str] = []
        for answer, kind in ((v6, "AAAA"), (v4, "A")) if self.prefer_ipv6 else (
                (v4, "A"), (v6, "AAAA")):
            if answer.kind is _Kind.ANSWER:
                addresses.append(answer.addresses)
            elif answer.kind is _Kind.FAILED:
                failures.append(f"{kind} lookup for {shown}: {answer.detail}")
            else:
                missing.append(f"{kind} lookup for {shown}: "
                               + ("host not found (NXDOMAIN)" if answer.kind is _Kind.NXDOMAIN
                                  else "no address of that type"))
        return addresses, failures, missing

    # --- relay hosts ---------------------------------------------------------------------

    async def _resolve_host(self, host: str) -> MXResult:
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            address = _literal(bare)
        except ValueError:
            pass
        else:
            return MXResult(Resolution.OK, (Destination(address, address, 0),), "2.0.0", "")
        try:
            name = mail_domain(bare)
        except ValueError as e:
            return _temporary("4.3.5", f"relay host {host!r} is not a host name: {e}")
        families, failures, missing = await self._host_addresses(name)
        if families:
            shown = _show(name)
            return MXResult(Resolution.OK, tuple(Destination(shown, a, 0)
                                                 for a in self._spread(families)), "2.0.0", "")
        if failures:
            return _temporary("4.4.3", f"relay host {host}: {'; '.join(failures)}")
        return _temporary("4.4.4", f"relay host {host} has no address: {'; '.join(missing)}")

    # --- lookups and the cache -----------------------------------------------------------

    async def _lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        key = (name, rdtype)
        cached = self._cache_get(key)
        if cached is not None:
            return cached
        task = self._inflight.get(key)
        loop = asyncio.get_running_loop()
        if task is None or task.get_loop() is not loop:
            task = loop.create_task(self._query(name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._forget(key, t))
        # Shielded: one caller cancelled (a message's attempt given up) must not cancel
        # the query the others are waiting for; it completes and fills the cache.
        return await asyncio.shield(task)

    def _forget(self, key: tuple[dns.name.Name, dns.rdatatype.RdataType],
                task: asyncio.Task[_Lookup]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]

    def _cache_get(self, key: tuple[dns.name.Name, dns.rdatatype.RdataType]) -> _Lookup | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return entry

    def _cache_put(self, key: tuple[dns.name.Name, dns.rdatatype.RdataType],
                   entry: _Lookup) -> None:
        if self.cache_size <= 0 or entry.expires <= self._clock():
            return  # TTL 0 means "do not cache", as RFC 1035 says
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _query(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        """Ask DNS; every outcome, failures included, as a _Lookup that is also cached."""
        entry = await self._ask(name, rdtype)
        self._cache_put((name, rdtype), entry)
        return entry

    async def _ask(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Lookup:
        now = self._clock
        try:
            # search=False: never append resolv.conf's search domains to a mail domain.
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as e:
            responses = e.kwargs.get("responses") or {}
            ttl = min((_negative_ttl(r) for r in responses.values()),
                      default=DEFAULT_NEGATIVE_TTL)
            return _Lookup(_Kind.NXDOMAIN, now() + min(ttl, MAX_NEGATIVE_TTL))
        except dns.resolver.NoAnswer as e:
            ttl = _negative_ttl(e.kwargs.get("response"))
            return _Lookup(_Kind.NODATA, now() + min(ttl, MAX_NEGATIVE_TTL))
        except dns.resolver.YXDOMAIN:
            # A DNAME made the name too long: it cannot exist.
            return _Lookup(_Kind.NXDOMAIN, now() + DEFAULT_NEGATIVE_TTL)
        except dns.resolver.LifetimeTimeout as e:
            detail = _errors(e.kwargs.get("errors") or ())
            return self._failed(f"no answer within {self.timeout:g} s"
                                + (f" ({detail})" if detail else ""))
        except dns.resolver.NoNameservers as e:
            return self._failed(_errors(e.kwargs.get("errors") or ()) or str(e))
        except (dns.exception.DNSException, OSError) as e:
            return self._failed(str(e) or type(e).__name__)
        ttl = min(float(answer.chaining_result.minimum_ttl), MAX_POSITIVE_TTL)
        rrset = answer.rrset
        assert rrset is not None  # resolve() raises NoAnswer otherwise
        if rdtype == MX:
            mx = tuple((int(r.preference), r.exchange) for r in rrset)
            return _Lookup(_Kind.ANSWER, now() + ttl, mx=mx)
        return _Lookup(_Kind.ANSWER, now() + ttl, addresses=tuple(str(r.address) for r in rrset))

    def _failed(self, detail: str) -> _Lookup:
        log.info("DNS lookup failed: %s", detail)
        return _Lookup(_Kind.FAILED, self._clock() + self.tempfail_ttl, detail=detail)


def _permanent(status: str, reason: str) -> MXResult:
    return MXResult(Resolution.PERMANENT, (), status, reason)


def _temporary(status: str, reason: str) -> MXResult:
    return MXResult(Resolution.TEMPORARY, (), status, reason)
