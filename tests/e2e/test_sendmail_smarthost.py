"""Sendmail 8.17 as a smarthost client of smtprelay, with docs/smarthost.md's recipe:
STARTTLS on 587, AUTH PLAIN and LOGIN (authinfo's `M:` names one mechanism at a time,
so each is really used), the relay's certificate verified against a test CA
(`confCACERT` and the access map's `TLS_Srv:... VERIFY:128+CN:...`). With a CA that did
not sign the relay's certificate, or with a certificate the CA signed for another name,
Sendmail refuses to send (before AUTH) and keeps the message. Sendmail 8.17 has no
implicit-TLS client, so there is no 465 case.

Sendmail runs from the Debian package unpacked by scripts/install-test-deps, not
installed (tests/peers/unpacked.py, tests/peers/sendmail.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

import pytest

from tests.e2e.smarthost_peers import assert_relayed, relay_with_ca
from tests.peers.sendmail import smarthost_client
from tests.peers.testca import TestCA
from tests.support import message, running, spooled, tls

pytestmark = pytest.mark.peer


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"], ids=["587-plain", "587-login"])
def test_sendmail_relays_with_verified_tls_and_auth(
        tmp_path: Path, mechanism: Literal["PLAIN", "LOGIN"]) -> None:
    with relay_with_ca(tmp_path) as world:
        relay = world.relay
        cred = relay.credential("acme")
        with smarthost_client(relay.submission_port, cred.username, cred.password,
                              world.ca.cert_file, mechanism=mechanism) as sendmail:
            subject = f"via sendmail {mechanism} {time.time_ns()}"
            body = "Line one.\r\n.leading dot survives\r\n\r\nBye.\r\n"
            code = sendmail.send("app@example.com",
                                 ["someone@example.net", "other@example.net"],
                                 message(subject=subject, to="someone@example.net",
                                         body=body))
            assert code == 0, sendmail.diagnostics()
            entry = assert_relayed(relay, cred.username, sendmail.diagnostics, subject, body)
            assert sendmail.queue() == [], sendmail.diagnostics()
            # The dialogue: AUTH with the one mechanism, after STARTTLS.
            transcript = sendmail.transcript
            assert re.search(rf"^>>> AUTH {mechanism}\b", transcript, re.MULTILINE), \
                transcript
            assert transcript.index(">>> STARTTLS") < transcript.index(">>> AUTH")
            # The log: the certificate verified, the mechanism used, the relay's reply.
            tls = sendmail.wait_for_log(r"STARTTLS=client, relay=relay\.test\.?, ")
            assert "verify=OK" in tls, tls
            sendmail.wait_for_log(
                r"STARTTLS=client, cert-subject=/CN=relay\.test, .*verifymsg=ok")
            sendmail.wait_for_log(rf"AUTH=client, relay=relay\.test\.?, mech={mechanism},")
            # One delivery line for both recipients (one connection, two RCPTs).
            sent = sendmail.wait_for_log(rf"stat=Sent \(Ok {re.escape(entry['id'])}\)")
            to = re.search(r" to=([^ ]+), ", sent)
            assert to is not None and sorted(to.group(1).split(",")) == [
                "other@example.net", "someone@example.net"], sent
            assert "relay=relay.test. [127.0.0.1]" in sent, sent


def test_sendmail_refuses_a_certificate_its_ca_did_not_sign(tmp_path: Path) -> None:
    with relay_with_ca(tmp_path) as world:
        relay = world.relay
        cred = relay.credential("acme")
        with smarthost_client(relay.submission_port, cred.username, cred.password,
                              world.other_ca.cert_file) as sendmail:
            code = sendmail.send("app@example.com", ["someone@example.net"],
                                 message(subject="must not pass", to="someone@example.net"))
            # -odi: the attempt is over when send() returns; the message stays queued.
            assert code == 0, sendmail.diagnostics()
            assert len(sendmail.queue()) == 1, sendmail.diagnostics()
            tls = sendmail.wait_for_log(r"STARTTLS=client, relay=relay\.test\.?, ")
            assert "verify=FAIL" in tls, sendmail.diagnostics()
            sendmail.wait_for_log(r"ruleset=tls_server, arg1=FAIL, relay=relay\.test, "
                                  r"reject=454 4\.7\.0")
            sendmail.wait_for_log(r"to=someone@example\.net,.* stat=Deferred: 454 4\.7\.0")
            # Sendmail quit right after the handshake: no AUTH, no MAIL.
            assert ">>> AUTH" not in sendmail.transcript, sendmail.transcript
            assert ">>> MAIL" not in sendmail.transcript, sendmail.transcript
            assert spooled(relay.config) == []


def test_sendmail_refuses_a_certificate_for_another_name(tmp_path: Path) -> None:
    # The recipe's "+CN:relay.test": a certificate the CA signed, but for another
    # name, verifies and is still refused.
    ca = TestCA.create(tmp_path / "ca")
    cert, key = ca.issue(tmp_path / "relay-tls", "elsewhere.test")
    with running(tmp_path, tls=tls(cert, key)) as relay:
        cred = relay.credential("acme")
        with smarthost_client(relay.submission_port, cred.username, cred.password,
                              ca.cert_file) as sendmail:
            code = sendmail.send("app@example.com", ["someone@example.net"],
                                 message(subject="must not pass", to="someone@example.net"))
            assert code == 0, sendmail.diagnostics()
            assert len(sendmail.queue()) == 1, sendmail.diagnostics()
            tls_line = sendmail.wait_for_log(r"STARTTLS=client, relay=relay\.test\.?, ")
            assert "verify=OK" in tls_line, sendmail.diagnostics()
            sendmail.wait_for_log(r"ruleset=tls_server, .*reject=454 .*CN elsewhere\.test "
                                  r"does not match relay\.test")
            sendmail.wait_for_log(r"to=someone@example\.net,.* stat=Deferred: 454 ")
            assert ">>> AUTH" not in sendmail.transcript, sendmail.transcript
            assert spooled(relay.config) == []
