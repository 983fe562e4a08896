"""The HTTP listeners behind a load balancer (`http.proxy_protocol`): real HAProxy in
TCP mode, configured as docs/cluster.md says (send-proxy-v2, HTTP health checks of
/healthz), in front of a real `smtprelay serve`, in one process and with two workers
(which serve the HTTP sockets and pass the admin API to the supervisor). The client's
own address, not the balancer's, is the one in the Click and Open events and the one
the admin API names, over plain HTTP and over the TLS listener (whose handshake
follows the header). Only the balancer may speak PROXY, and must."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import smtplib
import socket
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.admin_client import ENV, SECRET
from tests.e2e.delivery_world import wait_for
from tests.peers.haproxy import HAPROXY, HAProxy, Route
from tests.support import DaemonProcess, client_context, events, free_port
from tests.unit.infra.test_proxy_protocol import v2, v2_tcp4

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed "
                                "(scripts/install-test-deps installs it)")
HOST = "links.example.com"
_CLICK = re.compile(rb"http://links\.example\.com/c/([A-Za-z0-9_-]+)")
_OPEN = re.compile(rb"http://links\.example\.com/o/([A-Za-z0-9_-]+)")


class Relay:
    def __init__(self, daemon: DaemonProcess, balancer: HAProxy, events: Path) -> None:
        self.daemon = daemon
        self.balancer = balancer
        self.events = events
        self.tls_port = int(daemon.config.http.tls_listen[0].rpartition(":")[2])

    def click_and_open(self) -> tuple[str, str]:
        """The click and open paths of one tracked message, read from the spool."""
        cred = json.loads(self.daemon.cli("credentials", "create", "acme", "--json").stdout)
        with smtplib.SMTP("127.0.0.1", self.daemon.ports["submission"], timeout=20) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(cred["username"], cred["password"])
            smtp.sendmail("app@example.com", ["someone@example.net"], (
                b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: t\r\n"
                b"Content-Type: text/html\r\n\r\n<html><body><a href=\"https://shop."
                b"example/item\">Shop</a></body></html>\r\n"))
        with contextlib.closing(sqlite3.connect(self.daemon.config.spool_path)) as conn:
            [(body,)] = conn.execute("SELECT data FROM bodies").fetchall()
        click, opened = _CLICK.search(bytes(body)), _OPEN.search(bytes(body))
        assert click is not None and opened is not None
        return f"/c/{click.group(1).decode()}", f"/o/{opened.group(1).decode()}"

    def addresses(self, kind: str, count: int) -> list[str]:
        """The ipAddress of the first `count` events of `kind` (Click, Open), awaited."""
        def found() -> list[str]:
            seen = [e[kind.lower()]["ipAddress"] for e in events(self.events)
                    if e["eventType"] == kind]
            return seen if len(seen) >= count else []
        return wait_for(found, 20)


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def relay(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    monkeypatch.setenv(ENV, SECRET)
    events_path = tmp_path / "events.ndjson"
    daemon = DaemonProcess(
        tmp_path, server={"workers": request.param, "transform_workers": 0},
        http={"tls_listen": [f"127.0.0.1:{free_port()}"], "admin_token_env": ENV,
              "proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"]},
        tracking_domains={HOST: {}},
        configuration_sets={"transactional": {
            "tracking": {"open": True, "click": True, "domain": HOST, "https": False},
            "event_destinations": [{"name": "f", "type": "file", "path": str(events_path),
                                    "event_types": ["Click", "Open"]}]}},
    ).start(wait=False)
    daemon.wait_log("smtprelay ready", timeout=30)
    tls_port = int(daemon.config.http.tls_listen[0].rpartition(":")[2])
    balancer = HAProxy([
        Route("http", daemon.ports["http"], "send-proxy-v2", health="/healthz"),
        Route("https", tls_port, "send-proxy-v2", health="/healthz", tls=True),
        Route("v1", daemon.ports["http"], "send-proxy")]).start()
    yield Relay(daemon, balancer, events_path)
    balancer.stop()
    daemon.stop()


def get(port: int, path: str, source: str, *, secure: bool = False,
        method: str = "GET", headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, bytes]:
    conn: http.client.HTTPConnection
    if secure:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20,
                                           context=client_context(),
                                           source_address=(source, 0))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20,
                                          source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers={"Host": HOST, **(headers or {})})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def raw(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Everything the relay answers to `data` sent as it is, until it closes."""
    with socket.create_connection(("127.0.0.1", port), 20,
                                  source_address=(source, 0)) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread
        return answer


def request_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()


def test_clicks_and_opens_through_the_balancer_name_the_client(relay: Relay) -> None:
    click, opened = relay.click_and_open()
    http_port, https_port = relay.balancer.port("http"), relay.balancer.port("https")
    # HAProxy connects from 127.0.0.1; the clients from 127.0.0.5 and .6.
    status, _ = get(http_port, click, "127.0.0.5")
    assert status == 302
    assert relay.addresses("Click", 1) == ["127.0.0.5"]
    # The TLS listener: the header first, then the handshake the client started.
    assert get(https_port, opened, "127.0.0.6", secure=True)[0] == 200
    assert relay.addresses("Open", 1) == ["127.0.0.6"]
    # HAProxy's own health checks (v2 LOCAL, then GET /healthz; on the TLS listener
    # after a handshake) are answered as the balancer's: its stats say so.
    for route in ("http", "https"):
        assert wait_for(lambda r=route: "L7OK" in relay.balancer.server_states(r), 20)
    assert "refused connection" not in relay.daemon.log()


def test_the_admin_api_names_the_client_also_through_a_worker(relay: Relay) -> None:
    # With two workers a worker answers and passes the request to the supervisor with
    # the client's address in its PEER header: the header's, not the balancer's.
    status, body = get(
        relay.balancer.port("v1"), "/api/v1/configuration-sets/transactional/pause",
        "127.0.0.7", method="POST", body=b'{"reason": "check"}',
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json",
                 "X-Smtprelay-Worker-Peer": "203.0.113.9"})
    assert status == 200 and json.loads(body)["paused"]["by"] == "api 127.0.0.7"


def test_hand_written_v1_and_v2_headers(relay: Relay) -> None:
    click, _ = relay.click_and_open()
    port = relay.daemon.ports["http"]
    # From 127.0.0.1, a trusted proxy, as a balancer writes them.
    answers = [
        raw(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\n" + request_bytes(click)),
        raw(port, b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 80\r\n" + request_bytes(click)),
        raw(port, v2_tcp4("198.51.100.9", 40000) + request_bytes(click)),
        # LOCAL: the balancer's own connection, which keeps its address.
        raw(port, v2(0, 0x00, b"") + request_bytes(click))]
    assert all(a.startswith(b"HTTP/1.1 302 ") for a in answers), answers
    assert sorted(relay.addresses("Click", 4)) == sorted(
        ["203.0.113.7", "2001:db8::7", "198.51.100.9", "127.0.0.1"])


def test_only_a_trusted_balancer_may_speak_proxy_and_it_must(relay: Relay) -> None:
    daemon = relay.daemon
    port = daemon.ports["http"]
    where = f"listener=127.0.0.1:{port}"
    # From an address that is not a trusted proxy, claiming to be another client:
    # closed unanswered, before a byte of HTTP.
    assert raw(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 1000 80\r\n"
               + request_bytes("/healthz"), source="127.0.0.9") == b""
    # From the trusted address, but without a header, or with a broken one.
    assert raw(port, request_bytes("/healthz")) == b""
    assert raw(port, b"PROXY TCP4 \x1b[31mred 127.0.0.1 1 80\r\n"
               + request_bytes("/healthz")) == b""
    # The TLS listener too: a handshake where the header should be is refused.
    with pytest.raises((ssl.SSLError, OSError)), \
            socket.create_connection(("127.0.0.1", relay.tls_port), 20) as sock, \
            client_context().wrap_socket(sock) as tls:
        tls.sendall(request_bytes("/healthz"))
        if not tls.recv(100):
            raise ConnectionResetError("closed")
    daemon.wait_log(f"refused connection client=127.0.0.9 {where}: not in "
                    "http.trusted_proxies")
    daemon.wait_log(f"refused connection from balancer=127.0.0.1 {where}: no PROXY "
                    "header where one was expected")
    daemon.wait_log(f"refused connection from balancer=127.0.0.1 {where}: PROXY v1 line "
                    "has a bad address or port")
    daemon.wait_log(f"refused connection from balancer=127.0.0.1 listener=https://"
                    f"127.0.0.1:{relay.tls_port}: no PROXY header where one was expected")
    log = daemon.log()
    assert "203.0.113.7" not in log and "\x1b" not in log
