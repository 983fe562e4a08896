"""The daemon: wires config, spool, authentication, SMTP and HTTP together and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time

from smtprelay.app import preflight, systemd
from smtprelay.auth.authenticator import Authenticator
from smtprelay.auth.credentials import CredentialStore
from smtprelay.config import Config, ConfigError
from smtprelay.delivery.capture import CaptureTransport
from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.notify_sender import DSNFactory
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.scheduler import DeliveryPolicy, Scheduler, Transport
from smtprelay.delivery.simulator import SimulatorTransport
from smtprelay.delivery.smtp_transport import SmarthostPasswordError, SMTPTransport
from smtprelay.events.engagement import EngagementRecorder
from smtprelay.events.publisher import Publisher
from smtprelay.feedback import inbox as feedback_inbox
from smtprelay.feedback.listener import FeedbackReceiver
from smtprelay.feedback.processor import FeedbackProcessor
from smtprelay.feedback.recorder import FeedbackRecorder
from smtprelay.http.admin import AdminServices
from smtprelay.http.server import HTTPServer
from smtprelay.infra import metrics, tls
from smtprelay.policy.pauses import PausedSets, SQLitePauseStore
from smtprelay.policy.quota import Quotas, SQLiteUsageStore
from smtprelay.policy.reputation import ReputationGuard
from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.smtp.server import SMTPServer
from smtprelay.spool import set_stats
from smtprelay.spool.store import Spool
from smtprelay.submission.pipeline import Pipeline
from smtprelay.transform import dkim, tokens, tracking
from smtprelay.transform.pool import TransformPool, worker_count

log = logging.getLogger("smtprelay")

_DEPTH_REFRESH_SECONDS = 15.0
_PURGE_SECONDS = 60.0
# Mail records (what opens, clicks and unsubscribes weeks later need for their events)
# are kept as long as tracking tokens are honoured.
_MAIL_RECORD_SECONDS = 60 * 86400.0


class Relay:
    """One running relay. `start()` binds every listener; `stop()` drains and closes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.spool = Spool(config.spool_path)
        self.credentials = CredentialStore(config.state_path)
        self.usage = SQLiteUsageStore(config.state_path)
        self.quotas = Quotas(config, self.usage)
        self.suppression = SQLiteSuppressionStore(config.state_path)
        self.pauses = PausedSets(SQLitePauseStore(config.state_path))
        self._authenticator = Authenticator(config, self.credentials)
        self._pipeline = Pipeline(config, self.spool, self.quotas, self.suppression)
        self._pipeline.paused_sets = self.pauses
        self._pipeline.paused_accounts = lambda: self.pauses.accounts
        self.reputation = ReputationGuard(self.spool, self.pauses, lambda: self.config)
        self._reputation_task: asyncio.Task[None] | None = None
        self._tls: ssl.SSLContext | None = None
        self.scheduler: Scheduler | None = None
        self.transport: SMTPTransport | None = None
        self.smtp: SMTPServer | None = None
        self.http: HTTPServer | None = None
        self.publisher: Publisher | None = None
        self.engagements: EngagementRecorder | None = None
        # Bounces and complaints after delivery: recorded here by the feedback
        # processor, and by anything else that learns of one (inject).
        self.feedback = FeedbackRecorder(self.spool, self.suppression, lambda: self.config)
        self.feedback_inbox: feedback_inbox.FeedbackInbox | None = None
        self.feedback_receiver: FeedbackReceiver | None = None
        self.feedback_processor: FeedbackProcessor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = False
        self._depth_task: asyncio.Task[None] | None = None
        self._purge_task: asyncio.Task[None] | None = None
        self._pauses_task: asyncio.Task[None] | None = None

    def _load_tls(self) -> ssl.SSLContext | None:
        cfg = self.config
        if all(listener.tls == "none" for listener in cfg.listeners):
            return None
        if cfg.tls.generate_self_signed:
            tls.ensure_self_signed(cfg.cert_path, cfg.key_path, cfg.server.hostname)
        return tls.server_context(cfg.cert_path, cfg.key_path, cfg.tls.min_version,
                                      cfg.tls.ciphers)

    def reload_tls(self) -> None:
        """Load the certificate again (SIGHUP); new handshakes use it, sessions go on."""
        try:
            self._tls = self._load_tls()
        except tls.TLSSetupError as exc:
            log.error("tls reload failed, keeping the old certificate: %s", exc)
            return
        log.info("tls certificate reloaded from %s", self.config.cert_path)

    # Keys that only take effect at start: the sockets and files are already open.
    _RESTART_ONLY = ("server", "listeners", "limits", "auth", "http", "store", "logging")
    # The transport, resolver and pool are built at start from these.
    _DELIVERY_RESTART_ONLY = ("mode", "dns", "max_connections", "max_connections_per_domain",
                              "max_concurrent", "idle_timeout", "dsn")

    def reload(self, path: str | None) -> None:
        """SIGHUP: accounts, identities, credentials, sets and the certificate, in place."""
        if path is not None:
            try:
                new = preflight.load_checked(path).config
            except ConfigError as exc:
                log.error("reload refused, keeping the running config: %s", "; ".join(
                    exc.problems))
                return
            try:
                signer = dkim.Signer.from_config(new)
            except dkim.DKIMKeyError as exc:
                log.error("reload refused, keeping the running config: %s", exc)
                return
            deferred = [key for key in self._RESTART_ONLY
                        if getattr(new, key) != getattr(self.config, key)]
            if deferred:
                log.warning("reload: changes to %s take effect at the next restart",
                            ", ".join(deferred))
            old_delivery = self.config.delivery
            fixed = {key: getattr(old_delivery, key) for key in self._DELIVERY_RESTART_ONLY}
            changed = [f"delivery.{key}" for key, value in fixed.items()
                       if getattr(new.delivery, key) != value]
            if changed:
                log.warning("reload: changes to %s take effect at the next restart",
                            ", ".join(changed))
            update = {key: getattr(self.config, key) for key in self._RESTART_ONLY}
            update["delivery"] = new.delivery.model_copy(update=fixed)
            self.config = new.model_copy(update=update)
            self._authenticator.update_config(self.config)
            self._pipeline.update_config(self.config)
            self._pipeline.signer = signer
            _log_dkim(signer)
            self._reload_tracking_keys()
            if self.scheduler is not None:
                self.scheduler.policy = DeliveryPolicy.from_config(self.config)
            if self.transport is not None:
                try:
                    self.transport.update_config(self.config)
                except SmarthostPasswordError as exc:
                    log.error("reload: %s; keeping the old smarthost password", exc)
            if self.smtp is not None:
                self.smtp.update_config(self.config)
            if self.feedback_receiver is not None:
                self.feedback_receiver.update_config(self.config)
            if self.publisher is not None:
                self.publisher.update_config(self.config)
            if self.engagements is not None:
                self.engagements.config = self.config
            log.info("configuration reloaded from %s", path)
        self.reload_tls()
        if self._loop is not None:
            # `smtprelay sets pause` from another process: now rather than in a moment.
            asyncio.run_coroutine_threadsafe(self._refresh_pauses(), self._loop)
        if self.http is not None and self._loop is not None:
            # Renewed tracking-domain certificates (the listeners themselves stay);
            # from any thread, as tests call reload from theirs.
            asyncio.run_coroutine_threadsafe(self.http.reload_certificates(), self._loop)

    def _reload_tracking_keys(self) -> None:
        """After `smtprelay tracking-keys rotate`: sign with the new key, verify with all."""
        try:
            keyring = tokens.KeyRing.load(self.config.tracking_keys_path)
        except tokens.KeyRingError as exc:
            log.error("reload: keeping the tracking keys in use: %s", exc)
            return
        if self._pipeline.transformer is not None:
            self._pipeline.transformer.keyring = keyring
        if self.http is not None:
            self.http.tracking.keyring = keyring
        log.info("tracking keys loaded: signing with key %d", keyring.active().id)

    def _tracking_keyring(self) -> tokens.KeyRing | None:
        """The keys in use (reloaded on SIGHUP): they sign VERP senders too."""
        transformer = self._pipeline.transformer
        return transformer.keyring if transformer is not None else None

    async def start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        cfg.server.data_dir.mkdir(parents=True, exist_ok=True)
        self._tls = self._load_tls()
        self._pipeline.signer = dkim.Signer.from_config(cfg)
        _log_dkim(self._pipeline.signer)
        keyring = await asyncio.to_thread(tokens.KeyRing.open, cfg.tracking_keys_path)
        self._pipeline.transformer = tracking.Transformer(keyring)
        workers = worker_count(cfg.server.transform_workers)
        if workers:
            self._pipeline.transform_pool = TransformPool(workers)
        await asyncio.to_thread(self.spool.open)
        await asyncio.to_thread(self.credentials.open)
        await asyncio.to_thread(self.suppression.open)
        await asyncio.to_thread(self.pauses.store.open)
        await asyncio.to_thread(self.pauses.refresh)
        if self.pauses:
            log.info("configuration sets paused: %s", ", ".join(sorted(self.pauses)))
        await asyncio.to_thread(self.usage.open)
        await asyncio.to_thread(self.quotas.load)
        handed_back = await self.spool.recover()
        depth = await asyncio.to_thread(self.spool.pending_count)
        metrics.SPOOL_DEPTH.set(depth)
        log.info("spool opened path=%s messages=%d recovered_in_flight=%d", cfg.spool_path,
                 depth, handed_back)
        self.publisher = Publisher(self.spool, cfg)
        await self.publisher.start()
        transport = self._transport()
        if transport is not None:
            # The mailbox simulator answers its domain in every delivery mode.
            simulated = SimulatorTransport(transport, self.spool,
                                           lambda: self.config.simulator.domain,
                                           cfg.server.hostname)
            transport = simulated
            delivery = cfg.delivery
            dsns = (DSNFactory(cfg.server.hostname,
                               return_full_message=delivery.dsn.return_content == "full")
                    if delivery.dsn.enabled else None)
            self.spool.finalize = dsns.build if dsns is not None else None
            self.scheduler = Scheduler(self.spool, transport,
                                       max_concurrent=delivery.max_concurrent,
                                       policy=DeliveryPolicy.from_config(cfg), dsns=dsns,
                                       keyring=self._tracking_keyring)
            self._pipeline.on_spooled = self.scheduler.wake
            simulated.wake = self.scheduler.wake
            self.scheduler.start()
        else:
            log.info("delivery mode=hold: accepted mail stays queued")
        await self._start_feedback()
        self.smtp = SMTPServer(cfg, self._authenticator, self._pipeline, lambda: self._tls,
                               feedback=self.feedback_receiver)
        self.engagements = EngagementRecorder(self.spool, self.suppression, cfg)
        self.http = HTTPServer(cfg, lambda: self._ready, keyring=keyring,
                               sink=self.engagements, admin=AdminServices(
                                   config=lambda: self.config, spool=self.spool,
                                   suppression=self.suppression, pauses=self.pauses,
                                   wake_scheduler=self._wake_scheduler,
                                   reputation=self.reputation.state_of))
        await self.http.start()
        await self.smtp.start()
        self._depth_task = asyncio.create_task(self._refresh_depth())
        self._purge_task = asyncio.create_task(self._purge_finished())
        self._pauses_task = asyncio.create_task(self.pauses.run())
        self._reputation_task = asyncio.create_task(self.reputation.run())
        self._ready = True

    async def _refresh_pauses(self) -> None:
        try:
            await asyncio.to_thread(self.pauses.refresh)
        except Exception as exc:
            log.error("reload: paused configuration sets not re-read: %s", exc)

    def _wake_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.wake()

    async def _start_feedback(self) -> None:
        """With a feedback listener: its inbox, its processor, and the spool keeping
        what reports about purged messages need (smtprelay.spool.sent)."""
        if not feedback_inbox.has_listener(self.config):
            return
        inbox = feedback_inbox.FeedbackInbox(feedback_inbox.inbox_path(self.config))
        await asyncio.to_thread(inbox.open)
        self.feedback_inbox = inbox
        self.spool.keep_sent_index = True
        self.feedback_processor = FeedbackProcessor(
            inbox, self.spool, self.feedback, lambda: self.config, self._tracking_keyring)
        self.feedback_receiver = FeedbackReceiver(self.config, inbox, self._tracking_keyring)
        self.feedback_receiver.on_stored = self.feedback_processor.wake
        self.feedback_processor.start()
        log.info("feedback inbox opened path=%s pending=%d", inbox.path,
                 await asyncio.to_thread(inbox.count))

    def _transport(self) -> Transport | None:
        delivery = self.config.delivery
        if delivery.mode == "hold":
            return None
        if delivery.mode == "capture":
            log.info("delivery mode=capture directory=%s", self.config.capture_dir)
            return CaptureTransport(self.config.capture_dir)
        resolver = MXResolver(delivery.dns.nameservers or None, timeout=delivery.dns.timeout)
        pool = ConnectionPool(max_connections=delivery.max_connections,
                              max_per_domain=delivery.max_connections_per_domain,
                              idle_timeout=delivery.idle_timeout)
        self.transport = SMTPTransport(self.config, resolver, pool)
        if delivery.mode == "smarthost" and delivery.smarthost is not None:
            host = delivery.smarthost
            log.info("delivery mode=smarthost host=%s port=%d tls=%s auth=%s", host.host,
                     host.port, host.tls, "yes" if host.username else "no")
        else:
            log.info("delivery mode=mx port=%d tls=%s nameservers=%s", delivery.port,
                     delivery.tls, ",".join(delivery.dns.nameservers) or "system")
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

    async def _refresh_depth(self) -> None:
        # Operators delete from the queue with the CLI, outside this process.
        while True:
            await asyncio.sleep(_DEPTH_REFRESH_SECONDS)
            with contextlib.suppress(Exception):
                metrics.SPOOL_DEPTH.set(await asyncio.to_thread(self.spool.pending_count))

    async def stop(self, grace: float = 30.0) -> None:
        self._ready = False
        for task in (self._depth_task, self._purge_task, self._pauses_task,
                     self._reputation_task):
            if task is not None:
                task.cancel()
        if self.smtp is not None:
            await self.smtp.stop(grace)
        if self.feedback_processor is not None:
            await self.feedback_processor.stop()
        if self.feedback_inbox is not None:
            await asyncio.to_thread(self.feedback_inbox.close)
        if self._pipeline.transform_pool is not None:
            await self._pipeline.transform_pool.close()
        if self.scheduler is not None:
            await self.scheduler.stop(grace=min(grace, 10.0))
        if self.transport is not None:
            await self.transport.close()
        if self.publisher is not None:
            await self.publisher.stop()
        if self.http is not None:
            await self.http.stop()
        await asyncio.to_thread(self.spool.close)
        await asyncio.to_thread(self.usage.close)
        self.suppression.close()
        self.pauses.store.close()
        self.credentials.close()


def _log_dkim(signer: dkim.Signer) -> None:
    if signer.domains:
        log.info("dkim signing domains=%s", ",".join(signer.domains))
    else:
        log.info("dkim: no identity has keys, mail is sent unsigned")


async def serve(config: Config, path: str | None = None) -> None:
    relay = Relay(config)
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
    systemd.notify("READY=1\nSTATUS=accepting mail")
    log.info("smtprelay ready hostname=%s", config.server.hostname)
    await stop.wait()
    log.info("stopping: draining sessions")
    systemd.notify("STOPPING=1")
    await relay.stop()
    log.info("stopped")


def run(config: Config, path: str | None = None) -> None:
    """Check every file first (ConfigError), then hold data_dir (DataDirError), then serve."""
    from smtprelay.app import datadir

    problems = preflight.problems(config)
    if problems:
        raise ConfigError(path or "(configuration)", problems)
    with datadir.hold(config.server.data_dir):
        try:
            import uvloop
        except ImportError:
            asyncio.run(serve(config, path))
        else:
            uvloop.run(serve(config, path))
