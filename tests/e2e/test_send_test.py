"""`smtprelay send-test` against `smtprelay serve`: the outcome of each simulator address."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import DaemonProcess

SIM = "simulator.smtprelay.invalid"


def _send_test(daemon: DaemonProcess, cred: dict[str, str], *args: str
               ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SMTPRELAY_USER": cred["username"],
           "SMTPRELAY_PASSWORD": cred["password"]}
    return subprocess.run(
        [sys.executable, "-m", "smtprelay", "send-test", *args, "-c",
         str(daemon.config_path)], capture_output=True, text=True, timeout=60, env=env)


def test_send_test_prints_delivery_and_bounce(tmp_path: Path) -> None:
    # The set publishes events, so complaint@'s Complaint is recorded and --wait sees it
    # (without a destination there is none to wait for, and --wait runs to its end).
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, configuration_sets={
        "transactional": {"event_destinations": [
            {"name": "archive", "type": "file", "path": str(tmp_path / "events.ndjson")}]}}
    ).start()
    try:
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        run = _send_test(daemon, cred, "--account", "acme", "--wait", "15")
        assert run.returncode == 0, run.stderr
        assert "queued as " in run.stdout
        assert f"success@{SIM}: Delivery" in run.stdout

        run = _send_test(daemon, cred, "--account", "acme", "--to", f"bounce@{SIM}",
                         "--to", f"complaint@{SIM}", "--set", "transactional",
                         "--wait", "15", "--json")
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        by_rcpt = {row["recipient"]: row for row in result["recipients"]}
        assert by_rcpt[f"bounce@{SIM}"]["outcome"] == "Bounce Permanent/General"
        assert by_rcpt[f"complaint@{SIM}"]["outcome"].startswith("Delivery")

        # Expected failures are one line, no traceback.
        run = _send_test(daemon, {"username": "nobody", "password": "wrong"},
                         "--account", "acme")
        assert run.returncode == 1
        assert "refused the credentials" in run.stderr and "Traceback" not in run.stderr
    finally:
        assert daemon.stop() == 0
