"""Two relay nodes (real `smtprelay serve` processes, each with its own data_dir and
spool) sharing one real Redis server through `store: {backend: redis}`: an account's
rate, AUTH lockout and per-destination connection limit hold across the nodes, and so
do suppressions, pauses and contact-list unsubscribes; Redis going away gives temporary
replies and nothing over a limit, and its return needs no restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import smtplib
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from smtprelay.spool.store import get_message, open_for_cli
from tests.dnsserver import TestDNSServer
from tests.e2e.test_contact_lists import HOST, one_click
from tests.peers.haproxy import HAPROXY, HAProxy, Route
from tests.redis_server import RedisServer
from tests.sinks import SinkFactory
from tests.support import DaemonProcess, client_context, message, metric, spooled

QUOTA = {"acme": {"identities": ["example.com"], "default_configuration_set": "transactional",
                  "quota": {"max_send_rate": 0.001, "burst": 6, "max_24h_send": 1000}}}


@pytest.fixture
def nodes() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for node in started:
        node.stop()


def node(tmp_path: Path, name: str, url: str, **overrides: Any) -> DaemonProcess:
    (tmp_path / name).mkdir()
    overrides.setdefault("store", {"backend": "redis", "url": url, "node": name})
    return DaemonProcess(tmp_path / name, **overrides).start()


def credential(daemon: DaemonProcess) -> dict[str, str]:
    return dict(json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout))


def readyz(daemon: DaemonProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['http']}/readyz",
                                    timeout=10) as answer:
            return answer.status, answer.read().decode().strip()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode().strip()


def send(daemon: DaemonProcess, cred: dict[str, str], subject: str) -> int:
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.net")
        return smtp.data(message(subject=subject))[0]


def test_an_accounts_rate_is_granted_once_across_nodes(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:
    a = node(tmp_path, "a", redis_url, accounts=QUOTA)
    # b with two workers: they reach Redis through its supervisor (state.service).
    b = node(tmp_path, "b", redis_url, accounts=QUOTA,
             server={"workers": 2, "transform_workers": 0})
    nodes += [a, b]
    # One credential, made with node A's CLI, logs in on both (credentials in Redis).
    cred = credential(a)
    codes = [send(a, cred, f"a{n}") for n in range(5)]
    codes += [send(b, cred, f"b{n}") for n in range(5)]
    # A burst of 6 for the account, whichever node its mail arrives at (one bucket
    # per node would have let all 10 through).
    assert codes == [250] * 6 + [454] * 4
    assert len(spooled(a.config)) + len(spooled(b.config)) == 6
    a.wait_log("store: redis at")


def test_auth_failures_on_one_node_lock_the_address_on_the_other(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:
    lockout = {"max_failures_per_ip": 3, "lockout_duration": "10m"}
    a = node(tmp_path, "a", redis_url, auth=lockout)
    b = node(tmp_path, "b", redis_url, auth=lockout)
    nodes += [a, b]
    cred = credential(a)
    for target in (a, a, b):
        with smtplib.SMTP("127.0.0.1", target.ports["submission"], timeout=20) as smtp:
            smtp.starttls(context=client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("nobody", "wrong password")
    with smtplib.SMTP("127.0.0.1", b.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as locked:
            smtp.login(cred["username"], cred["password"])  # right, but locked out
        assert locked.value.smtp_code == 454


def test_a_suppression_added_on_one_node_holds_on_the_other(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:
    """Issue 18: a bounce (here the CLI) recorded on node A stops node B from mailing
    the address: B's next message to it is a suppression bounce, as SES does."""
    a = node(tmp_path, "a", redis_url)
    b = node(tmp_path, "b", redis_url, server={"workers": 2, "transform_workers": 0})
    nodes += [a, b]
    a.cli("suppression", "add", "someone@example.net", "--account", "acme",
          "--reason", "BOUNCE")
    assert send(b, credential(b), "after the bounce") == 250
    [entry] = spooled(b.config)
    with contextlib.closing(sqlite3.connect(b.config.spool_path)) as conn:
        outcomes = conn.execute("SELECT kind, bounce_subtype FROM outcomes WHERE"
                                " message_id = ?", (entry["id"],)).fetchall()
    assert outcomes == [("bounce", "OnAccountSuppressionList")]
    listed = b.cli("suppression", "list", "--account", "acme").stdout
    assert "someone@example.net" in listed and "BOUNCE" in listed


LISTS = {
    "tracking_domains": {HOST: {}},
    "contact_lists": {"news": {"account": "acme", "unsubscribe_domain": HOST,
                               "https": False}},
}


def send_to_list(daemon: DaemonProcess, cred: dict[str, str], subject: str) -> str:
    """A message to the contact list `news` for reader@example.net; its id."""
    data = (f"From: app@example.com\r\nTo: reader@example.net\r\nSubject: {subject}\r\n"
            "X-SES-LIST-MANAGEMENT-OPTIONS: news\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.sendmail("app@example.com", ["reader@example.net"], data)  # raises unless 250
    [stored] = [m for m in spooled(daemon.config) if subject.encode() in m["data"]]
    return str(stored["id"])


def recipient_state(daemon: DaemonProcess, message_id: str) -> tuple[str, str | None]:
    conn = open_for_cli(daemon.config.spool_path)
    try:
        stored = get_message(conn, message_id)
        assert stored is not None
        [rcpt] = stored.recipients
        return rcpt.state.value, rcpt.last_reply
    finally:
        conn.close()


def one_click_unsubscribe(daemon: DaemonProcess, message_id: str) -> int:
    """POST the message's List-Unsubscribe URL to the node that sent it."""
    [data] = [m["data"] for m in spooled(daemon.config) if m["id"] == message_id]
    found = re.search(rb"^List-Unsubscribe: <([^>]+)>\r\n", data, re.MULTILINE)
    assert found is not None, data[:2000]
    return one_click(daemon.ports["http"], found.group(1).decode())


def test_an_unsubscribe_through_one_node_holds_back_the_others_list_mail(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:
    """A person who unsubscribed with the link of a message node A sent is not mailed by
    the next message to the list that node B (two worker processes) takes: B records
    the recipient as held back by the list, as one node alone does, and writes nothing
    to the suppression list."""
    a = node(tmp_path, "a", redis_url, **LISTS)
    b = node(tmp_path, "b", redis_url, server={"workers": 2, "transform_workers": 0},
             **LISTS)
    nodes += [a, b]
    cred = credential(a)
    first = send_to_list(a, cred, "first issue")
    assert recipient_state(a, first)[0] == "queued"
    assert one_click_unsubscribe(a, first) == 200
    later = send_to_list(b, cred, "second issue")
    assert recipient_state(b, later) == (
        "suppressed", "the recipient unsubscribed from contact list 'news'")
    # Mail that names no list still goes (a password reset).
    assert send(b, cred, "reset your password") == 250
    listed = b.cli("contacts", "get", "news", "reader@example.net", "--json").stdout
    assert json.loads(listed)["UnsubscribeAll"] is True
    assert "reader@example.net" not in b.cli("suppression", "list").stdout


def test_a_set_paused_on_one_node_is_paused_on_the_other_within_a_second(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:
    a = node(tmp_path, "a", redis_url)
    b = node(tmp_path, "b", redis_url)
    nodes += [a, b]
    cred = credential(b)
    assert send(b, cred, "before") == 250
    a.cli("sets", "pause", "transactional", "--reason", "list cleaning")
    paused_at = time.monotonic()
    with smtplib.SMTP("127.0.0.1", b.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        while True:  # bounded by the assertion on the time below
            smtp.mail("app@example.com")
            smtp.rcpt("someone@example.net")
            code, reply = smtp.data(message(subject="during"))
            elapsed = time.monotonic() - paused_at
            if code != 250 or elapsed > 1.0:
                break
    assert (code, reply) == (554, b"5.7.1 Sending paused for this configuration set")
    assert elapsed <= 1.0, elapsed
    a.cli("sets", "resume", "transactional")
    deadline = time.monotonic() + 5
    while send(b, cred, "after") != 250:
        assert time.monotonic() < deadline


def test_redis_gone_gives_temporary_replies_and_its_return_needs_no_restart(
        tmp_path: Path, nodes: list[DaemonProcess]) -> None:
    # Its own Redis, with the persistence docs/cluster.md asks for: killed in the middle
    # of the test and started again on its files, the credential still there.
    own = RedisServer(durable=True).start()
    try:
        a = node(tmp_path, "a", own.url, accounts=QUOTA, store={
            "backend": "redis", "url": own.url, "node": "a", "timeout": "1s"})
        nodes.append(a)
        cred = credential(a)
        assert send(a, cred, "before") == 250
        assert readyz(a) == (200, "ready")
        own.crash()
        # /readyz says why within a second or two (a balancer then prefers other nodes).
        deadline = time.monotonic() + 5
        while readyz(a)[0] != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert readyz(a)[1].startswith("not ready: store: redis: heartbeat:")
        with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=20) as smtp:
            smtp.starttls(context=client_context())
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                smtp.login(cred["username"], cred["password"])
            assert refused.value.smtp_code == 454  # no lockout can be checked
        assert len(spooled(a.config)) == 1
        own.start()  # the same address and files
        assert send(a, cred, "after") == 250
        deadline = time.monotonic() + 5
        while readyz(a)[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(spooled(a.config)) == 2
    finally:
        own.stop()


def test_events_go_to_a_redis_stream_and_wait_out_an_outage(
        tmp_path: Path, nodes: list[DaemonProcess]) -> None:
    """The redis_stream destination: each event an XADD (SES JSON in `event`), in order;
    while Redis is away the events wait in the outbox and go when it is back."""
    own = RedisServer().start()
    try:
        a = node(tmp_path, "a", own.url, store={"backend": "sqlite"}, configuration_sets={
            "transactional": {"event_destinations": [
                {"name": "stream", "type": "redis_stream", "url": own.url,
                 "stream": "relay:events", "event_types": ["Send"]}]}})
        nodes.append(a)
        cred = credential(a)
        assert send(a, cred, "first") == 250

        def entries() -> list[str]:
            return [line for line in own.cli("XRANGE", "relay:events", "-", "+")
                    .stdout.splitlines() if line.startswith("{")]

        deadline = time.monotonic() + 10
        while not entries():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [first] = entries()
        assert json.loads(first)["eventType"] == "Send"
        assert json.loads(first)["mail"]["commonHeaders"]["subject"] == "first"
        port = own.port
        own.stop()
        assert send(a, cred, "second") == 250  # its event waits in the outbox
        a.wait_log("(redis://127.0.0.1:")  # the failure is logged with where it went
        back = RedisServer()
        back.port = port
        back.start()
        try:
            deadline = time.monotonic() + 30  # the publisher's backoff
            while not [e for e in (back.cli("XRANGE", "relay:events", "-", "+")
                                   .stdout.splitlines()) if "second" in e]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            back.stop()
    finally:
        own.stop()


def test_cluster_status_lists_every_node_and_a_drained_one_says_so(
        tmp_path: Path, redis_server: RedisServer, redis_url: str,
        nodes: list[DaemonProcess]) -> None:
    a = node(tmp_path, "a", redis_url)
    b = node(tmp_path, "b", redis_url, server={"workers": 2, "transform_workers": 0})
    nodes += [a, b]
    assert send(a, credential(a), "counted") == 250

    def listed() -> dict[str, dict[str, Any]]:
        out = a.cli("cluster", "status", "--json").stdout
        return {n["node"]: n for n in json.loads(out)}

    def settled(found: dict[str, dict[str, Any]]) -> bool:
        # Both ready, and a's heartbeat written after the message was queued (one
        # written just before it still says 0).
        return (set(found) == {"a", "b"} and all(n.get("ready") for n in found.values())
                and found["a"].get("queue_pending") == 1)

    deadline = time.monotonic() + 10
    while not settled(found := listed()):
        assert time.monotonic() < deadline, found
        time.sleep(0.1)
    assert found["b"]["workers"] == 2 and found["a"]["workers"] == 1
    b.cli("drain")
    while not listed()["b"]["draining"]:
        assert time.monotonic() < deadline + 10
        time.sleep(0.1)
    table = a.cli("cluster", "status").stdout
    assert re.search(r"^b\s+draining\s", table, re.MULTILINE), table
    # A node that stopped writing heartbeats (its key expired) is listed as gone.
    redis_server.cli("SADD", "smtprelay:nodes", "c")
    assert listed()["c"] == {"node": "c", "alive": False}
    assert re.search(r"^c\s+gone", a.cli("cluster", "status").stdout, re.MULTILINE)
    a.cli("cluster", "forget", "c")
    assert "c" not in listed()
    refused = a.cli("cluster", "forget", "c", check=False)
    assert refused.returncode != 0 and "no node 'c' is listed" in refused.stderr


def test_twenty_senders_through_haproxy_to_two_nodes_never_pass_rate_plus_burst(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:
    """Issue 18: HAProxy (PROXY protocol v2) in front of two nodes on one Redis; 20
    senders from 20 addresses, their sessions spread over both nodes: in no second do
    more messages get 250 than max_send_rate + burst, both nodes take some, and each
    Received field names the sender's own address."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed (scripts/install-test-deps installs it)")
    rate, burst = 2, 4
    quota = {"acme": {**QUOTA["acme"], "quota": {"max_send_rate": rate, "burst": burst,
                                                   "max_24h_send": 100_000}}}
    behind = [{"name": "submission", "address": "127.0.0.1", "port": 0, "tls": "starttls",
               "proxy_protocol": True, "trusted_proxies": ["127.0.0.1/32"]},
              {"name": "submissions", "address": "127.0.0.1", "port": 0,
               "tls": "implicit"}]
    a = node(tmp_path, "a", redis_url, accounts=quota, listeners=behind)
    b = node(tmp_path, "b", redis_url, accounts=quota, listeners=behind)
    nodes += [a, b]
    cred = credential(a)
    balancer = HAProxy([Route("smtp", a.ports["submission"], "send-proxy-v2",
                              more_backends=(b.ports["submission"],))]).start()
    granted: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 3.0

    def sender(n: int) -> None:
        with smtplib.SMTP("127.0.0.1", balancer.port("smtp"), timeout=20,
                          source_address=(f"127.0.0.{10 + n}", 0)) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(cred["username"], cred["password"])
            while time.monotonic() < stop_at:  # bounded by the clock
                smtp.mail("app@example.com")
                smtp.rcpt("someone@example.net")
                if smtp.data(message(subject=f"s{n}"))[0] == 250:
                    with lock:
                        granted.append(time.monotonic())

    try:
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(sender, range(20)))
    finally:
        balancer.stop()
    granted.sort()
    worst = max(sum(1 for t in granted if start <= t < start + 1.0) for start in granted)
    assert worst <= rate + burst, (worst, granted)
    assert len(granted) >= burst + rate  # the bucket did grant (3 s: burst + ~6)
    stored = spooled(a.config) + spooled(b.config)
    assert len(stored) == len(granted)
    assert spooled(a.config) and spooled(b.config)  # both nodes took sessions
    sources = {re.search(rb"\(\[(127\.0\.0\.\d+)\]\)", m["data"]).group(1)  # type: ignore[union-attr]
               for m in stored}
    assert sources and b"127.0.0.1" not in sources


# ------------------------------------------------------------ connection limits

class CountingMX:
    """The MX of example.net on 127.0.0.1: counts the connections open at once (all, and
    per client by its EHLO name, which is each node's server.hostname) and holds every
    transaction `hold` seconds before answering the final ".", so they overlap."""

    def __init__(self, sinks: SinkFactory, hold: float) -> None:
        self.hold = hold
        self._lock = threading.Lock()
        self.open = 0
        self.peak = 0
        self.open_by: Counter[str] = Counter()
        self.peak_by: Counter[str] = Counter()  # since reset_peaks()
        self.subjects_by: defaultdict[str, set[str]] = defaultdict(set)
        self.port = sinks.raw(self._serve).port

    def opened(self, client: str) -> int:
        with self._lock:
            return self.open_by[client]

    def reset_peaks(self) -> None:
        with self._lock:
            self.peak_by = Counter(self.open_by)

    def peak_of(self, client: str) -> int:
        with self._lock:
            return self.peak_by[client]

    def delivered(self, client: str) -> set[str]:
        with self._lock:
            return set(self.subjects_by[client])

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.open += 1
            self.peak = max(self.peak, self.open)
        client: str | None = None
        try:
            writer.write(b"220 mx.example.net ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO") and client is None:
                    client = line.split()[1].decode()
                    with self._lock:
                        self.open_by[client] += 1
                        self.peak_by[client] = max(self.peak_by[client],
                                                   self.open_by[client])
                    writer.write(b"250 mx.example.net\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    subject = None
                    while (body := await reader.readline()) not in (b".\r\n", b""):
                        if body.startswith(b"Subject: "):
                            subject = body[9:].strip().decode()
                    if not body:
                        break
                    await asyncio.sleep(self.hold)
                    with self._lock:
                        self.subjects_by[client or "?"].add(subject or "?")
                    writer.write(b"250 2.0.0 queued\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        finally:
            with self._lock:
                self.open -= 1
                if client is not None:
                    self.open_by[client] -= 1


def delivering_node(tmp_path: Path, name: str, url: str, dns: TestDNSServer,
                    mx: CountingMX, lease_ttl: str = "30s") -> DaemonProcess:
    return node(tmp_path, name, url, server={"hostname": f"{name}.relay.test"},
                store={"backend": "redis", "url": url, "node": name, "lease_ttl": lease_ttl},
                delivery={"mode": "mx", "port": mx.port, "max_connections_per_domain": 4,
                          "dns": {"nameservers": [dns.nameserver], "timeout": "2s"},
                          "retry": {"first": "1s", "max_interval": "2s"},
                          "connect_timeout": "3s", "command_timeout": "10s",
                          "idle_timeout": "2s"})


def send_many(daemon: DaemonProcess, cred: dict[str, str], subjects: list[str]) -> None:
    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(lambda s: send(daemon, cred, s), subjects)) == {250}


def until(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` holds; fails past `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, "not within the time allowed"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.fixture
def example_net_mx(dns_server: TestDNSServer) -> TestDNSServer:
    dns_server.add("example.net", "MX", "10 mx.example.net.", ttl=60)
    dns_server.add("mx.example.net", "A", "127.0.0.1", ttl=60)
    return dns_server


def test_a_destinations_connection_limit_holds_across_both_nodes(
        tmp_path: Path, redis_server: RedisServer, redis_url: str, sinks: SinkFactory,
        example_net_mx: TestDNSServer, nodes: list[DaemonProcess]) -> None:
    mx = CountingMX(sinks, hold=0.3)
    a = delivering_node(tmp_path, "a", redis_url, example_net_mx, mx)
    b = delivering_node(tmp_path, "b", redis_url, example_net_mx, mx)
    nodes += [a, b]
    cred = credential(a)
    sent = {name: [f"{name}{n}" for n in range(24)] for name in ("a", "b")}
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda d: send_many(d, cred, sent[d.config.store.node]), (a, b)))
    until(lambda: all(mx.delivered(f"{n}.relay.test") == set(sent[n]) for n in sent), 60)
    # Each node alone may have 4: together they never passed 4, and both delivered.
    assert 2 < mx.peak <= 4, mx.peak
    # Idle sessions close after delivery.idle_timeout, and their leases go with them.
    until(lambda: redis_server.cli("ZCARD", "smtprelay:lease:{example.net}")
          .stdout.strip() == "0", 10)
    assert metric(a, "smtprelay_outbound_leases") == 0


def test_a_node_killed_mid_delivery_frees_its_connections_within_the_lease_ttl(
        tmp_path: Path, redis_url: str, sinks: SinkFactory,
        example_net_mx: TestDNSServer, nodes: list[DaemonProcess]) -> None:
    ttl = 3.0
    mx = CountingMX(sinks, hold=1.0)
    a = delivering_node(tmp_path, "a", redis_url, example_net_mx, mx, lease_ttl="3s")
    b = delivering_node(tmp_path, "b", redis_url, example_net_mx, mx, lease_ttl="3s")
    nodes += [a, b]
    cred = credential(a)
    send_many(a, cred, [f"a{n}" for n in range(40)])  # 10 s of work at 4 at a time
    until(lambda: mx.opened("a.relay.test") == 4, 20)
    from_b = [f"b{n}" for n in range(16)]
    send_many(b, cred, from_b)
    # B's deliveries wait: node A holds every lease.
    assert mx.opened("a.relay.test") == 4 and mx.opened("b.relay.test") == 0
    a.stop(signal.SIGKILL)
    killed = time.monotonic()
    # Its sockets closed with it, but its leases count until their TTL (renewed at
    # most TTL/3 before the kill): then B takes all 4.
    until(lambda: mx.opened("b.relay.test") == 4, ttl + 3)
    assert time.monotonic() - killed >= ttl / 3, "A's leases did not outlive A"
    until(lambda: mx.delivered("b.relay.test") == set(from_b), 30)
    assert mx.peak <= 4, mx.peak


def test_with_redis_away_a_node_delivers_its_queue_under_its_share_and_resumes(
        tmp_path: Path, sinks: SinkFactory, example_net_mx: TestDNSServer,
        nodes: list[DaemonProcess]) -> None:
    own = RedisServer(durable=True).start()  # the credential outlives the crash
    try:
        mx = CountingMX(sinks, hold=1.0)
        a = delivering_node(tmp_path, "a", own.url, example_net_mx, mx, lease_ttl="3s")
        b = delivering_node(tmp_path, "b", own.url, example_net_mx, mx, lease_ttl="3s")
        nodes += [a, b]
        a.wait_log("leases: 2 nodes alive")
        cred = credential(a)
        queued = [f"a{n}" for n in range(30)]  # 7.5 s of work at 4 at a time
        send_many(a, cred, queued)
        own.crash()
        a.wait_log("leases: redis not answering")
        # Its share, 4 // 2 nodes: sessions past it close as their transactions end.
        until(lambda: mx.opened("a.relay.test") <= 2, 10)
        mx.reset_peaks()
        until(lambda: mx.delivered("a.relay.test") == set(queued), 30)
        assert 0 < mx.peak_of("a.relay.test") <= 2
        assert a.log().count("leases: redis not answering") == 1
        own.start()
        a.wait_log("leases: redis answers again")
        send_many(a, cred, ["after"])
        until(lambda: "after" in mx.delivered("a.relay.test"), 10)
        assert mx.peak <= 4
    finally:
        own.stop()
