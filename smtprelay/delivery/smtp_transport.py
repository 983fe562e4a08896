"""SMTP delivery: a recipient domain's MX hosts (mx mode) or one upstream (smarthost).

For each transaction (one message, one recipient domain) the transport finds where
to go, takes a domain slot from the pool, and walks the destinations in order: an
idle cached session to that address if there is one, else a new one. A host that
cannot be used (refused, timed out, 421 or 5xx greeting, TLS required but missing)
is skipped for the next address, then the next MX, up to `MAX_HOSTS_TRIED` per
attempt (Postfix's smtp_mx_address_limit is 5 too). Once a session is established
the transaction's results are final for this attempt: a session that breaks
mid-transaction defers its recipients rather than re-sending them elsewhere, except
when a cached session turns out to have died while idle before the body went out,
which is retried once on a fresh session.

Traffic shaping (delivery.shaping, smtprelay.delivery.shaping) sits around that: the
provider is read off the first MX host; a suspended provider defers the transaction
before anything else, the rate limits of the recipient domain and of the provider for
the source address are waited for (or defer) once a domain slot is held, the pool keeps
to the provider's connections and messages per connection, and the replies go through
the provider's rules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from smtprelay.config import Config, ConfigSource, Derived
from smtprelay.delivery.client import ClientSettings, ConnectError, Connection, TLSPolicy
from smtprelay.delivery.dns import MXResolver, MXResult, Resolution
from smtprelay.delivery.ip_pools import Source, SourceChooser, Wait
from smtprelay.delivery.model import (
    Destination,
    RecipientResult,
    Transaction,
    Verdict,
    same_result,
)
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.providers import ProviderTableError, load_table
from smtprelay.delivery.shaping import Lane, Shaper
from smtprelay.delivery.tls_outcome import TLSOutcome
from smtprelay.delivery.tls_policy import HostPlan, TLSPlanner
from smtprelay.delivery.tls_report import observed
from smtprelay.infra import metrics
from smtprelay.spool.model import QueuedMessage

log = logging.getLogger("smtprelay.delivery")

MAX_HOSTS_TRIED = 5
# Derived settings kept per source (_from_source): pool addresses times TLS policies,
# and what reloads leave behind until this many.
_SOURCED_KEPT = 256
# Weakest first: a configuration set's tls may move up this list, never down.
_TLS_ORDER = (TLSPolicy.OPPORTUNISTIC, TLSPolicy.REQUIRE_ENCRYPTED, TLSPolicy.REQUIRE_VERIFIED)


class SmarthostPasswordError(Exception):
    """The smarthost password cannot be read; the message names the config key."""


@dataclass(frozen=True, slots=True)
class _Route:
    settings: ClientSettings
    slot: str  # the pool's per-domain slot name
    limit: int  # sessions in use at once under that slot
    # The recipient domain whose MX hosts these are (TLS reporting's policy domain);
    # None for the smarthost.
    policy_domain: str | None = None


def smarthost_password(config: Config) -> str | None:
    """Read the smarthost password now, or raise naming the key and what to do.

    Only in smarthost mode: a smarthost block kept in an mx configuration is unused.
    """
    smarthost = config.delivery.smarthost
    if config.delivery.mode != "smarthost" or smarthost is None or smarthost.username is None:
        return None
    if smarthost.password_env is not None:
        value = os.environ.get(smarthost.password_env)
        if not value:
            raise SmarthostPasswordError(
                f"delivery.smarthost.password_env: the environment variable "
                f"{smarthost.password_env} is not set or empty; export it before starting "
                "smtprelay (systemd: Environment= or EnvironmentFile=)")
        return value
    assert smarthost.password_file is not None
    try:
        value = smarthost.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SmarthostPasswordError(
            f"delivery.smarthost.password_file: cannot read {smarthost.password_file}: "
            f"{exc.strerror or exc}") from None
    if not value:
        raise SmarthostPasswordError(
            f"delivery.smarthost.password_file: {smarthost.password_file} is empty")
    return value


class TransportSource(ConfigSource, Protocol):
    """What the transport reads, swapped by a reload: the configuration and the smarthost
    password read for it (smarthost_password; None without one)."""

    @property
    def smarthost_password(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _Settings:
    """The client settings of one configuration, made once: the same object for every
    message is also the same connection-cache key."""

    config: Config
    mx: dict[TLSPolicy, ClientSettings]
    smarthost: _Route | None

    @classmethod
    def of(cls, config: Config, password: str | None) -> _Settings:
        delivery = config.delivery
        helo = delivery.helo_name or config.server.hostname
        ca_file = str(delivery.tls_ca_file) if delivery.tls_ca_file else None
        mx = {policy: ClientSettings(port=delivery.port, tls=policy, helo=helo,
                                     connect_timeout=delivery.connect_timeout,
                                     command_timeout=delivery.command_timeout,
                                     ca_file=ca_file, ca_file_adds=True)
              for policy in _TLS_ORDER}
        smarthost = delivery.smarthost
        if delivery.mode != "smarthost" or smarthost is None:
            return cls(config, mx, None)
        settings = ClientSettings(
            port=smarthost.port,
            tls=TLSPolicy.NONE if smarthost.tls == "none" else TLSPolicy.REQUIRE,
            implicit_tls=smarthost.tls == "implicit",
            verify_certificates=smarthost.verify_certificate and smarthost.tls != "none",
            ca_file=str(smarthost.ca_file) if smarthost.ca_file else None,
            username=smarthost.username, password=password, helo=helo,
            connect_timeout=delivery.connect_timeout,
            command_timeout=delivery.command_timeout)
        # Everything goes to one host: the relay-wide limit is the only one.
        return cls(config, mx, _Route(settings, slot=f"[{smarthost.host}]",
                                      limit=delivery.max_connections))


def _session_key_from(key: Hashable, address: str, source: str) -> bool:
    """Whether a connection-cache key (address, MX host, settings: see _try_hosts) is
    of a session to `address` that left from `source`."""
    return (isinstance(key, tuple) and key[0] == address
            and isinstance(key[2], ClientSettings) and key[2].source_address == source)


class SMTPTransport:
    def __init__(self, live: TransportSource, resolver: MXResolver,
                 pool: ConnectionPool, sources: SourceChooser | None = None, *,
                 on_tls_outcome: Callable[[TLSOutcome], None] | None = None,
                 planner: TLSPlanner | None = None, shaper: Shaper | None = None) -> None:
        self._resolver = resolver
        self._pool = pool
        # The IP pools' source addresses and warm-up (None: the host picks the source).
        self.sources = sources
        # Each session opened to an MX host, told to TLS reporting (RFC 8460).
        self._on_tls_outcome = on_tls_outcome
        # DANE and MTA-STS, decided per MX host before connecting (mx mode only).
        self._planner = planner or TLSPlanner(live)
        # TLS policies, timeouts and the smarthost follow a reload (SIGHUP).
        self._settings = Derived(live, lambda config: _Settings.of(config,
                                                                   live.smarthost_password))
        # Kept across reloads: what was counted and who is suspended outlive a SIGHUP.
        self.shaper = shaper or Shaper()
        self._table_loads: set[asyncio.Task[None]] = set()
        # (id of the route's settings, pool address, HELO) -> (those settings, the same
        # leaving from the address): one object per source, not one per transaction, so
        # the connection cache compares its keys by identity (a new object was compared
        # field by field on every lookup).
        self._sourced: dict[tuple[int, str, str], tuple[ClientSettings, ClientSettings]] = {}
        self._started = False
        self._shaping = Derived(live, self._configure_shaping)
        self._started = True

    def _configure_shaping(self, config: Config) -> Config:
        shaping = config.delivery.shaping
        enabled = shaping.enabled and config.delivery.mode == "mx"
        self.shaper.configure(enabled=enabled, destinations=config.delivery.destinations)
        if not enabled:
            return config
        if not self._started:
            # At start, before any delivery: read now (preflight has read it already).
            try:
                self.shaper.use_table(load_table(shaping.rules_file))
            except ProviderTableError as exc:
                self._table_refused(exc)
        else:  # a reload, with deliveries running: read in a thread, swap in the loop
            task = asyncio.get_running_loop().create_task(
                self._reload_table(shaping.rules_file))
            self._table_loads.add(task)
            task.add_done_callback(self._table_loads.discard)
        return config

    async def _reload_table(self, rules_file: Path | None) -> None:
        try:
            table = await asyncio.to_thread(load_table, rules_file)
        except ProviderTableError as exc:
            self._table_refused(exc)
            return
        self.shaper.use_table(table)

    @staticmethod
    def _table_refused(exc: ProviderTableError) -> None:
        log.error("delivery.shaping.rules_file: %s; keeping the provider table in force", exc)

    # ------------------------------------------------------------------ routing

    def _tls_policy(self, message: QueuedMessage, domain: str, cfg: Config) -> TLSPolicy:
        """The strictest of the relay's policy, the message's set's and the recipient
        domain's (delivery.destinations): each can tighten, none loosen."""
        wanted = TLSPolicy(cfg.delivery.tls)
        if message.configuration_set is not None:
            cs = cfg.configuration_sets.get(message.configuration_set)
            if cs is not None and cs.tls is not None:
                wanted = max(wanted, TLSPolicy(cs.tls), key=_TLS_ORDER.index)
        destination = cfg.delivery.destinations.get(domain)
        if destination is not None and destination.tls is not None:
            wanted = max(wanted, TLSPolicy(destination.tls), key=_TLS_ORDER.index)
        return wanted

    def _route(self, message: QueuedMessage, domain: str, settings: _Settings) -> _Route:
        if settings.smarthost is not None:
            return settings.smarthost
        delivery = settings.config.delivery
        destination = delivery.destinations.get(domain)
        limit = (destination.max_connections if destination is not None
                 and destination.max_connections is not None
                 else delivery.max_connections_per_domain)
        return _Route(settings.mx[self._tls_policy(message, domain, settings.config)], slot=domain,
                      limit=limit, policy_domain=domain)

    def _from_source(self, base: ClientSettings, source: Source) -> ClientSettings:
        """`base` leaving from `source`'s address with its HELO name."""
        key = (id(base), source.address, source.helo)
        found = self._sourced.get(key)
        if found is not None and found[0] is base:
            return found[1]
        if len(self._sourced) >= _SOURCED_KEPT:
            self._sourced.clear()  # reloads made these: start again from those in force
        made = self._sourced[key] = (base, source.settings(base))
        return made[1]

    def _source(self, settings: ClientSettings) -> str | None:
        """The source address sessions with these settings leave from (None: the host's
        default), which providers judge a sender by (an IP pool's, delivery.ip_pools)."""
        return settings.source_address

    async def _destinations(self, domain: str, settings: _Settings) -> MXResult:
        smarthost = settings.config.delivery.smarthost
        if settings.smarthost is not None and smarthost is not None:
            return await self._resolver.resolve_host(smarthost.host)
        return await self._resolver.resolve(domain)

    # ------------------------------------------------------------------ delivery

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]:
        settings = self._settings()
        found = await self._destinations(domain, settings)
        if not found.ok:
            verdict = (Verdict.BOUNCED if found.outcome is Resolution.PERMANENT
                       else Verdict.DEFERRED)
            return same_result(txn.recipients, verdict, found.status, f"x-dns; {found.reason}")
        route = self._route(message, domain, settings)
        destinations = found.destinations[:MAX_HOSTS_TRIED]
        sources, source = self.sources, None
        if sources is not None and settings.smarthost is None:
            # The set's IP pool, if any: its address and HELO name, within its warm-up.
            first = destinations[0].address if destinations else None
            picked, destinations = await sources.for_transaction(
                settings.config, message, destinations, len(txn.recipients),
                reusable=lambda source: first is not None and self._pool.has_idle(
                    lambda key: _session_key_from(key, first, source)))
            if isinstance(picked, Wait):
                return picked.results(txn.recipients)
            if picked is not None:
                source = picked
                route = dataclasses.replace(
                    route, settings=self._from_source(route.settings, source))
        results: list[RecipientResult] | None = None
        try:
            results = await self._shaped(domain, txn, settings, route, destinations)
            return results
        finally:
            if sources is not None and source is not None:
                # What never left the pool address goes back to its warm-up count.
                await sources.settle(source, results)

    async def _shaped(self, domain: str, txn: Transaction,
                      settings: _Settings, route: _Route,
                      destinations: tuple[Destination, ...]) -> list[RecipientResult]:
        """The transaction within the provider's and the domain's limits, over the TLS
        plan of each MX host."""
        self._shaping()
        shaper = self.shaper
        lane = (shaper.lane(destinations[0].host, self._source(route.settings))
                if destinations else None)
        held = shaper.suspended(lane)
        if held is not None:
            return held.results(txn.recipients)
        if settings.smarthost is None:
            plans = await self._planner.plan(domain, route.settings, destinations)
        else:  # the smarthost is not the recipient's MX: its policies do not apply
            plans = [HostPlan(route.settings) for _ in destinations]
        async with self._pool.domain_slot(route.slot, route.limit):
            held = await shaper.admit(domain, lane)
            if held is not None:
                return held.results(txn.recipients)
            return await self._try_hosts(destinations, route, txn, plans, lane)

    async def _try_hosts(self, destinations: tuple[Destination, ...], route: _Route,
                         txn: Transaction, plans: list[HostPlan] | None = None,
                         lane: Lane | None = None) -> list[RecipientResult]:
        group = lane.group if lane is not None else None
        per_connection = lane.messages_per_connection if lane is not None else None
        errors: list[ConnectError] = []
        for index, destination in enumerate(destinations):
            plan = plans[index] if plans is not None else HostPlan(route.settings)
            if plan.refusal is not None:
                log.info("%s not used: %s", plan.refusal.remote_mta, plan.refusal.diagnostic)
                if route.policy_domain is not None:
                    self._tell(TLSOutcome(
                        plan.policy_type, route.policy_domain, plan.policy_strings,
                        destination.host, destination.address, None,
                        plan.refusal.tls_failure))
                errors.append(plan.refusal)
                continue
            key: Hashable = (destination.address, destination.host, plan.settings)
            conn = self._pool.take_idle(key)
            if conn is None and plan.fallback is not None:
                # MTA-STS testing: a session its policy failed and that went on without
                # it is reused, rather than failing the same handshake for every message.
                key = (destination.address, destination.host, plan.fallback)
                conn = self._pool.take_idle(key)
            if conn is not None:
                try:
                    results = await conn.send(txn)
                except BaseException:
                    self._pool.forget(conn)
                    raise
                if self._died_idle(conn, results):
                    log.info("cached session to %s had closed; opening a new one",
                             conn.remote_mta)
                    self._pool.forget(conn)
                else:
                    await self._pool.release(key, conn, per_connection)
                    return self.shaper.after(lane, results)
            lease = await self._pool.reserve(
                route.slot, route.limit, group=group,
                group_limit=lane.connections if lane is not None else None)
            try:
                conn = await self._open(destination, plan, route)
                key = (destination.address, destination.host, conn.settings)
            except ConnectError as exc:
                await self._pool.unreserve(lease, group)
                metrics.OUTBOUND_CONNECTS.labels(result="failed").inc()
                log.info("%s unusable: %s", f"{destination.host} [{destination.address}]",
                         exc.diagnostic)
                errors.append(exc)
                # A refused greeting is the provider's word (a refused connection is not).
                if (lane is not None and exc.code is not None
                        and self.shaper.observe(lane, exc.code, exc.status, exc.diagnostic)):
                    break  # the provider is suspended for us: its other hosts too
                continue
            except BaseException:
                await self._pool.unreserve(lease, group)
                raise
            self._pool.opened(conn, lease, group)
            metrics.OUTBOUND_CONNECTS.labels(result="ok").inc()
            try:
                results = await conn.send(txn)
            except BaseException:
                self._pool.forget(conn)
                raise
            await self._pool.release(key, conn, per_connection)
            return self.shaper.after(lane, results)
        return self.shaper.held_back(lane, self._all_failed(errors, txn))

    async def _open(self, destination: Destination, plan: HostPlan,
                    route: _Route) -> Connection:
        """Connection.open as the plan says, and what it says about TLS to TLS
        reporting (the one place outcomes are reported from)."""
        opened: Connection | ConnectError
        try:
            opened = await Connection.open(destination, plan.settings)
        except ConnectError as exc:
            opened = exc
        self._tell(self._outcome(plan, route, destination, opened))
        if isinstance(opened, ConnectError):
            if plan.fallback is None or opened.tls_failure is None:
                raise opened
            # MTA-STS in mode testing: the failure is reported, the mail still goes.
            log.warning("MTA-STS (mode testing) for %s: %s; delivering without the "
                        "policy", route.policy_domain, opened.diagnostic)
            return await Connection.open(destination, plan.fallback)
        return opened

    @staticmethod
    def _outcome(plan: HostPlan, route: _Route, destination: Destination,
                 opened: Connection | ConnectError) -> TLSOutcome | None:
        domain = route.policy_domain
        if domain is None:
            return None  # the smarthost: no recipient domain's policy is in question
        if plan.policy_type == "no-policy-found" and plan.known_failure is None:
            outcome = observed(domain, destination, opened)
            if (outcome is not None and isinstance(opened, ConnectError)
                    and opened.tls_failure is not None):
                # The client knows better than the status code (e.g. which check failed).
                outcome = dataclasses.replace(outcome, failure=opened.tls_failure,
                                              sending_ip=opened.sending_ip)
            return outcome
        failure: str | None
        if isinstance(opened, ConnectError):
            if opened.tls_failure is None:
                return None  # TLS was never reached: nothing to say about it
            failure, sending_ip = opened.tls_failure, opened.sending_ip
        else:
            failure, sending_ip = plan.known_failure, opened.local_ip
            if opened.tls_version is None:
                failure = failure or "starttls-not-supported"
        return TLSOutcome(plan.policy_type, domain, plan.policy_strings, destination.host,
                          destination.address, sending_ip, failure)

    def _tell(self, outcome: TLSOutcome | None) -> None:
        if outcome is not None and self._on_tls_outcome is not None:
            self._on_tls_outcome(outcome)

    @staticmethod
    def _died_idle(conn: Connection, results: list[RecipientResult]) -> bool:
        return (not conn.reusable and not conn.body_started
                and all(r.verdict is Verdict.DEFERRED and r.code is None for r in results))

    @staticmethod
    def _all_failed(errors: list[ConnectError], txn: Transaction) -> list[RecipientResult]:
        if not errors:
            return same_result(txn.recipients, Verdict.DEFERRED, "4.4.4",
                            "x-local; no usable destination address")
        # Every host refused us for good (5xx greetings): final. Anything temporary among
        # them: wait and try again, reporting the last temporary error.
        if all(e.verdict is Verdict.BOUNCED for e in errors):
            last = errors[-1]
            return same_result(txn.recipients, Verdict.BOUNCED, last.status, last.diagnostic,
                               code=last.code, remote_mta=last.remote_mta)
        last = [e for e in errors if e.verdict is not Verdict.BOUNCED][-1]
        return same_result(txn.recipients, Verdict.DEFERRED, last.status, last.diagnostic,
                           code=last.code, remote_mta=last.remote_mta,
                           retry_after=last.retry_after)

    async def close(self) -> None:
        await self._planner.close()
        await self._pool.close()
