"""A validating resolver for DANE tests: unbound serving DNSSEC-signed test zones.

unbound (Debian's package, installed by scripts/install-test-deps) runs unprivileged
on a free loopback port with a configuration of its own in a temporary directory. The
test zones are zone files it serves itself (``auth-zone`` with ``for-upstream``, so its
validator checks them as it would any answer from the Internet): a signed zone is
signed by ldns-signzone (ldnsutils) with a key made by ldns-keygen, and its DS record
is unbound's trust anchor, so its answers carry the AD bit; an unsigned zone has no
anchor and its answers are insecure. Everything outside the test zones is refused
(``local-zone: "." refuse``), so nothing is ever asked of the Internet's root.

    resolver = Unbound(tmp_path / "unbound")
    resolver.zone("dane.test", ["ee MX 10 mx.ee", "mx.ee A 127.0.0.5",
                                "_25._tcp.mx.ee TLSA 3 1 1 ..."], signed=True)
    resolver.start()   # resolver.nameserver: "127.0.0.1:PORT"
    ...
    resolver.stop()

Zone lines are relative to the zone's origin, in zone-file syntax; the SOA and NS are
added. Zones are fixed once started (a test wanting other records starts another).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
KEYGEN = shutil.which("ldns-keygen") or "/usr/bin/ldns-keygen"
SIGNZONE = shutil.which("ldns-signzone") or "/usr/bin/ldns-signzone"
_START_TIMEOUT = 10.0


def available() -> bool:
    return all(Path(tool).is_file() for tool in (UNBOUND, KEYGEN, SIGNZONE))


def _free_port() -> int:
    """A loopback port free for both UDP and TCP at the time of asking."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no loopback port free for both UDP and TCP")


class Unbound:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._zones: list[tuple[str, Path]] = []
        self._anchors: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def zone(self, origin: str, lines: list[str], *, signed: bool) -> None:
        origin = origin.rstrip(".")
        text = "\n".join([
            f"$ORIGIN {origin}.", "$TTL 60",
            f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
            f"@ IN NS ns.{origin}.", "ns IN A 127.0.0.1",
            *(self._with_class(line) for line in lines), ""])
        path = self.directory / f"{origin}.zone"
        path.write_text(text)
        if signed:
            key = subprocess.run([KEYGEN, "-a", "ECDSAP256SHA256", "-k", origin],
                                 cwd=self.directory, check=True, capture_output=True,
                                 text=True).stdout.strip()
            subprocess.run([SIGNZONE, path.name, key], cwd=self.directory, check=True,
                           capture_output=True)
            path = path.with_name(path.name + ".signed")
            self._anchors.append(self.directory / f"{key}.ds")
        self._zones.append((origin, path))

    @staticmethod
    def _with_class(line: str) -> str:
        owner, _, rest = line.partition(" ")
        return f"{owner} IN {rest}"

    def start(self) -> Unbound:
        self.port = _free_port()
        lines = [
            "server:",
            f"  interface: 127.0.0.1@{self.port}",
            "  do-daemonize: no", '  username: ""', '  chroot: ""',
            f'  directory: "{self.directory}"', '  pidfile: ""',
            "  use-syslog: no", f'  logfile: "{self.directory / "unbound.log"}"',
            "  verbosity: 1", "  do-ip6: no", "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no", '  module-config: "validator iterator"',
            "  val-log-level: 2",
            # Nothing leaves for the Internet: only the test zones below exist.
            '  local-zone: "." refuse', '  local-zone: "test." transparent',
            *(f'  trust-anchor-file: "{anchor}"' for anchor in self._anchors),
        ]
        for origin, path in self._zones:
            lines += ["auth-zone:", f'  name: "{origin}."', f'  zonefile: "{path}"',
                      "  for-downstream: no", "  for-upstream: yes",
                      "  fallback-enabled: no"]
        config = self.directory / "unbound.conf"
        config.write_text("\n".join(lines) + "\n")
        self._process = subprocess.Popen([UNBOUND, "-d", "-c", str(config)],
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        origin = self._zones[0][0] if self._zones else "test"
        query = dns.message.make_query(f"{origin}.", dns.rdatatype.SOA)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"unbound exited: {self.log()}")
            try:
                dns.query.udp(query, "127.0.0.1", timeout=0.2, port=self.port)
                return
            except (dns.exception.Timeout, OSError):
                continue
        raise RuntimeError(f"unbound did not answer within {_START_TIMEOUT} s: {self.log()}")

    def log(self) -> str:
        path = self.directory / "unbound.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def unbound(tmp_path: Path) -> Iterator[Unbound]:
    """An Unbound not yet started (add zones, then start()); stopped after the test."""
    if not available():
        pytest.skip("unbound and ldnsutils are not installed (scripts/install-test-deps)")
    resolver = Unbound(tmp_path / "unbound")
    try:
        yield resolver
    finally:
        resolver.stop()


__all__ = ["Unbound", "available", "unbound"]
