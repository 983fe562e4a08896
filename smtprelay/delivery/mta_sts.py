"""MTA-STS (RFC 8461): which MX hosts of a domain are genuine, and that TLS to them must
be verified.

``MtaSts.lookup(domain)`` follows section 3 and 5.1:

1. ``_mta-sts.<domain>`` TXT: exactly one record starting ``v=STSv1`` with an ``id``.
2. A cached policy with that id, not past its max_age: used as it is, nothing fetched.
3. Otherwise ``https://mta-sts.<domain>[:port]/.well-known/mta-sts.txt`` over HTTPS
   verified against the system CAs plus delivery.tls_ca_file, no redirects followed,
   200 and text/plain only, at most 64 KiB; the new policy replaces the cached one.
4. No TXT record, a DNS failure or a failed fetch: a cached policy still within its
   max_age stays in force (a downgrade by an attacker who removes the record or
   blocks the fetch is what the cache is for); without one there is no policy, and the
   failure is reported (``StsLookup.failure``, RFC 8460's result type).

The policy host's name is resolved through delivery.dns.nameservers (not the system's
resolver), as every other name delivery uses; the TLS certificate is still checked
against the name, so only the address comes from there.

The cache lives in memory, bounded by delivery.mta_sts.cache_size (least recently
used dropped first), and on disk (delivery.mta_sts_store): a policy fetched before a
restart stays in force after it until its max_age is over, as RFC 8461 10.2 means the
cache to. A policy in use is fetched again once half its max_age has passed, in the
background (without delaying the delivery that noticed), so that a domain with steady
traffic never has its policy expire and start cold; a failed refresh is tried again an
hour later at the soonest, and the cached policy stays in force meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import sqlite3
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiohttp
import aiohttp.abc
import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from smtprelay.delivery.dane import make_resolver
from smtprelay.delivery.mta_sts_store import StoredPolicy, StsPolicyStore

log = logging.getLogger(__name__)

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 3.3: "a limit of 64 KB is suggested"
MAX_MAX_AGE = 31557600  # RFC 8461 3.2: about a year
# The TXT record is asked for before every delivery to a domain, so its answers are
# cached: positive ones for their TTL (at most an hour), "none" for five minutes
# (RFC 2308's usual negative TTL), failures for 30 seconds.
MAX_TXT_TTL = 3600.0
NEGATIVE_TXT_TTL = 300.0
FAILED_TXT_TTL = 30.0
# A policy in use is fetched again after this share of its max_age; a refresh that
# failed is tried again after REFRESH_RETRY seconds at the soonest.
REFRESH_AFTER = 0.5
REFRESH_RETRY = 3600.0
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_WELL_KNOWN = "/.well-known/mta-sts.txt"


class StsMode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


class StsPolicyError(ValueError):
    """A policy file that does not parse as RFC 8461 3.2 says."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    mode: StsMode
    mx: tuple[str, ...]  # patterns: "mail.example.com", "*.example.net"
    max_age: int  # seconds
    text: str  # the policy file as fetched, for TLS-RPT's policy-string

    def matches(self, host: str) -> bool:
        return any(mx_matches(pattern, host) for pattern in self.mx)

    @property
    def policy_strings(self) -> tuple[str, ...]:
        return tuple(line.strip() for line in self.text.splitlines() if line.strip())


def bare_name(name: str) -> str:
    """A domain or host name as policies are kept and matched: no blanks, no final
    dot, lower case."""
    return name.strip().rstrip(".").lower()


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: an exact name, or "*." matching exactly one leftmost label."""
    pattern = bare_name(pattern)
    host = bare_name(host)
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return pattern == host


def parse_policy(text: str) -> StsPolicy:
    """RFC 8461 3.2: "key: value" lines (CRLF or LF), version first; unknown keys ignored."""
    fields: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise StsPolicyError(f"line without a colon: {line[:80]!r}")
        fields.append((key.strip(), value.strip()))
    if not fields or fields[0] != ("version", "STSv1"):
        raise StsPolicyError("the first field is not \"version: STSv1\"")
    values: dict[str, str] = {}
    mx: list[str] = []
    for key, value in fields[1:]:
        if key == "mx":
            mx.append(value)
        else:
            values.setdefault(key, value)
    try:
        mode = StsMode(values.get("mode", ""))
    except ValueError:
        raise StsPolicyError(f"mode {values.get('mode')!r} is not enforce, testing or "
                             "none") from None
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_MAX_AGE:
        raise StsPolicyError(f"max_age {age!r} is not a number of seconds up to {MAX_MAX_AGE}")
    if mode is not StsMode.NONE and not mx:
        raise StsPolicyError(f"mode {mode.value} without any mx field")
    return StsPolicy(mode, tuple(mx), int(age), text)


def parse_txt(strings: Sequence[str]) -> str | None:
    """The id of one TXT record (its strings joined), or None when it is not an STS
    record; StsPolicyError when it starts as one but is malformed."""
    text = "".join(strings)
    if not text.startswith("v=STSv1"):
        return None
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    if fields.get("v") != "STSv1" or not _TXT_ID.fullmatch(fields.get("id", "")):
        raise StsPolicyError(f"malformed MTA-STS TXT record {text[:100]!r}")
    return fields["id"]


class _DnsOnlyResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's name resolution through delivery.dns.nameservers."""

    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results: list[Any] = []
        for rdtype, fam in ((dns.rdatatype.A, socket.AF_INET),
                            (dns.rdatatype.AAAA, socket.AF_INET6)):
            if family not in (socket.AF_UNSPEC, fam):
                continue
            try:
                answer = await self._resolver.resolve(host, rdtype, search=False)
            except (dns.exception.DNSException, OSError):
                continue
            for record in answer:
                results.append({"hostname": host, "host": str(record.address), "port": port,
                                "family": fam, "proto": 0,
                                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV})
        if not results:
            raise OSError(f"{host} has no address")
        return results

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class StsLookup:
    policy: StsPolicy | None  # in force for the domain (mode none included), or None
    failure: str | None = None  # RFC 8460: sts-policy-fetch-error, -invalid, sts-webpki-invalid
    detail: str = ""


@dataclass(slots=True)
class _Cached:
    policy: StsPolicy
    policy_id: str
    expires: float  # on MtaSts's clock
    refresh_at: float  # on MtaSts's clock: fetch it again in the background from then


class _FetchFailed(Exception):
    def __init__(self, failure: str, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class MtaSts:
    """Policy discovery, fetching and the cache; one per transport."""

    def __init__(self, nameservers: Sequence[str], *, timeout: float = 5.0, port: int = 443,
                 ca_file: str | None = None, cache_size: int = 10000,
                 fetch_timeout: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 store: StsPolicyStore | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        """`store`: where policies outlive the process (None: memory only); `wall`: the
        clock of its expiry times, which must survive a restart (`clock` need not)."""
        self._dns = make_resolver(nameservers, timeout)
        self.port = port
        self._ca_file = ca_file
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self._fetch_timeout = fetch_timeout
        self._clock = clock
        self._store = store
        self._wall = wall
        # Domains the store was asked for and has no policy of: memory is up to date
        # for them (every policy fetched since is written through it).
        self._not_stored: OrderedDict[str, None] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._inflight: dict[str, asyncio.Task[StsLookup]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        # domain -> (the TXT record's id or None, when to ask again)
        self._txt: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    async def lookup(self, domain: str) -> StsLookup:
        """The policy in force for ``domain``. Never raises (but can be cancelled)."""
        domain = bare_name(domain)
        task = self._inflight.get(domain)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(domain))
            self._inflight[domain] = task
            task.add_done_callback(lambda _: self._inflight.pop(domain, None))
        try:
            return await asyncio.shield(task)
        except Exception as exc:  # a bug here must not stop delivery
            log.exception("MTA-STS lookup for %s failed", domain)
            return StsLookup(None, "sts-policy-fetch-error", f"internal error: {exc!r}")

    async def forget(self, domain: str) -> bool:
        """Drop what is known of `domain`'s policy, in memory and in the store (an
        operator's way out of a policy the domain itself got wrong); whether a policy
        was known. The next message to it looks the policy up afresh."""
        domain = bare_name(domain)
        refresh = self._refreshing.get(domain)
        if refresh is not None:
            refresh.cancel()  # it would put the policy back
        known = self._cache.pop(domain, None) is not None
        self._txt.pop(domain, None)
        self._not_stored.pop(domain, None)
        if self._store is not None:
            known = await asyncio.to_thread(self._store.forget, domain) or known
        return known

    async def close(self) -> None:
        refreshes = list(self._refreshing.values())
        for task in refreshes:
            task.cancel()
        await asyncio.gather(*refreshes, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------------------- steps

    def _cached(self, domain: str) -> _Cached | None:
        entry = self._cache.get(domain)
        if entry is None:
            return None
        if entry.expires <= self._clock():  # max_age passed: the policy is gone
            del self._cache[domain]
            return None
        self._cache.move_to_end(domain)
        return entry

    async def _stored(self, domain: str) -> _Cached | None:
        """The policy the store kept for `domain` (from before a restart, or dropped
        from memory as least recently used), back in memory."""
        if self._store is None or domain in self._not_stored:
            return None
        policy = found = None
        try:
            found = await asyncio.to_thread(self._store.get, domain, self._wall())
        except (sqlite3.Error, OSError) as exc:  # once per domain: then memory rules
            log.error("MTA-STS policy of %s not read from %s: %s", domain,
                      self._store.path, exc)
        if found is not None:
            try:
                policy = parse_policy(found.text)
            except StsPolicyError as exc:  # it parsed when fetched: a damaged row
                log.error("MTA-STS policy of %s in %s not used: %s", domain,
                          self._store.path, exc)
        if found is None or policy is None:
            self._not_stored[domain] = None
            self._not_stored.move_to_end(domain)
            while len(self._not_stored) > self._cache_size:
                self._not_stored.popitem(last=False)
            return None
        # From wall-clock times to this process's clock.
        offset = self._clock() - self._wall()
        entry = _Cached(policy, found.policy_id, found.expires_at + offset,
                        found.fetched_at + policy.max_age * REFRESH_AFTER + offset)
        self._remember(domain, entry)
        return entry

    def _remember(self, domain: str, entry: _Cached) -> None:
        self._cache[domain] = entry
        self._cache.move_to_end(domain)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _keep(self, domain: str, policy: StsPolicy, policy_id: str) -> None:
        """A policy just fetched: in force from now for its max_age, in memory and in
        the store."""
        now = self._clock()
        self._remember(domain, _Cached(policy, policy_id, now + policy.max_age,
                                       now + policy.max_age * REFRESH_AFTER))
        if self._store is None:
            return
        wall = self._wall()
        stored = StoredPolicy(policy_id, policy.text, wall, wall + policy.max_age)
        try:
            await asyncio.to_thread(self._store.put, domain, stored)
        except (sqlite3.Error, OSError) as exc:
            log.error("MTA-STS policy of %s not saved to %s (in force until a restart): %s",
                      domain, self._store.path, exc)
            return
        self._not_stored.pop(domain, None)

    async def _lookup(self, domain: str) -> StsLookup:
        cached = self._cached(domain) or await self._stored(domain)
        policy_id = await self._txt_id(domain)
        if policy_id is None:
            # No (usable) record, or DNS could not say: the cache, if any, still rules.
            return StsLookup(cached.policy if cached else None)
        if cached is not None and cached.policy_id == policy_id:
            if cached.refresh_at <= self._clock():
                self._refresh_later(domain, cached)
            return StsLookup(cached.policy)
        try:
            policy = await self._fetch(domain)
        except _FetchFailed as exc:
            log.warning("MTA-STS policy of %s not fetched (%s): %s", domain, exc.failure,
                        exc.detail)
            return StsLookup(cached.policy if cached else None, exc.failure, exc.detail)
        await self._keep(domain, policy, policy_id)
        log.info("MTA-STS policy of %s: mode %s, mx %s, max_age %d", domain,
                 policy.mode.value, ",".join(policy.mx), policy.max_age)
        return StsLookup(policy)

    def _refresh_later(self, domain: str, cached: _Cached) -> None:
        if domain in self._refreshing:
            return
        # Not before an hour from now, whatever comes of this one.
        cached.refresh_at = self._clock() + REFRESH_RETRY
        task = asyncio.get_running_loop().create_task(self._refresh(domain, cached))
        self._refreshing[domain] = task
        task.add_done_callback(lambda _: self._refreshing.pop(domain, None))

    async def _refresh(self, domain: str, cached: _Cached) -> None:
        try:
            policy = await self._fetch(domain)
        except _FetchFailed as exc:
            log.info("MTA-STS policy of %s not refreshed (%s): %s; the cached one stays "
                     "in force until its max_age is over", domain, exc.failure, exc.detail)
            return
        except Exception:  # a bug here must not leave an exception nobody retrieves
            log.exception("MTA-STS refresh of %s failed", domain)
            return
        current = self._cache.get(domain)
        if current is not None and current.policy_id != cached.policy_id:
            return  # a new id was published and its policy fetched meanwhile
        await self._keep(domain, policy, cached.policy_id)
        log.info("MTA-STS policy of %s refreshed: mode %s, max_age %d", domain,
                 policy.mode.value, policy.max_age)

    async def _txt_id(self, domain: str) -> str | None:
        cached = self._txt.get(domain)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        policy_id, ttl = await self._ask_txt(domain)
        self._txt[domain] = (policy_id, self._clock() + ttl)
        self._txt.move_to_end(domain)
        while len(self._txt) > self._cache_size:
            self._txt.popitem(last=False)
        return policy_id

    async def _ask_txt(self, domain: str) -> tuple[str | None, float]:
        try:
            answer = await self._dns.resolve(f"_mta-sts.{domain}", dns.rdatatype.TXT,
                                             search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None, NEGATIVE_TXT_TTL
        except (dns.exception.DNSException, OSError) as exc:
            log.info("MTA-STS TXT lookup for %s failed: %s", domain, exc)
            return None, FAILED_TXT_TTL
        ttl = min(float(answer.chaining_result.minimum_ttl), MAX_TXT_TTL)
        ids: list[str] = []
        try:
            for record in answer:
                found = parse_txt([s.decode("ascii", "replace") for s in record.strings])
                if found is not None:
                    ids.append(found)
        except StsPolicyError as exc:
            log.info("MTA-STS: %s", exc)
            return None, ttl
        if len(ids) > 1:  # RFC 8461 3.1: several records: as if there were none
            log.info("MTA-STS: %s publishes %d TXT records; none is used", domain, len(ids))
            return None, ttl
        return (ids[0] if ids else None), ttl

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = ssl.create_default_context()
            if self._ca_file is not None:
                ctx.load_verify_locations(cafile=self._ca_file)
            connector = aiohttp.TCPConnector(ssl=ctx, resolver=_DnsOnlyResolver(self._dns),
                                             use_dns_cache=False, limit=100)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": "smtprelay MTA-STS"},
                timeout=aiohttp.ClientTimeout(total=self._fetch_timeout))
        return self._session

    async def _fetch(self, domain: str) -> StsPolicy:
        port = "" if self.port == 443 else f":{self.port}"
        url = f"https://mta-sts.{domain}{port}{_WELL_KNOWN}"
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise _FetchFailed("sts-policy-fetch-error",
                                       f"{url} answered HTTP {response.status}")
                if response.content_type != "text/plain":
                    raise _FetchFailed("sts-policy-invalid",
                                       f"{url} is {response.content_type}, not text/plain")
                body = await response.content.read(MAX_POLICY_BYTES + 1)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _FetchFailed("sts-webpki-invalid",
                               f"certificate of mta-sts.{domain} not valid: "
                               f"{exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise _FetchFailed("sts-webpki-invalid", f"TLS with mta-sts.{domain}: {exc}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _FetchFailed("sts-policy-fetch-error",
                               f"{url}: {str(exc) or type(exc).__name__}") from None
        if len(body) > MAX_POLICY_BYTES:
            raise _FetchFailed("sts-policy-invalid", f"{url} is over {MAX_POLICY_BYTES} bytes")
        try:
            return parse_policy(body.decode("utf-8"))
        except (UnicodeDecodeError, StsPolicyError) as exc:
            raise _FetchFailed("sts-policy-invalid", f"{url}: {exc}") from None
