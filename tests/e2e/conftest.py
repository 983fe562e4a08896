"""Fixtures the end-to-end tests share (tests/conftest.py has the ones every test may use)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dkimpeers import Key, publish, record_line
from tests.dnsserver import TestDNSServer
from tests.e2e.delivery_world import World, world
from tests.sinks import SinkFactory, SmtpSink
from tests.support import free_port


@pytest.fixture
def net(tmp_path: Path, dns_server: TestDNSServer, sinks: SinkFactory) -> Iterator[World]:
    """A world to deliver into (tests/e2e/delivery_world.py): remote hosts are sinks the
    test DNS server names; the test starts the relay with net.start()."""
    with world(tmp_path, dns_server, sinks) as w:
        yield w


@pytest.fixture
def mx(dns_server: TestDNSServer, sinks: SinkFactory) -> Iterator[SmtpSink]:
    """The MX host of dest.test: a sink on 127.0.0.2, for a relay in mx mode on its
    port (delivery.port) asking the test DNS server."""
    sink = sinks.smtp(host="127.0.0.2", port=free_port())
    dns_server.add("dest.test", "MX", "10 mx.dest.test.")
    dns_server.add("mx.dest.test", "A", "127.0.0.2")
    yield sink


# DKIM: keys made by `smtprelay dkim keygen` and the records it printed, served by the
# test DNS server where the independent verifiers (tests/dkimpeers.py) look them up.

@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    """An RSA and an Ed25519 key for example.com, made by the CLI as an operator would."""
    directory = tmp_path_factory.mktemp("dkim")
    made = {}
    for selector, kind in (("r2026", "rsa"), ("e2026", "ed25519")):
        path = directory / f"example.com.{selector}.pem"
        run = subprocess.run([sys.executable, "-m", "smtprelay", "dkim", "keygen",
                              "example.com", "--selector", selector, "--type", kind,
                              "--out", str(path)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        made[kind] = Key(selector, path, record_line(run.stdout))
    return made


@pytest.fixture
def dns(dns_server: TestDNSServer, keys: dict[str, Key]) -> TestDNSServer:
    """The test DNS server with the records of both keys."""
    for key in keys.values():
        publish(dns_server, key.record)
    return dns_server
