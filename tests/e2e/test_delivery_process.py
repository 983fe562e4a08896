"""Delivery in the daemon as operators run it: a child process, killed, restarted, and
driven with the queue commands."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.dnsserver import TestDNSServer
from tests.e2e.delivery_world import FAST_DELIVERY, wait_for
from tests.sinks import SmtpSink
from tests.support import DaemonProcess, submit_to_daemon


def _daemon(tmp_path: Path, dns: TestDNSServer, port: int, **delivery: Any) -> DaemonProcess:
    return DaemonProcess(tmp_path, delivery={
        "mode": "mx", "port": port, "dns": {"nameservers": [dns.nameserver]},
        **FAST_DELIVERY, **delivery})


def _submit(daemon: DaemonProcess, rcpts: list[str]) -> str:
    return submit_to_daemon(daemon, rcpts, subject="process test")


def _queue(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return list(json.loads(daemon.cli("queue", "list", "--json").stdout))


def _states(daemon: DaemonProcess, message_id: str) -> dict[str, str]:
    for m in _queue(daemon):
        if m["id"] == message_id:
            return {r["address"]: r["state"] for r in m["recipients"]}
    return {}


def test_killed_during_delivery_the_message_is_delivered_after_restart(
        tmp_path: Path, dns_server: TestDNSServer, mx: SmtpSink) -> None:
    mx.script.stall_at = "DATA"  # the body went out; the reply never comes
    daemon = _daemon(tmp_path, dns_server, mx.port, command_timeout="60s").start()
    try:
        message_id = _submit(daemon, ["a@dest.test"])
        assert wait_for(lambda: "stalled" in mx.events)
        assert _states(daemon, message_id) == {"a@dest.test": "sending"}
        daemon.stop(signal.SIGKILL)
        mx.script.stall_at = None
        daemon.start()
        assert wait_for(lambda: _states(daemon, message_id) == {"a@dest.test": "delivered"})
        assert "recovered_in_flight=1" in daemon.log()
        # The stalled attempt never got its reply: at least once, and here exactly once.
        assert [t.rcpt_tos for t in mx.received] == [("a@dest.test",)]
    finally:
        daemon.stop()


def test_queue_shows_a_deferred_recipient_and_retry_sends_it_now(
        tmp_path: Path, dns_server: TestDNSServer, mx: SmtpSink) -> None:
    mx.script.rcpt_replies["a@dest.test"] = "450 4.2.1 mailbox busy"
    # An hour between attempts: only `queue retry` can make it go sooner.
    daemon = _daemon(tmp_path, dns_server, mx.port,
                     retry={"first": "1h", "max_interval": "2h", "max_lifetime": "5d"}).start()
    try:
        message_id = _submit(daemon, ["a@dest.test"])
        assert wait_for(lambda: _states(daemon, message_id) == {"a@dest.test": "deferred"})
        listing = daemon.cli("queue", "list").stdout
        assert "deferred" in listing and "next=" in listing
        assert "450 4.2.1 mailbox busy" in listing
        mx.script.rcpt_replies.clear()
        daemon.cli("queue", "retry", message_id)
        assert wait_for(lambda: _states(daemon, message_id) == {"a@dest.test": "delivered"})
        assert len(mx.received) == 1
    finally:
        daemon.stop()


def test_metrics_count_deliveries_bounces_and_deferrals(
        tmp_path: Path, dns_server: TestDNSServer, mx: SmtpSink) -> None:
    import urllib.request

    mx.script.rcpt_replies["gone@dest.test"] = "550 5.1.1 no such user"
    mx.script.rcpt_replies["later@dest.test"] = "451 4.3.0 try again in 1 hour"
    daemon = _daemon(tmp_path, dns_server, mx.port, dsn={"enabled": False},
                     retry={"first": "60s", "max_interval": "2h", "max_lifetime": "5d"}).start()
    try:
        message_id = _submit(daemon, ["a@dest.test", "gone@dest.test", "later@dest.test"])
        assert wait_for(lambda: _states(daemon, message_id) == {
            "a@dest.test": "delivered", "gone@dest.test": "bounced",
            "later@dest.test": "deferred"})
        url = f"http://127.0.0.1:{daemon.ports['http']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        assert 'smtprelay_deliveries_total{result="delivered"} 1.0' in text
        assert 'smtprelay_bounces_total{subtype="NoEmail",type="Permanent"} 1.0' in text
        assert "smtprelay_deferrals_total 1.0" in text
        assert 'smtprelay_outbound_connects_total{result="ok"}' in text
        assert "smtprelay_queue_age_seconds_count 3.0" in text
        # The retry hint ("try again in 1 hour") decided the wait, not the 60 s backoff.
        [m] = [m for m in _queue(daemon) if m["id"] == message_id]
        later = next(r for r in m["recipients"] if r["address"] == "later@dest.test")
        assert later["next_attempt"] - later["last_attempt"] == pytest.approx(3600, abs=0.01)
    finally:
        daemon.stop()


def test_a_missing_smarthost_password_stops_the_start_naming_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PASSWORD_VAR", raising=False)
    daemon = DaemonProcess(tmp_path, delivery={"mode": "smarthost", "smarthost": {
        "host": "smtp.upstream.test", "username": "u", "password_env": "NO_SUCH_PASSWORD_VAR"}})
    daemon.start(wait=False)
    assert daemon.proc.wait(timeout=20) != 0
    log = daemon.log()
    assert "delivery.smarthost.password_env" in log and "NO_SUCH_PASSWORD_VAR" in log
    assert "Traceback" not in log
