"""DKIM end to end: mail through the real relay verifies with OpenDKIM and Mail::DKIM.

The keys come from `smtprelay dkim keygen` (a subprocess) and the TXT records it
prints are served by the test DNS server, where both verifiers look them up: the
chain an operator follows, checked by implementations that share no code with ours.
"""

from __future__ import annotations

import json
import logging
import smtplib
import time
import urllib.request
from pathlib import Path

import dkim as dkimpy
import pytest

from smtprelay.transform import dkim
from tests.dkimpeers import Key, identities, mail_dkim, opendkim, ours
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

pytestmark = pytest.mark.peer


relay = relay_fixture(lambda keys: {"identities": identities(keys)})


def submit(relay: RunningRelay, cred: Credential, data: bytes,
           sender: str = "app@example.com") -> bytes:
    """Send over STARTTLS + AUTH; the bytes as spooled."""
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=30) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        smtp.mail(sender)
        smtp.rcpt("someone@example.net")
        code, reply = smtp.data(data)
    assert code == 250, reply
    message_id = reply.decode().split()[-1]
    [stored] = [m for m in spooled(relay.config) if m["id"] == message_id]
    return bytes(stored["data"])


def txt(value: str) -> str:
    return " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))


def test_submitted_mail_is_signed_with_both_keys_and_verifies(
        relay: RunningRelay, dns: TestDNSServer, tmp_path: Path) -> None:
    cred = relay.credential()
    data = (b"From: App <app@example.com>\r\nTo: someone@example.net\r\nSubject: signed\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"List-Unsubscribe: <https://u.example.com/u/1>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n"
            b"Hello,   signed   world.\r\n")
    signed = submit(relay, cred, data)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert signed.count(b"DKIM-Signature:") == 2
    assert ours(opendkim(signed, dns, tmp_path / "od")) == {
        "rsa-sha256": "pass", "ed25519-sha256": "pass"}
    mail = ours(mail_dkim(signed, dns))
    assert mail["rsa-sha256"] == "pass"
    # Debian 12's Mail::DKIM predates RFC 8463; it must not call ours broken, though.
    assert mail["ed25519-sha256"] in ("pass", "invalid (unsupported algorithm ed25519-sha256)")
    assert ("r2026._domainkey.example.com", "TXT") in dns.queries
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{relay.http_port}/metrics", timeout=10).read().decode()
    assert 'smtprelay_dkim_signatures_total{algorithm="rsa-sha256"}' in metrics
    assert 'smtprelay_dkim_signatures_total{algorithm="ed25519-sha256"}' in metrics
    assert "smtprelay_dkim_sign_seconds_count" in metrics


def test_one_changed_body_byte_fails_both_verifiers(relay: RunningRelay, dns: TestDNSServer,
                                                     tmp_path: Path) -> None:
    signed = submit(relay, relay.credential(), message(subject="tamper", body="Pay 100 EUR.\r\n"))
    tampered = signed.replace(b"Pay 100 EUR.", b"Pay 900 EUR.")
    assert tampered != signed
    results = opendkim(tampered, dns, tmp_path / "od")
    assert ours(results) == {"rsa-sha256": "fail", "ed25519-sha256": "fail"}
    assert ours(mail_dkim(tampered, dns))["rsa-sha256"].startswith("fail")


def test_obsolete_header_syntax_verifies(relay: RunningRelay, dns: TestDNSServer,
                                         tmp_path: Path) -> None:
    data = (b"From : app@example.com\r\nTo:someone@example.net\r\nSubject :  spaced \r\n"
            b"\r\nbody\r\n")
    signed = submit(relay, relay.credential(), data)
    assert ours(mail_dkim(signed, dns))["rsa-sha256"] == "pass"
    # OpenDKIM refuses the message itself: "dkim=permerror (bad message/signature
    # format)", for every signature, before looking at one.
    assert opendkim(signed, dns, tmp_path / "od") == []


def test_client_signature_is_kept_and_ours_added(relay: RunningRelay, dns: TestDNSServer,
                                                 tmp_path: Path) -> None:
    # The application signs with its own key, using dkimpy as it stands.
    client_key = dkim.generate_key("rsa")
    dns.add("app._domainkey.example.com", "TXT", txt(dkim.public_record(client_key)))
    data = message(subject="signed twice", body="Client-signed body.\r\n")
    client_signed = dkimpy.sign(data, b"app", b"example.com", dkim.key_pem(client_key),
                                canonicalize=(b"relaxed", b"relaxed")) + data
    signed = submit(relay, relay.credential(), client_signed)
    assert signed.count(b"DKIM-Signature:") == 3
    # Ours first (prepended), the client's after the trace field, untouched.
    assert signed.index(b"s=r2026") < signed.index(b"Received:") < signed.index(b"s=app;")
    results = opendkim(signed, dns, tmp_path / "od")
    assert sorted((r.selector, r.result) for r in results) == [
        ("app", "pass"), ("e2026", "pass"), ("r2026", "pass")]
    assert {r.selector: r.result for r in mail_dkim(signed, dns)}["app"] == "pass"


def test_big_message_signed_in_a_thread_verifies(relay: RunningRelay, dns: TestDNSServer,
                                                 tmp_path: Path) -> None:
    row = "<p>Line {i} with  two spaces,\ta tab and trailing space </p> \r\n"
    html = "".join(row.format(i=i) for i in range(6000))
    data = (b"From: app@example.com\r\nTo: someone@example.net\r\nSubject: big\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            + html.encode())
    assert len(data) > 300_000
    signed = submit(relay, relay.credential(), data)
    assert ours(opendkim(signed, dns, tmp_path / "od")) == {
        "rsa-sha256": "pass", "ed25519-sha256": "pass"}


@pytest.mark.parametrize("workers", [0, 1])
def test_signing_runs_in_a_transform_worker_when_there_are_workers(
        tmp_path: Path, keys: dict[str, Key], dns: TestDNSServer, workers: int) -> None:
    """An untracked message to sign goes to a worker process too, so no signing shares
    the event loop's interpreter lock; without workers it is signed in a thread."""
    with running(tmp_path, identities=identities(keys),
                 server={"transform_workers": workers}) as relay:
        signed = submit(relay, relay.credential(), message(subject="signed elsewhere"))
        pool = relay.relay._pipeline.transform_pool
        if workers:
            assert pool is not None and pool.pids()
        else:
            assert pool is None
    assert ours(opendkim(signed, dns, tmp_path / "od")) == {
        "rsa-sha256": "pass", "ed25519-sha256": "pass"}


def test_from_domains_without_keys_are_sent_unsigned(tmp_path: Path,
                                                     keys: dict[str, Key]) -> None:
    with running(tmp_path, identities={**identities(keys), "other.test": {}}) as relay:
        signed = submit(relay, relay.credential("other"),
                        message(subject="unsigned", sender="x@other.test"),
                        sender="x@other.test")
    assert b"DKIM-Signature" not in signed


def test_reload_swaps_keys_and_refuses_a_broken_one(
        tmp_path: Path, keys: dict[str, Key], dns: TestDNSServer,
        caplog: pytest.LogCaptureFixture) -> None:
    rsa_only = {"example.com": {"dkim": [{"selector": "r2026",
                                          "key_file": str(keys["rsa"].path)}]}}
    with running(tmp_path, identities=rsa_only) as relay:
        path = tmp_path / "smtprelay.yaml"
        cred = relay.credential()
        first = submit(relay, cred, message(subject="before reload"))
        assert first.count(b"DKIM-Signature:") == 1
        text = path.read_text()
        path.write_text(text.replace(str(keys["rsa"].path), str(keys["ed25519"].path))
                        .replace("r2026", "e2026"))
        relay.relay.reload(str(path))
        second = submit(relay, cred, message(subject="after reload"))
        assert ours(opendkim(second, dns, tmp_path / "od")) == {"ed25519-sha256": "pass"}
        path.write_text(text.replace(str(keys["rsa"].path), str(tmp_path / "gone.pem")))
        with caplog.at_level(logging.ERROR, logger="smtprelay"):
            relay.relay.reload(str(path))
        assert "reload refused" in caplog.text
        assert "identities.example.com.dkim[0].key_file" in caplog.text
        third = submit(relay, cred, message(subject="after refused reload"))
        assert b"s=e2026;" in third


def test_captured_mail_verifies(tmp_path: Path, keys: dict[str, Key],
                                dns: TestDNSServer) -> None:
    daemon = DaemonProcess(tmp_path, delivery={"mode": "capture"},
                           identities=identities(keys)).start()
    try:
        assert daemon.cli("check-config").returncode == 0
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(cred["username"], cred["password"])
            smtp.sendmail("app@example.com", ["someone@example.net"],
                          message(subject="captured and signed"))
        deadline = time.monotonic() + 20
        while not (files := list(daemon.config.capture_dir.glob("*.eml"))):
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        captured = files[0].read_bytes()
        assert ours(opendkim(captured, dns, tmp_path / "od")) == {
            "rsa-sha256": "pass", "ed25519-sha256": "pass"}
        assert ours(mail_dkim(captured, dns))["rsa-sha256"] == "pass"
        assert "dkim signing domains=example.com" in daemon.log()
    finally:
        daemon.stop()


def test_the_clients_bytes_are_spooled_as_sent_with_our_fields_apart(
        relay: RunningRelay) -> None:
    import sqlite3
    data = (b"From: App <app@example.com>\r\nTo: someone@example.net\r\nSubject: apart\r\n"
            b"Message-ID: <apart@example.com>\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
            b"\r\nNothing to change here.\r\n")
    signed = submit(relay, relay.credential(), data)
    conn = sqlite3.connect(relay.config.spool_path)
    try:
        [(prefix, stored)] = conn.execute("SELECT prefix, data FROM bodies").fetchall()
    finally:
        conn.close()
    assert bytes(stored) == data  # byte for byte: nothing was prepended to it
    assert bytes(prefix).startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert bytes(prefix).count(b"DKIM-Signature:") == 2
    assert b"\r\nReceived: from " in bytes(prefix) and bytes(prefix).endswith(b"\r\n")
    assert signed == bytes(prefix) + data
