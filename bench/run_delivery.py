"""End-to-end delivery benchmark, smtprelay against Postfix, in one run on this machine.

    load generator --STARTTLS+AUTH--> smtprelay | Postfix --MX lookup--> smtp-sink

bench/submit_load.py submits over STARTTLS + AUTH PLAIN to rcpt@example.net; the
relay (smtprelay, `delivery.mode: mx`) or a private Postfix 3.7 (relaying, no hold)
looks up example.net's MX through dnsmasq (a caching resolver, as beside any MTA)
in front of tests/dnsserver.py (the authority) and hands the message to Postfix's
smtp-sink, which keeps each message as a file in tmpfs. Per cell (sessions x size)
and server it measures

* delivered msg/s: messages that reached the sink / (last one's arrival - load start),
  so a queue that builds up during the load and drains afterwards counts;
* p50/p99 from 250 to remote 250: the sink file's mtime (written as the sink answers
  the final dot) minus the time the generator read the relay's 250, matched by the
  queue id (in that 250 and in the relay's Received field). The servers' own records
  (smtprelay: spool outcomes.at; Postfix: queue id time + delay=) are a cross-check;
* CPU ms per message of the server (its whole process tree) over load + drain, and
  how busy the machine's cores were.

Servers are interleaved cell by cell, --repeats times; prints medians and the ratio
smtprelay/Postfix of delivered msg/s. Then (unless --no-profile) one more cell against
smtprelay under py-spy, summarised by function. Writes JSON to bench/results/.

Postfix reads its DNS server from /etc/resolv.conf only (port 53): the script enters a
private mount namespace and bind-mounts a resolv.conf naming dnsmasq on
127.0.0.153:53. Needs root (as Postfix does) and dnsmasq (Debian: dnsmasq-base).

    /tmp/venv/bin/python bench/run_delivery.py                  # about 3 minutes
    /tmp/venv/bin/python bench/run_delivery.py --repeats 1 --total 300 --sizes 2048
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dns.exception
import dns.resolver

from bench._common import (
    REPO,
    RESULTS,
    RelayProcess,
    exit_on_sigterm,
    free_port,
    median,
    raise_nofile,
    run_load,
    stop_process,
    wait_for_banner,
    write_result,
)
from tests.dnsserver import TestDNSServer
from tests.peers.postfix import BenchmarkPeer, benchmark_peer

RESOLVER_ADDRESS = "127.0.0.153"
SINK_ADDRESS = "127.0.0.154"
DOMAIN = "example.net"  # one of TestDNSServer's default zones
MX_NAME = f"mx.{DOMAIN}"
RECIPIENT = f"rcpt@{DOMAIN}"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq",) if Path(p).exists()), None)
PY_SPY = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL = 0.1


# ------------------------------------------------------------------ environment


def use_private_resolv_conf(nameserver: str, workdir: Path) -> None:
    """From now on this process and its children see a resolv.conf naming `nameserver`.

    Postfix's smtp client resolves through libc, which knows no nameserver port and no
    other file; the machine's own resolver is unreachable here anyway. A private mount
    namespace keeps the change away from everything else on the machine. Must run
    before any thread starts: unshare(CLONE_NEWNS) refuses a process whose threads
    share its filesystem state.
    """
    clone_newns, ms_bind, ms_rec, ms_private = 0x00020000, 0x1000, 0x4000, 1 << 18
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"{what}: {os.strerror(errno)} (needs root; "
                                 "or use --postfix-route static)")

    check(libc.unshare(clone_newns), "unshare(CLONE_NEWNS)")
    # Without this, mounts below would propagate back to the host's namespace.
    check(libc.mount(b"none", b"/", None, ms_rec | ms_private, None), "mount --make-rprivate /")
    conf = workdir / "resolv.conf"
    conf.write_text(f"nameserver {nameserver}\noptions timeout:1 attempts:2\n")
    check(libc.mount(str(conf).encode(), b"/etc/resolv.conf", None, ms_bind, None),
          "mount --bind resolv.conf")


class CachingResolver:
    """dnsmasq on RESOLVER_ADDRESS:53, caching what the test DNS server answers.

    What a mail server runs beside it in production (unbound, dnsmasq, systemd-resolved):
    Postfix has no DNS cache of its own and looks up the MX and its address for every
    delivery; without a cache each lookup would be a round trip to a Python server
    competing for the same two cores. smtprelay caches itself and asks it too.
    """

    def __init__(self, upstream: tuple[str, int], log: Path) -> None:
        self.upstream = upstream
        self.log = log
        self.caches_mx = False
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> CachingResolver:
        assert DNSMASQ is not None
        host, port = self.upstream
        version = subprocess.run([DNSMASQ, "--version"], capture_output=True, text=True,
                                 check=False).stdout
        found = re.search(r"version (\d+)\.(\d+)", version)
        # Only A, AAAA, CNAME ... are cached by default; 2.90 added caching other types.
        # Older ones forward every MX query to the Python server (noted in the results).
        self.caches_mx = found is not None and (int(found[1]), int(found[2])) >= (2, 90)
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                 "--no-hosts", f"--listen-address={RESOLVER_ADDRESS}", "--bind-interfaces",
                 "--port=53", f"--server={host}#{port}", "--cache-size=1000",
                 *(["--cache-rr=MX"] if self.caches_mx else []),
                 "--pid-file=", "--user=dnsmasq", "--log-facility=-"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_ready(self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [RESOLVER_ADDRESS]
        resolver.lifetime = 1.0
        deadline = time.monotonic() + 10
        while True:
            try:
                resolver.resolve(DOMAIN, "MX")
                return
            except dns.exception.DNSException:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"dnsmasq does not answer: {self.log.read_text()}"
                                       ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        self.proc = None


_UNFOLD = re.compile(rb"\r?\n[ \t]+")
_RECEIVED_ID = re.compile(rb"^Received:(?:(?!\(smtp-sink\)).)*? id ([^\s;]+)", re.M)


class Sink:
    """Postfix's smtp-sink (C, one process), keeping each message it accepts as a file.

    The files live in tmpfs and are read and removed after each cell: a file's mtime is
    when the sink wrote the end of the message, right before its 250, by the same clock
    for both servers; the relaying server's Received field in it names its queue id.
    """

    def __init__(self, address: str, log: Path) -> None:
        self.address = address
        self.port = free_port(address)
        self.log = log
        self.dumps = Path(tempfile.mkdtemp(prefix="smtprelay-sink-", dir="/dev/shm"))
        self.proc: subprocess.Popen[bytes] | None = None
        # collect() keeps the first `keep` messages it reads (as the sink wrote them) in
        # `kept`, replacing what an earlier call that read any kept.
        self.keep = 0
        self.kept: list[bytes] = []

    def start(self) -> Sink:
        shutil.chown(self.dumps, "postfix")  # smtp-sink writes as -u postfix
        with self.log.open("wb") as log:
            # -u: smtp-sink refuses to run as root; -d: one file per message, named
            # DIR/ plus a random hex number; 1024: the listen backlog.
            self.proc = subprocess.Popen(
                [SMTP_SINK, "-u", "postfix", "-d", f"{self.dumps}/",
                 f"{self.address}:{self.port}", "1024"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_banner(self.port, host=self.address)
        except BaseException:
            self.stop()
            raise
        return self

    def collect(self) -> dict[str, float]:
        """Queue id of the relaying server -> time the sink took the message; empties the dir."""
        got: dict[str, float] = {}
        kept: list[bytes] = []
        for path in self.dumps.iterdir():
            with path.open("rb") as f:
                at = os.fstat(f.fileno()).st_mtime
                if len(kept) < self.keep:
                    kept.append(f.read())
                    f.seek(0)
                head = f.read(16384).split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
            path.unlink()
            match = _RECEIVED_ID.search(_UNFOLD.sub(b" ", head))
            if match is not None:
                got[match[1].decode()] = at
        if got:
            self.kept = kept
        return got

    def stop(self) -> None:
        stop_process(self.proc, grace=10)
        self.proc = None
        shutil.rmtree(self.dumps, ignore_errors=True)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def tree_cpu_seconds(root: int) -> float:
    """CPU time of `root` and all its descendants, live and reaped (all Postfix daemons
    are children of master; smtprelay's worker processes are the supervisor's children
    and their transform workers its grandchildren; reaped ones are in their parent's
    cutime/cstime)."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile: its time is in the parent's cutime now
        fields = stat[stat.rindex(")") + 2:].split()
        # After "(comm)": state ppid ... utime(12th) stime cutime cstime.
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = sum(int(v) for v in fields[11:15])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += times.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / CLK_TCK


# ------------------------------------------------------------------ the servers


class Target(Protocol):
    name: str
    port: int
    user: str
    password: str

    @property
    def pid(self) -> int: ...

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (its whole process tree, and helpers)."""

    def poll(self) -> None:
        """Read what was delivered since the last call into `delivered`."""

    def close(self) -> None:
        """Release what poll() holds open."""

    delivered: dict[str, float]  # queue id -> the server's own time of the remote 250
    failures: Counter[str]


class RelayTarget:
    def __init__(self, relay: RelayProcess, name: str = "smtprelay") -> None:
        self.name = name
        self.relay = relay
        self.port = relay.submission_port
        self.user, self.password = relay.credential()
        self.delivered: dict[str, float] = {}
        self.failures: Counter[str] = Counter()
        self._last = 0
        self._conn: sqlite3.Connection | None = None

    @property
    def pid(self) -> int:
        return self.relay.pid

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def poll(self) -> None:
        if self._conn is None:
            self._conn = sqlite3.connect(self.relay.spool_path, timeout=30)
        # The outcomes table only grows: its rowid is a cursor.
        rows = self._conn.execute(
            "SELECT id, message_id, kind, at FROM outcomes WHERE id > ? ORDER BY id",
            (self._last,)).fetchall()
        self._conn.rollback()  # end the read transaction: the WAL can be checkpointed
        for row_id, message_id, kind, at in rows:
            self._last = row_id
            if kind == "delivery":
                self.delivered.setdefault(message_id, at)
            else:
                self.failures[kind] += 1

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# "Nov 22 18:32:23 host postfix-x/smtp[12]: 4jXd3C17YbzJBLn: to=<...>, relay=...,
#  delay=0.042, delays=0.008/0.018/0.012/0.0037, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
_POSTFIX_RESULT = re.compile(
    r" \S+/(?:smtp|relay)\[\d+\]: (?P<qid>[0-9A-Za-z]+): to=<[^>]*>,.* "
    r"delay=(?P<delay>[\d.]+), delays=(?P<delays>[\d./]+),.* status=(?P<status>\w+)")
# Postfix's safe_ultostr() digits; long queue ids start with the queue file's creation
# time: 6 digits of seconds and 4 of microseconds, base 52 (mail_queue.h MQID_LG_*).
_MQID_DIGITS = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"


def _base52(text: str) -> int:
    value = 0
    for char in text:
        value = value * 52 + _MQID_DIGITS.index(char)
    return value


def postfix_delivered_at(queue_id: str, delay: str) -> float:
    """When Postfix logged the delivery, to the microsecond (its log stamps whole seconds).

    `delay` counts from the arrival time smtpd noted at MAIL FROM, just before cleanup
    created the queue file whose time the id carries: the sum is late by that gap.
    """
    created = _base52(queue_id[:6]) + _base52(queue_id[6:10]) / 1e6
    return created + float(delay)


class PostfixTarget:
    def __init__(self, peer: BenchmarkPeer, name: str = "postfix",
                 helpers: tuple[subprocess.Popen[bytes], ...] = ()) -> None:
        self.name = name
        self.peer = peer
        # Processes outside master's tree that do its work (a milter): their CPU counts.
        self.helpers = helpers
        self.port = peer.port
        self.user = peer.username
        self.password = peer.password
        self.delivered: dict[str, float] = {}
        self.failures: Counter[str] = Counter()
        # queue id -> delays=a/b/c/d: before qmgr, in qmgr, connection setup, transmission
        self.delays: dict[str, tuple[float, ...]] = {}
        self._offset = 0
        self._partial = b""

    @property
    def pid(self) -> int:
        pid = self.peer._master_pid()
        assert pid is not None, "postfix is not running"
        return pid

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid) + sum(tree_cpu_seconds(h.pid) for h in self.helpers)

    def poll(self) -> None:
        try:
            with self.peer.maillog.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line postlogd has not finished writing
        for raw in lines:
            match = _POSTFIX_RESULT.search(raw.decode(errors="replace"))
            if match is None:
                continue
            if match["status"] == "sent":
                self.delivered.setdefault(match["qid"],
                                          postfix_delivered_at(match["qid"], match["delay"]))
                self.delays[match["qid"]] = tuple(float(v) for v in match["delays"].split("/"))
            else:
                self.failures[match["status"]] += 1

    def breakdown(self, ids: set[str]) -> dict[str, float | None]:
        """Medians (ms) of Postfix's own delays= parts over these messages."""
        rows = [self.delays[i] for i in ids if i in self.delays]
        return {name: median([r[k] * 1000 for r in rows]) for k, name in enumerate(
            ("before_qmgr_ms", "in_qmgr_ms", "conn_setup_ms", "transmission_ms"))}

    def close(self) -> None:
        pass


def postfix_relay(route: str, sink: Sink, concurrency: int) -> BenchmarkPeer:
    """The benchmark peer (STARTTLS + Cyrus SASL submission) turned into a relay to the sink."""
    peer = benchmark_peer("bench", secrets.token_hex(12))
    # benchmark_peer() has no option for this role; its main.cf is written at start().
    main_cf = peer._main_cf
    main_cf.pop("smtpd_data_restrictions")  # HOLD: relay instead
    if route == "mx":
        # No brackets: MX lookup for example.net, then its hosts on the sink's port.
        main_cf.update({"relayhost": f"{DOMAIN}:{sink.port}",
                        "smtp_dns_support_level": "enabled", "smtp_host_lookup": "dns"})
    else:
        main_cf["relayhost"] = f"[{sink.address}]:{sink.port}"
    main_cf.update({
        # delay= and delays= with microseconds, and queue ids never reused in a run
        # (short ids come from inode numbers, which the queue recycles).
        "delay_logging_resolution_limit": "6",
        "enable_long_queue_ids": "yes",
        "default_destination_concurrency_limit": str(concurrency),
        "smtp_tls_security_level": "none",  # smtp-sink has no TLS; neither uses it
    })
    return peer


# ------------------------------------------------------------------ measuring


def read_replies(path: Path) -> dict[str, float]:
    """Queue id (the last word of the 250) -> time the generator read that 250."""
    accepted: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            at, _, reply = line.partition("\t")
            accepted[reply.split()[-1].strip("<>[]")] = float(at)
    return accepted


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)


def wait_delivered(target: Target, wanted: set[str], timeout: float) -> None:
    """Poll until every wanted id is delivered, or nothing moved for `timeout` seconds."""
    last_progress = time.monotonic()
    missing = len(wanted - target.delivered.keys())
    while missing:
        time.sleep(POLL)
        target.poll()
        now_missing = len(wanted - target.delivered.keys())
        if now_missing < missing:
            missing, last_progress = now_missing, time.monotonic()
        elif time.monotonic() - last_progress > timeout:
            break


def measure(target: Target, sink: Sink, sessions: int, size: int, args: argparse.Namespace,
            workdir: Path, total: int | None = None, message: Path | None = None,
            sender: str | None = None) -> dict[str, Any]:
    """One cell against one server. `message`: a prepared message file to send (size
    is then the file's); `sender`: the envelope sender (the generator's default else)."""
    target.poll()
    sink.collect()  # nothing should be there; a straggler must not count in this cell
    failures_before = Counter(target.failures)
    replies = workdir / f"replies-{target.name}.tsv"
    cpu_before = target.cpu_seconds()
    machine_before = machine_cpu()
    load = run_load(target.port, target.user, target.password, sessions=sessions, size=size,
                    messages_per_session=args.messages_per_session,
                    total=total or args.total, duration=args.duration,
                    recipients=(RECIPIENT,), reply_log=replies, message_file=message,
                    sender=sender)
    accepted = read_replies(replies)
    wait_delivered(target, set(accepted), args.drain_timeout)
    cpu = target.cpu_seconds() - cpu_before
    machine_after = machine_cpu()
    at_sink = sink.collect()
    lags = [at_sink[i] - t for i, t in accepted.items() if i in at_sink]
    done = [at_sink[i] for i in accepted if i in at_sink]
    # The same interval by the server's own record of the remote 250: a cross-check.
    server_lags = [target.delivered[i] - t for i, t in accepted.items()
                   if i in target.delivered]
    span = max(done) - load["started_at"] if done else 0.0
    last_250 = max(accepted.values()) if accepted else load["started_at"]
    return {
        "target": target.name, "sessions": sessions, "size": load["size"],
        "accepted": load["accepted"], "accept_msgs_per_s": load["msgs_per_s"],
        "accept_p99_ms": load["p99_ms"], "load_errors": load["errors"],
        "delivered": len(done), "undelivered": len(accepted) - len(done),
        "delivered_msgs_per_s": round(len(done) / span, 1) if span > 0 else None,
        "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99), "max_ms": pct(lags, 100),
        "min_ms": round(min(lags) * 1000, 2) if lags else None,
        "server_delivered": len(server_lags), "server_p50_ms": pct(server_lags, 50),
        "server_p99_ms": pct(server_lags, 99),
        # How long the queue took to empty after the last message was accepted.
        "drain_s": round(max(done) - last_250, 3) if done else None,
        "cpu_ms_per_msg": round(cpu * 1000 / len(done), 3) if done else None,
        # Both cores' busy share over load + drain: near 1.0, the machine is the limit.
        "machine_busy": round((machine_after[0] - machine_before[0])
                              / max(1, machine_after[1] - machine_before[1]), 2),
        "failures": dict(target.failures - failures_before),
        # Sink files naming no accepted id: mail from elsewhere (a bounce) or a parse miss.
        "sink_unmatched": len(at_sink.keys() - accepted.keys()),
        **({"postfix_delays": target.breakdown(set(accepted))}
           if isinstance(target, PostfixTarget) else {}),
    }


# ------------------------------------------------------------------ profile


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each thread of `pid`, by thread id (what py-spy --threads shows)."""
    times: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            times[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


_METRIC = re.compile(r"^(smtprelay_\w+?)(?:\{[^}]*\})? ([0-9.e+-]+)$", re.M)


def scrape(port: int) -> dict[str, float]:
    """smtprelay's /metrics, label sets summed: only totals are compared."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values: Counter[str] = Counter()
    for name, value in _METRIC.findall(text):
        values[name] += float(value)
    return dict(values)


def _metric_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def mean(name: str, scale: float = 1.0) -> float | None:
        count = delta(f"{name}_count")
        return round(delta(f"{name}_sum") / count * scale, 2) if count else None

    return {
        "spool_commit_ms_mean": mean("smtprelay_spool_commit_seconds", 1000),
        "spool_batch_mean": mean("smtprelay_spool_batch_size"),
        "spool_commits": delta("smtprelay_spool_batch_size_count"),
        "accept_ms_mean": mean("smtprelay_accept_seconds", 1000),
        "outbound_connects": delta("smtprelay_outbound_connects_total"),
    }


class GaugeSampler(threading.Thread):
    """Samples a few smtprelay gauges four times a second while a cell runs."""

    GAUGES = ("smtprelay_deliveries_in_flight", "smtprelay_domain_active_connections",
              "smtprelay_outbound_connections")

    def __init__(self, port: int) -> None:
        super().__init__(name="gauge-sampler", daemon=True)
        self.port = port
        self.samples: list[dict[str, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            with contextlib.suppress(OSError):
                values = scrape(self.port)
                self.samples.append({g: values.get(g, 0.0) for g in self.GAUGES})

    def summary(self) -> dict[str, dict[str, float | None]]:
        return {g.removeprefix("smtprelay_"): {
            "median": median([s[g] for s in self.samples]),
            "max": max((s[g] for s in self.samples), default=None)} for g in self.GAUGES}


def profile(relay: RelayTarget, sink: Sink, args: argparse.Namespace,
            workdir: Path) -> dict[str, Any]:
    """One more cell against smtprelay, under py-spy; shares by function, file and thread."""
    if PY_SPY is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / f"delivery-profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    rate = 200
    # --nonblocking: stopping the relay 200 times a second would distort what is measured.
    spy = subprocess.Popen([PY_SPY, "record", "--pid", str(relay.pid), "--rate", str(rate),
                            "--nonblocking", "--threads", "--nolineno", "--format", "raw",
                            "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached before the load starts
    try:
        metrics_before = scrape(relay.relay.http_port)
        cpu_before = thread_cpu_seconds(relay.pid)
        sampler = GaugeSampler(relay.relay.http_port)
        sampler.start()
        started = time.monotonic()
        try:
            cell = measure(relay, sink, args.profile_sessions, args.profile_size, args,
                           workdir, total=args.profile_total)
        finally:
            sampler.stopping.set()
            sampler.join()
        seconds = time.monotonic() - started
        cpu_after = thread_cpu_seconds(relay.pid)
        metrics = _metric_means(metrics_before, scrape(relay.relay.http_port))
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    summary = summarise_profile(raw.read_text())
    names = summary.pop("thread_names")
    # Busy samples count a thread blocked in fsync or woken for nothing; /proc counts CPU.
    cpu = {tid: after - cpu_before.get(tid, 0.0) for tid, after in cpu_after.items()}
    by_name: Counter[str] = Counter()
    for tid, used in cpu.items():
        by_name[names.get(tid, "other")] += used
    summary.update(
        cell=cell, raw=str(raw), seconds=round(seconds, 1), metrics=metrics,
        gauges=sampler.summary(),
        cpu_cores=round(sum(cpu.values()) / seconds, 2),
        thread_cpu=[(name, round(100 * used / seconds, 1))
                    for name, used in by_name.most_common() if used > 0])
    return summary


# Frames on every stack of their thread: they say nothing about where the time goes.
_BOILERPLATE = re.compile(
    r"^(runners\.py|threading\.py|cli\.py|daemon\.py:run|__init__\.py:run|smtprelay:|"
    r"events\.py:Handle\._run)")


def _frame(text: str) -> str:
    # "Session.run (smtprelay/smtp/session.py)" -> "session.py:Session.run"
    name, _, where = text.rpartition(" (")
    return f"{where.rstrip(')').rsplit('/', 1)[-1]}:{name}" if name else text


# What a stack is doing, by its leaf frame: (file, function prefix or "") -> kind.
_KINDS = (
    (("ssl.py", ""), "TLS (ssl.py: OpenSSL)"),
    (("sslproto.py", ""), "TLS (ssl.py: OpenSSL)"),
    (("streams.py", "StreamWriter.write"), "socket writes (C)"),
    (("runners.py", ""), "event loop (uvloop C: poll, reads, callbacks)"),
    (("store.py", ""), "SQLite"),
    (("suppression.py", ""), "SQLite"),
    (("credentials.py", ""), "SQLite"),
    (("handlers.py", ""), "logging"),
    (("__init__.py", "StreamHandler"), "logging"),
    (("__init__.py", "Logger"), "logging"),
    (("thread.py", ""), "thread hand-offs"),
    (("threads.py", ""), "thread hand-offs"),
    (("futures.py", ""), "thread hand-offs"),
)
# Which part of the relay a stack belongs to: the first marker found from the root. By
# file, as --nonblocking sampling sometimes catches a stack without its outer frames.
_AREAS = (
    ("server.py:SMTPServer", "acceptance"),
    ("session.py:", "acceptance"),
    ("pipeline.py:", "acceptance"),
    ("scheduler.py:", "delivery"),
    ("smtp_transport.py:", "delivery"),
    ("client.py:", "delivery"),
    ("pool.py:", "delivery"),
    ("dns.py:MXResolver", "delivery"),
    ("store.py:GroupCommitWriter", "spool writer"),
    ("handlers.py:QueueListener", "log writer"),
)


def _kind(leaf: str) -> str:
    file, _, function = leaf.partition(":")
    for (kind_file, prefix), kind in _KINDS:
        if file == kind_file and function.startswith(prefix):
            return kind
    return "Python code"


def _area(frames: list[str], thread: str) -> str:
    for frame in frames:
        for marker, area in _AREAS:
            if frame.startswith(marker):
                return area
    if thread == "to_thread workers":
        return "to_thread work"
    if _kind(frames[-1]).startswith("TLS"):
        # Handshakes and decryption run in protocol callbacks, outside any session's
        # coroutine; only the submission side speaks TLS here (the sink has none).
        return "acceptance"
    return "other"


def _uvloop_pool(name: str) -> str:
    # uvloop_0, uvloop_1 ...: asyncio.to_thread's executor threads, one bucket.
    return "to_thread workers" if name.startswith("uvloop_") else name


def summarise_profile(raw: str, top: int = 30) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()  # the event loop's thread only
    threads: Counter[str] = Counter()
    thread_names: dict[int, str] = {}
    areas: Counter[tuple[str, str]] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, *rest = stack.split(";")
        frames = [_frame(f) for f in rest]
        # "thread (13449): spool-writer": the OS thread id, then Python's name.
        match = re.match(r"thread \((\d+)\)(?:: (.*))?", head)
        thread = _uvloop_pool(match[2] or match[1]) if match else head
        if match:
            thread_names[int(match[1])] = thread
        if not frames:
            continue
        total += count
        threads[thread] += count
        self_time[frames[-1]] += count
        by_file[frames[-1].split(":", 1)[0]] += count
        areas[(_area(frames, thread), _kind(frames[-1]))] += count
        if thread == "MainThread":
            for name in set(frames):
                if not _BOILERPLATE.match(name):
                    inclusive[name] += count

    def share(counter: Counter[str], base: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / base, 1)) for k, v in counter.most_common(top)]

    area_totals: Counter[str] = Counter()
    for (area, _), count in areas.items():
        area_totals[area] += count
    breakdown = {area: {"total": round(100 * n / total, 1), **{
        kind: round(100 * c / total, 1) for (a, kind), c in areas.most_common() if a == area}}
        for area, n in area_totals.most_common()} if total else {}
    return {"samples": total, "main_samples": threads["MainThread"], "breakdown": breakdown,
            "threads": share(threads, total), "self": share(self_time, total),
            "files": share(by_file, total),
            "main_inclusive": share(inclusive, max(1, threads["MainThread"])),
            "thread_names": thread_names}


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, nargs="+", default=[10, 50])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 51200])
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--total", type=int, default=2000, help="messages per cell and run")
    p.add_argument("--duration", type=float, default=10.0,
                   help="time bound of the load per cell and run (the drain comes on top)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="give up waiting for deliveries after this long without one")
    p.add_argument("--dest-concurrency", type=int, default=20,
                   help="sessions at once to the destination, both servers (Postfix's "
                        "default_destination_concurrency_limit default; smtprelay's "
                        "max_connections_per_domain defaults to 10)")
    p.add_argument("--postfix-route", choices=("mx", "static"), default="mx",
                   help="mx: Postfix looks up example.net's MX like smtprelay (private "
                        "mount namespace for resolv.conf); static: relayhost [sink]:port")
    p.add_argument("--no-postfix", action="store_true", help="measure smtprelay only")
    p.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                   help="also run the smtprelay in CHECKOUT (an older commit, e.g. from "
                        "`git worktree add`), interleaved, and print this/baseline")
    p.add_argument("--workers", type=int, metavar="N",
                   help="also run this smtprelay with server.workers N beside the "
                        "one-process one, interleaved, and print workers/one")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy cell")
    p.add_argument("--profile-sessions", type=int, default=50)
    p.add_argument("--profile-size", type=int, default=2048)
    p.add_argument("--profile-total", type=int, default=3000)
    p.add_argument("--log-level", default="info", help="smtprelay's logging.level")
    args = p.parse_args(argv)
    exit_on_sigterm()
    raise_nofile(4096)

    postfix_mx = not args.no_postfix and args.postfix_route == "mx"
    if postfix_mx and DNSMASQ is None:
        p.error("--postfix-route mx needs dnsmasq (apt-get install dnsmasq-base); "
                "or use --postfix-route static")
    workdir = Path(tempfile.mkdtemp(prefix="smtprelay-delivery-", dir="/tmp"))
    authority = TestDNSServer()
    resolver: CachingResolver | None = None
    sink: Sink | None = None
    relay: RelayProcess | None = None
    baseline: RelayProcess | None = None
    workers: RelayProcess | None = None
    peer: BenchmarkPeer | None = None
    targets: list[Target] = []
    runs: list[dict[str, Any]] = []
    profiled: dict[str, Any] | None = None
    resolver_note = "none: smtprelay asks the test DNS server directly"
    cells = [(s, z) for z in args.sizes for s in args.sessions]
    try:
        if postfix_mx:
            use_private_resolv_conf(RESOLVER_ADDRESS, workdir)  # before any thread starts
        authority.start()
        authority.add(DOMAIN, "MX", f"10 {MX_NAME}.")
        authority.add(MX_NAME, "A", SINK_ADDRESS)
        nameserver = "{}:{}".format(*authority.address)
        if DNSMASQ is not None:
            resolver = CachingResolver(authority.address, workdir / "dnsmasq.log").start()
            nameserver = f"{RESOLVER_ADDRESS}:53"
            resolver_note = "dnsmasq, caching " + ("MX and A" if resolver.caches_mx else "A")
        sink = Sink(SINK_ADDRESS, workdir / "smtp-sink.log").start()
        relay = RelayProcess(
            limits={"max_connections": 5000, "max_connections_per_ip": 5000},
            log_level=args.log_level,
            delivery={"mode": "mx", "port": sink.port, "dns": {"nameservers": [nameserver]},
                      "max_connections_per_domain": args.dest_concurrency})
        relay.start()
        relay_target = RelayTarget(relay)
        targets.append(relay_target)
        if args.baseline is not None:
            baseline = RelayProcess(
                limits={"max_connections": 5000, "max_connections_per_ip": 5000},
                log_level=args.log_level, source=args.baseline.resolve(),
                delivery={"mode": "mx", "port": sink.port,
                          "dns": {"nameservers": [nameserver]},
                          "max_connections_per_domain": args.dest_concurrency})
            baseline.start()
            targets.append(RelayTarget(baseline, "baseline"))
        if args.workers is not None:
            workers = RelayProcess(
                limits={"max_connections": 5000, "max_connections_per_ip": 5000},
                log_level=args.log_level, server={"workers": args.workers},
                delivery={"mode": "mx", "port": sink.port,
                          "dns": {"nameservers": [nameserver]},
                          "max_connections_per_domain": args.dest_concurrency})
            workers.start()
            targets.append(RelayTarget(workers, "workers"))
        if not args.no_postfix:
            peer = postfix_relay(args.postfix_route, sink, args.dest_concurrency)
            peer.start()
            targets.append(PostfixTarget(peer))
        # Warm-up: the first AUTH costs a slow hash, the first writes grow the files,
        # the first delivery opens the sessions and fills the DNS caches.
        for target in targets:
            warm = measure(target, sink, 10, 2048, args, workdir, total=300)
            if not warm["delivered"]:
                raise RuntimeError(f"{target.name} delivered nothing in the warm-up: {warm}")
        for rep in range(args.repeats):
            for sessions, size in cells:
                for target in targets:
                    result = measure(target, sink, sessions, size, args, workdir)
                    result["repeat"] = rep
                    runs.append(result)
                    print(f"[{rep + 1}/{args.repeats}] {target.name:9} {sessions:3} sessions "
                          f"{size // 1024:3} KB: accepted {result['accept_msgs_per_s']:6} "
                          f"msg/s, delivered {result['delivered_msgs_per_s']} msg/s "
                          f"({result['delivered']}/{result['accepted']}), 250->250 p50 "
                          f"{result['p50_ms']} ms p99 {result['p99_ms']} ms (server's "
                          f"own clock {result['server_p50_ms']}/{result['server_p99_ms']}), "
                          f"machine {result['machine_busy']:.0%} busy, drain "
                          f"{result['drain_s']} s, cpu {result['cpu_ms_per_msg']} ms/msg "
                          f"{result['failures'] or ''}{result['load_errors'] or ''}",
                          flush=True)
        if not args.no_profile:
            profiled = profile(relay_target, sink, args, workdir)
    finally:
        for target in targets:
            target.close()
        if relay is not None:
            relay.stop()
        if baseline is not None:
            baseline.stop()
        if workers is not None:
            workers.stop()
        if peer is not None:
            peer.stop()
        if sink is not None:
            sink.stop()
        if resolver is not None:
            resolver.stop()
        authority.stop()  # a no-op if it never started
        shutil.rmtree(workdir, ignore_errors=True)

    table = summarise(runs, cells)
    print_table(table, args)
    if profiled is not None:
        print_profile(profiled)
    path = write_result("delivery", {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                     "smtprelay": source_version(),
                                     "args": {k: str(v) if isinstance(v, Path) else v
                                              for k, v in vars(args).items()},
                                     "resolver": resolver_note,
                                     "table": table, "profile": profiled, "runs": runs})
    print(f"results: {path}")
    return 0


def source_version() -> str:
    """The commit measured, and whether smtprelay/ had uncommitted changes."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True, text=True,
                              check=False).stdout.strip()

    dirty = git("status", "--porcelain", "--", "smtprelay")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted smtprelay/" if dirty else "")


def summarise(runs: list[dict[str, Any]], cells: list[tuple[int, int]]) -> list[dict[str, Any]]:
    table = []
    for sessions, size in cells:
        row: dict[str, Any] = {"sessions": sessions, "size": size}
        for name in ("smtprelay", "baseline", "workers", "postfix"):
            cell = [r for r in runs if r["target"] == name and r["sessions"] == sessions
                    and abs(r["size"] - size) < 1024]
            if cell:
                row[name] = {key: median([r[key] for r in cell]) for key in (
                    "accept_msgs_per_s", "delivered_msgs_per_s", "p50_ms", "p99_ms",
                    "drain_s", "cpu_ms_per_msg")}
                row[name]["undelivered"] = sum(r["undelivered"] for r in cell)
        relay_rate = row.get("smtprelay", {}).get("delivered_msgs_per_s")
        postfix_rate = row.get("postfix", {}).get("delivered_msgs_per_s")
        if relay_rate and postfix_rate:
            row["ratio"] = round(relay_rate / postfix_rate, 2)
        baseline_rate = row.get("baseline", {}).get("delivered_msgs_per_s")
        if relay_rate and baseline_rate:
            row["vs_baseline"] = round(relay_rate / baseline_rate, 2)
            row["accept_vs_baseline"] = round(
                row["smtprelay"]["accept_msgs_per_s"] / row["baseline"]["accept_msgs_per_s"], 2)
        workers_rate = row.get("workers", {}).get("delivered_msgs_per_s")
        if relay_rate and workers_rate:
            row["workers_vs_one"] = round(workers_rate / relay_rate, 2)
            row["workers_accept_vs_one"] = round(
                row["workers"]["accept_msgs_per_s"] / row["smtprelay"]["accept_msgs_per_s"], 2)
        table.append(row)
    return table


def print_table(table: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nsmtprelay {source_version()}; medians of {args.repeats} runs; "
          f"{args.messages_per_session} messages/session, "
          f"STARTTLS + AUTH PLAIN in, plain SMTP out, destination concurrency "
          f"{args.dest_concurrency}, Postfix route {args.postfix_route}")
    head = f"{'delivered/s':>11} {'p50':>7} {'p99':>7} {'cpu ms':>6}"
    print(f"{'sessions':>8} {'size':>6} | smtprelay {head} | postfix {head} | ratio")
    for row in table:
        cols = []
        for name in ("smtprelay", "postfix"):
            r = row.get(name, {})
            cols.append(f"{r.get('delivered_msgs_per_s', '-')!s:>11} {r.get('p50_ms', '-')!s:>7} "
                        f"{r.get('p99_ms', '-')!s:>7} {r.get('cpu_ms_per_msg', '-')!s:>6}")
        print(f"{row['sessions']:>8} {row['size'] // 1024:>4}KB | {'':9} {cols[0]} | "
              f"{'':7} {cols[1]} | {row.get('ratio', '-')}")
        if "baseline" in row:
            base = row["baseline"]
            print(f"{'':>8} {'':>6} | baseline  {base['delivered_msgs_per_s']!s:>11} "
                  f"{base['p50_ms']!s:>7} {base['p99_ms']!s:>7} {base['cpu_ms_per_msg']!s:>6} | "
                  f"this/baseline: delivered {row.get('vs_baseline', '-')}, accepted "
                  f"{row.get('accept_vs_baseline', '-')}")
        if "workers" in row:
            many = row["workers"]
            print(f"{'':>8} {'':>6} | workers   {many['delivered_msgs_per_s']!s:>11} "
                  f"{many['p50_ms']!s:>7} {many['p99_ms']!s:>7} {many['cpu_ms_per_msg']!s:>6} | "
                  f"workers/one: delivered {row.get('workers_vs_one', '-')}, accepted "
                  f"{row.get('workers_accept_vs_one', '-')}")


def print_profile(summary: dict[str, Any]) -> None:
    if "error" in summary:
        print(f"\nprofile: {summary['error']}")
        return
    cell = summary["cell"]
    print(f"\nprofile: smtprelay, {cell['sessions']} sessions x {cell['size'] // 1024} KB, "
          f"{cell['delivered']} delivered at {cell['delivered_msgs_per_s']} msg/s, "
          f"{summary['seconds']} s, {summary['cpu_cores']} cores of CPU; raw stacks in "
          f"{summary['raw']}")
    print(f"  metrics over the cell: {summary['metrics']}")
    print(f"  gauges sampled every 0.25 s: {summary['gauges']}")
    print("  CPU by thread (% of one core, /proc): " + ", ".join(
        f"{name} {percent}" for name, percent in summary["thread_cpu"]))
    print(f"  where the busy samples go (% of {summary['samples']}), by part and by what "
          "the leaf frame does:")
    for area, kinds in summary["breakdown"].items():
        detail = ", ".join(f"{kind} {share}" for kind, share in kinds.items() if kind != "total")
        print(f"    {kinds['total']:5.1f}%  {area}: {detail}")
    for title, key, rows, base in (
            ("py-spy samples by thread", "threads", 8, "samples"),
            ("self time by file", "files", 12, "samples"),
            ("self time by function", "self", 20, "samples"),
            ("event loop thread, inclusive", "main_inclusive", 30, "main_samples")):
        print(f"  {title} (% of {summary[base]} busy samples):")
        for name, percent in summary[key][:rows]:
            print(f"    {percent:5.1f}%  {name}")


if __name__ == "__main__":
    sys.exit(main())
