"""Tracking and unsubscribe through the real relay: what a configuration set changes.

Messages go in over SMTP (STARTTLS + AUTH); the spooled bytes are what recipients
get. Tokens are read back with the key file the daemon created, the DKIM signatures
over the rewritten message are checked by OpenDKIM, and the MIME structure by
Python's email package, which shares no code with the rewriter.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import logging
import os
import re
import signal
import smtplib
import stat
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from smtprelay.spool.store import get_message, open_for_cli
from smtprelay.transform import tokens
from smtprelay.transform.links import OPEN_TRACKER
from tests.dkimpeers import Key, identities, opendkim, ours
from tests.dnsserver import TestDNSServer
from tests.support import (
    Credential,
    DaemonProcess,
    RunningRelay,
    client_context,
    message,
    relay_fixture,
    running,
    spooled,
)

TRACKED = "marketing"
SETS = {
    "transactional": {},
    TRACKED: {"tracking": {"open": True, "click": True, "domain": "links.example.com",
                           "https": True},
              "unsubscribe": {"one_click": True, "mailto": "unsub@bounce.example.com"}},
    "keepscheme": {"tracking": {"click": True, "open": True, "domain": "links.example.com"}},
    "override": {"tracking": {"domain": "links.example.com"},
                 "unsubscribe": {"one_click": True, "override": True}},
}
TRACKING_DOMAINS = {"links.example.com": {}}
_TOKEN = re.compile(r"https?://links\.example\.com/([cou])/([A-Za-z0-9_-]+)")


relay = relay_fixture(configuration_sets=SETS, tracking_domains=TRACKING_DOMAINS,
                      server={"transform_workers": 2})


def send(relay: RunningRelay, data: bytes, rcpts: tuple[str, ...] = ("someone@example.net",),
         cred: Credential | None = None) -> tuple[int, str]:
    cred = cred or relay.credential()
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=30) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        smtp.mail("app@example.com")
        for rcpt in rcpts:
            smtp.rcpt(rcpt)
        code, reply = smtp.data(data)
    return code, reply.decode()


def delivered(relay: RunningRelay, data: bytes, **options: Any) -> bytes:
    code, reply = send(relay, data, **options)
    assert code == 250, reply
    [stored] = [m for m in spooled(relay.config) if m["id"] == reply.split()[-1]]
    return bytes(stored["data"])


def keyring(relay: RunningRelay) -> tokens.KeyRing:
    return tokens.KeyRing.load(relay.config.tracking_keys_path)


def decoded_tokens(relay: RunningRelay, text: str) -> list[tuple[str, tokens.Payload]]:
    ring = keyring(relay)
    return [(kind, tokens.decode(token, ring)) for kind, token in _TOKEN.findall(text)]


def parts(data: bytes) -> dict[str, str]:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    found = {}
    for part in parsed.walk():
        if not part.is_multipart():
            found[part.get_content_type()] = part.get_content()
    return found


def newsletter(set_name: str = TRACKED, extra_headers: str = "") -> bytes:
    html = (
        '<html><body><table><tr><td>'
        '<a href="https://shop.example/reset?user=42&amp;token=a%2Fb&#38;x=1">Reset</a> '
        "<A HREF='http://blog.example/post?id=7' ses:tags=\"campaign:spring;variant:b\">Read</A>"
        ' <a href="mailto:help@example.com">Mail us</a>'
        ' <a ses:no-track href="https://private.example/keep">Private</a>'
        ' <a href="javascript:alert(1)">JS</a>'
        ' <a href="{{unsubscribe_url}}">Unsubscribe</a>'
        ' Grüße — ' + "x" * 120 +
        '</td></tr></table></body></html>')
    text = "Hello,\r\nUnsubscribe: {{unsubscribe_url}}\r\nGrüße\r\n"

    def qp(value: str) -> str:
        import quopri
        encoded = quopri.encodestring(value.replace("\r\n", "\n").encode("utf-8"))
        return encoded.decode("ascii").replace("\n", "\r\n")

    return (
        "From: App <app@example.com>\r\nTo: someone@example.net\r\nSubject: news\r\n"
        f"X-SES-CONFIGURATION-SET: {set_name}\r\n{extra_headers}"
        "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp(text) + "\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp(html) + "\r\n"
        "--b1--\r\n").encode("ascii")


def test_tracked_message_links_pixel_and_unsubscribe(relay: RunningRelay) -> None:
    data = delivered(relay, newsletter())
    headers = email.message_from_bytes(data, policy=email.policy.default)
    found = parts(data)
    html, text = found["text/html"], found["text/plain"]

    # Links: the first two tracked, redirecting to exactly what a browser would open.
    clicks = [(kind, p) for kind, p in decoded_tokens(relay, html) if kind == "c"]
    assert [p.url for _, p in clicks] == [  # type: ignore[union-attr]
        "https://shop.example/reset?user=42&token=a%2Fb&x=1", "http://blog.example/post?id=7"]
    second = clicks[1][1]
    assert isinstance(second, tokens.ClickToken)
    assert second.tags == (("campaign", "spring"), ("variant", "b"))
    assert second.recipient == 0 and second.link_index == 1
    # https: true forces https even for the http link.
    assert html.count("https://links.example.com/c/") == 2
    assert 'href="mailto:help@example.com"' in html and 'href="javascript:alert(1)"' in html
    assert '<a href="https://private.example/keep">Private</a>' in html
    assert "ses:" not in html and "ses:" not in text

    # The pixel before </body>, for recipient 0.
    [opened] = [p for k, p in decoded_tokens(relay, html) if k == "o"]
    assert isinstance(opened, tokens.OpenToken) and opened.recipient == 0
    assert re.search(r'<img src="https://links\.example\.com/o/[^"]+" width="1" height="1"'
                     r'[^>]*/></body>', html)

    # Unsubscribe: headers, the footer link in both parts, all one URL.
    unsubscribe = headers["List-Unsubscribe"]
    url = re.match(r"<(https://links\.example\.com/u/[^>]+)>, <mailto:unsub@bounce\.example"
                   r"\.com\?subject=unsubscribe-([A-Za-z0-9_-]+)>$", unsubscribe)
    assert url is not None, unsubscribe
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert f'<a href="{url.group(1)}">Unsubscribe</a>' in html
    assert f"Unsubscribe: {url.group(1)}\r\n" in text
    payload = tokens.decode(url.group(2), keyring(relay))
    assert isinstance(payload, tokens.UnsubscribeToken) and payload.recipient == 0
    assert "{{unsubscribe_url}}" not in data.decode()
    # Quoted-printable stayed quoted-printable, with lines of at most 76 characters.
    body = data[data.index(b"\r\n\r\n"):]
    assert body.count(b"Content-Transfer-Encoding: quoted-printable") == 2
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert "Grüße — " + "x" * 120 in html


def test_http_links_keep_their_scheme_by_default(relay: RunningRelay) -> None:
    html = parts(delivered(relay, newsletter("keepscheme")))["text/html"]
    assert "https://links.example.com/c/" in html and "http://links.example.com/c/" in html
    # No unsubscribe in this set: its placeholder is the sender's business, left alone.
    assert "{{unsubscribe_url}}" in html


def test_several_recipients_leave_the_spooled_message_as_submitted(
        relay: RunningRelay) -> None:
    """Each recipient's copy is made at delivery (test_per_recipient_copies.py); the
    spool keeps one body, untracked, with the plan the copies follow."""
    code, reply = send(relay, newsletter(), rcpts=("a@example.net", "b@example.net"))
    assert code == 250, reply
    [stored] = [m for m in spooled(relay.config) if m["id"] == reply.split()[-1]]
    data = bytes(stored["data"])
    assert not decoded_tokens(relay, data.decode())
    assert b"List-Unsubscribe" not in data and b"DKIM-Signature" not in data
    conn = open_for_cli(relay.config.spool_path)
    try:
        queued = get_message(conn, stored["id"])
    finally:
        conn.close()
    assert queued is not None and queued.attrs.copies == {
        "click_domain": "links.example.com", "open_domain": "links.example.com",
        "tracking_https": True, "unsubscribe_host": "links.example.com",
        "mailto": "unsub@bounce.example.com", "override": False}


def test_sender_list_unsubscribe_is_kept_unless_the_set_overrides(relay: RunningRelay) -> None:
    own = ("List-Unsubscribe: <https://app.example/unsub/9>\r\n"
           "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    kept = email.message_from_bytes(delivered(relay, newsletter(extra_headers=own)),
                                    policy=email.policy.default)
    assert kept.get_all("List-Unsubscribe") == ["<https://app.example/unsub/9>"]
    replaced_data = delivered(relay, newsletter("override", extra_headers=own))
    replaced = email.message_from_bytes(replaced_data, policy=email.policy.default)
    [value] = replaced.get_all("List-Unsubscribe")
    assert re.fullmatch(r"<https://links\.example\.com/u/[A-Za-z0-9_-]+>", value)
    assert replaced.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]


def test_without_tracking_relay_markup_is_removed_and_links_kept(relay: RunningRelay) -> None:
    html = parts(delivered(relay, newsletter("transactional")))["text/html"]
    assert "links.example.com" not in html
    assert 'href="https://shop.example/reset?user=42&amp;token=a%2Fb&#38;x=1"' in html
    assert "ses:" not in html


def test_second_open_tracker_is_refused_and_the_session_goes_on(relay: RunningRelay) -> None:
    html = f"<p>{OPEN_TRACKER}</p><p>{OPEN_TRACKER}</p>"
    bad = ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: twice\r\n"
           "Content-Type: text/html\r\n\r\n" + html + "\r\n").encode()
    cred = relay.credential()
    before = len(spooled(relay.config))
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=30) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        for set_name in ("transactional", TRACKED):  # refused whatever the set says
            smtp.mail("app@example.com")
            smtp.rcpt("someone@example.net")
            code, reply = smtp.data(bad.replace(b"Subject", f"X-SES-CONFIGURATION-SET: "
                                                f"{set_name}\r\nSubject".encode()))
            assert (code, reply.decode()) == (554, "5.6.0 Message rejected: more than one "
                                                   "{{ses:openTracker}} placeholder; use at "
                                                   "most one")
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.net")
        code, _ = smtp.data(message(subject="after the refusals"))
        assert code == 250
    assert len(spooled(relay.config)) == before + 1


def test_one_placeholder_without_open_tracking_is_removed(relay: RunningRelay) -> None:
    data = ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: once\r\n"
            f"Content-Type: text/html\r\n\r\n<p>{OPEN_TRACKER}Hi</p>\r\n").encode()
    assert parts(delivered(relay, data))["text/html"] == "<p>Hi</p>\r\n"


def test_ten_thousand_links_in_a_big_part(relay: RunningRelay) -> None:
    links = "".join(f'<a href="https://shop.example/item/{i}?ref=mail">Item {i}</a><br>\r\n'
                    for i in range(10_000))
    data = ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: catalogue\r\n"
            f"X-SES-CONFIGURATION-SET: {TRACKED}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"\r\n<html><body>{links}</body></html>\r\n").encode()
    assert len(data) > 256 * 1024
    html = parts(delivered(relay, data))["text/html"]
    clicks = [p for kind, p in decoded_tokens(relay, html) if kind == "c"]
    assert len(clicks) == 250
    assert [p.url for p in clicks] == [  # type: ignore[union-attr]
        f"https://shop.example/item/{i}?ref=mail" for i in range(250)]
    assert '<a href="https://shop.example/item/250?ref=mail">' in html
    assert '<a href="https://shop.example/item/9999?ref=mail">' in html


_PIXEL = re.compile(r'<img src="https://links\.example\.com/o/[A-Za-z0-9_-]+" width="1" '
                    r'height="1" alt="" style="border:0;width:1px;height:1px;" />')


def test_a_20_mb_html_part_is_tracked_in_a_worker_and_otherwise_kept(tmp_path: Path) -> None:
    with running(tmp_path, configuration_sets=SETS, tracking_domains=TRACKING_DOMAINS,
                 server={"transform_workers": 2},
                 limits={"max_message_size": 24 * 1024 * 1024}) as relay:
        row = ('<tr><td style="padding:4px">' + "x" * 60 + '</td><td><a href='
               '"https://shop.example/p?id=1">Buy</a></td></tr>\r\n')
        html = ("<html><body><table>\r\n" + row * (20_000_000 // len(row))
                + "</table></body></html>\r\n")
        data = ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: big\r\n"
                f"X-SES-CONFIGURATION-SET: {TRACKED}\r\n"
                "Content-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()
        assert len(data) > 20_000_000
        before = {m["id"] for m in spooled(relay.config)}
        out = parts(delivered(relay, data))["text/html"]
        assert len({m["id"] for m in spooled(relay.config)} - before) == 1
        assert [kind for kind, _ in decoded_tokens(relay, out[:200_000])].count("c") == 250
        assert len(_PIXEL.findall(out)) == 1
        # Apart from the 250 tracked links and the pixel, every byte is as it was sent.
        restored = _TOKEN.sub("https://shop.example/p?id=1", _PIXEL.sub("", out))
        assert restored == html


@pytest.mark.parametrize(("part", "problem"), [
    ("Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     "PGEgaHJlZj0iaHR0cHM6Ly9zaG9wLmV4YW1wbGUvIj5Y!!!==\r\n", "invalid base64"),
    ("Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     '<a href=3D"https://shop.example/">X</a> =ZZ broken\r\n', "invalid quoted-printable"),
    ("Content-Type: text/html; charset=x-klingon\r\n\r\n"
     '<a href="https://shop.example/">X</a>\r\n', "unknown charset 'x-klingon'"),
    ("Content-Type: text/html\r\n\r\n<p><a href=\"https://shop.example/\">X<div><a href=",
     None),
])
def test_unreadable_parts_go_out_untouched(relay: RunningRelay, part: str, problem: str | None,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "smtprelay.pipeline")
    data = ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: odd\r\n"
            f"X-SES-CONFIGURATION-SET: {TRACKED}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
            f"{part}\r\n--zz--\r\n").encode()
    out = delivered(relay, data)
    body = out[out.index(b"--zz"):]
    if problem is None:
        # Malformed HTML is still read as a browser would: the closed link is tracked,
        # and the pixel goes at the end, where a browser reads it as the unclosed
        # tag's attribute (harmless: the tag was broken before).
        assert b'<p><a href="https://links.example.com/c/' in body
        assert b'<a href=<img src="https://links.example.com/o/' in body
    else:
        assert body == data[data.index(b"--zz"):]
        assert problem in caplog.text


def test_tracked_quoted_printable_message_verifies_with_opendkim(
        tmp_path: Path, keys: dict[str, Key], dns: TestDNSServer) -> None:
    with running(tmp_path, configuration_sets=SETS, tracking_domains=TRACKING_DOMAINS,
                 identities=identities(keys)) as relay:
        data = delivered(relay, newsletter())
    assert b"https://links.example.com/c/" in data and b"List-Unsubscribe:" in data
    signature = data[:data.index(b"Received:")].decode()
    assert "list-unsubscribe:list-unsubscribe-post" in signature.lower().replace("\r\n\t", "")
    assert ours(opendkim(data, dns, tmp_path / "od")) == {
        "rsa-sha256": "pass", "ed25519-sha256": "pass"}


def test_key_file_is_private_and_a_readable_one_stops_the_daemon(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, configuration_sets=SETS,
                           tracking_domains=TRACKING_DOMAINS)
    daemon.start()
    try:
        path = daemon.config.tracking_keys_path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        assert daemon.stop() == 0
    os.chmod(path, 0o644)
    daemon.start(wait=False)
    # 2: the start-up check (app.preflight) refuses it like every unusable file.
    assert daemon.proc.wait(20) == 2
    log = daemon.log()
    assert f"{path}: readable by group or others; chmod 600 it" in log
    assert "Traceback" not in log
    os.chmod(path, 0o600)
    path.write_text("{not json")
    os.chmod(path, 0o600)
    daemon.start(wait=False)
    assert daemon.proc.wait(20) == 2
    assert f"{path}: malformed key file" in daemon.log()
    assert "restore it from a backup" in daemon.log()


def test_tracking_urls_are_plain_ascii_and_unquoted(relay: RunningRelay) -> None:
    html = parts(delivered(relay, newsletter()))["text/html"]
    for _, token in _TOKEN.findall(html):
        assert urllib.parse.quote(token, safe="-_") == token


# --- the worker processes (server.transform_workers) ------------------------------------

def _transform_workers(relay: RunningRelay) -> list[int]:
    pool = relay.relay._pipeline.transform_pool
    assert pool is not None, "this machine should get transform workers (2+ cores)"
    return pool.pids()


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_tracking_runs_in_worker_processes_and_a_killed_worker_is_replaced(
        relay: RunningRelay) -> None:
    first = parts(delivered(relay, newsletter()))["text/html"]
    assert [kind for kind, _ in decoded_tokens(relay, first)].count("c") == 2
    workers = _transform_workers(relay)
    assert workers and os.getpid() not in workers
    _kill(workers)
    deadline = time.monotonic() + 10
    while set(_transform_workers(relay)) & set(workers) and time.monotonic() < deadline:
        time.sleep(0.05)  # the pool notices its dead workers and is dropped
    again = parts(delivered(relay, newsletter()))["text/html"]
    assert [kind for kind, _ in decoded_tokens(relay, again)].count("c") == 2
    assert not set(_transform_workers(relay)) & set(workers)


def test_workers_run_the_relays_code_when_started_inside_another_checkout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay run from a directory holding another smtprelay (an operator's other
    checkout, say) still gets its own transform code in the workers."""
    checkout = tmp_path / "checkout"
    (checkout / "smtprelay" / "transform").mkdir(parents=True)
    (checkout / "smtprelay" / "__init__.py").write_text("")
    (checkout / "smtprelay" / "transform" / "__init__.py").write_text("")
    marker = tmp_path / "decoy-worker-ran"
    (checkout / "smtprelay" / "transform" / "worker.py").write_text(
        f"import pathlib, sys\npathlib.Path({str(marker)!r}).touch()\nsys.exit(3)\n")
    monkeypatch.chdir(checkout)
    with running(tmp_path, configuration_sets=SETS, tracking_domains=TRACKING_DOMAINS,
                 server={"transform_workers": 2}) as relay:
        assert relay.relay._pipeline.transform_pool is not None
        code, reply = send(relay, newsletter())
    assert not marker.exists(), "the worker ran the other checkout's code"
    assert code == 250, reply
    [stored] = [m for m in spooled(relay.config) if m["id"] == reply.split()[-1]]
    html = parts(bytes(stored["data"]))["text/html"]
    assert [kind for kind, _ in decoded_tokens(relay, html)].count("c") == 2


def catalogue() -> bytes:
    """A tracked message with 40,000 links: long enough in a worker to be killed there."""
    links = "".join(f'<a href="https://shop.example/item/{i}?ref=mail">Item {i}</a><br>\r\n'
                    for i in range(40_000))
    return ("From: app@example.com\r\nTo: someone@example.net\r\nSubject: catalogue\r\n"
            f"X-SES-CONFIGURATION-SET: {TRACKED}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"\r\n<html><body>{links}</body></html>\r\n").encode()


def test_a_worker_dying_with_the_message_gives_451_and_loses_nothing(
        relay: RunningRelay) -> None:
    before = {m["id"] for m in spooled(relay.config)}
    big = catalogue()
    done = threading.Event()

    def killer() -> None:  # every worker that shows up dies, until the reply is in
        while not done.is_set():
            _kill(_transform_workers(relay))
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        code, reply = send(relay, big)
    finally:
        done.set()
        thread.join(10)
    assert code == 451 and "4.3.0" in reply, reply
    assert {m["id"] for m in spooled(relay.config)} == before  # the client keeps it
    html = parts(delivered(relay, big))["text/html"]  # the next try goes through
    assert [kind for kind, _ in decoded_tokens(relay, html)].count("c") == 250


def test_a_message_whose_worker_dies_is_tried_once_more_on_a_fresh_one(
        relay: RunningRelay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "smtprelay.transforms")
    before = {m["id"] for m in spooled(relay.config)}
    big = catalogue()
    pool = relay.relay._pipeline.transform_pool
    assert pool is not None
    killed: list[int] = []

    def killer() -> None:  # the first worker seen holding a message dies, once
        deadline = time.monotonic() + 20
        while not killed and time.monotonic() < deadline:
            for worker in list(pool._live):
                if worker.waiting:
                    _kill([worker.process.pid])
                    killed.append(worker.process.pid)
                    return
            time.sleep(0.001)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    code, reply = send(relay, big)
    thread.join(20)
    assert killed, "the message never reached a worker"
    assert code == 250, reply
    assert len({m["id"] for m in spooled(relay.config)} - before) == 1
    assert "a transform worker died with the message; trying another" in caplog.text
    assert killed[0] not in _transform_workers(relay)
    html = parts(delivered(relay, big))["text/html"]
    assert [kind for kind, _ in decoded_tokens(relay, html)].count("c") == 250


def _worker_children(pid: int) -> list[int]:
    """Live transform workers whose parent is `pid` (a zombie counts as gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
            if int(fields[1]) == pid and fields[0] != "Z" \
                    and b"smtprelay.transform.worker" in cmdline:
                found.append(int(entry.name))
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
    return alive


def _send_to_daemon(daemon: DaemonProcess) -> None:
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.mail("app@example.com")
        smtp.rcpt("someone@example.net")
        code, reply = smtp.data(newsletter())
    assert code == 250, reply


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_with_the_relay_however_it_ends(tmp_path: Path, how: int) -> None:
    """A stopped relay leaves no worker behind; a killed one neither (their input closes)."""
    daemon = DaemonProcess(tmp_path, configuration_sets=SETS,
                           tracking_domains=TRACKING_DOMAINS, server={"transform_workers": 2})
    daemon.start()
    try:
        _send_to_daemon(daemon)
        workers = _worker_children(daemon.proc.pid)
        assert len(workers) == 1  # started on demand
    finally:
        code = daemon.stop(how)
    assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers)
    assert "Traceback" not in daemon.log()


def test_without_workers_the_relay_process_does_the_same_work(tmp_path: Path) -> None:
    with running(tmp_path, configuration_sets=SETS, tracking_domains=TRACKING_DOMAINS,
                 server={"transform_workers": 0}) as inline:
        assert inline.relay._pipeline.transform_pool is None
        html = parts(delivered(inline, newsletter()))["text/html"]
        kinds = [kind for kind, _ in decoded_tokens(inline, html)]
        assert kinds.count("c") == 2 and kinds.count("o") == 1
