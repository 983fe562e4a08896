"""Exim 4.96 as a smarthost client of smtprelay, with docs/smarthost.md's "Plain Exim
configuration": STARTTLS on 587 and TLS on connect on 465 (`protocol = smtps`), AUTH
PLAIN and LOGIN (one authenticator configured at a time, so each is really used), the
relay's certificate verified against a test CA. With a CA that did not sign the relay's
certificate, Exim refuses to send and keeps the message.

Exim runs from the Debian package unpacked by scripts/install-test-deps, not installed
(tests/peers/unpacked.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Literal

import pytest

from tests.e2e.smarthost_peers import assert_relayed, relay_with_ca
from tests.peers.exim import smarthost_client
from tests.support import message, spooled

pytestmark = pytest.mark.peer


@pytest.mark.parametrize(("implicit", "mechanism"), [
    (False, "PLAIN"), (False, "LOGIN"), (True, "PLAIN"), (True, "LOGIN")],
    ids=["587-plain", "587-login", "465-plain", "465-login"])
def test_exim_relays_with_verified_tls_and_auth(
        tmp_path: Path, implicit: bool, mechanism: Literal["PLAIN", "LOGIN"]) -> None:
    with relay_with_ca(tmp_path) as world:
        relay = world.relay
        cred = relay.credential("acme")
        port = relay.submissions_port if implicit else relay.submission_port
        with smarthost_client(port, cred.username, cred.password, world.ca.cert_file,
                              implicit_tls=implicit, mechanism=mechanism) as exim:
            subject = f"via exim {port} {mechanism} {time.time_ns()}"
            body = "Line one.\r\n.leading dot survives\r\n\r\nBye.\r\n"
            exim.send("app@example.com", ["someone@example.net", "other@example.net"],
                      message(subject=subject, to="someone@example.net", body=body))
            entry = assert_relayed(relay, cred.username, exim.diagnostics, subject, body)
            assert exim.queue() == "", exim.diagnostics()
            # The delivery line: TLS with the certificate verified (CV=yes), the
            # authenticator that was used, and the relay's reply with its message id.
            (line,) = [x for x in exim.log().splitlines() if " => someone@example.net" in x]
            assert "H=relay.test [127.0.0.1]" in line, line
            assert "CV=yes" in line and 'DN="CN=relay.test"' in line, line
            assert f"A=smtprelay_{mechanism.lower()}" in line, line
            assert f'C="250 2.0.0 Ok {entry["id"]}"' in line, line


def test_exim_refuses_a_certificate_its_ca_did_not_sign(tmp_path: Path) -> None:
    with relay_with_ca(tmp_path) as world:
        relay = world.relay
        cred = relay.credential("acme")
        with smarthost_client(relay.submission_port, cred.username, cred.password,
                              world.other_ca.cert_file) as exim:
            exim.send("app@example.com", ["someone@example.net"],
                      message(subject="must not pass", to="someone@example.net"))
            # -odi: the attempt is over when send() returns; the message stays queued.
            assert re.search(r"someone@example.net", exim.queue()), exim.diagnostics()
            log = exim.log()
            assert "=> someone@example.net" not in log
            assert re.search(r"== someone@example.net .*TLS", log), exim.diagnostics()
            assert re.search(r"certificate (verification failed|invalid)|"
                             r"signer not found|not trusted", log,
                             re.IGNORECASE), exim.diagnostics()
            assert spooled(relay.config) == []
