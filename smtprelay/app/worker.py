"""A worker process of `server.workers`: `python -P -m smtprelay.app.worker`, started by
the supervisor (app.workers) with the submission and HTTP listeners' sockets and its
channel.

It runs SMTP sessions with its own event loop: TLS, AUTH, the policy checks and the
transforms, then hands each message to the supervisor's spool over the channel and
answers 250 once the supervisor has it on disk. It serves the HTTP listeners too:
clicks, opens and unsubscribes go to the supervisor's recorder over the channel, and
every other request to the supervisor's HTTP server (smtprelay.http.forward). What
every worker must agree on (rates, quotas, lockouts, connection counts) it asks the
supervisor's shared state. The configuration's text comes from the supervisor (the
text it started with, then that of its last reload: app.workers); the keys and the
state database it reads itself, as the CLI does. SIGHUP reloads it (with the text the
supervisor has in force), SIGTERM drains its sessions; when the
channel closes (the supervisor is gone) it stops at once, since it could acknowledge
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from smtprelay.app.control import LoopLag
from smtprelay.app.live import Live
from smtprelay.app.workers import ENVIRONMENT, read_memory_file
from smtprelay.auth.authenticator import Authenticator
from smtprelay.auth.stores import api_key_store, credential_store
from smtprelay.config import Config, LoadedConfig, load_config, parse_config
from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.mail_from import MailFromChecks
from smtprelay.events.remote import RemoteEngagements
from smtprelay.http.forward import Forwarder, internal_socket
from smtprelay.http.server import HTTPServer
from smtprelay.http.ses import ses_api
from smtprelay.infra import heap, logs
from smtprelay.policy.pauses import PausedSets
from smtprelay.policy.quota import Quotas
from smtprelay.policy.stores import (
    contact_store,
    pause_store,
    suppression_store,
    template_store,
)
from smtprelay.smtp.server import SMTPServer
from smtprelay.spool import remote
from smtprelay.spool.cluster_stats import ClusterCounters
from smtprelay.spool.remote import RemoteSpool
from smtprelay.spool.set_stats import FileCounters
from smtprelay.state.channel import ChannelClient
from smtprelay.state.service import StateClient
from smtprelay.submission.pipeline import Pipeline
from smtprelay.transform.pool import TransformPool, worker_count

log = logging.getLogger("smtprelay.worker")


def transform_processes(setting: int | str, workers: int) -> int:
    """Transform processes of each worker: a number as configured; "auto" (one per
    core, at most 4, for the whole relay) shared out among the `workers`, at least one
    each where the relay would have any."""
    count = worker_count(setting)
    if setting == "auto" and count:
        return max(1, count // workers)
    return count


class Worker:
    def __init__(self, config: Config, path: str, index: int, channel_fd: int,
                 sockets: dict[str, socket.socket], workers: int = 1,
                 http_sockets: Sequence[tuple[socket.socket, bool]] = (), *,
                 source: str = "", in_force: str = "") -> None:
        """`config` read from `source`, the supervisor's text at its start; `in_force`,
        the text of its last reload, is applied over it as that reload was."""
        self.index = index
        self.workers = workers
        self.path = path
        self.live = Live(config, source=source)
        self._in_force = in_force
        self._channel_fd = channel_fd
        self._sockets = sockets
        self._http_sockets = http_sockets
        self.credentials = credential_store(config)
        self.api_keys = api_key_store(config)
        self.suppression = suppression_store(config)
        self.contacts = contact_store(config)
        self.templates = template_store(config)  # opened on first use
        self.pauses = PausedSets(pause_store(config))
        self.channel: ChannelClient | None = None
        self.smtp: SMTPServer | None = None
        self.http: HTTPServer | None = None
        self.quotas: Quotas | None = None
        self.mail_from: MailFromChecks | None = None
        self._transform_pool: TransformPool | None = None
        self._pauses_task: asyncio.Task[None] | None = None
        self._cluster_counters: ClusterCounters | None = None
        self.lag = LoopLag()
        self._reloads: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        config = self.live.config
        reader, writer = await asyncio.open_connection(
            sock=socket.socket(fileno=self._channel_fd))
        self.channel = ChannelClient(reader, writer, remote.ERRORS)
        shared = StateClient(self.channel)
        await asyncio.to_thread(self.live.open)
        if self._in_force and self._in_force != self.live.source:
            # Started after the supervisor reloaded: the same reload, so that the keys
            # that need a restart keep their values from the start here too.
            await asyncio.to_thread(self.live.reload, self.path, self._in_force)
            config = self.live.config
        for store in (self.credentials, self.suppression, self.contacts, self.pauses.store):
            await asyncio.to_thread(store.open)
        if config.api.sesv2:
            await asyncio.to_thread(self.api_keys.open)
        await asyncio.to_thread(self.pauses.refresh)
        transforms = transform_processes(config.server.transform_workers, self.workers)
        if transforms:
            self._transform_pool = TransformPool(transforms)
        dns = config.delivery.dns
        self.mail_from = MailFromChecks(self.live, MXResolver(dns.nameservers or None,
                                                              timeout=dns.timeout))
        await self.mail_from.start(first_within=dns.timeout + 1.0)
        self.quotas = Quotas(self.live, shared)
        pipeline = Pipeline(
            self.live, RemoteSpool(self.channel), self.quotas, self.suppression,
            paused_sets=self.pauses, paused_accounts=lambda: self.pauses.accounts,
            transform_pool=self._transform_pool, mail_from=self.mail_from,
            contacts=self.contacts)
        self.smtp = SMTPServer(self.live, Authenticator(self.live, self.credentials, shared),
                               pipeline, shared=shared)
        await self.smtp.start(roles={"submission"}, sockets=self._sockets)
        if self._http_sockets:
            # v1's statistics: the cluster's, or the supervisor's spool (read-only).
            self._cluster_counters = ClusterCounters.of(config) if config.api.sesv1 \
                else None
            # Clicks, opens and unsubscribes here; the rest to the supervisor.
            self.http = HTTPServer(
                config, lambda: None, keys=self.live, sink=RemoteEngagements(self.channel),
                sockets=self._http_sockets,
                # The SES API on this worker's own pipeline, as its SMTP sessions.
                ses=ses_api(self.live, pipeline, self.quotas, lambda: self.pauses.accounts,
                            self.api_keys, counters=(
                                self._cluster_counters or FileCounters(config.spool_path)
                            ) if config.api.sesv1 else None,
                            suppression=self.suppression, contacts=self.contacts,
                            pauses=self.pauses, templates=self.templates),
                forward=Forwarder(internal_socket(config.server.data_dir),
                                  timeout=config.http.read_timeout))
            await self.http.start()
        self._pauses_task = asyncio.create_task(self.pauses.run())
        await self.channel.call("worker_ready", self.index, os.getpid())
        self.lag.start(self._report)

    def _report(self, lag_ms: float) -> None:
        """Once a second, for `smtprelay status`."""
        if self.channel is not None and self.smtp is not None:
            self.channel.post("worker_status", {
                "index": self.index, "pid": os.getpid(),
                "sessions": self.smtp.session_count, "loop_lag_ms": round(lag_ms, 1)})

    def reload(self) -> None:
        """SIGHUP, passed on by the supervisor after its own reload."""
        task = asyncio.ensure_future(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        if self.channel is None:
            return
        try:
            text = await self.channel.call("config_in_force")
        except Exception as exc:  # the channel is closing: the worker stops anyway
            log.error("worker %d: reload: the supervisor did not say what is in force: %s",
                      self.index, exc)
            return
        # Even with the text unchanged: the DKIM and tracking keys are read again. A
        # supervisor started without the text ("") leaves the file to be read.
        self.live.reload(self.path, text if isinstance(text, str) and text else None)
        self.live.reload_tls()
        if self.http is not None:
            # Renewed tracking-domain certificates; the listeners stay.
            task = asyncio.ensure_future(self.http.reload_certificates())
            self._reloads.add(task)
            task.add_done_callback(self._reloads.discard)
        with contextlib.suppress(Exception):
            self.pauses.refresh()

    async def stop(self, grace: float) -> None:
        self.lag.stop()
        if self._pauses_task is not None:
            self._pauses_task.cancel()
        if self.smtp is not None:
            await self.smtp.stop(grace)
        if self.quotas is not None:
            # Before the channel closes: a settlement lost with it would be given back
            # as "not sent" by the supervisor, and the message not counted.
            await self.quotas.drain()
        if self.http is not None:
            await self.http.stop()
        if self._transform_pool is not None:
            await self._transform_pool.close()
        if self.mail_from is not None:
            await self.mail_from.stop()
        if self.channel is not None:
            await self.channel.close()
        await self.suppression.close_on_loop()
        if self._cluster_counters is not None:
            self._cluster_counters.close()
        for store in (self.credentials, self.suppression, self.contacts, self.pauses.store,
                      self.api_keys, self.templates):
            store.close()

    async def until_channel_closes(self) -> None:
        assert self.channel is not None
        await self.channel.closed()


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group: the supervisor decides when we stop.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGHUP, worker.reload)
    try:
        await worker.start()
    except BaseException:
        await worker.stop(grace=0)
        raise
    heap.freeze_start_up()
    orphaned = asyncio.ensure_future(worker.until_channel_closes())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([orphaned, stopping], return_when=asyncio.FIRST_COMPLETED)
    if orphaned.done():
        log.error("worker %d: the supervisor is gone; stopping", worker.index)
        await worker.stop(grace=0)
    else:
        await worker.stop(grace=30.0)
    orphaned.cancel()
    stopping.cancel()


def _loaded(path: str, text: str) -> LoadedConfig:
    """The supervisor's text at its start, as the file at `path`; the file itself when
    the supervisor had no text."""
    return parse_config(text, Path(path)) if text else load_config(path)


def main() -> int:
    settings = json.loads(os.environ.pop(ENVIRONMENT))  # app.workers wrote it
    path = settings["config"]
    texts = json.loads(read_memory_file(settings["config_texts"]))
    loaded = _loaded(path, texts["start"])
    config = loaded.config
    logs.setup(config.logging.level, config.logging.format,
               process=f"worker{settings['index']}")
    sockets = {name: socket.socket(fileno=fd) for name, fd in settings["listeners"].items()}
    http_sockets = [(socket.socket(fileno=fd), bool(secure))
                    for fd, secure in settings.get("http", [])]
    worker = Worker(config, path, settings["index"], settings["channel"], sockets,
                    settings.get("workers", 1), http_sockets, source=loaded.text,
                    in_force=texts["now"])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(worker))
    else:
        uvloop.run(serve(worker))
    return 0


if __name__ == "__main__":
    sys.exit(main())
