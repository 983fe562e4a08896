"""Shared pieces of the benchmark scripts: run smtprelay as a subprocess on a temp config."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SMTPRELAY = str(Path(sys.executable).with_name("smtprelay"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_banner(port: int, timeout: float = 30, plain: bool = True,
                    host: str = "127.0.0.1") -> None:
    """Poll until the port answers (with a 220 banner when `plain`, else a TCP accept)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                if not plain or sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers with 220 on {host}:{port}")


def proc_status(pid: int, field: str) -> int:
    """A kB figure (VmRSS, VmHWM, ...) from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RelayProcess:
    """`smtprelay serve` on a temp config with free ports; stop() removes everything.

    `delivery` is the config's delivery section. The default, mode hold, keeps accepted
    mail queued: the acceptance benchmarks measure acceptance only, and the relay's own
    default (mx) would send every accepted message to DNS and port 25 meanwhile.
    """

    def __init__(self, limits: dict[str, Any] | None = None, log_level: str = "info",
                 delivery: dict[str, Any] | None = None, source: Path | None = None,
                 server: dict[str, Any] | None = None) -> None:
        # `source`: another checkout of smtprelay to run instead of this one (a
        # baseline commit beside the new one, measured in the same run).
        self.source = source
        self.root = Path(tempfile.mkdtemp(prefix="smtprelay-bench-", dir="/tmp"))
        self.submission_port = free_port()
        self.submissions_port = free_port()
        self.http_port = free_port()
        # One process unless the caller asks for workers (the default is one per core):
        # each benchmark says which it measures. A baseline checkout may predate the key.
        one = {"workers": 1} if source is None else {}
        config = {
            "server": {"hostname": "relay.bench.test", "data_dir": "./var", **one,
                       **(server or {})},
            "tls": {"generate_self_signed": True},
            "listeners": [
                {"name": "submission", "address": "127.0.0.1",
                 "port": self.submission_port, "tls": "starttls"},
                {"name": "submissions", "address": "127.0.0.1",
                 "port": self.submissions_port, "tls": "implicit"},
            ],
            "limits": limits or {},
            "accounts": {"bench": {"identities": ["example.com"]}},
            "http": {"listen": [f"127.0.0.1:{self.http_port}"]},
            "logging": {"level": log_level},
            "delivery": delivery or {"mode": "hold"},
        }
        self.config_path = self.root / "smtprelay.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH:
        # run from a checkout, the baseline would be that checkout. So these commands
        # run in `root`, where there is no smtprelay to find.
        return [SMTPRELAY] if self.source is None else [sys.executable, "-m", "smtprelay"]

    @property
    def environment(self) -> dict[str, str] | None:
        """With a `source`, that checkout first on the path (and nothing of this one)."""
        if self.source is None:
            return None
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.source)
        return env

    @property
    def spool_path(self) -> Path:
        return self.root / "var" / "spool.db"  # config.spool_path for data_dir ./var

    def start(self, timeout: float = 30) -> RelayProcess:
        with self.log_path.open("wb") as log:
            # stderr goes to a file, not a pipe nobody reads, so logging never blocks.
            self.proc = subprocess.Popen([*self.command, "serve", "-c", str(self.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env=self.environment, cwd=self.root)
        try:
            wait_for_banner(self.submission_port, timeout)
            wait_for_banner(self.submissions_port, timeout, plain=False)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def credential(self, account: str = "bench") -> tuple[str, str]:
        out = subprocess.run([*self.command, "credentials", "create", account, "--json",
                              "-c", str(self.config_path)], capture_output=True, text=True,
                             check=True, timeout=60, env=self.environment,
                             cwd=self.root).stdout
        data = json.loads(out)
        return str(data["username"]), str(data["password"])

    def stop(self) -> None:
        stop_process(self.proc, grace=20)
        self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RelayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen[Any] | None, grace: float) -> None:
    """SIGTERM, `grace` seconds to exit, then SIGKILL; nothing if it already ended."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (timeout(1), kill) into SystemExit so cleanup in `finally` runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def raise_nofile(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE (children inherit it); returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def python_env() -> dict[str, str]:
    """The environment for child Python processes, with the repo importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


LOAD = str(Path(__file__).resolve().parent / "submit_load.py")


def run_load(port: int, user: str, password: str, *, sessions: int, size: int,
             messages_per_session: int, total: int, duration: float,
             recipients: tuple[str, ...] = (), reply_log: Path | None = None,
             message_file: Path | None = None, sender: str | None = None) -> dict[str, Any]:
    """One run of submit_load.py in its own process; its JSON summary.

    `reply_log`: the generator writes there, per accepted message, the wall-clock time
    it read the 250 and that reply (which names the server's queue id).
    `message_file`: send that message (submit_load.py --message-file) instead of a
    generated one of `size` bytes; `sender`: the envelope sender (its default otherwise).
    """
    cmd = [sys.executable, LOAD, "--json", f"--port={port}", f"--user={user}",
           f"--password={password}", f"--sessions={sessions}", f"--size={size}",
           f"--messages-per-session={messages_per_session}", f"--total={total}",
           f"--duration={duration}", *(f"--recipient={r}" for r in recipients)]
    if reply_log is not None:
        cmd.append(f"--reply-log={reply_log}")
    if message_file is not None:
        cmd.append(f"--message-file={message_file}")
    if sender is not None:
        cmd.append(f"--sender={sender}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                         env=python_env(), check=False)
    if not out.stdout.strip():
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 2) if present else None
