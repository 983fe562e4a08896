"""The live event tail through the admin API (GET /api/v1/events/stream) and
`smtprelay events tail`, against a relay running in this process."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from smtprelay.config import load_config
from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, Admin, send
from tests.support import RunningRelay, base_config, relay_fixture, write_config

AUTH = {"Authorization": f"Bearer {SECRET}"}


def _sets(tmp_path: Path) -> dict[str, Any]:
    def destination(name: str) -> list[dict[str, Any]]:
        return [{"name": "file", "type": "file", "path": str(tmp_path / f"{name}.ndjson")}]

    return {"configuration_sets": {"transactional": {"event_destinations": destination("t")},
                                   "marketing": {"event_destinations": destination("m")}}}


relay = relay_fixture(_sets, env={ENV: SECRET}, http=ADMIN_HTTP)


def marketing(relay: RunningRelay, cred: Any, rcpt: str) -> str:
    code, reply = send(relay, cred, [rcpt], configuration_set="marketing")
    assert code == 250, reply
    return reply.split()[-1]


def test_the_stream_wants_the_token_and_good_filters(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    assert admin.get("/api/v1/events/stream", token="wrong").status == 401
    answer = admin.get("/api/v1/events/stream?type=Sent")
    assert answer.status == 400 and "type must be one of" in answer.json["error"]["message"]
    assert admin.get("/api/v1/events/stream?recent=201").status == 400
    assert admin.get("/api/v1/events/stream?configuration_set=a%0Ab").status == 400
    answer = admin.get("/api/v1/events/stream")
    assert answer.status == 200 and answer.body == b""  # nothing yet, and no follow


def test_recent_events_filtered_by_type_and_set(relay: RunningRelay, cred: Any) -> None:
    first = marketing(relay, cred, "one@example.net")
    code, reply = send(relay, cred, ["two@example.net"])  # transactional
    assert code == 250
    second = reply.split()[-1]
    admin = Admin(relay.http_port)
    lines = admin.get("/api/v1/events/stream?recent=200").body.splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["eventType"], e["messageId"]) for e in events] == [("Send", first),
                                                                  ("Send", second)]
    assert events[0]["mail"] == {"source": "app@example.com",
                                 "destination": ["one@example.net"]}
    assert events[0]["configurationSet"] == "marketing" and "send" in events[0]
    only = admin.get("/api/v1/events/stream?configuration_set=transactional").body
    assert [json.loads(line)["messageId"] for line in only.splitlines()] == [second]
    assert admin.get("/api/v1/events/stream?type=Delivery").body == b""
    assert len(admin.get("/api/v1/events/stream?recent=1").body.splitlines()) == 1


def test_follow_brings_each_new_event_and_ends_when_the_relay_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)
    path = write_config(tmp_path / "smtprelay.yaml",
                        base_config(tmp_path / "var", http=ADMIN_HTTP, **_sets(tmp_path)))
    relay = RunningRelay(load_config(path).config).start()
    stopped = False
    try:
        cred = relay.credential()

        async def watch() -> None:
            nonlocal stopped
            url = (f"http://127.0.0.1:{relay.http_port}/api/v1/events/stream"
                   "?follow=true&recent=0&configuration_set=marketing")
            async with aiohttp.ClientSession() as session, session.get(
                    url, headers=AUTH) as stream:
                assert stream.status == 200
                assert stream.headers["Content-Type"].startswith("application/x-ndjson")
                await asyncio.to_thread(send, relay, cred, ["t@example.net"])
                message_id = await asyncio.to_thread(marketing, relay, cred, "m@example.net")
                async with asyncio.timeout(10):
                    line = await stream.content.readline()
                event = json.loads(line)
                # The transactional one was filtered out; the marketing one came.
                assert (event["messageId"], event["eventType"]) == (message_id, "Send")
                # The relay stops: the open stream ends rather than holding it up.
                await asyncio.to_thread(relay.stop)
                stopped = True
                async with asyncio.timeout(10):
                    rest = await stream.content.read()
                assert rest.strip() == b""

        asyncio.run(watch())
    finally:
        if not stopped:
            relay.stop()


def _cli(relay: RunningRelay, *args: str, **kwargs: Any) -> Any:
    config = relay.config.server.data_dir.parent / "smtprelay.yaml"
    command = [sys.executable, "-m", "smtprelay", "events", "tail", "-c", str(config),
               "--url", f"http://127.0.0.1:{relay.http_port}", *args]
    return command, {**os.environ, ENV: SECRET}


def test_cli_prints_recent_events_as_text_or_json(relay: RunningRelay, cred: Any) -> None:
    message_id = marketing(relay, cred, "reader@example.net")
    command, env = _cli(relay)
    text = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "Send" in text.stdout and "set=marketing" in text.stdout
    assert f"msg={message_id}" in text.stdout and "to=reader@example.net" in text.stdout
    command, env = _cli(relay, "--json", "--type", "Send", "--set", "marketing")
    answer = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert [json.loads(line)["messageId"] for line in answer.stdout.splitlines()] == [
        message_id]
    # Without the token, a clear refusal naming the key.
    command, env = _cli(relay)
    env.pop(ENV)
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "http.admin_token_env" in refused.stderr
    env[ENV] = "wrong-token"
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1 and "401" in refused.stderr


def test_cli_follow_prints_events_as_they_come(relay: RunningRelay, cred: Any) -> None:
    command, env = _cli(relay, "--follow", "--json", "--recent", "0")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        # Once the stream is open the relay has a viewer; then send.
        async def viewing() -> None:
            async with asyncio.timeout(20):
                while relay.relay.event_tail.viewers == 0:
                    assert process.poll() is None, process.stderr.read() if process.stderr \
                        else ""
                    await asyncio.sleep(0.05)

        asyncio.run(viewing())
        message_id = marketing(relay, cred, "live@example.net")
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "no event printed within 20 s"
        line = process.stdout.readline()
        event = json.loads(line)
        assert (event["messageId"], event["eventType"]) == (message_id, "Send")
    finally:
        process.terminate()
        process.wait(10)
