"""The reputation guard end to end: `smtprelay serve` as a process, bounces made by the
mailbox simulator, the pause seen over SMTP, lifted with the CLI.

SES leaves simulator mail out of the rates, and so does the relay by default; this
relay sets `simulator.counts_for_reputation: true`, the switch that exists for
exactly this rehearsal, so bounce@ and success@ drive the rates without a real
mailbox bouncing anything.
"""

from __future__ import annotations

import json
import smtplib
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.delivery_world import wait_for
from tests.support import DaemonProcess, client_context

SIM = "simulator.smtprelay.invalid"


def _send(daemon: DaemonProcess, cred: dict[str, Any], set_name: str, rcpt: str) -> tuple[
        int, bytes]:
    data = (f"From: app@example.com\r\nTo: {rcpt}\r\nSubject: rep\r\n"
            f"X-SES-CONFIGURATION-SET: {set_name}\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        assert smtp.rcpt(rcpt)[0] == 250
        return smtp.data(data)


def _metrics(daemon: DaemonProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['http']}/metrics",
                                timeout=5) as response:
        return str(response.read().decode())


def _stats(daemon: DaemonProcess) -> dict[str, Any]:
    return dict(json.loads(daemon.cli("stats", "--json").stdout))


def test_a_set_past_the_bounce_pause_threshold_is_paused_until_resumed(
        tmp_path: Path) -> None:
    daemon = DaemonProcess(
        tmp_path, delivery={"mode": "capture"},
        simulator={"counts_for_reputation": True},
        reputation={"minimum_volume": 10, "check_interval": "0.2s",
                    "pause_accounts": False},
        configuration_sets={"transactional": {}, "news": {}, "promo": {}}).start()
    try:
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        # promo: 1 hard bounce in 15 (6.7%): under review, still sending.
        for i in range(14):
            assert _send(daemon, cred, "promo", f"success+{i}@{SIM}")[0] == 250
        assert _send(daemon, cred, "promo", f"bounce@{SIM}")[0] == 250
        # news: 3 in 10 (30%): past the 10% pause threshold.
        for i in range(7):
            assert _send(daemon, cred, "news", f"success+{i}@{SIM}")[0] == 250
        for i in range(3):
            assert _send(daemon, cred, "news", f"bounce+{i}@{SIM}")[0] == 250
        daemon.wait_log("reputation set=news bounce rate 30.00%: ok -> paused", 20)
        daemon.wait_log("reputation set=promo bounce rate 6.67%: ok -> warning", 5)

        # The pause answers at the end of DATA (within the pause refresh).
        assert wait_for(lambda: _send(daemon, cred, "news", f"success@{SIM}")[0] == 554, 5)
        code, text = _send(daemon, cred, "news", f"success@{SIM}")
        assert (code, text) == (554, b"5.7.1 Sending paused for this configuration set")
        assert _send(daemon, cred, "transactional", f"success@{SIM}")[0] == 250
        assert _send(daemon, cred, "promo", f"success@{SIM}")[0] == 250  # warning only

        text = _metrics(daemon)
        assert ('smtprelay_reputation_state{metric="bounce",name="news",scope="set"} 2.0'
                in text)
        assert ('smtprelay_reputation_state{metric="bounce",name="promo",scope="set"} 1.0'
                in text)
        assert ('smtprelay_reputation_transitions_total{metric="bounce",scope="set",'
                'state="paused"} 1.0' in text)
        listed = {row["name"]: row for row in json.loads(daemon.cli("sets", "list",
                                                                    "--json").stdout)}
        pause = listed["news"]["paused"]
        assert pause["reason"] == "reputation" and pause["by"] == "reputation-guard"
        assert "bounce rate 30.00%" in pause["detail"] and "10.00%" in pause["detail"]

        stats = _stats(daemon)
        by_set = {row["configuration_set"]: row for row in stats["configuration_sets"]}
        assert by_set["news"]["reputation"]["state"] == "paused"
        assert by_set["news"]["rates"]["bounce"] == 0.3
        assert by_set["promo"]["reputation"]["state"] == "warning"
        [acme] = [row for row in stats["accounts"] if row["account"] == "acme"]
        # The account's own rate is past the threshold too (4 hard bounces in 27), but
        # this relay pauses sets only (reputation.pause_accounts: false).
        assert acme["reputation"]["state"] == "paused"
        assert acme["rates"]["bounce"] > 0.1
        human = daemon.cli("stats").stdout
        assert "REPUTATION" in human and "paused" in human

        # Resumed by the operator: mail flows again, and the old bounces do not pause
        # the set a second time.
        daemon.cli("sets", "resume", "news")
        assert wait_for(lambda: _send(daemon, cred, "news", f"success@{SIM}")[0] == 250, 5)
        daemon.wait_log("reputation set=news bounce rate -: paused -> ok", 5)
        time.sleep(1.0)  # five more checks
        assert _send(daemon, cred, "news", f"success@{SIM}")[0] == 250
        listed = {row["name"]: row for row in json.loads(daemon.cli("sets", "list",
                                                                    "--json").stdout)}
        assert listed["news"]["paused"] is None
    finally:
        assert daemon.stop() == 0
