"""The whole engagement loop through the real daemon: a tracked message is delivered, its
links are followed over HTTP, and the opens, clicks and one-click unsubscribe come back
as SES events, with the unsubscribed address held back from the set's next message
(and kept off the account's suppression list).
"""

from __future__ import annotations

import email
import email.policy
import http.client
import json
import re
import smtplib
from pathlib import Path
from typing import Any

from tests.e2e.delivery_world import wait_for
from tests.support import DaemonProcess, client_context, events

HOST = "links.test"


def submit(daemon: DaemonProcess, cred: dict[str, str], rcpt: str, data: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        smtp.rcpt(rcpt)
        code, reply = smtp.data(data)
    assert code == 250, reply
    return reply.decode().split()[-1]


def request(daemon: DaemonProcess, method: str, url: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    path = re.sub(rf"^http://{re.escape(HOST)}", "", url)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["http"], timeout=10)
    conn.request(method, path, body=body, headers={
        "Host": HOST, "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
        **(headers or {})})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_click_open_and_one_click_unsubscribe_come_back_as_events(tmp_path: Path) -> None:
    events_path = tmp_path / "events.ndjson"
    daemon = DaemonProcess(
        tmp_path, delivery={"mode": "capture"}, tracking_domains={HOST: {}},
        configuration_sets={"transactional": {
            "tracking": {"open": True, "click": True, "domain": HOST, "https": False},
            "unsubscribe": {"one_click": True},
            "event_destinations": [{"name": "all", "type": "file",
                                    "path": str(events_path)}]}}).start()
    try:
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        html = ('<html><body><p><a href="https://shop.example/p?a=1&amp;b=%2F#top" '
                'ses:tags="campaign:fall">Buy</a></p></body></html>')
        message_id = submit(daemon, cred, "reader@example.net", (
            "From: app@example.com\r\nTo: reader@example.net\r\nSubject: offer\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + html + "\r\n").encode())
        captured = wait_for(lambda: [c for c in json.loads(
            daemon.cli("captured", "list", "--json").stdout) if c["message_id"] == message_id])
        delivered = email.message_from_bytes(Path(captured[0]["file"]).read_bytes(),
                                             policy=email.policy.default)
        body = delivered.get_content()
        [click_url] = re.findall(rf"http://{HOST}/c/[A-Za-z0-9_-]+", body)
        [open_url] = re.findall(rf"http://{HOST}/o/[A-Za-z0-9_-]+", body)
        unsubscribe_url = delivered["List-Unsubscribe"].strip("<>")

        clicked = request(daemon, "GET", click_url)
        assert clicked.status == 302
        assert clicked.getheader("Location") == "https://shop.example/p?a=1&b=%2F#top"
        opened = request(daemon, "GET", open_url)
        assert opened.status == 200 and opened.getheader("Content-Type") == "image/gif"
        # A GET (a link scanner, a prefetch) unsubscribes nobody.
        assert request(daemon, "GET", unsubscribe_url).status == 200
        assert "reader@example.net" not in daemon.cli("suppression", "list").stdout
        done = request(daemon, "POST", unsubscribe_url, b"List-Unsubscribe=One-Click",
                       {"Content-Type": "application/x-www-form-urlencoded"})
        assert done.status == 200

        def engagement() -> dict[str, dict[str, Any]]:
            found = {r["eventType"]: r for r in events(events_path)
                     if r["mail"]["messageId"] == message_id}
            return found if {"Click", "Open", "Subscription"} <= found.keys() else {}

        found = wait_for(engagement, 20)
        click = found["Click"]["click"]
        assert click["link"] == "https://shop.example/p?a=1&b=%2F#top"
        assert click["linkTags"] == {"campaign": ["fall"]}
        assert click["ipAddress"] == "127.0.0.1" and "Firefox" in click["userAgent"]
        assert found["Open"]["open"]["ipAddress"] == "127.0.0.1"
        subscription = found["Subscription"]["subscription"]
        assert subscription["newTopicPreferences"]["unsubscribeAll"] is True
        assert found["Click"]["mail"]["commonHeaders"]["subject"] == "offer"

        # A subscription change scoped to the set, not an account-wide complaint.
        assert "reader@example.net" not in daemon.cli("suppression", "list", "--json").stdout
        assert subscription["contactList"] == "transactional"
        # The set's next message to the unsubscribed reader is not delivered.
        again = submit(daemon, cred, "reader@example.net", (
            b"From: app@example.com\r\nTo: reader@example.net\r\nSubject: again\r\n\r\n"
            b"Hi\r\n"))
        bounce = wait_for(lambda: [r for r in events(events_path)
                                   if r["mail"]["messageId"] == again
                                   and r["eventType"] == "Bounce"], 20)
        assert bounce[0]["bounce"]["bounceSubType"] == "OnAccountSuppressionList"
        assert bounce[0]["bounce"]["bouncedRecipients"][0]["diagnosticCode"] == (
            "the recipient unsubscribed from configuration set 'transactional'")
    finally:
        assert daemon.stop() == 0


def test_rotated_key_signs_new_links_and_old_links_keep_working(tmp_path: Path) -> None:
    daemon = DaemonProcess(
        tmp_path, delivery={"mode": "capture"}, tracking_domains={HOST: {}},
        configuration_sets={"transactional": {
            "tracking": {"click": True, "domain": HOST, "https": False}}}).start()
    html = (b"From: app@example.com\r\nTo: r@example.net\r\nSubject: k\r\n"
            b"Content-Type: text/html\r\n\r\n<a href=\"https://shop.example/x\">x</a>\r\n")

    def link() -> str:
        message_id = submit(daemon, cred, "r@example.net", html)
        captured = wait_for(lambda: [c for c in json.loads(
            daemon.cli("captured", "list", "--json").stdout) if c["message_id"] == message_id])
        [url] = re.findall(rf"http://{HOST}/c/[A-Za-z0-9_-]+",
                           Path(captured[0]["file"]).read_text())
        return url

    def key_id(url: str) -> int:
        import base64
        raw = base64.urlsafe_b64decode(url.rsplit("/", 1)[1] + "==")
        return raw[1]  # the key id varint (one byte while ids stay below 128)

    try:
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        old = link()
        rotated = daemon.cli("tracking-keys", "rotate")
        assert "New tracking key 2 written" in rotated.stdout
        import signal
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("tracking keys loaded: signing with key 2")
        new = link()
        assert (key_id(old), key_id(new)) == (1, 2)
        for url in (old, new):
            response = request(daemon, "GET", url)
            assert response.status == 302
            assert response.getheader("Location") == "https://shop.example/x"
        listed = json.loads(daemon.cli("tracking-keys", "list", "--json").stdout)
        assert [(k["id"], k["state"]) for k in listed] == [(1, "retired"), (2, "active")]
    finally:
        assert daemon.stop() == 0
