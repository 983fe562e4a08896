"""The SES v2 API with clients nobody here wrote, beside boto3 (tests/e2e/test_ses_api.py):
the AWS SDK for JavaScript v3 run by node (tests/js, from npm) and the AWS CLI (awscli
from PyPI). Each sends with nothing but the endpoint and the keys changed, and its
messages are in the spool under the ids it was given."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from tests.support import DaemonProcess, spooled

JS = Path(__file__).resolve().parents[1] / "js"
ACCOUNTS = {"acme": {"identities": ["example.com"]}}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("clients"), api={"sesv2": True},
                           accounts=ACCOUNTS).start()
    yield daemon
    daemon.stop()


def api_key(daemon: DaemonProcess) -> dict[str, str]:
    return dict(json.loads(daemon.cli("api-keys", "create", "acme", "--json").stdout))


def by_id(daemon: DaemonProcess) -> dict[str, dict[str, object]]:
    return {str(m["id"]): m for m in spooled(daemon.config)}


def test_the_javascript_sdk_sends_simple_and_raw(relay: DaemonProcess) -> None:
    node = shutil.which("node")
    assert node is not None, "node is missing: scripts/install-test-deps installs it"
    assert (JS / "node_modules" / "@aws-sdk" / "client-sesv2").is_dir(), \
        "tests/js/node_modules is missing: scripts/test runs npm ci --prefix tests/js"
    key = api_key(relay)
    run = subprocess.run(
        [node, str(JS / "send.mjs")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "SES_ENDPOINT": f"http://127.0.0.1:{relay.ports['http']}",
             "SES_KEY_ID": key["access_key_id"], "SES_SECRET": key["secret_access_key"]})
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    spool = by_id(relay)
    simple = spool[answer["simple"]]
    assert simple["recipients"] == ["js@example.net"]
    message = message_from_bytes(simple["data"], policy=policy.default)  # type: ignore[arg-type]
    assert message["Subject"] == "From node ✓"
    raw = spool[answer["raw"]]
    assert raw["recipients"] == ["js-raw@example.net"] and raw["mail_from"] == "node@example.com"
    # The SDK raises its own MessageRejected for an unverified sender.
    assert answer["refused"]["name"] == "MessageRejected"
    assert answer["refused"]["status"] == 400


def test_the_aws_cli_sends_an_email(relay: DaemonProcess, tmp_path: Path) -> None:
    key = api_key(relay)
    content = tmp_path / "content.json"
    content.write_text(json.dumps({"Simple": {"Subject": {"Data": "From the CLI"},
                                              "Body": {"Text": {"Data": "Hello"}}}}))
    run = subprocess.run(
        [sys.executable, "-m", "awscli", "sesv2", "send-email",
         "--endpoint-url", f"http://127.0.0.1:{relay.ports['http']}",
         "--region", "us-west-2", "--from-email-address", "cli@example.com",
         "--destination", "ToAddresses=cli-to@example.net",
         "--content", f"file://{content}", "--output", "json"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AWS_ACCESS_KEY_ID": key["access_key_id"],
             "AWS_SECRET_ACCESS_KEY": key["secret_access_key"],
             "AWS_CONFIG_FILE": str(tmp_path / "none"),
             "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert run.returncode == 0, run.stderr
    message_id = json.loads(run.stdout)["MessageId"]
    entry = by_id(relay)[message_id]
    assert entry["recipients"] == ["cli-to@example.net"]
    assert entry["mail_from"] == "cli@example.com"
