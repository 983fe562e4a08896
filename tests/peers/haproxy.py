"""HAProxy (Debian package haproxy, installed by scripts/install-test-deps) in front of
the relay, in TCP mode with the PROXY protocol, as a cluster's load balancer runs:
each frontend listens on a free loopback port and hands connections to one backend
with `send-proxy` (v1) or `send-proxy-v2`. Runs in the foreground in a temp dir;
stop() ends it and removes the dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

HAPROXY = shutil.which("haproxy")


@dataclass(frozen=True)
class Route:
    """A frontend: connections to `port` go to 127.0.0.1:`backend_port`, or round robin
    over it and `more_backends` (several nodes)."""

    name: str
    backend_port: int
    send_proxy: str  # "send-proxy" (v1) or "send-proxy-v2"
    port: int = 0
    more_backends: tuple[int, ...] = ()
    health: str | None = None  # a path: HTTP health checks of it (option httpchk)
    tls: bool = False  # the backend speaks TLS: so do the health checks


class HAProxy:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = {r.name: Route(r.name, r.backend_port, r.send_proxy, free_port(),
                                     r.more_backends, r.health, r.tls) for r in routes}
        self.dir = Path(tempfile.mkdtemp(prefix="smtprelay-haproxy-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def port(self, name: str) -> int:
        return self.routes[name].port

    def start(self) -> HAProxy:
        assert HAPROXY is not None
        config = ["global", "  maxconn 200", f"  stats socket {self.dir / 'stats.sock'}",
                  "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 60s",
                  "  timeout server 60s"]
        for route in self.routes.values():
            config += [f"frontend {route.name}", f"  bind 127.0.0.1:{route.port}",
                       f"  default_backend {route.name}_relay",
                       f"backend {route.name}_relay", "  balance roundrobin"]
            # A check sends the header too (v2: LOCAL), as the server line has send-proxy.
            check = " check inter 200ms" if route.health else ""
            if route.health and route.tls:
                check += " check-ssl verify none"
            if route.health:
                config.append(f"  option httpchk GET {route.health}")
            for index, port in enumerate((route.backend_port, *route.more_backends)):
                config.append(f"  server relay{index} 127.0.0.1:{port} {route.send_proxy}"
                              + check)
        path = self.dir / "haproxy.cfg"
        path.write_text("\n".join(config) + "\n")
        log = (self.dir / "haproxy.log").open("wb")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for route in self.routes.values():
            while True:
                try:
                    socket.create_connection(("127.0.0.1", route.port), 0.5).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("haproxy did not start: "
                                           + (self.dir / "haproxy.log").read_text()) from None
                    time.sleep(0.02)
        return self

    def server_states(self, name: str) -> str:
        """The `show stat` lines (CSV) of the route's servers: their state and the
        outcome of their last health check (L7OK: an HTTP check passed)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(self.dir / "stats.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return "\n".join(line for line in data.decode().splitlines()
                         if line.startswith(f"{name}_relay,relay"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
