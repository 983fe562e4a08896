"""A real Redis server for the tests that need one: `redis-server` (Debian package
redis-server, installed by scripts/install-test-deps) started on a free loopback port
with nothing persisted, once per session, and stopped at the end. Each test gets an
empty database (`redis_url`)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from tests.support import free_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """`durable`: what docs/operations.md asks of a cluster's Redis for entries that must
    not be lost (suppression): an append-only file written before each reply."""

    def __init__(self, durable: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smtprelay-redis-"))
        self.durable = durable
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--dir", str(self.dir), "--protected-mode", "yes",
             *(["--appendonly", "yes", "--appendfsync", "always"] if self.durable
               else ["--appendonly", "no"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("PING").stdout.strip() != "PONG":
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args],
                              capture_output=True, text=True, timeout=10, check=False)

    def crash(self) -> None:
        """kill -9, keeping its files for the next start()."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed (scripts/install-test-deps installs it)")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.cli("FLUSHALL")
    return redis_server.url


class _Store(Protocol):
    def open(self) -> None: ...

    def close(self) -> None: ...


S = TypeVar("S", bound=_Store)


def on_backend(request: pytest.FixtureRequest, local: Callable[[], S],
               shared: Callable[[str], S]) -> Iterator[S]:
    """For a fixture with params=["sqlite", "redis"]: the store of that backend of
    store.backend, `local()` (the state database's) or `shared(url)` on a real Redis
    emptied for the test; opened, and closed after it."""
    store = shared(request.getfixturevalue("redis_url")) if request.param == "redis" \
        else local()
    store.open()
    yield store
    store.close()
