"""Behind a load balancer: real HAProxy in TCP mode in front of a real `smtprelay serve`,
sending the PROXY protocol (v1 to the STARTTLS listener, v2 to the implicit TLS one).
The client's own address, not the balancer's, is what the relay sees: in its log, its
Received field and its per-address limit. Only the balancer may speak PROXY."""

from __future__ import annotations

import json
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.haproxy import HAPROXY, HAProxy, Route
from tests.support import DaemonProcess, client_context, message, spooled

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed "
                                "(scripts/install-test-deps installs it)")
BEHIND = {"proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"]}


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def cluster(request: pytest.FixtureRequest,
            tmp_path: Path) -> Iterator[tuple[DaemonProcess, HAProxy]]:
    daemon = DaemonProcess(
        tmp_path, server={"workers": request.param, "transform_workers": 0},
        limits={"max_connections_per_ip": 2, "idle_timeout": "30s",
                "data_timeout": "30s"},
        listeners=[
            {"name": "submission", "address": "127.0.0.1", "port": 0, "tls": "starttls",
             **BEHIND},
            {"name": "submissions", "address": "127.0.0.1", "port": 0, "tls": "implicit",
             **BEHIND}]).start(wait=False)
    daemon.wait_log("smtprelay ready", timeout=30)
    balancer = HAProxy([Route("v1", daemon.ports["submission"], "send-proxy"),
                        Route("v2", daemon.ports["submissions"], "send-proxy-v2")]).start()
    yield daemon, balancer
    balancer.stop()
    daemon.stop()


def answer(sock: socket.socket) -> bytes:
    """What the relay says before it closes (closing with our bytes unread resets)."""
    try:
        return sock.recv(100)
    except ConnectionResetError:
        return b""


def login(smtp: smtplib.SMTP, cred: dict[str, str]) -> None:
    smtp.login(cred["username"], cred["password"])


def test_the_client_behind_the_balancer_is_who_the_relay_sees(
        cluster: tuple[DaemonProcess, HAProxy]) -> None:
    daemon, balancer = cluster
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    # v1 on STARTTLS, from 127.0.0.5 (the balancer connects from 127.0.0.1).
    with smtplib.SMTP("127.0.0.1", balancer.port("v1"), timeout=20,
                      source_address=("127.0.0.5", 0)) as smtp:
        smtp.starttls(context=client_context())
        login(smtp, cred)
        smtp.sendmail("app@example.com", ["someone@example.net"], message(subject="v1"))
    # v2 on implicit TLS: the handshake comes after the header.
    with smtplib.SMTP_SSL("127.0.0.1", balancer.port("v2"), timeout=20,
                          context=client_context(),
                          source_address=("127.0.0.6", 0)) as smtp:
        login(smtp, cred)
        smtp.sendmail("app@example.com", ["someone@example.net"], message(subject="v2"))
    received = [entry["data"].split(b"\r\n\r\n", 1)[0] for entry in spooled(daemon.config)]
    # "from <HELO> ([address])": the address is the client's, not the balancer's.
    assert b"([127.0.0.5])" in received[0] and b"([127.0.0.6])" in received[1]
    daemon.wait_log("client=127.0.0.5 auth ok")
    daemon.wait_log("client=127.0.0.6 auth ok")


def test_the_per_address_limit_counts_clients_not_the_balancer(
        cluster: tuple[DaemonProcess, HAProxy]) -> None:
    _, balancer = cluster
    held = []
    try:
        for source in ("127.0.0.5", "127.0.0.5", "127.0.0.6", "127.0.0.6"):
            smtp = smtplib.SMTP("127.0.0.1", balancer.port("v1"), timeout=20,
                                source_address=(source, 0))
            held.append(smtp)  # 220: four sessions through one balancer address
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", balancer.port("v1"), timeout=20,
                         source_address=("127.0.0.5", 0))
        assert refused.value.smtp_code == 421
    finally:
        for smtp in held:
            smtp.close()


def test_only_a_trusted_balancer_may_speak_proxy(
        cluster: tuple[DaemonProcess, HAProxy]) -> None:
    daemon, _ = cluster
    port = daemon.ports["submission"]
    # Straight to the relay from an address that is not a trusted proxy, claiming to be
    # another client: closed unanswered, before any banner.
    with socket.create_connection(("127.0.0.1", port), 10,
                                  source_address=("127.0.0.9", 0)) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 1000 587\r\n")
        assert answer(sock) == b""
    # From the trusted address but without a header (not a balancer's way): closed too.
    with socket.create_connection(("127.0.0.1", port), 10) as sock:
        sock.sendall(b"EHLO direct.example\r\n")
        assert answer(sock) == b""
    # The log is written by its own thread: wait for the lines, do not race them.
    daemon.wait_log("client=127.0.0.9 listener=submission: not in listeners.submission."
                    "trusted_proxies")
    daemon.wait_log("refused connection from balancer=127.0.0.1 listener=submission: no "
                    "PROXY header where one was expected")
    assert "203.0.113.7" not in daemon.log()
