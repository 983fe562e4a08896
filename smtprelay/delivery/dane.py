"""DANE for SMTP (RFC 7672): TLSA records of MX hosts, trusted only when DNSSEC says so.

Two halves. ``DaneResolver`` asks the configured resolver (delivery.dns.nameservers,
which must validate DNSSEC: unbound, see docs/tls-policy.md) for the MX RRset's and
the ``_25._tcp.<mx host>`` TLSA RRset's security, read from the AD bit of answers to
queries sent with DO and AD set. The relay validates nothing itself: it trusts the AD
bit of a resolver it is configured to trust, as Postfix and Exim do, which is why
that resolver must be the operator's own on a trusted path (loopback).

``check`` matches the certificate chain a server presented against usable TLSA
records, after a handshake that verified nothing (the records, not a CA, decide):

- DANE-EE, usage 3: the leaf certificate (selector 0) or its public key (selector 1),
  in full (matching type 0) or hashed (1: SHA-256, 2: SHA-512), equals the record's
  data. Names and validity dates are not checked (RFC 7672 3.1.1).
- DANE-TA, usage 2: a certificate of the chain the server sent (not the leaf) matches
  the record; it is then the only trust anchor of an RFC 5280 path validation of the
  leaf, whose name must be the MX host name (RFC 7672 3.2.3), dates included. A
  2 0 0 record carries the whole anchor, which then need not be in the chain.
- PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP (RFC 7672 3.1.3) and ignored.

The chain comes from ``peer_chain``: Python 3.11's ``ssl`` has no public way to read
the certificates the server sent beyond the leaf, so the private
``SSLObject._sslobj.get_unverified_chain()`` (present in 3.10-3.12, made public as
``SSLObject.get_unverified_chain`` in 3.13) is used. Without it only the leaf is
known, so DANE-EE still works and DANE-TA fails closed (the message waits).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName, verification

from smtprelay.delivery.dns import stub_resolver

log = logging.getLogger(__name__)

DANE_EE = 3
DANE_TA = 2
# Unusable answers (SERVFAIL from a validating resolver is how "bogus" looks) are
# asked again after this long; secure and insecure answers are kept for their TTL.
FAILED_TTL = 30.0
MAX_TTL = 3600.0
# A resolver that answered the probe without AD is asked again after this long, so a
# fixed resolver is noticed without a restart.
PROBE_INTERVAL = 600.0
_TLSA_PORT = 25


def make_resolver(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    """A stub resolver for the configured nameservers (the system's when empty) that asks
    for DNSSEC records (DO) and the AD bit, with no cache of its own."""
    resolver = stub_resolver(nameservers, timeout)
    resolver.use_edns(0, dns.flags.DO, 1232)
    resolver.flags = dns.flags.RD | dns.flags.AD  # RFC 6840 5.7: ask for the AD bit
    return resolver


@dataclass(frozen=True, slots=True)
class TLSARecord:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        """RFC 7672 3.1: DANE-TA/DANE-EE, a known selector and matching type."""
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1)
                and self.mtype in (0, 1, 2))

    @property
    def text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


class Security(StrEnum):
    SECURE = "secure"  # validated: the AD bit was set
    INSECURE = "insecure"  # an answer without AD: unsigned, or a resolver that does not validate
    FAILED = "failed"  # no usable answer: SERVFAIL (bogus signatures), timeout


@dataclass(frozen=True, slots=True)
class TLSALookup:
    security: Security
    records: tuple[TLSARecord, ...] = ()  # every record found (only when SECURE)
    detail: str = ""

    @property
    def usable(self) -> tuple[TLSARecord, ...]:
        return tuple(r for r in self.records if r.usable)


@dataclass(frozen=True, slots=True)
class _Entry:
    lookup: TLSALookup
    expires: float


class DaneResolver:
    """TLSA and MX security lookups with a small TTL cache; one per transport."""

    def __init__(self, nameservers: Sequence[str], *, timeout: float = 5.0,
                 probe_name: str = ".", cache_size: int = 10000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._resolver = make_resolver(nameservers, timeout)
        self._servers = ", ".join(nameservers) or "the system resolver"
        self._probe = dns.name.from_text(probe_name)
        self._clock = clock
        self._cache: OrderedDict[tuple[dns.name.Name, int], _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._probed_at: float | None = None
        self._validating = False

    async def validating(self) -> bool:
        """Whether the resolver validates DNSSEC, by the AD bit on its answer for the
        probe name (delivery.dane_probe_name, a signed name; the root by default).
        Logged at ERROR when not: DANE then does not apply (RFC 7672 needs it)."""
        now = self._clock()
        if self._probed_at is not None and (self._validating
                                            or now - self._probed_at < PROBE_INTERVAL):
            return self._validating
        self._probed_at = now
        result = await self._ask(self._probe, dns.rdatatype.SOA)
        self._validating = result.security is Security.SECURE
        if not self._validating:
            log.error("delivery.dane is true, but %s answered for %s without the AD bit "
                      "(%s): it does not validate DNSSEC, so DANE is not applied. Point "
                      "delivery.dns.nameservers at a validating resolver on loopback "
                      "(unbound; see docs/tls-policy.md), or set delivery.dane_probe_name "
                      "to a DNSSEC-signed name it can validate", self._servers,
                      self._probe.to_text(), result.detail or result.security.value)
        return self._validating

    async def mx_security(self, domain: str) -> TLSALookup:
        """Whether ``domain``'s MX RRset (or its absence) is DNSSEC-validated."""
        return await self._cached(dns.name.from_text(domain), dns.rdatatype.MX)

    async def tlsa(self, host: str, port: int = _TLSA_PORT) -> TLSALookup:
        """The TLSA RRset of ``_<port>._tcp.<host>``: SECURE with its records (possibly
        none: a validated denial), INSECURE, or FAILED."""
        name = dns.name.from_text(f"_{port}._tcp.{host.rstrip('.')}")
        return await self._cached(name, dns.rdatatype.TLSA)

    async def _cached(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> TLSALookup:
        key = (name, rdtype)
        entry = self._cache.get(key)
        if entry is not None and entry.expires > self._clock():
            self._cache.move_to_end(key)
            return entry.lookup
        lookup, ttl = await self._ask_ttl(name, rdtype)
        self._cache[key] = _Entry(lookup, self._clock() + ttl)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return lookup

    async def _ask(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> TLSALookup:
        return (await self._ask_ttl(name, rdtype))[0]

    async def _ask_ttl(self, name: dns.name.Name,
                       rdtype: dns.rdatatype.RdataType) -> tuple[TLSALookup, float]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            responses: list[Any] = []
            if isinstance(exc, dns.resolver.NoAnswer):
                responses = [exc.kwargs.get("response")]
            else:
                responses = list((exc.kwargs.get("responses") or {}).values())
            secure = bool(responses) and all(
                r is not None and r.flags & dns.flags.AD for r in responses)
            return (TLSALookup(Security.SECURE if secure else Security.INSECURE),
                    MAX_TTL / 12 if secure else FAILED_TTL)
        except (dns.exception.DNSException, OSError) as exc:
            detail = str(exc) or type(exc).__name__
            log.info("DNSSEC lookup of %s %s failed: %s", name,
                     dns.rdatatype.to_text(rdtype), detail)
            return TLSALookup(Security.FAILED, detail=detail), FAILED_TTL
        ttl = min(float(answer.chaining_result.minimum_ttl), MAX_TTL)
        if not answer.response.flags & dns.flags.AD:
            return TLSALookup(Security.INSECURE, detail="no AD bit"), ttl
        records: tuple[TLSARecord, ...] = ()
        if rdtype == dns.rdatatype.TLSA and answer.rrset is not None:
            records = tuple(TLSARecord(int(r.usage), int(r.selector), int(r.mtype),
                                       bytes(r.cert)) for r in answer.rrset)
        return TLSALookup(Security.SECURE, records), ttl


# ------------------------------------------------------------------- certificates

def peer_chain(ssl_object: Any) -> list[bytes]:
    """The certificates the server sent (DER, leaf first), or just the leaf when this
    Python cannot tell more (see the module's docstring)."""
    if ssl_object is None:
        return []
    public = getattr(type(ssl_object), "get_unverified_chain", None)
    if public is not None:  # Python 3.13+: DER bytes
        return [bytes(c) for c in public(ssl_object) or []]
    inner = getattr(ssl_object, "_sslobj", None)
    private = getattr(inner, "get_unverified_chain", None)
    if private is not None:  # 3.10-3.12: _ssl.Certificate objects
        import _ssl
        return [c.public_bytes(_ssl.ENCODING_DER) for c in private() or []]
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def _selected(der: bytes, selector: int) -> bytes:
    if selector == 0:
        return der
    cert = x509.load_der_x509_certificate(der)
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _association(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def matches(der: bytes, record: TLSARecord) -> bool:
    """Whether one certificate (DER) matches one TLSA record's selector and data."""
    try:
        return _association(_selected(der, record.selector), record.mtype) == record.data
    except ValueError:  # a certificate cryptography cannot read matches nothing
        return False


def check(chain: Sequence[bytes], records: Sequence[TLSARecord], host: str,
          now: datetime.datetime | None = None) -> str | None:
    """None when the chain is authenticated by a usable record, else why not."""
    usable = [r for r in records if r.usable]
    if not chain:
        return "the server sent no certificate"
    if not usable:
        return "no usable TLSA record (only PKIX-TA/PKIX-EE or unknown parameters)"
    if any(matches(chain[0], r) for r in usable if r.usage == DANE_EE):
        return None
    anchors: list[bytes] = []
    for record in (r for r in usable if r.usage == DANE_TA):
        anchors += [der for der in chain[1:] if matches(der, record)]
        if record.selector == 0 and record.mtype == 0:
            anchors.append(record.data)  # the whole anchor is in the record
    problems: list[str] = []
    for anchor in dict.fromkeys(anchors):  # in order, each once
        problem = _verify_to_anchor(chain, anchor, host, now)
        if problem is None:
            return None
        problems.append(problem)
    if problems:
        return f"the chain does not verify to the DANE-TA trust anchor: {problems[0]}"
    return "no TLSA record matches the certificate or its chain"


def _verify_to_anchor(chain: Sequence[bytes], anchor: bytes, host: str,
                      now: datetime.datetime | None) -> str | None:
    try:
        anchor_cert = x509.load_der_x509_certificate(anchor)
        leaf = x509.load_der_x509_certificate(chain[0])
        intermediates = [x509.load_der_x509_certificate(der) for der in chain[1:]]
        builder = verification.PolicyBuilder().store(verification.Store([anchor_cert]))
        builder = builder.time(now or datetime.datetime.now(datetime.UTC))
        verifier = builder.build_server_verifier(DNSName(host.rstrip(".")))
        verifier.verify(leaf, intermediates)
    except (ValueError, verification.VerificationError) as exc:
        return str(exc) or type(exc).__name__
    return None
