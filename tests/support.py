"""Test support: a real relay on loopback ports, run in its own thread and event loop.

Tests talk to it with blocking clients (smtplib, raw sockets, swaks) exactly as an
application would; the spool is read back with a separate SQLite connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import os
import shutil
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from hypothesis import settings
from prometheus_client.parser import text_string_to_metric_families

from smtprelay.app.daemon import Relay
from smtprelay.auth.credentials import CredentialStore
from smtprelay.config import Config, load_config
from smtprelay.infra.tls import ensure_self_signed

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The Hypothesis profile tests/conftest.py loads.
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or "ci"


def examples(thorough: int) -> int:
    """max_examples for a property test: `thorough` under HYPOTHESIS_PROFILE=thorough,
    otherwise no more than the loaded profile's count, so that a large count written
    for a long hunt does not slow every run."""
    if HYPOTHESIS_PROFILE == "thorough":
        return thorough
    return min(thorough, settings().max_examples)


def need_program(name: str) -> str:
    """Path of an external program; a failure in CI (scripts/test installs it), else a skip."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed (scripts/test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A port free on 127.0.0.1; delivery tests bind it on 127.0.0.2.. as well, for MX
    hosts (delivery.port is one port for every host)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_config(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A config dict with listeners on free ports; overrides merge one level deep."""
    config: dict[str, Any] = {
        # One process: tests of worker processes say so (tests/e2e/test_workers.py).
        "server": {"hostname": "relay.test", "data_dir": str(data_dir), "workers": 1},
        "tls": {"generate_self_signed": True},
        "listeners": [
            {"name": "submission", "address": "127.0.0.1", "port": 0, "tls": "starttls"},
            {"name": "submissions", "address": "127.0.0.1", "port": 0, "tls": "implicit"},
        ],
        "limits": {"idle_timeout": "30s", "data_timeout": "30s"},
        "accounts": {
            "acme": {"identities": ["example.com", "news@example.org"],
                     "default_configuration_set": "transactional"},
            "other": {"identities": ["other.test"]},
        },
        "configuration_sets": {"transactional": {"sending_enabled": True}},
        "http": {"listen": ["127.0.0.1:0"]},
        # Tests that deliver say how; the rest keep mail queued (mx would ask real DNS).
        "delivery": {"mode": "hold"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    # Tests are not about tenancy unless they say so: every set any test account may
    # name, unless the set names its accounts or says shared: false itself
    # (tests/e2e/test_tenant_isolation.py does).
    for name, set_settings in list(config.get("configuration_sets", {}).items()):
        if isinstance(set_settings, dict) and "accounts" not in set_settings \
                and "shared" not in set_settings:
            config["configuration_sets"][name] = {**set_settings, "shared": True}
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class Credential:
    username: str
    password: str
    account: str


class RunningRelay:
    """A Relay started in a thread; ports are the ones the OS gave (port 0 in the config)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.relay = Relay(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> RunningRelay:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.relay.start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.relay.stop(grace=2), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def port(self, listener: str) -> int:
        assert self.relay.smtp is not None
        return int(self.relay.smtp.bound[listener][0][1])

    @property
    def submission_port(self) -> int:
        return self.port("submission")

    @property
    def submissions_port(self) -> int:
        return self.port("submissions")

    @property
    def http_port(self) -> int:
        assert self.relay.http is not None
        return int(self.relay.http.bound[0][1])

    def credential(self, account: str = "acme") -> Credential:
        store = CredentialStore(self.config.state_path)
        secret = store.create(account, "test")
        store.close()
        return Credential(secret.credential.username, secret.password, account)


def spooled(config: Config) -> list[dict[str, Any]]:
    """Every message in the spool, read with a connection of our own, as the CLI would."""
    conn = sqlite3.connect(config.spool_path)
    try:
        rows = conn.execute(
            "SELECT m.id, m.mail_from, m.account, b.prefix, b.data FROM messages m"
            " JOIN bodies b ON b.message_id = m.id ORDER BY m.id").fetchall()
        result = []
        for mid, mail_from, account, prefix, body in rows:
            data = bytes(prefix) + bytes(body)  # the relay's own fields, then the client's
            rcpts = [r[0] for r in conn.execute(
                "SELECT address FROM recipients WHERE message_id = ? ORDER BY idx", (mid,))]
            result.append({"id": mid, "mail_from": mail_from, "account": account,
                           "data": bytes(data), "recipients": rcpts})
        return result
    finally:
        conn.close()


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(subject: str = "hello", sender: str = "app@example.com",
            to: str = "someone@example.net", body: str = "Hello.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@example.com>\r\n\r\n{body}").encode()


@contextlib.contextmanager
def running(tmp_path: Path, **overrides: Any) -> Iterator[RunningRelay]:
    path = write_config(tmp_path / "smtprelay.yaml", base_config(tmp_path / "var", **overrides))
    relay = RunningRelay(load_config(path).config).start()
    try:
        yield relay
    finally:
        relay.stop()


def relay_fixture(config: Callable[..., dict[str, Any]] | None = None, *,
                  scope: Literal["function", "module"] = "function",
                  env: Mapping[str, str] | None = None, **overrides: Any) -> Any:
    """A `relay` fixture: a RunningRelay with the default test config (base_config)
    changed by `overrides`, as running() takes them, and the environment variables `env`
    set while it runs; a new relay for each test, or with scope="module" one for the
    whole module. tests/conftest.py's `relay` is relay_fixture(); a module that needs
    another relay says so with `relay = relay_fixture(...)`.

    Overrides made from other fixtures come from `config`, a function whose parameters
    name those fixtures: relay_fixture(lambda keys: {"identities": identities(keys)}).
    """
    wanted = list(inspect.signature(config).parameters) if config else []

    @pytest.fixture(scope=scope, name="relay")
    def relay(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRelay]:
        """A relay on loopback ports with the test config (see tests/support.py)."""
        directory = (request.getfixturevalue("tmp_path") if scope == "function"
                     else tmp_path_factory.mktemp("relay"))
        made = config(*(request.getfixturevalue(name) for name in wanted)) if config else {}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            with running(directory, **overrides, **made) as r:
                yield r

    return relay


def session(relay: RunningRelay, cred: Credential) -> smtplib.SMTP:
    """An SMTP connection to the relay's submission port, after STARTTLS and AUTH."""
    smtp = smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10)
    smtp.starttls(context=client_context())
    smtp.login(cred.username, cred.password)
    return smtp


def send_raw(smtp: smtplib.SMTP, rcpts: list[str], data: bytes,
             sender: str = "app@example.com") -> tuple[int, bytes]:
    smtp.mail(sender)
    for rcpt in rcpts:
        smtp.rcpt(rcpt)
    return smtp.data(data)


EVENTS_SCHEMA = json.loads(
    (Path(__file__).parents[1] / "docs" / "events.schema.json").read_text())


def events(path: Path, *, validate: bool = True) -> list[dict[str, Any]]:
    """The records in an events file (none while there is no file), each checked against
    docs/events.schema.json unless `validate` is false."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    if validate:
        for record in records:
            jsonschema.validate(record, EVENTS_SCHEMA)
    return records


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def pem_pair(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for relay.test and its key: cert.pem, key.pem in `directory`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    ensure_self_signed(cert, key, "relay.test")
    return cert, key


def tls(cert: Path, key: Path, **more: Any) -> dict[str, Any]:
    """A config's tls section with these files instead of a generated certificate."""
    return {"generate_self_signed": False, "cert_file": str(cert), "key_file": str(key), **more}


class DaemonProcess:
    """`smtprelay serve` as a child process on fixed free ports, as an operator runs it."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        import subprocess
        import sys

        self._subprocess = subprocess
        self._python = sys.executable
        self._tmp_path = tmp_path
        self._overrides = overrides
        self.config_path = tmp_path / "smtprelay.yaml"
        self._choose_ports()
        self.log_path = tmp_path / "daemon.log"
        self.proc: Any = None
        self.submit_credential: dict[str, str] | None = None  # submit_to_daemon's

    def _choose_ports(self) -> None:
        """Free ports, written into the configuration (again after a start lost one)."""
        self.ports = {"submission": free_port(), "submissions": free_port(),
                      "http": free_port()}
        config = base_config(self._tmp_path / "var", **self._overrides)
        config["listeners"][0]["port"] = self.ports["submission"]
        config["listeners"][1]["port"] = self.ports["submissions"]
        config["http"] = {**config["http"], "listen": [f"127.0.0.1:{self.ports['http']}"]}
        if "public_url" in config["http"]:  # "{http_port}": the port chosen here
            config["http"]["public_url"] = config["http"]["public_url"].replace(
                "{http_port}", str(self.ports["http"]))
        write_config(self.config_path, config)
        self.config = load_config(self.config_path).config

    def cli(self, *args: str, check: bool = True) -> Any:
        run = self._subprocess.run(
            [self._python, "-m", "smtprelay", *args, "-c", str(self.config_path)],
            capture_output=True, text=True, timeout=60)
        if check and run.returncode != 0:
            raise AssertionError(f"smtprelay {' '.join(args)} failed: {run.stderr}")
        return run

    def start(self, wait: bool = True) -> DaemonProcess:
        # A port free_port() found free can be taken by another process before the
        # daemon binds it (other tests, other programs): then the daemon says so and
        # exits, and it starts again on other ports. Nothing else is tried again.
        for _ in range(3):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._log = self.log_path.open("ab")
            self.proc = self._subprocess.Popen(
                [self._python, "-m", "smtprelay", "serve", "-c", str(self.config_path)],
                stdout=self._log, stderr=self._log)
            if not wait:
                return self
            try:
                self.wait_ready()
                return self
            except AssertionError:
                lost_port = "Address already in use" in self.log()[logged:]
                if self.proc.poll() is None or not lost_port:
                    raise
                self._log.close()
                self._choose_ports()
        raise AssertionError(f"daemon could not bind free ports three times: {self.log()}")

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.ports["submission"]), 0.5):
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon not listening after {timeout}s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {timeout}s: {self.log()}")
            time.sleep(0.05)

    def stop(self, sig: int | None = None, timeout: float = 20) -> int:
        import signal

        if self.proc is None or self.proc.poll() is not None:
            return int(self.proc.returncode) if self.proc else 0
        self.proc.send_signal(sig or signal.SIGTERM)
        try:
            return int(self.proc.wait(timeout))
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
            self._log.close()


def metric(daemon: DaemonProcess, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    with urllib.request.urlopen(
            f"http://127.0.0.1:{daemon.ports['http']}/metrics", timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, value = line.rsplit(" ", 1)
        if all(f'{key}="{wanted}"' in sample for key, wanted in labels.items()):
            total += float(value)
    return total


def submit_to_daemon(daemon: DaemonProcess, rcpts: list[str], subject: str = "hello") -> str:
    """Send one message through a DaemonProcess as account acme (STARTTLS + AUTH);
    returns the relay's message id. The credential is made with the CLI on the first
    send and used for the daemon's later ones (it lives in the data directory, so a
    restart keeps it)."""
    import json
    import smtplib

    if daemon.submit_credential is None:
        daemon.submit_credential = json.loads(
            daemon.cli("credentials", "create", "acme", "--json").stdout)
    cred = daemon.submit_credential
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        for rcpt in rcpts:
            smtp.rcpt(rcpt)
        code, text = smtp.data(message(subject=subject))
    assert code == 250, text
    return str(text.decode().split()[-1])


@contextlib.contextmanager
def small_disk(directory: Path, size: str = "64k") -> Iterator[bool]:
    """A tmpfs of `size` at `directory`; False when this machine does not let us mount
    (mounting needs root)."""
    directory.mkdir(exist_ok=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        mounted = False
    try:
        yield mounted
    finally:
        if mounted and subprocess.run(["umount", str(directory)], capture_output=True,
                                      timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=30)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; removing it makes the space again."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                os.write(fd, b"x" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return filler
    finally:
        os.close(fd)
