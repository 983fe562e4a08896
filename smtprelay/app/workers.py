"""The supervisor's side of `server.workers`: it binds the submission and HTTP listeners
once, starts the worker processes on them, serves their channel, and starts again a
worker that dies.

Each worker gets, as inherited file descriptors, every submission and HTTP listener's
socket, its end of a socketpair for the channel (state.channel) and an in-memory file
holding the configuration's text, and as SMTPRELAY_WORKER a JSON object naming them.
The text is the supervisor's, not the file's: the text it started with and the text of
its last reload, so a worker started again after a crash runs what the others run
(restart-only keys included) even when the file has been edited, or broken, since; a
reload (SIGHUP) asks the supervisor for the text in force. A worker serves until its channel or its
SIGTERM ends it; a worker that exits otherwise is started again on the same sockets
(connections that arrived meanwhile wait in the listen backlog), after a pause that
doubles while workers keep dying young, so a broken install does not spin.
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
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from smtprelay.infra import metrics
from smtprelay.infra.children import child_environment
from smtprelay.state.channel import ChannelServer
from smtprelay.state.service import Holdings

log = logging.getLogger("smtprelay.workers")

ENVIRONMENT = "SMTPRELAY_WORKER"
_YOUNG = 10.0  # a worker that dies sooner than this after its start is dying young
_FIRST_PAUSE = 0.5
_MAX_PAUSE = 30.0


def worker_processes(setting: int | str) -> int:
    """`server.workers`: "auto" is one per CPU core this process may run on."""
    if setting == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return int(setting)


class WorkersNotListening(RuntimeError):
    """Not every worker process listened in time at start-up (their own errors are in
    the log above)."""


class WorkerSet:
    def __init__(self, count: int, config_path: str, sockets: dict[str, socket.socket],
                 channel: ChannelServer[Holdings], metrics_dir: Path | None = None, *,
                 http_sockets: Sequence[tuple[socket.socket, bool]] = (),
                 config_texts: Callable[[], tuple[str, str]] = lambda: ("", "")) -> None:
        """`sockets`: the submission listeners' by name; `http_sockets`: the HTTP
        listeners', each with whether it is TLS (http.server.bind_listeners);
        `config_texts`: the configuration's text at the supervisor's start and now (""
        for either: the worker reads the file)."""
        self._config_texts = config_texts
        self.count = count
        self._http_sockets = list(http_sockets)
        # Where the workers write their metrics (infra.metrics.exposition reads them).
        self._metrics_dir = metrics_dir
        self._config_path = config_path
        self._sockets = sockets
        self._channel = channel
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._ready: dict[int, int] = {}  # index -> pid, once listening
        # Workers a reload reached before they were ready: SIGHUP's default action
        # would have killed them (their handler is not installed yet), so each gets it
        # once it says it is ready, and reads the new configuration then.
        self._reload_when_ready: set[int] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._pauses: dict[int, float] = {}  # index -> pause before its next start
        self._stopping = False
        self.restarts: dict[int, int] = {}
        self._all_listening = asyncio.Event()
        # index -> what the worker last said of itself (pid, sessions, loop lag), and when.
        self.reports: dict[int, dict[str, Any]] = {}
        channel.register("worker_ready", self._worker_ready)
        channel.register("worker_status", self._worker_status)
        channel.register("config_in_force", self._config_in_force)

    @property
    def all_ready(self) -> bool:
        return len(self._ready) == self.count and all(
            self._ready.get(index) == process.pid
            for index, process in self._processes.items())

    async def _worker_ready(self, _: Holdings, args: tuple[object, ...]) -> object:
        index, pid = args
        assert isinstance(index, int) and isinstance(pid, int)
        self._ready[index] = pid
        log.info("worker %d listening pid=%d", index, pid)
        if index in self._reload_when_ready:
            self._reload_when_ready.discard(index)
            process = self._processes.get(index)
            if process is not None and process.pid == pid:
                _hang_up(process)
        if self.all_ready:
            self._all_listening.set()
        return None

    async def _config_in_force(self, _: Holdings, args: tuple[object, ...]) -> object:
        return self._config_texts()[1]

    async def _worker_status(self, _: Holdings, args: tuple[object, ...]) -> object:
        (report,) = args
        if isinstance(report, dict) and isinstance(report.get("index"), int):
            self.reports[report["index"]] = {**report, "reported_at": time.time()}
        return None

    def status(self) -> list[dict[str, Any]]:
        """Each worker: its pid, whether it listens, and its latest report."""
        found = []
        for index, process in sorted(self._processes.items()):
            report = self.reports.get(index, {})
            current = report.get("pid") == process.pid
            found.append({"index": index, "pid": process.pid,
                          "listening": self._ready.get(index) == process.pid,
                          "restarts": self.restarts.get(index, 0),
                          "sessions": report.get("sessions") if current else None,
                          "loop_lag_ms": report.get("loop_lag_ms") if current else None,
                          "reported_at": report.get("reported_at") if current else None})
        return found

    async def start(self, within: float = 30.0) -> None:
        """Start every worker; return once each listens (WorkersNotListening past
        `within`)."""
        for index in range(self.count):
            await self._spawn(index)
        try:
            await asyncio.wait_for(self._all_listening.wait(), within)
        except TimeoutError:
            raise WorkersNotListening(
                f"server.workers: {len(self._ready)} of {self.count} worker processes "
                f"listening after {within:.0f} s; see their errors above") from None

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        self._channel.serve(reader, writer, f"worker {index}")
        listeners = {name: sock.fileno() for name, sock in self._sockets.items()}
        http = [[sock.fileno(), secure] for sock, secure in self._http_sockets]
        at_start, in_force = self._config_texts()
        texts = _memory_file(json.dumps({"start": at_start, "now": in_force}).encode())
        env = child_environment()
        if self._metrics_dir is not None:
            env[metrics.WORKER_METRICS_ENV] = str(self._metrics_dir)
        env[ENVIRONMENT] = json.dumps({"index": index, "workers": self.count,
                                       "config": self._config_path,
                                       "config_texts": texts,
                                       "channel": theirs.fileno(), "listeners": listeners,
                                       "http": http})
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "smtprelay.app.worker", env=env,
                pass_fds=[theirs.fileno(), texts, *listeners.values(),
                          *(fd for fd, _ in http)])
        finally:
            theirs.close()
            os.close(texts)
        self._processes[index] = process
        self._ready.pop(index, None)
        watcher = asyncio.create_task(self._watch(index, process, time.monotonic()))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _watch(self, index: int, process: asyncio.subprocess.Process,
                     started: float) -> None:
        code = await process.wait()
        if self._metrics_dir is not None:
            # Its live gauges (open connections) go; its counters stay counted.
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(process.pid,  # type: ignore[no-untyped-call]
                                               str(self._metrics_dir))
        if self._stopping:
            return
        metrics.WORKER_RESTARTS.inc()
        self.restarts[index] = self.restarts.get(index, 0) + 1
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        young = time.monotonic() - started < _YOUNG
        wait = min(self._pauses.get(index, _FIRST_PAUSE / 2) * 2, _MAX_PAUSE) if young \
            else _FIRST_PAUSE
        self._pauses[index] = wait
        log.error("worker %d (pid %d) ended with %s; starting it again in %.1f s", index,
                  process.pid, how, wait)
        await asyncio.sleep(wait)
        if not self._stopping:
            await self._spawn(index)

    def reload(self) -> None:
        """Tell every worker to read the configuration again (SIGHUP): now if it is
        ready, else as soon as it is (a worker still starting would die of it)."""
        for index, process in self._processes.items():
            if self._ready.get(index) == process.pid:
                _hang_up(process)
            else:
                self._reload_when_ready.add(index)

    def signal_all(self, signum: int) -> None:
        for process in self._processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (each drains its sessions), then wait; kill what is left
        after `grace` and 5 s more."""
        self._stopping = True
        for watcher in list(self._watchers):
            watcher.cancel()
        self.signal_all(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in self._processes.values()]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace + 5)
            if pending:
                self.signal_all(signal.SIGKILL)
                await asyncio.wait(pending, timeout=5)
        for sock in self._sockets.values():
            sock.close()


def _memory_file(data: bytes) -> int:
    """A file descriptor of an unnamed file holding `data`, read from its start: in
    memory (memfd) where the system has it, so the configuration's secrets touch no
    disk."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("smtprelay-config")  # close-on-exec: pass_fds hands it on
    else:  # an unlinked temporary file
        handle = tempfile.TemporaryFile()  # noqa: SIM115 - its descriptor outlives it
        fd = os.dup(handle.fileno())
        handle.close()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_memory_file(fd: int) -> bytes:
    """What `_memory_file` wrote, in the process that inherited `fd` (which it closes)."""
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _hang_up(process: asyncio.subprocess.Process) -> None:
    """SIGHUP: read the configuration again (a worker that has just ended has no use
    for it)."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGHUP)
