"""Issue 18: what the nodes of a cluster count together and how an operator drives one
node: a complaint on node A counts in the rate node B's reputation guard enforces, a
node drains (and lists its cluster) through the admin API, and Redis killed under load
loses nothing and lets nothing past a quota."""

from __future__ import annotations

import json
import re
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, Admin
from tests.e2e.delivery_world import wait_for
from tests.e2e.test_cluster import credential, node, nodes, readyz  # noqa: F401 - fixture
from tests.redis_server import RedisServer
from tests.support import DaemonProcess, client_context, message, spooled

SIM = "simulator.smtprelay.invalid"
REPUTATION = {"minimum_volume": 10, "check_interval": "0.2s", "pause_accounts": False}


def send(daemon: DaemonProcess, cred: dict[str, str], rcpt: str) -> tuple[int, bytes]:
    data = (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: cluster\r\n"
            "X-SES-CONFIGURATION-SET: news\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        assert smtp.rcpt(rcpt)[0] == 250
        return smtp.data(data)


def subject_of(data: bytes) -> str:
    found = re.search(rb"^Subject: (.*?)\r?$", data, re.M)
    assert found is not None
    return found.group(1).decode()


def news(daemon: DaemonProcess) -> dict[str, Any]:
    found = json.loads(daemon.cli("stats", "--json").stdout)
    [row] = [s for s in found["configuration_sets"] if s["configuration_set"] == "news"]
    return dict(row["counts"])


def test_a_complaint_on_one_node_counts_in_the_rate_the_other_enforces(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess]) -> None:  # noqa: F811
    settings: dict[str, Any] = {
        "delivery": {"mode": "capture"}, "simulator": {"counts_for_reputation": True},
        "reputation": REPUTATION, "configuration_sets": {"transactional": {}, "news": {}}}
    a = node(tmp_path, "a", redis_url, **settings)
    b = node(tmp_path, "b", redis_url, **settings)
    nodes += [a, b]
    cred = credential(a)
    # Ten deliveries on B, no complaint: B alone has a volume and a clean rate.
    for i in range(10):
        assert send(b, cred, f"success+{i}@{SIM}")[0] == 250
    assert wait_for(lambda: news(b)["delivery"] == 10, 15)
    # One complaint on A: A alone has a volume of 1, too small for a verdict. Only the
    # cluster's 1 in 11 (9.09%, over the 0.5% pause threshold) pauses the set.
    assert send(a, cred, f"complaint@{SIM}")[0] == 250
    b.wait_log("reputation set=news complaint rate 9.09%: ok -> paused", 20)
    accepted: list[int] = []  # sent to B before its pause refresh saw the pause

    def refused() -> bool:
        code = send(b, cred, f"success@{SIM}")[0]
        accepted.extend([code] if code == 250 else [])
        return code == 554

    assert wait_for(refused, 5)
    assert send(b, cred, f"success@{SIM}") == (
        554, b"5.7.1 Sending paused for this configuration set")
    # `smtprelay stats` on either node shows the cluster's counts.
    assert wait_for(lambda: {k: news(a)[k] for k in ("delivery", "complaint")} == {
        "delivery": 11 + len(accepted), "complaint": 1}, 10)


def test_a_node_drains_through_the_admin_api_and_its_cluster_lists_it(
        tmp_path: Path, redis_url: str, nodes: list[DaemonProcess],  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)
    a = node(tmp_path, "a", redis_url, http=ADMIN_HTTP)
    b = node(tmp_path, "b", redis_url, http=ADMIN_HTTP)
    nodes += [a, b]
    admin_a = Admin(a.ports["http"])
    drained = admin_a.post("/api/v1/node/drain")
    assert drained.status == 200, drained.body
    assert drained.json["node"] == "a" and drained.json["draining"] is True
    assert readyz(a) == (503, "not ready: draining (smtprelay drain)")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=20)
    assert refused.value.smtp_code == 421
    # Nothing queued, no connection: safe to stop, as `smtprelay drain` says.
    assert wait_for(lambda: admin_a.get("/api/v1/node").json["safe_to_stop"], 10)

    def listed() -> dict[str, Any]:
        answer = Admin(b.ports["http"]).get("/api/v1/cluster/nodes")
        assert answer.status == 200, answer.body
        return {n["node"]: n for n in answer.json["items"]}

    assert wait_for(lambda: listed().get("a", {}).get("draining") is True, 10)
    assert listed()["b"]["draining"] is False and listed()["b"]["alive"] is True
    undrained = admin_a.post("/api/v1/node/undrain")
    assert undrained.json["draining"] is False and undrained.json["safe_to_stop"] is False
    assert readyz(a) == (200, "ready")


def test_a_single_node_lists_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)
    daemon = DaemonProcess(tmp_path, http=ADMIN_HTTP).start()
    try:
        answer = Admin(daemon.ports["http"]).get("/api/v1/cluster/nodes")
        assert answer.status == 200, answer.body
        [only] = answer.json["items"]
        assert only["alive"] is True and only["draining"] is False
        assert only["node"] == daemon.config.store.node
    finally:
        daemon.stop()


def test_redis_stopped_under_load_loses_nothing_and_passes_no_quota(
        tmp_path: Path, nodes: list[DaemonProcess]) -> None:  # noqa: F811
    """Issue 18: senders keep going while Redis is killed and started again on its
    files. Every reply is a 250 or a temporary refusal, every 250 is in the spool and
    nothing else is, the 24-hour quota is never passed, and every suppression entry
    is still there after the restart."""
    own = RedisServer(durable=True).start()
    try:
        quota = {"acme": {"identities": ["example.com"],
                          "default_configuration_set": "transactional",
                          "quota": {"max_send_rate": 1000, "burst": 1000,
                                    "max_24h_send": 60}}}
        a = node(tmp_path, "a", own.url, accounts=quota, store={
            "backend": "redis", "url": own.url, "node": "a", "timeout": "1s"})
        nodes.append(a)
        listed = tmp_path / "suppressed.csv"
        listed.write_text("".join(f"gone{i}@example.org,BOUNCE\n" for i in range(50)))
        a.cli("suppression", "import", "--account", "acme", str(listed))
        cred = credential(a)
        replies: list[tuple[int, str, bytes]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def sender(n: int) -> None:
            sent = 0
            while not stop.is_set():
                try:
                    with smtplib.SMTP("127.0.0.1", a.ports["submission"], timeout=20) as smtp:
                        smtp.starttls(context=client_context())
                        smtp.login(cred["username"], cred["password"])
                        while not stop.is_set():
                            subject = f"s{n}-{sent}"
                            sent += 1
                            smtp.mail("app@example.com")
                            smtp.rcpt("someone@example.net")
                            code, text = smtp.data(message(subject=subject))
                            with lock:
                                replies.append((code, subject, text))
                            if code != 250:
                                time.sleep(0.05)  # a client backs off a little
                except smtplib.SMTPResponseException as exc:
                    with lock:
                        replies.append((exc.smtp_code, "(session)", exc.smtp_error))
                    time.sleep(0.05)
                except (smtplib.SMTPServerDisconnected, OSError):
                    time.sleep(0.05)

        def count(code: int, text: bytes = b"") -> int:
            with lock:
                return sum(1 for c, _, t in replies if c == code and text in t)

        with ThreadPoolExecutor(6) as pool:
            running = [pool.submit(sender, n) for n in range(6)]
            try:
                assert wait_for(lambda: count(250) >= 15, 20)
                own.crash()
                assert wait_for(lambda: count(451) >= 5, 20)
                during = count(250)
                own.start()  # the same address and files
                assert wait_for(lambda: count(250) > during, 20)  # no restart needed
                # Until the 24-hour quota is used up: then 454 for everything.
                assert wait_for(lambda: count(454, b"Daily message quota exceeded") >= 5, 30)
            finally:
                stop.set()
            for done in running:
                done.result()
        codes = {code for code, _, _ in replies}
        assert codes <= {250, 421, 451, 454}, codes  # never a permanent refusal
        accepted = {subject for code, subject, _ in replies if code == 250}
        # The quota, never more. The settlements the outage held up land once Redis is
        # back; only a reservation Redis made as it died, its answer lost (the client
        # got a 451), stays held until PENDING_STALE: at most one per sender.
        assert 60 - 6 <= len(accepted) <= 60
        in_spool = {subject_of(entry["data"]) for entry in spooled(a.config)}
        assert in_spool == accepted  # every 250 kept, nothing else
        listing = a.cli("suppression", "list", "--account", "acme").stdout
        assert all(f"gone{i}@example.org" in listing for i in range(50))
    finally:
        own.stop()
