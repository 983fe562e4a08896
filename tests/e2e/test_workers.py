"""server.workers: 2 worker processes serve the submission listeners, the supervisor
keeps the spool and the shared counts. Real `smtprelay serve` processes, real SMTP
clients over STARTTLS + AUTH, a real kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support import DaemonProcess, client_context, message, metric, spooled

_LISTENING = re.compile(r"worker (\d+) listening pid=(\d+)")


def start(tmp_path: Path, **overrides: Any) -> tuple[DaemonProcess, dict[str, str]]:
    server = {"workers": 2, "transform_workers": 0, **overrides.pop("server", {})}
    daemon = DaemonProcess(tmp_path, server=server, **overrides).start(wait=False)
    daemon.wait_log("smtprelay ready", timeout=30)
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    return daemon, cred


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.stop()


def worker_pids(daemon: DaemonProcess) -> dict[int, int]:
    """The latest pid each worker logged as listening."""
    return {int(index): int(pid) for index, pid in _LISTENING.findall(daemon.log())}


@contextlib.contextmanager
def only(daemon: DaemonProcess, index: int) -> Iterator[None]:
    """Only worker `index` accepts meanwhile: the others are stopped (SIGSTOP), so which
    worker serves a connection is not left to the kernel."""
    others = [pid for i, pid in worker_pids(daemon).items() if i != index]
    for pid in others:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in others:
            os.kill(pid, signal.SIGCONT)


def send(daemon: DaemonProcess, cred: dict[str, str], subject: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.net")
        code, reply = smtp.data(message(subject=subject))
    return code, reply.decode()


def test_two_workers_serve_and_every_message_lands_in_one_spool(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    daemon, cred = start(tmp_path)
    daemons.append(daemon)
    assert sorted(worker_pids(daemon)) == [0, 1]
    assert daemon.proc.pid not in worker_pids(daemon).values()
    replies = []
    for index in (0, 1):
        with only(daemon, index), ThreadPoolExecutor(4) as pool:
            replies += pool.map(lambda n: send(daemon, cred, f"m{n}"), range(12))
    assert all(code == 250 for code, _ in replies), replies
    accepted_by = re.findall(r"INFO (worker\d) smtprelay.pipeline msg=\S+ accepted", daemon.log())
    assert sorted(set(accepted_by)) == ["worker0", "worker1"]
    ids = {reply.split()[-1] for _, reply in replies}
    assert {entry["id"] for entry in spooled(daemon.config)} == ids
    # One queue: the CLI sees every worker's messages.
    listed = daemon.cli("queue", "list", "--json").stdout
    assert all(message_id in listed for message_id in ids)


def test_a_killed_worker_is_replaced_and_no_acknowledged_message_is_lost(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    daemon, cred = start(tmp_path)
    daemons.append(daemon)
    victim = worker_pids(daemon)[0]
    acknowledged: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load(stream: int) -> None:
        n = 0
        while not stop.is_set() and n < 200:  # bounded
            n += 1
            try:
                code, reply = send(daemon, cred, f"s{stream}-{n}")
            except (OSError, smtplib.SMTPException) as exc:
                failures.append(repr(exc))  # a session on the killed worker
                continue
            if code == 250:
                acknowledged.append(reply.split()[-1])

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    before_kill = len(acknowledged)
    os.kill(victim, signal.SIGKILL)
    while worker_pids(daemon).get(0) == victim and time.monotonic() < deadline:
        time.sleep(0.05)
    replaced = worker_pids(daemon).get(0)
    while len(acknowledged) < before_kill + 20 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert replaced is not None and replaced != victim
    assert len(acknowledged) >= before_kill + 20, (before_kill, len(acknowledged), failures)
    stored = {entry["id"] for entry in spooled(daemon.config)}
    assert set(acknowledged) <= stored  # every 250 is on disk
    assert f"worker 0 (pid {victim}) ended with signal 9" in daemon.log()


def test_the_send_rate_holds_across_workers(tmp_path: Path,
                                            daemons: list[DaemonProcess]) -> None:
    daemon, cred = start(tmp_path, accounts={"acme": {
        "identities": ["example.com"], "default_configuration_set": "transactional",
        "quota": {"max_send_rate": 0.01, "burst": 6, "max_24h_send": 1000}}})
    daemons.append(daemon)
    codes = []
    for index in (0, 1):
        with only(daemon, index):
            codes += [send(daemon, cred, f"r{index}-{n}")[0] for n in range(5)]
    # The burst of 6 is one bucket for both workers: 5 on the first, 1 on the second
    # (a bucket per worker would have let all 10 through).
    assert codes == [250] * 6 + [454] * 4
    assert len(spooled(daemon.config)) == 6


def test_connections_per_address_hold_across_workers(tmp_path: Path,
                                                     daemons: list[DaemonProcess]) -> None:
    daemon, _ = start(tmp_path, limits={"max_connections_per_ip": 4, "idle_timeout": "30s",
                                        "data_timeout": "30s"})
    daemons.append(daemon)
    held = []
    try:
        # Two sessions on each worker: four from this address in all.
        for index in (0, 1):
            with only(daemon, index):
                for _ in range(2):
                    sock = socket.create_connection(("127.0.0.1",
                                                     daemon.ports["submission"]), 10)
                    held.append(sock)
                    assert sock.recv(512).startswith(b"220 ")
        for index in (0, 1):
            with only(daemon, index):
                extra = socket.create_connection(("127.0.0.1", daemon.ports["submission"]),
                                                 10)
                held.append(extra)
                assert extra.recv(512).startswith(b"421 4.7.0"), index
    finally:
        for sock in held:
            sock.close()


def test_sighup_reaches_both_workers_and_drops_no_session(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    daemon, cred = start(tmp_path)
    daemons.append(daemon)
    open_session = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20)
    open_session.starttls(context=client_context())
    open_session.login(cred["username"], cred["password"])
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(text.replace("news@example.org", "news@example.org\n"
                                               "    - fresh.example"))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("configuration reloaded", timeout=10)

    def from_fresh(n: int) -> int:
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(cred["username"], cred["password"])
            code, _ = smtp.mail("app@fresh.example")
            return code

    deadline = time.monotonic() + 10
    while True:  # each worker reloads once it gets the supervisor's SIGHUP
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(from_fresh, range(16)))
        if codes == [250] * 16 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert codes == [250] * 16
    # The session opened before the reload goes on.
    open_session.mail("app@example.com")
    open_session.rcpt("someone@example.net")
    assert open_session.data(message(subject="after reload"))[0] == 250
    open_session.quit()


def mail_from_code(daemon: DaemonProcess, cred: dict[str, str], sender: str) -> int:
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        return smtp.mail(sender)[0]


def replace_worker(daemon: DaemonProcess, index: int) -> None:
    """kill -9 worker `index`; return once its replacement listens."""
    victim = worker_pids(daemon)[index]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while worker_pids(daemon).get(index) == victim:
        assert time.monotonic() < deadline, daemon.log()[-3000:]
        time.sleep(0.05)


def test_a_restarted_worker_runs_the_configuration_in_force_not_the_file(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    daemon, cred = start(tmp_path)
    daemons.append(daemon)
    text = daemon.config_path.read_text()
    fresh = text.replace("news@example.org", "news@example.org\n    - fresh.example")
    assert fresh != text
    # Edited, not reloaded: the relay still runs the old text, and so does a worker
    # started again after a crash (before: it read the file, and took the new sender).
    daemon.config_path.write_text(fresh)
    replace_worker(daemon, 0)
    with only(daemon, 0):
        assert mail_from_code(daemon, cred, "app@fresh.example") != 250
        assert mail_from_code(daemon, cred, "app@example.com") == 250
    # A broken file does not keep a worker from starting again (before: it exited at
    # once, over and over).
    daemon.config_path.write_text("server: [unclosed\n")
    replace_worker(daemon, 1)
    with only(daemon, 1):
        assert send(daemon, cred, "after a crash")[0] == 250
    # A reload: each worker takes the text the supervisor took.
    daemon.config_path.write_text(fresh)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("configuration reloaded", timeout=10)
    daemon.config_path.write_text("server: [unclosed\n")  # after the supervisor read it
    deadline = time.monotonic() + 10
    for index in (0, 1):
        with only(daemon, index):
            while mail_from_code(daemon, cred, "app@fresh.example") != 250:
                assert time.monotonic() < deadline, f"worker {index} did not reload"
                time.sleep(0.05)
    assert "ended with" not in daemon.log().split("configuration reloaded")[-1]


def test_status_shows_each_worker_with_its_sessions_and_loop_lag(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    daemon, _ = start(tmp_path)
    daemons.append(daemon)
    pids = worker_pids(daemon)

    def status_when(ready: Callable[[dict[int, dict[str, Any]]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            status: dict[str, Any] = json.loads(daemon.cli("status", "--json").stdout)
            if ready({w["index"]: w for w in status["workers"]}) \
                    or time.monotonic() > deadline:
                return status

    # Each worker reports once a second.
    status_when(lambda workers: all(w["loop_lag_ms"] is not None for w in workers.values()))
    with only(daemon, 1), smtplib.SMTP("127.0.0.1", daemon.ports["submission"],
                                        timeout=20) as held:
        held.ehlo()
        status = status_when(lambda workers: workers[1]["sessions"] == 1)
    assert status["pid"] == daemon.proc.pid and status["ready"] is True
    assert status["connections"] == 1  # counted in the shared state
    workers = {w["index"]: w for w in status["workers"]}
    assert {i: w["pid"] for i, w in workers.items()} == pids
    assert all(w["listening"] and w["loop_lag_ms"] is not None for w in workers.values())
    assert (workers[0]["sessions"], workers[1]["sessions"]) == (0, 1)
    text = daemon.cli("status").stdout
    assert f"relay pid {daemon.proc.pid}" in text and str(pids[1]) in text


def test_status_without_a_running_relay_says_so(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    run = daemon.cli("status", check=False)
    assert run.returncode == 1
    assert "no relay is running on server.data_dir" in run.stderr
    assert "start it with `smtprelay serve`" in run.stderr


def test_status_of_a_one_process_relay(tmp_path: Path,
                                       daemons: list[DaemonProcess]) -> None:
    daemon = DaemonProcess(tmp_path).start(wait=False)
    daemons.append(daemon)
    daemon.wait_log("smtprelay ready", timeout=30)
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert (status["pid"], status["workers"], status["connections"]) == (
        daemon.proc.pid, [], 0)
    assert "one process (server.workers: 1), 0 sessions open" in daemon.cli("status").stdout


def test_metrics_count_what_the_workers_did(tmp_path: Path,
                                            daemons: list[DaemonProcess]) -> None:
    daemon, cred = start(tmp_path)
    daemons.append(daemon)
    for index in (0, 1):
        with only(daemon, index):
            for n in range(3):
                assert send(daemon, cred, f"counted {index}-{n}")[0] == 250
    # Every worker's acceptances, labelled as theirs; a killed worker's stay counted.
    assert metric(daemon, "smtprelay_messages_accepted_total", process="workers") == 6
    os.kill(worker_pids(daemon)[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while len(set(worker_pids(daemon).values())) < 2 or 0 not in worker_pids(daemon) \
            or "worker 0 (pid" not in daemon.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metric(daemon, "smtprelay_messages_accepted_total", process="workers") == 6
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as held:
        held.ehlo()
        deadline = time.monotonic() + 10
        while metric(daemon, "smtprelay_smtp_connections_open", process="workers") != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)


_CLICK = re.compile(rb"https?://links\.example\.com(?::\d+)?/c/([A-Za-z0-9_-]+)")
_UNSUBSCRIBE = re.compile(rb"https?://links\.example\.com(?::\d+)?/u/([A-Za-z0-9_-]+)")


def http_request(daemon: DaemonProcess, method: str, path: str,
                 headers: dict[str, str] | None = None,
                 body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["http"], timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def test_workers_answer_clicks_and_pass_everything_else_to_the_supervisor(
        tmp_path: Path, daemons: list[DaemonProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: the HTTP listeners are served by the workers. A click on either worker
    is redirected once its event is recorded (the supervisor's one spool); the admin
    API, /metrics and /readyz are the supervisor's, reached through a worker, which
    says who the client was and lets no client say it for itself."""
    from tests.e2e.admin_client import ENV, SECRET

    monkeypatch.setenv(ENV, SECRET)
    events = tmp_path / "events.ndjson"
    daemon, cred = start(
        tmp_path, http={"admin_token_env": ENV},
        tracking_domains={"links.example.com": {}},
        configuration_sets={"tracked": {
            "accounts": ["acme"],
            "tracking": {"click": True, "domain": "links.example.com"},
            "unsubscribe": {"one_click": True},
            "event_destinations": [{"name": "f", "type": "file", "path": str(events),
                                    "event_types": ["Click", "Subscription"]}]}})
    daemons.append(daemon)
    html = '<html><body><a href="https://shop.example/item">Shop</a></body></html>'
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.sendmail("app@example.com", ["someone@example.net"], (
            "From: app@example.com\r\nTo: someone@example.net\r\nSubject: t\r\n"
            "X-SES-CONFIGURATION-SET: tracked\r\nContent-Type: text/html\r\n\r\n"
            f"{html}\r\n").encode())
    [entry] = spooled(daemon.config)
    import sqlite3
    with contextlib.closing(sqlite3.connect(daemon.config.spool_path)) as conn:
        [(body,)] = conn.execute("SELECT data FROM bodies").fetchall()
    match = _CLICK.search(bytes(body))
    assert match is not None
    click = f"/c/{match.group(1).decode()}"
    for index in (0, 1):
        with only(daemon, index):
            status, headers, _ = http_request(daemon, "GET", click,
                                              {"Host": "links.example.com"})
            assert (status, headers["Location"]) == (302, "https://shop.example/item")
    deadline = time.monotonic() + 10
    while (not events.exists() or events.read_text().count('"eventType":"Click"') < 2) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events.read_text().count('"eventType":"Click"') == 2
    # Counted by the workers (their metrics carry process="workers"), not the supervisor.
    assert metric(daemon, "smtprelay_tracking_requests_total", kind="click",
                  process="workers") == 2
    for index in (0, 1):
        with only(daemon, index):
            assert http_request(daemon, "GET", "/readyz")[0] == 200
            assert http_request(daemon, "GET", "/healthz")[0] == 200
            # No token: the supervisor's admin gate answers, through the worker.
            assert http_request(daemon, "GET", "/api/v1/queue")[0] == 401
    queued = http_request(daemon, "GET", f"/api/v1/queue/{entry['id']}",
                          {"Authorization": f"Bearer {SECRET}"})
    assert queued[0] == 200 and json.loads(queued[2])["id"] == entry["id"]
    # The client's address, as the worker saw it; a client's own claim is dropped.
    status, _, paused = http_request(
        daemon, "POST", "/api/v1/configuration-sets/tracked/pause",
        {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json",
         "X-Smtprelay-Worker-Peer": "203.0.113.9"}, b'{"reason": "check"}')
    assert status == 200 and json.loads(paused)["paused"]["by"] == "api 127.0.0.1"
    # The request was counted once, by its route, in the supervisor.
    assert metric(daemon, "smtprelay_http_requests_total",
                  route="/api/v1/configuration-sets/{name}/pause") == 1
    assert metric(daemon, "smtprelay_http_requests_total",
                  route="/c/{token}", status="302") == 2
    # One-click unsubscribe (RFC 8058) on a worker: recorded by the supervisor first.
    unsubscribe = _UNSUBSCRIBE.search(bytes(body))
    assert unsubscribe is not None
    status, _, page = http_request(
        daemon, "POST", f"/u/{unsubscribe.group(1).decode()}",
        {"Host": "links.example.com", "Content-Type": "application/x-www-form-urlencoded"},
        b"List-Unsubscribe=One-Click")
    assert status == 200 and b"You are unsubscribed" in page
    deadline = time.monotonic() + 10
    while '"eventType":"Subscription"' not in events.read_text() \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events.read_text().count('"eventType":"Subscription"') == 1


def test_by_default_one_worker_per_core_serves(tmp_path: Path,
                                               daemons: list[DaemonProcess]) -> None:
    """Issue 17: `server.workers` defaults to auto, one worker per CPU core the relay
    may run on (a single core: one process does everything)."""
    import yaml

    daemon = DaemonProcess(tmp_path)
    config = yaml.safe_load(daemon.config_path.read_text())
    del config["server"]["workers"]  # tests/support pins 1; an operator's file says nothing
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemons.append(daemon.start(wait=False))
    daemon.wait_log("smtprelay ready", timeout=30)
    cores = len(os.sched_getaffinity(0))
    assert len(worker_pids(daemon)) == (cores if cores > 1 else 0)
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    assert send(daemon, cred, "default")[0] == 250


def test_drain_refuses_new_connections_fails_readyz_and_says_when_safe_to_stop(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    """Issue 18: `smtprelay drain` takes a node out of service on every worker: new
    connections get 421 4.3.2, /readyz fails, sessions under way finish and the queue
    is delivered; then it says the node is safe to stop. `--cancel` accepts again."""
    import urllib.error
    import urllib.request

    daemon, cred = start(tmp_path, delivery={"mode": "mx"})
    daemons.append(daemon)
    session = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20)
    session.starttls(context=client_context())
    session.login(cred["username"], cred["password"])
    first = daemon.cli("drain", check=False)
    assert first.returncode == 0 and "not yet safe to stop" in first.stdout
    for index in (0, 1):
        with only(daemon, index), pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20)
        assert (refused.value.smtp_code, refused.value.smtp_error) == (
            421, b"4.3.2 Service shutting down, try again later")
    with pytest.raises(urllib.error.HTTPError) as ready:
        urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['http']}/readyz", timeout=10)
    assert ready.value.code == 503 and b"draining" in ready.value.read()
    # The session under way finishes its work; the simulator delivers it at once.
    session.mail("app@example.com")
    session.rcpt("success@simulator.smtprelay.invalid")
    assert session.data(message(subject="during the drain"))[0] == 250
    session.quit()
    done = daemon.cli("drain", "--wait", "20", "--json")
    assert json.loads(done.stdout)["safe_to_stop"] is True
    assert "draining" in daemon.cli("status").stdout
    daemon.cli("drain", "--cancel")
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as again:
        assert again.noop()[0] == 250


def test_the_queue_depth_gauge_follows_acceptance_and_delivery(
        tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    """smtprelay_spool_messages counts a worker's message soon after it is spooled and
    drops once it is delivered, well before the 15 s periodic recount."""
    daemon, cred = start(tmp_path, delivery={"mode": "hold"})
    daemons.append(daemon)

    def depth_becomes(wanted: float) -> None:
        # Well under the 15 s periodic recount, which alone moved it before.
        deadline = time.monotonic() + 10
        while metric(daemon, "smtprelay_spool_messages") != wanted:
            assert time.monotonic() < deadline, metric(daemon, "smtprelay_spool_messages")
            time.sleep(0.05)

    depth_becomes(0)
    assert send(daemon, cred, "one")[0] == 250
    assert send(daemon, cred, "two")[0] == 250
    depth_becomes(2)
    # Delivered (into captured/) once the relay stops holding mail.
    text = daemon.config_path.read_text()
    assert "mode: hold" in text
    daemon.config_path.write_text(text.replace("mode: hold", "mode: capture"))
    daemon.stop()
    daemon.start()
    depth_becomes(0)
