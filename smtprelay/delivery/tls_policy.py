"""Which TLS each MX host of a recipient domain gets: the relay's and the set's policy,
DANE and MTA-STS, combined before connecting.

The order, per MX host (docs/tls-policy.md says it for operators):

1. DANE (delivery.dane, a validating resolver, the domain's MX RRset validated): a
   validated TLSA RRset with usable records means TLS is mandatory and the certificate
   must match them, whatever else applies (RFC 8461 2: DANE wins over MTA-STS). Only
   unusable records: TLS mandatory, unauthenticated (RFC 7672 2.2). A TLSA lookup
   that fails (SERVFAIL: bogus signatures) makes the host unusable (RFC 7672 2.2).
2. MTA-STS (delivery.mta_sts.enabled): in enforce mode an MX host the policy does not
   name is not used, and the others need a certificate valid for their name; in
   testing mode the same checks are made, their failures reported, and the mail goes
   out as if there were no policy.
3. Otherwise the relay's delivery.tls, tightened by the configuration set's tls.

The relay's (or set's) policy is a floor under 1 and 2: require_verified stays
require_verified under an MTA-STS testing policy, and require_encrypted is kept under
DANE. DANE authentication counts as verified: a host matching its TLSA records is not
also asked for a CA-signed certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from smtprelay.config import Config, ConfigSource
from smtprelay.delivery.client import ClientSettings, ConnectError, TLSPolicy
from smtprelay.delivery.dane import DaneResolver, Security
from smtprelay.delivery.model import Destination, Verdict
from smtprelay.delivery.mta_sts import MtaSts, StsLookup, StsMode, bare_name
from smtprelay.delivery.mta_sts_store import StsPolicyStore

log = logging.getLogger("smtprelay.delivery.tls")

PolicyType = Literal["sts", "tlsa", "no-policy-found"]  # as TLSOutcome.policy_type


@dataclass(frozen=True, slots=True)
class HostPlan:
    """How to connect to one destination, and what to say about it in a TLSOutcome."""

    settings: ClientSettings
    policy_type: PolicyType = "no-policy-found"
    policy_strings: tuple[str, ...] = ()
    # Set: the host must not be used; this is the error it counts as.
    refusal: ConnectError | None = None
    # MTA-STS testing: when TLS fails under `settings`, report it, then connect with
    # these instead (the policy must not stop mail in testing mode).
    fallback: ClientSettings | None = None
    # A failure known before connecting that does not stop delivery (an MX host an
    # MTA-STS testing policy does not name; a policy that could not be fetched).
    known_failure: str | None = None


class TLSPlanner:
    """Plans each delivery's TLS from the configuration in force; keeps the MTA-STS
    policy cache and the DANE lookups' cache across messages."""

    def __init__(self, live: ConfigSource, *, clock: Callable[[], float] = time.monotonic,
                 sts_store: StsPolicyStore | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        """`sts_store`: where MTA-STS policies outlive a restart (None: memory only)."""
        self._live = live
        self._clock = clock
        self._sts_store = sts_store
        self._wall = wall
        self._sts: tuple[tuple[object, ...], MtaSts] | None = None
        self._dane: tuple[tuple[object, ...], DaneResolver] | None = None

    async def plan(self, domain: str, base: ClientSettings,
                   destinations: Sequence[Destination]) -> list[HostPlan]:
        config = self._live.config
        plans = [HostPlan(base) for _ in destinations]
        if domain.startswith("["):  # an address literal has no DNS to publish a policy in
            return plans
        dane = await self._dane_resolver(config, domain)
        sts = await self._sts_lookup(config, domain)
        for i, destination in enumerate(destinations):
            plan = await self._dane_plan(dane, domain, base, destination)
            if plan is None:
                plan = self._sts_plan(sts, domain, base, destination)
            plans[i] = plan
        return plans

    async def forget_sts(self, domain: str) -> bool:
        """Drop `domain`'s MTA-STS policy from the cache and the store (MtaSts.forget)."""
        if self._sts is not None:
            return await self._sts[1].forget(domain)
        if self._sts_store is not None:  # nothing delivered since the start
            return await asyncio.to_thread(self._sts_store.forget, bare_name(domain))
        return False

    async def close(self) -> None:
        if self._sts is not None:
            await self._sts[1].close()
            self._sts = None

    # ----------------------------------------------------------------------- DANE

    async def _dane_resolver(self, config: Config, domain: str) -> DaneResolver | None:
        delivery = config.delivery
        if not delivery.dane:
            return None
        key = (tuple(delivery.dns.nameservers), delivery.dns.timeout,
               delivery.dane_probe_name)
        if self._dane is None or self._dane[0] != key:
            self._dane = (key, DaneResolver(delivery.dns.nameservers,
                                            timeout=delivery.dns.timeout,
                                            probe_name=delivery.dane_probe_name,
                                            clock=self._clock))
        resolver = self._dane[1]
        if not await resolver.validating():
            return None
        # RFC 7672 2.2.1: TLSA records are only looked for behind a validated MX RRset;
        # an insecure one may have been forged, and its hosts' records prove nothing.
        if (await resolver.mx_security(domain)).security is not Security.SECURE:
            return None
        return resolver

    @staticmethod
    async def _dane_plan(dane: DaneResolver | None, domain: str, base: ClientSettings,
                         destination: Destination) -> HostPlan | None:
        if dane is None:
            return None
        found = await dane.tlsa(destination.host, base.port)
        if found.security is Security.FAILED:
            error = ConnectError(
                Verdict.DEFERRED, "4.7.5",
                f"DANE: the TLSA lookup for _{base.port}._tcp.{destination.host} failed "
                f"({found.detail or 'no answer'}); the host is not used without it "
                "(RFC 7672 2.2)", remote_mta=f"{destination.host} [{destination.address}]")
            return HostPlan(base, "tlsa", (), refusal=error.with_tls_failure("dnssec-invalid"))
        if found.security is not Security.SECURE or not found.records:
            return None  # no DANE for this host: MTA-STS or the relay's policy
        strings = tuple(r.text for r in found.records)
        # TLS is mandatory either way; with only unusable records (RFC 7672 2.2) it is
        # not authenticated, with usable ones the records authenticate it.
        tls = base.tls if base.tls.requires_tls else TLSPolicy.REQUIRE_ENCRYPTED
        return HostPlan(dataclasses.replace(base, tls=tls, tlsa=found.usable), "tlsa",
                        strings)

    # -------------------------------------------------------------------- MTA-STS

    async def _sts_lookup(self, config: Config, domain: str) -> StsLookup | None:
        delivery = config.delivery
        sts_config = delivery.mta_sts
        if not sts_config.enabled:
            return None
        ca_file = str(delivery.tls_ca_file) if delivery.tls_ca_file else None
        key = (tuple(delivery.dns.nameservers), delivery.dns.timeout, sts_config.port,
               ca_file, sts_config.cache_size, sts_config.fetch_timeout)
        if self._sts is None or self._sts[0] != key:
            if self._sts is not None:
                await self._sts[1].close()
            self._sts = (key, MtaSts(delivery.dns.nameservers, timeout=delivery.dns.timeout,
                                     port=sts_config.port, ca_file=ca_file,
                                     cache_size=sts_config.cache_size,
                                     fetch_timeout=sts_config.fetch_timeout,
                                     clock=self._clock, store=self._sts_store,
                                     wall=self._wall))
        return await self._sts[1].lookup(domain)

    @staticmethod
    def _sts_plan(sts: StsLookup | None, domain: str, base: ClientSettings,
                  destination: Destination) -> HostPlan:
        if sts is None:
            return HostPlan(base)
        policy = sts.policy
        if policy is None or policy.mode is StsMode.NONE:
            if sts.failure is not None:  # a policy was announced, but could not be had
                return HostPlan(base, "sts", (), known_failure=sts.failure)
            return HostPlan(base)
        strings = policy.policy_strings
        verified = dataclasses.replace(base, tls=TLSPolicy.REQUIRE_VERIFIED)
        if not policy.matches(destination.host):
            why = (f"MTA-STS: {destination.host} is not an MX host the policy of {domain} "
                   f"names ({', '.join(policy.mx)})")
            if policy.mode is StsMode.ENFORCE:
                error = ConnectError(Verdict.DEFERRED, "4.7.5", why + "; not used",
                                     remote_mta=f"{destination.host} [{destination.address}]")
                return HostPlan(base, "sts", strings,
                                refusal=error.with_tls_failure("validation-failure"))
            log.warning("%s; delivering anyway (mode testing)", why)
            return HostPlan(base, "sts", strings, known_failure="validation-failure")
        if policy.mode is StsMode.ENFORCE:
            return HostPlan(verified, "sts", strings)
        if base.tls is TLSPolicy.REQUIRE_VERIFIED:
            return HostPlan(base, "sts", strings)
        return HostPlan(verified, "sts", strings, fallback=base)
