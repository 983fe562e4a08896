"""The daemon: wires config, spool, authentication, SMTP and HTTP together and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import redis

from smtprelay.app import preflight, systemd
from smtprelay.app.control import ControlServer, LoopLag, control_path
from smtprelay.app.live import Live
from smtprelay.app.workers import WorkerSet, worker_processes
from smtprelay.auth.authenticator import Authenticator
from smtprelay.auth.stores import api_key_store, credential_store
from smtprelay.config import Config, ConfigError, Derived
from smtprelay.delivery.capture import CaptureTransport
from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.ip_pools import SourceChooser, export_metrics, unbindable
from smtprelay.delivery.mail_from import MailFromChecks
from smtprelay.delivery.mta_sts_store import StsPolicyStore
from smtprelay.delivery.notify_sender import DSNFactory
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.providers import Providers, bundled
from smtprelay.delivery.scheduler import DeliveryPolicy, Scheduler, Transport
from smtprelay.delivery.simulator import SimulatorTransport
from smtprelay.delivery.smtp_transport import SMTPTransport
from smtprelay.delivery.tls_policy import TLSPlanner
from smtprelay.delivery.tls_report import TLSReportCollector, TLSReportStore, database_path
from smtprelay.delivery.tls_report_send import TLSReporter
from smtprelay.events.engagement import EngagementRecorder
from smtprelay.events.publisher import Publisher
from smtprelay.events.remote import serve_engagements
from smtprelay.events.tail import EventTail
from smtprelay.feedback import inbox as feedback_inbox
from smtprelay.feedback.listener import FeedbackReceiver
from smtprelay.feedback.processor import FeedbackProcessor
from smtprelay.feedback.recorder import FeedbackRecorder
from smtprelay.http.admin import AdminServices
from smtprelay.http.forward import internal_socket
from smtprelay.http.server import HTTPServer, bind_listeners
from smtprelay.http.ses import ses_api
from smtprelay.infra import heap, metrics
from smtprelay.operations import ip_pools as pool_ops
from smtprelay.operations.errors import OperationError
from smtprelay.operations.nodes import NodeControl
from smtprelay.policy.pauses import PausedSets
from smtprelay.policy.quota import Quotas
from smtprelay.policy.reputation import ReputationGuard
from smtprelay.policy.stores import (
    contact_store,
    pause_store,
    suppression_store,
    template_store,
)
from smtprelay.smtp.server import SMTPServer, bind
from smtprelay.spool import set_stats
from smtprelay.spool.cluster_stats import ClusterCounters, StatsMirror
from smtprelay.spool.remote import serve_spool
from smtprelay.spool.store import Spool
from smtprelay.state import nodes
from smtprelay.state.api import StateUnavailable
from smtprelay.state.channel import ChannelServer
from smtprelay.state.leases import RedisLeases
from smtprelay.state.local import LocalState
from smtprelay.state.nodes import HEARTBEAT, AcceptedRate
from smtprelay.state.redis import RedisState, blocking_client, redacted
from smtprelay.state.service import Holdings, serve_state
from smtprelay.state.usage import SQLiteUsageStore
from smtprelay.state.warmup import LocalWarmup, SQLiteWarmupStore, WarmupCounters
from smtprelay.submission.pipeline import Pipeline
from smtprelay.transform.copies import CopyMaker
from smtprelay.transform.pool import TransformPool, worker_count

log = logging.getLogger("smtprelay")

_DEPTH_REFRESH_SECONDS = 15.0
_DEPTH_COALESCE = 0.2
_WARMUP_METRICS_SECONDS = 10.0
_PURGE_SECONDS = 60.0
# Mail records (what opens, clicks and unsubscribes weeks later need for their events)
# are kept as long as tracking tokens are honoured.
_MAIL_RECORD_SECONDS = 60 * 86400.0


class Relay:
    """One running relay. `start()` binds every listener; `stop()` drains and closes.

    Every component is built once, given what it needs through its constructor: the
    holder of the configuration and keys in force (`self.live`, smtprelay.app.live),
    which SIGHUP swaps, and the callbacks and collaborators built before it. Those that
    need the keys, the listeners' TLS context or another component made at start are
    built in `start()`, each after what it needs.
    """

    def __init__(self, config: Config, path: str | None = None, source: str = "") -> None:
        # The configuration file and the text `config` was read from: worker processes
        # (server.workers) are handed the text, and that of each reload since, rather
        # than reading a file that may have changed (or broken) since without a reload.
        self.path = path
        self._source_at_start = source
        self.live = Live(config, source=source)
        # DSNs to senders; the delivery mode and `delivery.dsn` need a restart.
        self._dsns = _dsn_factory(config)
        self.spool = Spool(config.spool_path,
                           finalize=self._dsns.build if self._dsns is not None else None,
                           # What reports about purged messages need (smtprelay.spool.sent).
                           keep_sent_index=feedback_inbox.has_listener(config))
        self.credentials = credential_store(config)
        # The SES API's keys (api.sesv2); opened only when the API is on.
        self.api_keys = api_key_store(config)
        self.usage = SQLiteUsageStore(config.state_path)
        # What every worker (and with store: redis, every node) must agree on; the
        # workers reach it through this process (state.service).
        self.shared: LocalState | RedisState
        store = config.store
        if store.backend == "redis":
            assert store.url is not None  # the configuration's validator says so
            self.shared = RedisState.from_url(store.url, node=store.node,
                                              prefix=store.key_prefix, timeout=store.timeout)
            log.info("store: redis at %s node=%s prefix=%s", redacted(store.url),
                     store.node, store.key_prefix)
        else:
            self.shared = LocalState(self.usage)
        self.quotas = Quotas(self.live, self.shared)
        # The IP pools' warm-up counters (delivery.ip_pools): in Redis with the rest of
        # a cluster's state, else in memory and the state database.
        self.warmup_store: SQLiteWarmupStore | None = None
        self.warmup: WarmupCounters
        if isinstance(self.shared, RedisState):
            self.warmup = self.shared.warmup()
        else:
            self.warmup_store = SQLiteWarmupStore(config.state_path)
            self.warmup = LocalWarmup(self.warmup_store)
        # Warm-up caps count per provider as the shaper names them (the table in force).
        self.sources = SourceChooser(self.warmup, providers=self._provider_table)
        self._warmup_task: asyncio.Task[None] | None = None
        self.suppression = suppression_store(config)
        # The contact lists' contacts and their subscriptions (policy.contacts).
        self.contacts = contact_store(config)
        # The SES API's email templates (policy.templates), opened on first use.
        self.templates = template_store(config)
        self.pauses = PausedSets(pause_store(config))
        self._authenticator = Authenticator(self.live, self.credentials, self.shared)
        # The statistics the reputation guard judges and the admin API shows: this
        # node's spool, or with store: redis every node's (copied by _mirror).
        self.counters: set_stats.Counters = self.spool
        self._cluster: redis.Redis | None = None
        self._mirror: StatsMirror | None = None
        if store.backend == "redis":
            assert store.url is not None
            self._cluster = blocking_client(store.url, store.timeout)
            self.counters = ClusterCounters(self._cluster, store.key_prefix)
            self._mirror = StatsMirror(self._cluster, store.key_prefix, store.node,
                                       self.spool.set_stats_since)
        self.reputation = ReputationGuard(self.counters, self.pauses, self.live)
        self._reputation_task: asyncio.Task[None] | None = None
        self._mirror_task: asyncio.Task[None] | None = None
        # Bounces and complaints after delivery: recorded here by the feedback
        # processor, and by anything else that learns of one (inject).
        self.feedback = FeedbackRecorder(
            self.spool, self.suppression, self.live,
            pending=config.server.data_dir / "suppressions-held.ndjson")
        self._transform_pool: TransformPool | None = None
        self._pipeline: Pipeline | None = None
        self.scheduler: Scheduler | None = None
        self.mail_from: MailFromChecks | None = None
        self.transport: SMTPTransport | None = None
        self.smtp: SMTPServer | None = None
        self.http: HTTPServer | None = None
        self.publisher: Publisher | None = None
        # The live tail of committed events (the console's Events page, `smtprelay
        # events tail`): fed by the spool, in memory only.
        self.event_tail = EventTail()
        self.spool.event_tap = self.event_tail.publish
        self._pool: ConnectionPool | None = None
        self.engagements: EngagementRecorder | None = None
        self.feedback_inbox: feedback_inbox.FeedbackInbox | None = None
        self.feedback_receiver: FeedbackReceiver | None = None
        self.feedback_processor: FeedbackProcessor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # server.workers > 1: the worker processes and the channel they call.
        self.workers: WorkerSet | None = None
        self._channel: ChannelServer[Holdings] | None = None
        self._http_sockets: list[tuple[socket.socket, bool]] = []
        # `smtprelay status` (app.control).
        self.lag = LoopLag()
        self.control: ControlServer | None = None
        self._ready = False
        self._store_problem: str | None = None
        self._accepted = AcceptedRate()
        self._store_task: asyncio.Task[None] | None = None
        # With store: redis, the delivery pool's connection leases and their renewal.
        self.leases: RedisLeases | None = None
        self._leases_task: asyncio.Task[None] | None = None
        self._held_task: asyncio.Task[None] | None = None
        self._depth_task: asyncio.Task[None] | None = None
        self._depth_dirty = asyncio.Event()
        self._purge_task: asyncio.Task[None] | None = None
        self._pauses_task: asyncio.Task[None] | None = None
        # TLS reporting (delivery.tls_reporting): the counts of MX sessions, and the
        # daily reports made of them.
        self.tls_reports: TLSReportStore | None = None
        self.tls_collector: TLSReportCollector | None = None
        self.tls_reporter: TLSReporter | None = None
        self._tls_round: asyncio.Future[Any] | None = None
        # MTA-STS policies that outlive a restart (mx mode), and the planner that
        # keeps them in memory.
        self.sts_store: StsPolicyStore | None = None
        self.tls_planner: TLSPlanner | None = None

    @property
    def config(self) -> Config:
        """The configuration in force (a reload swaps it)."""
        return self.live.config

    def reload(self, path: str | None) -> None:
        """SIGHUP: the configuration with accounts, identities, credentials, sets and the
        DKIM and tracking keys (smtprelay.app.live), the certificate, the pauses."""
        if path is not None:
            if not self.live.reload(path):
                return  # refused, and logged: everything stays as it was
            if self.publisher is not None:
                self.publisher.config_swapped()
        self.live.reload_tls()
        if self._loop is not None:
            # `smtprelay sets pause` from another process: now rather than in a moment.
            asyncio.run_coroutine_threadsafe(self._refresh_pauses(), self._loop)
        if self.http is not None and self._loop is not None:
            # Renewed tracking-domain certificates (the listeners themselves stay);
            # from any thread, as tests call reload from theirs.
            asyncio.run_coroutine_threadsafe(self.http.reload_certificates(), self._loop)
        if self.workers is not None:
            self.workers.reload()  # each asks us for the text now in force

    async def start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        cfg.server.data_dir.mkdir(parents=True, exist_ok=True)
        # The certificate, DKIM keys, tracking keys and smarthost password.
        await asyncio.to_thread(self.live.open)
        workers = worker_count(cfg.server.transform_workers)
        if workers:
            self._transform_pool = TransformPool(workers)
        await asyncio.to_thread(self.spool.open)
        await asyncio.to_thread(self.credentials.open)
        if cfg.api.sesv2:
            await asyncio.to_thread(self.api_keys.open)
        await asyncio.to_thread(self.suppression.open)
        await asyncio.to_thread(self.contacts.open)
        await asyncio.to_thread(self.pauses.store.open)
        await asyncio.to_thread(self.pauses.refresh)
        if self.pauses:
            log.info("configuration sets paused: %s", ", ".join(sorted(self.pauses)))
        await asyncio.to_thread(self.usage.open)
        if isinstance(self.shared, LocalState):
            await asyncio.to_thread(self.shared.load)
        if self.warmup_store is not None and isinstance(self.warmup, LocalWarmup):
            await asyncio.to_thread(self.warmup_store.open)
            await asyncio.to_thread(self.warmup.load, self.sources.today())
        handed_back = await self.spool.recover()
        depth = await asyncio.to_thread(self.spool.pending_count)
        metrics.SPOOL_DEPTH.set(depth)
        self.spool.on_finished = self._depth_changed
        log.info("spool opened path=%s messages=%d recovered_in_flight=%d", cfg.spool_path,
                 depth, handed_back)
        self.publisher = Publisher(self.spool, self.live)
        await self.publisher.start()
        # Custom MAIL FROM domains are used (or refuse mail) by whether their MX record
        # is there: checked once before the listeners open, then in the background.
        dns_settings = cfg.delivery.dns
        self.mail_from = MailFromChecks(self.live, MXResolver(
            dns_settings.nameservers or None, timeout=dns_settings.timeout))
        await self.mail_from.start(first_within=dns_settings.timeout + 1.0)
        await self._start_tls_counting()
        if cfg.delivery.mode == "mx":
            self.sts_store = StsPolicyStore(cfg.state_path)
            gone = await asyncio.to_thread(self.sts_store.purge, time.time())
            if gone:
                log.info("MTA-STS: %d cached policies past their max_age dropped", gone)
        transport = self._transport()
        if transport is not None:
            # The mailbox simulator answers its domain in every delivery mode. It wakes
            # the scheduler that is built on it, hence _wake_scheduler.
            simulated = SimulatorTransport(transport, self.spool, self.live,
                                           cfg.server.hostname, wake=self._wake_scheduler)
            self.scheduler = Scheduler(self.spool, simulated,
                                       max_concurrent=cfg.delivery.max_concurrent,
                                       policy=Derived(self.live, DeliveryPolicy.from_config),
                                       dsns=self._dsns, keys=self.live,
                                       suppress=self.feedback.suppress_or_hold,
                                       mail_from=self.mail_from,
                                       copies=CopyMaker(self.live, self._transform_pool))
            self.scheduler.start()
        else:
            log.info("delivery mode=hold: accepted mail stays queued")
        self._pipeline = Pipeline(
            self.live, self.spool, self.quotas, self.suppression,
            paused_sets=self.pauses, paused_accounts=lambda: self.pauses.accounts,
            transform_pool=self._transform_pool,
            on_spooled=self._spooled,
            mail_from=self.mail_from, contacts=self.contacts)
        if self.tls_reports is not None:
            # Report messages go through the pipeline, as the account of from_address.
            self.tls_reporter = TLSReporter(self.live, self.tls_reports, self._pipeline)
            self.tls_reporter.start()
        # Before the feedback processor: mail to a List-Unsubscribe mailto address is
        # recorded by the same recorder as the one-click POST.
        self.engagements = EngagementRecorder(self.spool, self.contacts, self.live)
        await self._start_feedback()
        self.smtp = SMTPServer(self.live, self._authenticator, self._pipeline,
                               feedback=self.feedback_receiver, shared=self.shared)
        count = worker_processes(cfg.server.workers)
        worker_metrics = _worker_metrics_dir(cfg) if count > 1 else None
        # With workers, they serve the HTTP listeners (bound here, inherited) and pass
        # what they do not answer themselves to this server's Unix socket.
        self._http_sockets = bind_listeners(cfg) if count > 1 else []
        self.http = HTTPServer(cfg, self.not_ready, keys=self.live,
                               ses=ses_api(self.live, self._pipeline, self.quotas,
                                           lambda: self.pauses.accounts, self.api_keys,
                                           counters=self.counters, suppression=self.suppression,
                                           contacts=self.contacts, pauses=self.pauses,
                                           templates=self.templates),
                               sink=self.engagements, admin=AdminServices(
                                   live=self.live, spool=self.spool,
                                   suppression=self.suppression, pauses=self.pauses,
                                   contacts=self.contacts,
                                   wake_scheduler=self._wake_scheduler,
                                   reputation=self.reputation.state_of,
                                   counters=self.counters, node=self._node_control(),
                                   warmup=self.warmup,
                                   events=self.event_tail,
                                   connections=self._connections_to,
                                   provider_of=self._provider_of,
                                   shaping=self.transport.shaper.snapshot
                                   if self.transport is not None else None),
                               confirmer=self.publisher, worker_metrics=worker_metrics,
                               sockets=[] if count > 1 else None,
                               internal=internal_socket(cfg.server.data_dir) if count > 1
                               else None)
        await self.http.start()
        self.publisher.http_started()  # SubscriptionConfirmations can be answered now
        if count > 1:
            await self._start_workers(count, worker_metrics)
            await self.smtp.start(roles={"feedback"})
        else:
            await self.smtp.start()
        self.lag.start()
        self.control = ControlServer(control_path(cfg.server.data_dir), {
            "status": self.status, "drain": self.drain, "undrain": self.undrain,
            "tls-report-send": lambda: self.send_tls_reports(include_today=False),
            "tls-report-send-today": lambda: self.send_tls_reports(include_today=True)},
            with_arguments={"warmup-day": self.set_warmup_day,
                            "mta-sts-forget": self.forget_sts_policy})
        await self.control.start()
        self._depth_task = asyncio.create_task(self._refresh_depth())
        self._purge_task = asyncio.create_task(self._purge_finished())
        self._pauses_task = asyncio.create_task(self.pauses.run())
        self._reputation_task = asyncio.create_task(self.reputation.run())
        self._warmup_task = asyncio.create_task(self._export_warmup())
        self._held_task = asyncio.create_task(self.feedback.run())
        if isinstance(self.shared, RedisState):
            self._store_task = asyncio.create_task(self._watch_store())
        if self._mirror is not None:
            self._mirror_task = asyncio.create_task(self._mirror.run())
        self._ready = True

    async def _start_tls_counting(self) -> None:
        """With delivery.tls_reporting on: its database, and in mx mode the collector
        the SMTP transport tells each session's TLS outcome (needs a restart)."""
        cfg = self.config
        if not cfg.delivery.tls_reporting.enabled or cfg.delivery.mode == "hold":
            return
        self.tls_reports = TLSReportStore(database_path(cfg.server.data_dir))
        await asyncio.to_thread(self.tls_reports.open)
        if cfg.delivery.mode == "mx":
            self.tls_collector = TLSReportCollector(self.tls_reports)
            self.tls_collector.start()
        log.info("TLS reporting on: reports at %s UTC from %s",
                 cfg.delivery.tls_reporting.send_at, cfg.delivery.tls_reporting.from_address)

    async def send_tls_reports(self, *, include_today: bool,
                               wait: float | None = 4.0) -> dict[str, Any]:
        """`smtprelay tls-report send`: a reporting round now (app.control). Answers
        with what it did, or that it is still at it after `wait` seconds (DNS lookups
        and POSTs may take longer than the control socket waits; None: as long as it
        takes)."""
        if self.tls_reporter is None:
            return {"error": "TLS reporting is off: set delivery.tls_reporting.enabled "
                             "(and a delivery.mode other than hold), then restart"}
        if self.tls_collector is not None:
            await self.tls_collector.flush()  # the sessions of the last second too
        if self._tls_round is None or self._tls_round.done():
            self._tls_round = asyncio.ensure_future(
                self.tls_reporter.send_now(include_today=include_today))
        try:
            result = await asyncio.wait_for(asyncio.shield(self._tls_round), wait)
        except TimeoutError:
            return {"running": True}
        answer: dict[str, Any] = result.as_dict()
        return answer

    def _node_control(self) -> NodeControl:
        cluster = self._cluster
        prefix = self.config.store.key_prefix
        return NodeControl(
            name=self.config.store.node, status=self.status, drain=self.drain,
            undrain=self.undrain,
            cluster=None if cluster is None else lambda: nodes.nodes(cluster, prefix))

    async def drain(self) -> dict[str, Any]:
        """`smtprelay drain`: take no new connection (421 4.3.2, on every worker: they
        ask the shared state) and fail /readyz, so the balancer moves clients to the
        other nodes; sessions under way finish and the queue keeps being delivered."""
        if not self.shared.draining:
            log.warning("draining: new connections get 421, /readyz fails; the queue "
                        "is delivered")
        self.shared.draining = True
        return await self.status()

    async def undrain(self) -> dict[str, Any]:
        if self.shared.draining:
            log.warning("drain ended: accepting again")
        self.shared.draining = False
        return await self.status()

    def not_ready(self) -> str | None:
        """Why /readyz says 503 (None: ready): starting or stopping, draining, or the
        shared store not answering (a load balancer then sends clients to the other
        nodes)."""
        if not self._ready:
            return "starting or stopping"
        if self.shared.draining:
            return "draining (smtprelay drain)"
        if self._store_problem is not None:
            return self._store_problem
        return None

    async def _watch_store(self, every: float = HEARTBEAT) -> None:
        """With store: redis, write this node's heartbeat (`smtprelay cluster status`)
        every HEARTBEAT seconds, so /readyz also says when Redis stops answering and
        when it is back."""
        assert isinstance(self.shared, RedisState)
        while True:
            try:
                status = await self.status()
                await self.shared.heartbeat({
                    "hostname": self.config.server.hostname, "pid": status["pid"],
                    "started_at": status["started_at"], "ready": status["ready"],
                    "draining": status["draining"], "connections": status["connections"],
                    "queue_pending": status["queue_pending"],
                    "delivering": status["delivering"],
                    "workers": len(status["workers"]) or 1,
                    "accepted_per_min": self._accepted.per_minute(time.time())})
            except StateUnavailable as exc:
                if self._store_problem is None:
                    log.error("store: not answering: %s", exc)
                self._store_problem = f"store: {exc}"
            else:
                if self._store_problem is not None:
                    log.info("store: answering again")
                self._store_problem = None
            await asyncio.sleep(every)

    async def status(self) -> dict[str, Any]:
        """What `smtprelay status` shows (app.control)."""
        pending = await asyncio.to_thread(self.spool.pending_count)
        own_sessions = self.smtp.session_count if self.smtp is not None else 0
        return {
            "pid": os.getpid(),
            "started_at": self.control.started_at if self.control is not None else None,
            "ready": self._ready,
            "draining": self.shared.draining,
            "delivering": self.scheduler.in_flight if self.scheduler is not None else 0,
            "loop_lag_ms": round(self.lag.last_ms, 1),
            "loop_lag_max_ms": round(self.lag.take_max(), 1),
            # Counted in the shared state: every process's SMTP connections.
            "connections": self.shared.connections,
            "sessions": own_sessions,
            "queue_pending": pending,
            "workers": self.workers.status() if self.workers is not None else [],
        }

    async def _start_workers(self, count: int, metrics_dir: Path | None) -> None:
        """Bind the submission listeners and start `count` worker processes on them;
        they hand their messages and ask their limits through one channel each."""
        if self.path is None:
            raise ConfigError("(configuration)", ["server.workers: worker processes read "
                                                  "the configuration file; start the relay "
                                                  "with `smtprelay serve -c FILE`"])
        sockets = {}
        for listener in self.config.listeners:
            if listener.role == "submission":
                sockets[listener.name] = bind(listener)
                log.info("listening name=%s address=%s port=%s tls=%s workers=%d",
                         listener.name, listener.address,
                         sockets[listener.name].getsockname()[1], listener.tls, count)
        self._channel = ChannelServer(Holdings)
        serve_state(self._channel, self.shared)
        serve_spool(self._channel, self.spool, on_spooled=self._spooled)
        assert self.engagements is not None  # made before the listeners
        serve_engagements(self._channel, self.engagements)
        self.workers = WorkerSet(count, self.path, sockets, self._channel, metrics_dir,
                                 http_sockets=self._http_sockets,
                                 config_texts=lambda: (self._source_at_start,
                                                       self.live.source))
        await self.workers.start()

    async def set_warmup_day(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """`smtprelay ip-pools warmup`: the admin API's PUT .../warmup over the control
        socket, so that the counters in use (this process's, or the cluster's) change."""
        pool, address, day = (arguments.get(key) for key in ("pool", "address", "day"))
        if not (isinstance(pool, str) and isinstance(address, str)
                and isinstance(day, int) and not isinstance(day, bool)):
            return {"error": "warmup-day needs pool and address (text) and day (a whole "
                             "number)"}
        try:
            changed = await pool_ops.set_day(self.config, self.warmup, pool, address, day,
                                             now=time.time())
        except OperationError as exc:
            return {"error": str(exc)}
        except StateUnavailable as exc:
            return {"error": f"the warm-up counters cannot be changed: {exc}"}
        log.info("control: ip pool=%s address=%s put on warm-up day %d", pool, address, day)
        return pool_ops.progress_json(changed)

    async def forget_sts_policy(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """`smtprelay mta-sts forget`: out of the cache the transport uses, and the store."""
        domain = arguments.get("domain")
        if not isinstance(domain, str) or not domain.strip():
            return {"error": "mta-sts-forget needs a domain"}
        if self.tls_planner is None:
            return {"error": "this relay does not deliver to MX hosts (delivery.mode is "
                             f"{self.config.delivery.mode}): it keeps no MTA-STS policies"}
        forgotten = await self.tls_planner.forget_sts(domain)
        log.info("control: MTA-STS policy of %s forgotten=%s", domain, forgotten)
        return {"domain": domain, "forgotten": forgotten}

    async def _refresh_pauses(self) -> None:
        try:
            await asyncio.to_thread(self.pauses.refresh)
        except Exception as exc:
            log.error("reload: paused configuration sets not re-read: %s", exc)

    def _spooled(self) -> None:
        """A message is on disk (from this process or a worker)."""
        self._accepted.count += 1
        self._depth_dirty.set()
        self._wake_scheduler()

    def _wake_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    async def _start_feedback(self) -> None:
        """With a feedback listener: its inbox and its processor (the spool keeps what
        reports about purged messages need: keep_sent_index)."""
        if not feedback_inbox.has_listener(self.config):
            return
        inbox = feedback_inbox.FeedbackInbox(feedback_inbox.inbox_path(self.config))
        await asyncio.to_thread(inbox.open)
        self.feedback_inbox = inbox
        self.feedback_processor = FeedbackProcessor(inbox, self.spool, self.feedback,
                                                    self.live, unsubscribes=self.engagements)
        self.feedback_receiver = FeedbackReceiver(self.live, inbox,
                                                  on_stored=self.feedback_processor.wake)
        self.feedback_processor.start()
        log.info("feedback inbox opened path=%s pending=%d", inbox.path,
                 await asyncio.to_thread(inbox.count))

    def _connections_to(self, domain: str) -> int:
        """Delivery sessions in use to `domain` now (the console's delivery page)."""
        return self._pool.active(domain) if self._pool is not None else 0

    def _provider_table(self) -> Providers:
        """The provider table in force: the MX transport's (the bundled table with
        delivery.shaping.rules_file over it, read at start and at each reload), else
        the bundled one."""
        return self.transport.shaper.table if self.transport is not None else bundled()

    def _provider_of(self, mx_host: str) -> str | None:
        return self._provider_table().provider_of(mx_host)

    def _transport(self) -> Transport | None:
        delivery = self.config.delivery
        if delivery.mode == "hold":
            return None
        if delivery.mode == "capture":
            log.info("delivery mode=capture directory=%s", self.config.capture_dir)
            return CaptureTransport(self.config.capture_dir)
        resolver = MXResolver(delivery.dns.nameservers or None, timeout=delivery.dns.timeout)
        self.tls_planner = TLSPlanner(self.live, sts_store=self.sts_store)
        if isinstance(self.shared, RedisState):
            # The per-destination limits hold across the cluster (state.leases).
            self.leases = self.shared.leases(self.config.store.lease_ttl)
            self._leases_task = asyncio.create_task(self.leases.run())
        pool = ConnectionPool(max_connections=delivery.max_connections,
                              max_per_domain=delivery.max_connections_per_domain,
                              idle_timeout=delivery.idle_timeout, leases=self.leases)
        self.transport = SMTPTransport(
            self.live, resolver, pool, self.sources,
            on_tls_outcome=self.tls_collector.record if self.tls_collector else None,
            planner=self.tls_planner)
        for problem in unbindable(self.config):
            log.error("%s", problem)
        self._pool = pool
        if delivery.mode == "smarthost" and delivery.smarthost is not None:
            host = delivery.smarthost
            log.info("delivery mode=smarthost host=%s port=%d tls=%s auth=%s", host.host,
                     host.port, host.tls, "yes" if host.username else "no")
        else:
            log.info("delivery mode=mx port=%d tls=%s mta_sts=%s dane=%s nameservers=%s",
                     delivery.port, delivery.tls, "on" if delivery.mta_sts.enabled else "off",
                     "on" if delivery.dane else "off",
                     ",".join(delivery.dns.nameservers) or "system")
        return self.transport

    async def _purge_finished(self) -> None:
        # In small batches, so the writer thread (and every SMTP session's commit
        # behind it) never waits long for a big purge.
        while True:
            await asyncio.sleep(_PURGE_SECONDS)
            before = time.time() - self.config.delivery.keep_finished
            try:
                for _ in range(200):  # at most 100,000 a minute
                    if await self.spool.purge_finished(before, limit=500) < 500:
                        break
                    await asyncio.sleep(0.1)
                records_before = time.time() - _MAIL_RECORD_SECONDS
                for _ in range(200):
                    if await self.spool.purge_mail_records(records_before, limit=500) < 500:
                        break
                    await asyncio.sleep(0.1)
                # Which bounces and complaints were counted: as long as reports about
                # them can still be matched to a message.
                for _ in range(200):
                    if await self.spool.purge_counted_feedback(records_before,
                                                               limit=500) < 500:
                        break
                    await asyncio.sleep(0.1)
                # Opens and clicks past the tracking window make no event: their
                # messages' tracked rows can go, and counters older than the window
                # statistics are kept for.
                stats_before = time.time() - set_stats.RETENTION
                tracked_before = time.time() - self.config.http.tracking_window
                for _ in range(200):
                    if await self.spool.purge_stats(stats_before, tracked_before,
                                                    limit=500) < 500:
                        break
                    await asyncio.sleep(0.1)
            except Exception as exc:
                log.error("purging finished messages from the spool failed: %s", exc)

    def _depth_changed(self) -> None:
        self._depth_dirty.set()

    async def _export_warmup(self) -> None:
        """The warm-up gauges (smtprelay_warmup_*), from the counters in use."""
        while True:
            try:
                export_metrics(await self.sources.report(self.config))
            except StateUnavailable as exc:
                log.debug("warm-up metrics not refreshed: %s", exc)
            await asyncio.sleep(_WARMUP_METRICS_SECONDS)

    async def _refresh_depth(self) -> None:
        """Keep smtprelay_spool_messages true: counted again soon after a message is
        spooled (here or by a worker) or finished, and every _DEPTH_REFRESH_SECONDS
        anyway, since operators delete from the queue with the CLI, outside this
        process. Changes that come together are counted once (_DEPTH_COALESCE)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DEPTH_REFRESH_SECONDS):
                    await self._depth_dirty.wait()
            await asyncio.sleep(_DEPTH_COALESCE)
            self._depth_dirty.clear()
            with contextlib.suppress(Exception):
                metrics.SPOOL_DEPTH.set(await asyncio.to_thread(self.spool.pending_count))

    async def stop(self, grace: float = 30.0) -> None:
        self._ready = False
        self.lag.stop()
        if self.control is not None:
            await self.control.stop()
        for task in (self._depth_task, self._purge_task, self._pauses_task,
                     self._reputation_task, self._store_task, self._held_task,
                     self._mirror_task, self._warmup_task):
            if task is not None:
                task.cancel()
        if self._tls_round is not None:
            self._tls_round.cancel()  # a round `tls-report send` started
        if self.tls_reporter is not None:
            await self.tls_reporter.stop()
        if self.workers is not None:
            await self.workers.stop(grace)
        if self._channel is not None:
            await self._channel.close()
        if self.smtp is not None:
            await self.smtp.stop(grace)
        await self.quotas.drain()  # settlements of the last messages, before the state
        if self.feedback_processor is not None:
            await self.feedback_processor.stop()
        if self.feedback_inbox is not None:
            await asyncio.to_thread(self.feedback_inbox.close)
        if self.scheduler is not None:
            await self.scheduler.stop(grace=min(grace, 10.0))
        # After the scheduler: deliveries under way make per-recipient copies in it.
        if self._transform_pool is not None:
            await self._transform_pool.close()
        if self.mail_from is not None:
            await self.mail_from.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.sts_store is not None:  # after the transport: a refresh may be writing
            await asyncio.to_thread(self.sts_store.close)
        # After the transport: the sessions it closed were counted.
        if self.tls_collector is not None:
            await self.tls_collector.close()
        if self.tls_reports is not None:
            await asyncio.to_thread(self.tls_reports.close)
        # After the transport: closing its sessions gives their leases back.
        if self._leases_task is not None:
            self._leases_task.cancel()
        if self.leases is not None:
            await self.leases.close()
        if self.publisher is not None:
            await self.publisher.stop()
        self.event_tail.close()  # open tails end, or they would hold the HTTP stop up
        if self.http is not None:
            await self.http.stop()
        for sock, _ in self._http_sockets:
            sock.close()
        await asyncio.to_thread(self.spool.close)
        await asyncio.to_thread(self.usage.close)
        if self.warmup_store is not None:
            await asyncio.to_thread(self.warmup_store.close)
        if isinstance(self.shared, RedisState):
            await self.shared.close()
        if self._cluster is not None:
            self._cluster.close()
        await self.suppression.close_on_loop()
        self.suppression.close()
        self.contacts.close()
        self.templates.close()
        self.pauses.store.close()
        self.credentials.close()
        self.api_keys.close()


def _worker_metrics_dir(config: Config) -> Path:
    """An empty directory for the worker processes' metric files: those of an earlier
    run are gone, as its counters would otherwise be counted again."""
    directory = config.server.data_dir / "worker-metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    return directory


def _dsn_factory(config: Config) -> DSNFactory | None:
    """What builds our DSNs to senders; None when they are off or nothing is delivered
    (delivery mode hold)."""
    delivery = config.delivery
    if delivery.mode == "hold" or not delivery.dsn.enabled:
        return None
    return DSNFactory(config.server.hostname,
                      return_full_message=delivery.dsn.return_content == "full")


async def serve(config: Config, path: str | None = None, source: str = "") -> None:
    relay = Relay(config, path, source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.reload, path)
    try:
        await relay.start()
    except BaseException:
        await relay.stop(grace=0)
        raise
    heap.freeze_start_up()
    systemd.notify("READY=1\nSTATUS=accepting mail")
    log.info("smtprelay ready hostname=%s", config.server.hostname)
    await stop.wait()
    log.info("stopping: draining sessions")
    systemd.notify("STOPPING=1")
    await relay.stop()
    log.info("stopped")


def run(config: Config, path: str | None = None, source: str = "") -> None:
    """Check every file first (ConfigError), then hold data_dir (DataDirError), then serve."""
    from smtprelay.app import datadir

    problems = preflight.problems(config)
    if problems:
        raise ConfigError(path or "(configuration)", problems)
    with datadir.hold(config.server.data_dir):
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(config, path, source))
        else:
            uvloop.run(serve(config, path, source))
