"""Webhook event destinations end to end: the real daemon POSTs to a real HTTP receiver.

The receiver is an aiohttp server on 127.0.0.1 in a thread of its own, answering from
a script (a status, or "hang"), then 200; it keeps every request. Given SNS's
SubscriptionConfirmation it can confirm as listmonk and Mautic do, by GETting the
SubscribeURL before it answers. Each set also has a
file destination: the file holds the events in outbox order, which is what the webhook
must deliver, byte for byte, once each.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import itertools
import json
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from smtprelay.events.webhook import signature
from tests.e2e.delivery_world import wait_for
from tests.support import (
    DaemonProcess,
    base_config,
    client_context,
    free_port,
    message,
    metric,
    write_config,
)

SECRET_ENV = "SMTPRELAY_TEST_WEBHOOK_SECRET"
SECRET = "3f9c2b1e8d7a6f5e4d3c2b1a0f9e8d7c"
Answer = int | str  # an HTTP status, or "hang" (never answer)


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    answer: Answer

    @property
    def delivered(self) -> bool:
        return isinstance(self.answer, int) and 200 <= self.answer < 300

    @property
    def event_id(self) -> str:
        return self.headers["X-Smtprelay-Event-Id"]

    @property
    def sns_type(self) -> str | None:
        return self.headers.get("x-amz-sns-message-type")


class Receiver:
    """A webhook receiver: answers `script` in turn, then `default`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.script: list[Answer] = []
        self.default: Answer = 200
        self.requests: list[Received] = []
        # A SubscriptionConfirmation answered 2xx is confirmed (GET SubscribeURL, before
        # answering) when this is True; the GETs' (status, body) are kept.
        self.confirm = False
        self.confirmations: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self._call(self._runner.setup())
        self._site: web.TCPSite | None = None

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def up(self) -> Receiver:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        self._call(self._site.start())
        return self

    def close(self) -> None:
        self._call(self._runner.cleanup())
        self._call(self._cancel_the_rest())  # handlers still hanging
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @staticmethod
    async def _cancel_the_rest() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            answer = self.script.pop(0) if self.script else self.default
            self.requests.append(Received(time.time(), dict(request.headers), body, answer))
        if answer == "hang":
            await asyncio.sleep(3600)
        assert isinstance(answer, int)
        if 300 <= answer < 400:
            return web.Response(status=answer, headers={
                "Location": "https://elsewhere.test/new-hook?token=not-for-logs"})
        if (request.headers.get("x-amz-sns-message-type") == "SubscriptionConfirmation"
                and self.confirm and 200 <= answer < 300):
            async with ClientSession() as client, \
                    client.get(json.loads(body)["SubscribeURL"]) as confirmed:
                self.confirmations.append((confirmed.status, await confirmed.text()))
        return web.Response(status=answer)

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.delivered]

    def seen(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def notifications(self) -> list[Received]:
        return [r for r in self.delivered() if r.sns_type == "Notification"]

    def subscription_requests(self) -> list[Received]:
        return [r for r in self.seen() if r.sns_type == "SubscriptionConfirmation"]


@pytest.fixture
def receivers() -> Any:
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver())
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon (a child process) inherits it; load_config checks it is set.
    monkeypatch.setenv(SECRET_ENV, SECRET)


# The base URL of the relay's HTTP listener, for SubscribeURLs (DaemonProcess puts in
# the port it chose).
PUBLIC = {"public_url": "http://127.0.0.1:{http_port}"}


def webhook(url: str, name: str = "app", **options: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": url, "secret_env": SECRET_ENV,
            "timeout": "2s", "retry_max_interval": "500ms", **options}


def archive(path: Path) -> dict[str, Any]:
    return {"name": "archive", "type": "file", "path": str(path)}


class Sender:
    """One SMTP credential, many messages (a credential costs a CLI run)."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        self.username, self.password = cred["username"], cred["password"]


def submit(daemon: DaemonProcess, sender: Sender, subject: str,
           configuration_set: str | None = None) -> str:
    data = message(subject=subject)
    if configuration_set is not None:
        data = f"X-SES-CONFIGURATION-SET: {configuration_set}\r\n".encode() + data
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(sender.username, sender.password)
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.net")
        code, reply = smtp.data(data)
    assert code == 250, reply
    return reply.decode().split()[-1]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines() if path.exists() else []


def verify(request: Received) -> None:
    """What every receiver should check: the signature over timestamp and body, and age."""
    headers = request.headers
    timestamp = headers["X-Smtprelay-Timestamp"]
    expected = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body,
                        hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Smtprelay-Signature"], f"v1={expected}")
    assert abs(request.at - int(timestamp)) <= 2
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("smtprelay/")
    record = json.loads(request.body)
    assert record["eventType"] in ("Send", "Delivery") and "mail" in record


def failures_logged(daemon: DaemonProcess, text: str = "failed, retrying in") -> int:
    return daemon.log().count(text)


def wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    value = wait_for(check, timeout)
    assert value, f"not within {timeout}s: {what}"
    return value


def test_receiver_down_then_up_gets_every_event_in_order_once_across_a_restart(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers()  # not listening yet: connections are refused
    path = tmp_path / "archive.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, configuration_sets={
        "transactional": {"event_destinations": [archive(path), webhook(receiver.url)]}}
    ).start()
    key = "configuration_sets.transactional.event_destinations[app]"
    try:
        sender = Sender(daemon)
        for i in range(3):
            submit(daemon, sender, f"before restart {i}")
        wait(lambda: len(lines(path)) == 6, 20, "6 events in the file")
        wait(lambda: failures_logged(daemon, "cannot connect: Connection refused") >= 3, 20,
             "3 refused attempts")
        assert daemon.stop() == 0
        daemon.start()
        for i in range(2):
            submit(daemon, sender, f"after restart {i}")
        wait(lambda: len(lines(path)) == 10, 20, "10 events in the file")
        refused = failures_logged(daemon, "cannot connect: Connection refused")
        wait(lambda: failures_logged(daemon, "cannot connect") >= refused + 2, 20,
             "2 more refused attempts")
        receiver.up()
        wait(lambda: len(receiver.delivered()) >= 10, 20, "10 events delivered")
        time.sleep(1.0)  # time for a duplicate to show up, if one were coming
        # Counted since the restart.
        assert metric(daemon, "smtprelay_webhook_failures_total", destination="app",
                      reason="connect") >= 2
        assert metric(daemon, "smtprelay_event_destination_pending",
                      configuration_set="transactional", destination="app") == 0
    finally:
        assert daemon.stop() == 0
    delivered = receiver.delivered()
    assert [r.body for r in delivered] == lines(path)  # all, in outbox order, once
    assert len({r.event_id for r in delivered}) == len(delivered) == 10
    for request in delivered:
        verify(request)
    log = daemon.log()
    assert f"{key} (http://127.0.0.1:{receiver.port}/hook) failed, retrying in" in log
    assert f"{key} (http://127.0.0.1:{receiver.port}/hook) delivering again after" in log
    assert SECRET not in log and "Traceback" not in log


def test_a_crash_repeats_at_most_the_last_batch(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()
    receiver.default = "hang"  # held back until the events are all made
    path = tmp_path / "archive.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, configuration_sets={
        "transactional": {"event_destinations": [
            archive(path), webhook(receiver.url)]}}).start()
    try:
        sender = Sender(daemon)
        for i in range(6):
            submit(daemon, sender, f"message {i}")
        wait(lambda: len(lines(path)) == 12, 20, "12 events in the file")
        receiver.default = 200
        wait(lambda: len(receiver.delivered()) >= 4, 20, "4 events delivered")
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        time.sleep(0.5)  # a request sent just before the kill may still be being read
        before = len(receiver.delivered())
        daemon.start()
        wait(lambda: {r.body for r in receiver.delivered()} == set(lines(path)), 20,
             "every event delivered")
    finally:
        assert daemon.stop() == 0
    expected = list(dict.fromkeys(lines(path)))  # the file may repeat a batch too
    bodies = [r.body for r in receiver.delivered()]
    # Before the crash: a prefix, in order. After: the rest in order, starting at most
    # one batch back (the one whose position was not saved yet): no gaps, no reorder.
    assert bodies[:before] == expected[:before]
    after = bodies[before:]
    start = len(expected) - len(after)
    assert 0 <= start <= before, (before, start)
    assert after == expected[start:]


def test_failing_answers_are_retried_with_backoff_and_redirects_not_followed(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()
    receiver.script = [500, 301, 404, 503]
    path = tmp_path / "archive.ndjson"
    # user:password and a query in the URL: the logs must show neither.
    url = f"http://hook-user:hook-pass@127.0.0.1:{receiver.port}/hook?token=tok-in-query"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, configuration_sets={
        "transactional": {"event_destinations": [
            archive(path), webhook(url, retry_max_interval="1500ms")]}}).start()
    try:
        submit(daemon, Sender(daemon), "retried")
        wait(lambda: len(receiver.delivered()) == 2, 20, "both events delivered")
        failures = {reason: metric(daemon, "smtprelay_webhook_failures_total",
                                   configuration_set="transactional", destination="app",
                                   reason=reason)
                    for reason in ("status_5xx", "status_4xx", "redirect", "timeout",
                                   "connect")}
    finally:
        assert daemon.stop() == 0
    seen = receiver.seen()
    assert [r.answer for r in seen[:5]] == [500, 301, 404, 503, 200]
    # The same (first) event every time: nothing after it goes before it does.
    assert len({r.event_id for r in seen[:5]}) == 1
    assert [r.body for r in receiver.delivered()] == lines(path)
    for request in receiver.delivered():
        verify(request)
    assert seen[0].headers["Authorization"].startswith("Basic ")  # userinfo is used
    # Backoff doubles from 1s, capped at retry_max_interval (1.5s).
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(seen[:5])]
    assert 0.8 <= gaps[0] <= 1.6 and all(1.3 <= gap <= 2.5 for gap in gaps[1:]), gaps
    assert failures == {"status_5xx": 2, "status_4xx": 1, "redirect": 1, "timeout": 0,
                        "connect": 0}
    log = daemon.log()
    shown = f"(http://127.0.0.1:{receiver.port}/hook)"
    key = "configuration_sets.transactional.event_destinations[app]"
    assert f"{key} {shown} failed, retrying in 1s: HTTP 500" in log
    assert ("HTTP 301 redirect to https://elsewhere.test/new-hook not followed; set url to "
            "the address that answers the POST itself") in log
    assert "HTTP 404" in log and "HTTP 503" in log
    for secret in ("hook-pass", "tok-in-query", "not-for-logs", SECRET):
        assert secret not in log
    assert "Traceback" not in log


def test_a_hanging_receiver_times_out_and_holds_up_no_other_destination(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    stuck, healthy = receivers().up(), receivers().up()
    stuck.default = "hang"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, configuration_sets={
        "transactional": {"event_destinations": [webhook(stuck.url, timeout="1s")]},
        "marketing": {"event_destinations": [webhook(healthy.url, name="crm")]}}).start()
    try:
        sender = Sender(daemon)
        stuck_id = submit(daemon, sender, "to the stuck receiver")
        wait(lambda: stuck.seen(), 10, "the stuck receiver is asked")
        started = time.monotonic()
        healthy_ids = [submit(daemon, sender, f"to the healthy one {i}", "marketing")
                       for i in range(3)]
        wait(lambda: len(healthy.delivered()) == 6, 10, "6 events at the healthy receiver")
        # Well within the stuck receiver's retries: it did not hold the other set up.
        assert time.monotonic() - started < 5
        assert not stuck.delivered()
        wait(lambda: failures_logged(daemon, "no answer within 1s") >= 2, 10, "2 timeouts")
        assert metric(daemon, "smtprelay_webhook_failures_total", destination="app",
                      reason="timeout") >= 2
        stuck.default = 200
        wait(lambda: len(stuck.delivered()) == 2, 10, "the stuck receiver recovers")
        stopping = time.monotonic()
        stuck.default = "hang"
        submit(daemon, sender, "made while stopping")
    finally:
        assert daemon.stop() == 0
    assert time.monotonic() - stopping < 15  # a hang cannot hold the shutdown up long
    assert {json.loads(r.body)["mail"]["messageId"] for r in stuck.delivered()} == {stuck_id}
    assert {json.loads(r.body)["mail"]["messageId"] for r in healthy.delivered()} == set(
        healthy_ids)
    for request in healthy.delivered() + stuck.delivered():
        verify(request)


def outbox_size(daemon: DaemonProcess) -> int:
    conn = sqlite3.connect(daemon.config.spool_path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_events_failing_past_retry_for_are_set_aside_and_the_cursor_moves_on(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()
    receiver.default = 500
    path = tmp_path / "archive.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, configuration_sets={
        "transactional": {"event_destinations": [
            archive(path), webhook(receiver.url, retry_for="2s")]}}).start()
    undelivered = tmp_path / "var" / "events-undelivered" / "transactional.app.ndjson"
    try:
        sender = Sender(daemon)
        first = submit(daemon, sender, "never taken")
        wait(lambda: len(lines(undelivered)) == 2, 20, "2 events set aside")
        assert lines(undelivered) == lines(path)  # the same records, in the same order
        wait(lambda: metric(daemon, "smtprelay_events_set_aside_total",
                            configuration_set="transactional", destination="app") == 2, 5,
             "the set-aside events counted")
        assert not receiver.delivered()
        # The receiver is fixed: newer events go to it; set-aside ones are not resent.
        receiver.default = 200
        second = submit(daemon, sender, "taken")
        wait(lambda: len(receiver.delivered()) == 2, 20, "the newer events delivered")
        # Events every destination has passed are deleted on the publisher's next pass.
        wait(lambda: outbox_size(daemon) == 0, 20, "the outbox emptied")
    finally:
        assert daemon.stop() == 0
    assert {json.loads(r.body)["mail"]["messageId"] for r in receiver.delivered()} == {second}
    assert {json.loads(line)["mail"]["messageId"] for line in lines(undelivered)} == {first}
    log = daemon.log()
    assert ("configuration_sets.transactional.event_destinations[app] "
            f"(http://127.0.0.1:{receiver.port}/hook) has been failing for") in log
    assert f"(retry_for 2s): 2 events older than 2s set aside in {undelivered}" in log
    conn = sqlite3.connect(daemon.config.spool_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
        [(position,)] = conn.execute(
            "SELECT last_id FROM event_cursors WHERE destination = 'transactional/app'")
        [(newest,)] = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        assert position == newest
    finally:
        conn.close()


def test_an_unset_secret_variable_is_refused_naming_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV)
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path / "var", configuration_sets={
        "transactional": {"event_destinations": [webhook("https://hooks.example/ses")]}}))
    for command in ("check-config", "serve"):
        run = subprocess.run([sys.executable, "-m", "smtprelay", command, "-c", str(config)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2, (command, run.stderr)
        assert ("configuration_sets.transactional.event_destinations[app].secret_env: the "
                f"environment variable {SECRET_ENV} is not set or empty") in run.stderr
        assert "Traceback" not in run.stderr


def test_the_signature_shown_in_the_docs_is_what_the_relay_computes() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "events.md").read_text(encoding="utf-8")
    shown = docs.split("X-Smtprelay-Signature: ", 1)[1].split("\n", 1)[0]
    assert "X-Smtprelay-Timestamp: 1700016530\n" in docs
    assert "`example-secret-0123456789`" in docs
    assert shown == signature(b"example-secret-0123456789", "1700016530",
                              b'{"eventType":"Send","mail":{...},"send":{}}')


def test_the_notification_format_sends_ses_notifications_in_an_sns_envelope(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    """format: notification, as an "SES bounces via SNS" endpoint reads it: only
    Bounce, Complaint and Delivery, as SES's notificationType JSON; a webhook gets it
    as SNS's Message string with SNS's headers, a file one notification per line."""
    receiver = receivers().up()
    receiver.confirm = True
    events_path, notes_path = tmp_path / "events.ndjson", tmp_path / "notes.ndjson"
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, http=PUBLIC,
                           configuration_sets={"transactional": {"event_destinations": [
                               archive(events_path),
                               {"name": "notes", "type": "file", "path": str(notes_path),
                                "format": "notification"},
                               webhook(receiver.url, "sns", format="notification")]}}
                           ).start()
    try:
        message_id = submit(daemon, Sender(daemon), "notified")
        wait(lambda: len(lines(events_path)) == 2, 20, "Send and Delivery in the archive")
        wait(lambda: receiver.notifications(), 20, "the Delivery notification")
        wait(lambda: lines(notes_path), 20, "a line in the notifications file")
    finally:
        assert daemon.stop() == 0
    assert [json.loads(line)["eventType"] for line in lines(events_path)] == [
        "Send", "Delivery"]
    [request] = receiver.notifications()  # no Send: SES has no notification for it
    headers = request.headers
    assert headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert headers["x-amz-sns-message-type"] == "Notification"
    assert headers["x-amz-sns-topic-arn"] == "arn:smtprelay:sns:relay.test:transactional-sns"
    envelope = json.loads(request.body)
    assert envelope["Type"] == "Notification"
    assert envelope["MessageId"] == headers["x-amz-sns-message-id"]
    assert envelope["TopicArn"] == headers["x-amz-sns-topic-arn"]
    assert {"Timestamp", "SignatureVersion", "Signature", "SigningCertURL",
            "UnsubscribeURL"} <= set(envelope)
    notification = json.loads(envelope["Message"])
    assert notification["notificationType"] == "Delivery"
    assert notification["mail"]["messageId"] == message_id
    assert notification["mail"]["source"] == "app@example.com"
    assert "tags" not in notification["mail"] and "delivery" in notification
    [line] = lines(notes_path)
    assert json.loads(line) == notification  # the file has the notification itself
    # Our HMAC signature covers the SNS body as it covers SES JSON.
    expected = hmac.new(SECRET.encode(), headers["X-Smtprelay-Timestamp"].encode() + b"."
                        + request.body, hashlib.sha256).hexdigest()
    assert headers["X-Smtprelay-Signature"] == f"v1={expected}"


# --- SNS's subscription handshake (format: notification) ---------------------------------

SNS_KEY = "configuration_sets.transactional.event_destinations[sns]"
TOPIC = "arn:smtprelay:sns:relay.test:transactional-sns"


def sns_relay(tmp_path: Path, receiver: Receiver, notes: Path,
              **options: Any) -> DaemonProcess:
    """A relay whose set sends notifications to a file and to `receiver`. A receiver
    that confirms answers the POST after its GET, so give it time on a loaded machine
    (a timeout would make the relay ask again)."""
    return DaemonProcess(tmp_path, delivery={"mode": "capture"}, http=PUBLIC,
                         configuration_sets={"transactional": {"event_destinations": [
                             {"name": "notes", "type": "file", "path": str(notes),
                              "format": "notification"},
                             webhook(receiver.url, "sns", format="notification",
                                     **{"timeout": "10s", **options})]}})


def messages_of(requests: list[Received]) -> list[bytes]:
    """The notifications' Message strings, as the file destination writes them."""
    return [json.loads(r.body)["Message"].encode() for r in requests]


def awaiting(daemon: DaemonProcess, destination: str = "sns") -> float:
    return metric(daemon, "smtprelay_event_destination_awaiting_confirmation",
                  configuration_set="transactional", destination=destination)


def arn_of(answer: str) -> str:
    return answer.split("<SubscriptionArn>")[1].split("<")[0]


def http_get(url: str, method: str = "GET") -> tuple[int, str]:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(method, f"{parts.path}?{parts.query}" if parts.query else parts.path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_notifications_wait_for_the_receiver_to_confirm_then_go_in_order_once(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()  # answers 200 to everything, confirms nothing yet
    notes = tmp_path / "notes.ndjson"
    daemon = sns_relay(tmp_path, receiver, notes).start()
    base = f"http://127.0.0.1:{daemon.ports['http']}"
    try:
        sender = Sender(daemon)
        for i in range(3):
            submit(daemon, sender, f"held {i}")
        wait(lambda: len(lines(notes)) == 3, 20, "3 Delivery notifications in the file")
        wait(lambda: len(receiver.subscription_requests()) >= 3, 20,
             "the SubscriptionConfirmation sent again")
        assert not receiver.notifications()  # nothing before the confirmation
        assert awaiting(daemon) == 1
        # Held: 3 Send and 3 Delivery events (updated at each request to confirm).
        wait(lambda: metric(daemon, "smtprelay_event_destination_pending",
                            configuration_set="transactional", destination="sns") == 6, 10,
             "the held events shown")
        daemon.wait_log(f"{SNS_KEY} (http://127.0.0.1:{receiver.port}/hook) is waiting for "
                        "the receiver to confirm the subscription: it must GET the "
                        f"SubscribeURL of the SNS SubscriptionConfirmation POSTed to it "
                        f"({base}/sns/confirm?Action=ConfirmSubscription")
        receiver.confirm = True  # as listmonk or Mautic: GET SubscribeURL, then 200
        wait(lambda: len(receiver.notifications()) == 3, 20, "3 notifications delivered")
        asked = len(receiver.subscription_requests())
        submit(daemon, sender, "after the confirmation")
        wait(lambda: len(receiver.notifications()) == 4, 20, "the 4th notification")
        time.sleep(1.0)  # time for a duplicate or another confirmation request to show
        assert awaiting(daemon) == 0
    finally:
        assert daemon.stop() == 0
    # In outbox order (the file's), each once, and no confirmation asked for after it.
    assert messages_of(receiver.notifications()) == lines(notes)
    assert len({r.event_id for r in receiver.notifications()}) == 4
    assert len(receiver.subscription_requests()) == asked
    (status, answer), *_ = receiver.confirmations
    assert status == 200 and answer.startswith(
        '<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">')
    assert f"<SubscriptionArn>{TOPIC}:" in answer
    # The SubscriptionConfirmation, as SNS POSTs it, signed as events are.
    first = receiver.subscription_requests()[0]
    assert first.headers["x-amz-sns-message-type"] == "SubscriptionConfirmation"
    assert first.headers["x-amz-sns-topic-arn"] == TOPIC
    assert first.headers["Content-Type"] == "text/plain; charset=UTF-8"
    body = json.loads(first.body)
    assert body["Type"] == "SubscriptionConfirmation" and body["TopicArn"] == TOPIC
    assert body["MessageId"] == first.headers["x-amz-sns-message-id"]
    assert body["Message"] == (f"You have chosen to subscribe to the topic {TOPIC}.\n"
                               "To confirm the subscription, visit the SubscribeURL "
                               "included in this message.")
    token = body["Token"]
    assert len(token) >= 64
    assert body["SubscribeURL"] == (f"{base}/sns/confirm?Action=ConfirmSubscription"
                                    f"&TopicArn={TOPIC}&Token={token}")
    assert {"Timestamp", "SignatureVersion", "Signature", "SigningCertURL"} <= set(body)
    # Sent again with the same token (a late GET of an earlier one still confirms).
    assert {json.loads(r.body)["Token"] for r in receiver.subscription_requests()} == {token}
    expected = hmac.new(SECRET.encode(), first.headers["X-Smtprelay-Timestamp"].encode()
                        + b"." + first.body, hashlib.sha256).hexdigest()
    assert first.headers["X-Smtprelay-Signature"] == f"v1={expected}"
    log = daemon.log()
    assert f"{SNS_KEY} (http://127.0.0.1:{receiver.port}/hook): the receiver confirmed the " \
           f"subscription (SubscriptionArn {TOPIC}:" in log
    assert token not in log and "Traceback" not in log


def test_a_wrong_token_or_topic_confirms_nothing(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()
    notes = tmp_path / "notes.ndjson"
    daemon = sns_relay(tmp_path, receiver, notes).start()
    try:
        submit(daemon, Sender(daemon), "held")
        wait(lambda: lines(notes), 20, "the Delivery notification in the file")
        [request, *_] = wait(receiver.subscription_requests, 20, "a SubscriptionConfirmation")
        url = json.loads(request.body)["SubscribeURL"]
        token = json.loads(request.body)["Token"]
        flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
        for wrong in (url.replace(token, flipped), url.replace(token, token[:-1]),
                      url.replace(token, ""), url.replace(TOPIC, TOPIC + "x"),
                      url.split("&Token=")[0]):
            status, answer = http_get(wrong)
            assert status == 404 and "<Code>NotFound</Code>" in answer, wrong
        assert http_get(url, "HEAD")[0] == 405  # link checkers HEAD URLs: not a confirmation
        asked = len(receiver.subscription_requests())
        wait(lambda: len(receiver.subscription_requests()) >= asked + 2, 20,
             "the confirmation still asked for")
        assert not receiver.notifications() and awaiting(daemon) == 1
        status, answer = http_get(url)
        assert status == 200 and f"<SubscriptionArn>{TOPIC}:" in answer
        wait(lambda: receiver.notifications(), 20, "the notification delivered")
        again = http_get(url)  # a repeated GET: the same subscription, nothing changed
        assert again[0] == 200 and arn_of(again[1]) == arn_of(answer)
        assert metric(daemon, "smtprelay_http_requests_total", route="/sns/confirm",
                      status="404") == 5
    finally:
        assert daemon.stop() == 0
    assert messages_of(receiver.notifications()) == lines(notes)


def test_a_confirmation_survives_a_restart(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()
    receiver.confirm = True
    notes = tmp_path / "notes.ndjson"
    daemon = sns_relay(tmp_path, receiver, notes).start()
    state = tmp_path / "var" / "events-subscriptions.json"
    try:
        sender = Sender(daemon)
        submit(daemon, sender, "before the restart")
        wait(lambda: len(receiver.notifications()) == 1, 20, "the first notification")
        assert daemon.stop() == 0
        asked = len(receiver.subscription_requests())
        receiver.confirm = False  # a second request would now go unconfirmed
        daemon.start()
        submit(daemon, sender, "after the restart")
        wait(lambda: len(receiver.notifications()) == 2, 20, "the second notification")
        assert awaiting(daemon) == 0
    finally:
        assert daemon.stop() == 0
    assert len(receiver.subscription_requests()) == asked  # not asked again
    assert messages_of(receiver.notifications()) == lines(notes)
    assert state.stat().st_mode & 0o777 == 0o600  # it holds the tokens
    [(key, saved)] = json.loads(state.read_text()).items()
    assert key == "transactional/sns" and saved["topic_arn"] == TOPIC
    assert saved["subscription_arn"].startswith(f"{TOPIC}:") and saved["confirmed"]
    assert receiver.url not in state.read_text()  # only its SHA-256


def test_a_receiver_that_never_confirms_has_its_events_set_aside_after_retry_for(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    receiver = receivers().up()  # answers 200, never confirms
    notes = tmp_path / "notes.ndjson"
    daemon = sns_relay(tmp_path, receiver, notes, retry_for="2s").start()
    undelivered = tmp_path / "var" / "events-undelivered" / "transactional.sns.ndjson"
    try:
        submit(daemon, Sender(daemon), "never confirmed")
        # The file is written before the line is logged.
        daemon.wait_log(f"{SNS_KEY} (http://127.0.0.1:{receiver.port}/hook) has been waiting "
                        "for its receiver to confirm the subscription for", 20)
        assert awaiting(daemon) == 1
    finally:
        assert daemon.stop() == 0
    assert lines(undelivered) == lines(notes)  # the notification itself, kept
    assert lines(notes) and not receiver.notifications()
    assert f"(retry_for 2s): 1 events older than 2s set aside in {undelivered}" in daemon.log()


def test_the_event_format_has_no_handshake(
        tmp_path: Path, receivers: Callable[[], Receiver]) -> None:
    events, sns = receivers().up(), receivers().up()  # sns never confirms
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"}, http=PUBLIC,
                           configuration_sets={"transactional": {"event_destinations": [
                               webhook(events.url),
                               webhook(sns.url, "sns", format="notification")]}}).start()
    try:
        message_id = submit(daemon, Sender(daemon), "events at once")
        wait(lambda: len(events.delivered()) == 2, 20, "Send and Delivery delivered")
        wait(sns.subscription_requests, 20, "the other destination asks to confirm")
        assert awaiting(daemon) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['http']}/metrics",
                                    timeout=10) as response:
            shown = [line for line in response.read().decode().splitlines() if line.startswith(
                "smtprelay_event_destination_awaiting_confirmation{")]
        assert len(shown) == 1 and 'destination="sns"' in shown[0]  # not the event one
    finally:
        assert daemon.stop() == 0
    assert all(r.sns_type is None for r in events.seen())
    assert [json.loads(r.body)["eventType"] for r in events.seen()] == ["Send", "Delivery"]
    assert {json.loads(r.body)["mail"]["messageId"] for r in events.seen()} == {message_id}
    assert not sns.notifications()
