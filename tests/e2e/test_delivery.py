"""Delivery end to end: submission -> spool -> MX lookup on a real DNS server -> SMTP sinks.

Every remote here is a real server on 127.0.0.N: aiosmtpd sinks scripted to misbehave,
raw asyncio servers for what a library will not do, and tests/dnsserver for DNS.
"""

from __future__ import annotations

import asyncio
import email
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool.model import Outcome, QueuedMessage
from tests.e2e.delivery_world import World, wait_for
from tests.sinks import MX_NAME


def test_recipients_of_one_domain_go_in_one_transaction_with_the_spooled_bytes(
        net: World) -> None:
    mx = net.smtp_host("dest.test")
    net.start()
    message_id = net.submit(["a@dest.test", "b@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered", "b@dest.test": "delivered"}
    [txn] = mx.received
    assert txn.mail_from == "app@example.com"
    assert txn.rcpt_tos == ("a@dest.test", "b@dest.test")
    assert b"Subject: delivery test" in txn.data
    kinds = [(o.index, o.kind, o.remote_mta) for o in net.outcomes(message_id)]
    assert kinds == [(0, "delivery", "mx2.dest.test [127.0.0.2]"),
                     (1, "delivery", "mx2.dest.test [127.0.0.2]")]


def _rcpt_state(net: World, message_id: str, address: str) -> tuple[str, str | None]:
    r = next(r for r in net.message(message_id).recipients if r.address == address)
    return r.state.value, r.last_reply


def _bounce(net: World, message_id: str) -> Outcome:
    return next(o for o in net.outcomes(message_id) if o.kind == "bounce")


def _dsns(net: World) -> list[QueuedMessage]:
    return [m for m in net.messages() if m.listener == "dsn"]


# ----------------------------------------------------------------- remote servers

def test_refused_connection_is_deferred_and_delivered_once_the_host_listens(
        net: World) -> None:
    address = net.address()
    net.mx("dest.test", (10, "mx.dest.test", address))
    net.start()
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred"
    assert reply is not None and f"{address}]:{net.port}" in reply and "refused" in reply
    mx = net.sinks.smtp(host=address, port=net.port)  # the host comes back
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    assert [t.rcpt_tos for t in mx.received] == [("a@dest.test",)]


def test_connection_dropped_mid_data_is_retried_and_delivered(net: World) -> None:
    mx = net.smtp_host("dest.test", drop_mid_data=True)
    net.start()
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: "dropped" in mx.events)
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    assert _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred"
    reply = _rcpt_state(net, message_id, "a@dest.test")[1]
    assert reply is not None and "lost connection" in reply
    mx.script.drop_mid_data = False
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    assert len(mx.received) == 1


def test_421_greeting_defers_with_the_servers_words(net: World) -> None:
    net.raw_host("dest.test", _greeting("421 4.3.2 mx busy, come back later"))
    net.start()
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred"
    assert reply is not None and "421 4.3.2 mx busy" in reply


def test_451_for_one_of_three_recipients_delivers_two_and_retries_the_third(
        net: World) -> None:
    mx = net.smtp_host("dest.test", rcpt_replies={"b@dest.test": "451 4.2.0 greylisted"})
    net.start()
    message_id = net.submit(["a@dest.test", "b@dest.test", "c@dest.test"])
    wait_for(lambda: net.states(message_id)["b@dest.test"] == "deferred")
    assert net.states(message_id) == {"a@dest.test": "delivered", "b@dest.test": "deferred",
                                      "c@dest.test": "delivered"}
    assert [t.rcpt_tos for t in mx.received] == [("a@dest.test", "c@dest.test")]
    mx.script.rcpt_replies.clear()
    assert net.wait_final(message_id)["b@dest.test"] == "delivered"
    assert [t.rcpt_tos for t in mx.received] == [("a@dest.test", "c@dest.test"),
                                                 ("b@dest.test",)]
    assert not _dsns(net)


def test_550_user_unknown_bounces_and_the_sender_gets_one_dsn(net: World) -> None:
    mx = net.smtp_host("dest.test",
                       rcpt_replies={"gone@dest.test": "550 5.1.1 <gone@dest.test>: no such user"})
    senders_mx = net.smtp_host("example.com")  # where the DSN goes
    net.start()
    message_id = net.submit(["a@dest.test", "gone@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered",
                                          "gone@dest.test": "bounced"}
    bounce = _bounce(net, message_id)
    assert (bounce.bounce_type, bounce.bounce_subtype, bounce.status) == (
        "Permanent", "NoEmail", "5.1.1")
    assert bounce.diagnostic == "smtp; 550 5.1.1 <gone@dest.test>: no such user"
    assert bounce.remote_mta == "mx2.dest.test [127.0.0.2]"
    assert [t.rcpt_tos for t in mx.received] == [("a@dest.test",)]
    wait_for(lambda: senders_mx.received)
    [dsn] = senders_mx.received
    assert dsn.mail_from in ("", "<>") and dsn.rcpt_tos == ("app@example.com",)
    parsed = email.message_from_bytes(dsn.data)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    text = dsn.data.decode()
    assert "Final-Recipient: rfc822; gone@dest.test" in text
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 <gone@dest.test>: no such user" in text
    assert "Remote-MTA: dns; mx2.dest.test" in text
    assert "Subject: delivery test" in text  # the original's header section
    assert "a@dest.test" not in text.split("Content-Type: message/delivery-status")[1].split(
        "Content-Type: text/rfc822-headers")[0]
    [spooled_dsn] = _dsns(net)
    assert spooled_dsn.attrs == {"dsn_for": message_id}


def test_552_on_data_bounces_every_recipient_in_one_dsn(net: World) -> None:
    net.smtp_host("dest.test", data_reply="552 5.3.4 message too big for us")
    senders_mx = net.smtp_host("example.com")
    net.start()
    message_id = net.submit(["a@dest.test", "b@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "bounced", "b@dest.test": "bounced"}
    assert {(o.bounce_type, o.bounce_subtype) for o in net.outcomes(message_id)} == {
        ("Transient", "MessageTooLarge")}
    wait_for(lambda: senders_mx.received)
    [dsn] = senders_mx.received
    text = dsn.data.decode()
    assert text.count("Final-Recipient:") == 2 and text.count("Status: 5.3.4") == 2


def test_server_that_greets_then_stalls_is_given_up_on_after_the_timeout(net: World) -> None:
    mx = net.smtp_host("dest.test", stall_at="EHLO")
    net.start()  # command_timeout 3s
    message_id = net.submit(["a@dest.test"])
    started = time.monotonic()
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred", 15)
    assert time.monotonic() - started >= 2.5
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred"
    assert reply is not None and "timed out while sending EHLO" in reply
    assert "stalled" in mx.events and not mx.received


def test_broken_starttls_is_retried_in_clear_when_opportunistic(net: World) -> None:
    mx = net.smtp_host("dest.test", starttls=True, starttls_failure="close")
    net.start()
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    assert "tls-broken" in mx.events
    [txn] = mx.received
    assert txn.tls is False


def test_working_starttls_is_used(net: World) -> None:
    mx = net.smtp_host("dest.test", starttls=True)
    net.start()
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    [txn] = mx.received
    assert txn.tls is True and txn.tls_version in ("TLSv1.2", "TLSv1.3")


def test_broken_starttls_defers_when_tls_is_required(net: World) -> None:
    mx = net.smtp_host("dest.test", starttls=True, starttls_failure="close")
    net.start(tls="require")
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred" and reply is not None and "TLS handshake" in reply
    assert "tls-broken" in mx.events and not mx.received
    bounce_free = [o for o in net.outcomes(message_id) if o.kind == "bounce"]
    assert bounce_free == []


def test_tls_required_by_the_configuration_set_defers_a_host_without_starttls(
        net: World) -> None:
    mx = net.smtp_host("dest.test")  # offers no STARTTLS
    net.start(top={"configuration_sets": {"transactional": {"tls": "require"}}})
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred"
    assert reply is not None and "TLS is required, but was not offered" in reply
    assert not mx.received


def test_first_mx_dead_second_alive(net: World) -> None:
    dead = net.address()
    net.mx("dest.test", (5, "dead.dest.test", dead))
    backup = net.smtp_host("dest.test", preference=20)
    net.start()
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    assert len(backup.received) == 1
    [delivery] = net.outcomes(message_id)
    assert delivery.remote_mta is not None and backup.host in delivery.remote_mta


def test_many_messages_share_few_sessions_within_the_domain_limit(net: World) -> None:
    mx = net.smtp_host("dest.test")
    net.start(max_connections_per_domain=2, idle_timeout="10s")
    ids = [net.submit([f"u{i}@dest.test"]) for i in range(12)]
    for message_id in ids:
        assert net.wait_final(message_id) == {net.message(message_id).recipients[0].address:
                                              "delivered"}
    assert len(mx.received) == 12
    # Connection reuse: twelve messages, at most two sessions (the per-domain limit).
    assert 1 <= len(mx.sessions) <= 2


# ------------------------------------------------------------------------------ DNS

@pytest.mark.parametrize(("setup", "status", "subtype"), [
    ("nxdomain", "5.1.2", "NoEmail"),
    ("null-mx", "5.1.10", "NoEmail"),
    ("mx-without-address", "5.4.4", "NoEmail"),
])
def test_dns_answers_that_are_final_bounce(net: World, setup: str, status: str,
                                           subtype: str) -> None:
    if setup == "null-mx":
        net.dns.add("dest.test", "MX", "0 .")
    elif setup == "mx-without-address":
        net.mx("dest.test", (10, "nowhere.dest.test", None))
        net.dns.add("dest.test", "TXT", "\"exists\"")
    senders_mx = net.smtp_host("example.com")
    net.start()
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "bounced"}
    bounce = _bounce(net, message_id)
    assert (bounce.status, bounce.bounce_type, bounce.bounce_subtype) == (
        status, "Permanent", subtype)
    wait_for(lambda: senders_mx.received)
    assert f"Status: {status}" in senders_mx.received[0].data.decode()


@pytest.mark.parametrize("failure", ["SERVFAIL", "TIMEOUT"])
def test_dns_failures_defer_and_recover(net: World, failure: str) -> None:
    mx = net.smtp_host("dest.test")
    net.dns.fail("dest.test", failure, "MX")
    net.start()
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred" and reply is not None and reply.startswith("x-dns;")
    net.dns.heal("dest.test", "MX")
    # The resolver caches a temporary failure for 30 s: an operator's flush is what
    # makes it try at once, and the cache is what keeps a dead DNS from being hammered.
    assert net.relay is not None
    net.relay.relay.transport._resolver.clear_cache()  # type: ignore[union-attr]
    assert net.wait_final(message_id, timeout=20) == {"a@dest.test": "delivered"}
    assert len(mx.received) == 1


# ------------------------------------------------------------------- queue lifetime

def test_recipient_bounces_when_its_queue_lifetime_is_over(net: World) -> None:
    net.mx("dest.test", (10, "mx.dest.test", net.address()))  # nothing listens there
    senders_mx = net.smtp_host("example.com")
    net.start(retry={"first": "1s", "max_interval": "1s", "max_lifetime": "3s"},
              delay={"after": "1s", "every": "1h"})
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id, timeout=20) == {"a@dest.test": "bounced"}
    outcomes = net.outcomes(message_id)
    delays = [o for o in outcomes if o.kind == "delay"]
    assert len(delays) == 1  # once per `every`, however many attempts
    assert delays[0].delay_type == "TransientCommunicationFailure"
    bounce = _bounce(net, message_id)
    assert (bounce.bounce_type, bounce.bounce_subtype) == ("Transient", "General")
    assert bounce.status.startswith("4.4.") and "gave up after" in (bounce.diagnostic or "")
    wait_for(lambda: senders_mx.received)
    assert "Action: failed" in senders_mx.received[0].data.decode()


def test_a_dsn_to_a_sender_whose_domain_bounces_too_is_not_answered(net: World) -> None:
    net.smtp_host("dest.test", rcpt_replies={"gone@dest.test": "550 5.1.1 no such user"})
    net.dns.add("example.com", "MX", "0 .")  # the sender's own domain takes no mail
    net.start()
    message_id = net.submit(["gone@dest.test"])
    assert net.wait_final(message_id) == {"gone@dest.test": "bounced"}
    wait_for(lambda: _dsns(net) and net.wait_final(_dsns(net)[0].message_id))
    [dsn] = _dsns(net)
    assert net.wait_final(dsn.message_id) == {"app@example.com": "bounced"}
    time.sleep(1.5)  # a loop would have spooled a DSN for the DSN by now
    assert len(net.messages()) == 2
    assert dsn.mail_from == ""


def _greeting(reply: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply.encode() + b"\r\n")
        await writer.drain()
        try:
            await asyncio.wait_for(reader.readline(), 2)
        except TimeoutError:
            pass
        writer.close()
    return handler


# ------------------------------------------------------------------------- smarthost

def _smarthost(net: World, sink_dir: Path) -> dict[str, Any]:
    return {"mode": "smarthost", "smarthost": {
        "host": MX_NAME, "port": net.port, "tls": "starttls", "verify_certificate": True,
        "ca_file": str(sink_dir / "sink-cert.pem"), "username": "relayuser",
        "password_env": "UPSTREAM_PASSWORD"}}


def test_smarthost_mode_sends_everything_upstream_with_auth_over_verified_tls(
        net: World, sink_tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = net.sinks.smtp(host=net.address(), port=net.port, starttls=True,
                              auth={"relayuser": "s3cret"})
    net.dns.add(MX_NAME, "A", upstream.host)
    monkeypatch.setenv("UPSTREAM_PASSWORD", "s3cret")
    net.start(**_smarthost(net, sink_tls_dir))
    message_id = net.submit(["a@dest.test", "b@other.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered", "b@other.test": "delivered"}
    assert sorted(t.rcpt_tos for t in upstream.received) == [("a@dest.test",), ("b@other.test",)]
    assert all(t.tls and t.auth_login == "relayuser" for t in upstream.received)


def test_smarthost_with_a_wrong_password_defers_and_never_bounces(
        net: World, sink_tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = net.sinks.smtp(host=net.address(), port=net.port, starttls=True,
                              auth={"relayuser": "s3cret"})
    net.dns.add(MX_NAME, "A", upstream.host)
    monkeypatch.setenv("UPSTREAM_PASSWORD", "wrong")
    net.start(**_smarthost(net, sink_tls_dir))
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred" and reply is not None and "535" in reply
    assert not upstream.received


def test_smarthost_whose_certificate_does_not_verify_gets_nothing(
        net: World, sink_tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    upstream = net.sinks.smtp(host=net.address(), port=net.port, starttls=True,
                              auth={"relayuser": "s3cret"})
    net.dns.add(MX_NAME, "A", upstream.host)
    monkeypatch.setenv("UPSTREAM_PASSWORD", "s3cret")
    settings = _smarthost(net, sink_tls_dir)
    settings["smarthost"]["ca_file"] = None  # the system CAs do not know the sink's
    net.start(**settings)
    message_id = net.submit(["a@dest.test"])
    wait_for(lambda: _rcpt_state(net, message_id, "a@dest.test")[0] == "deferred")
    state, reply = _rcpt_state(net, message_id, "a@dest.test")
    assert state == "deferred" and reply is not None and "certificate verify failed" in reply
    assert not upstream.received and upstream.sessions and not any(
        "AUTH" in s.commands for s in upstream.sessions)


def test_a_message_whose_every_recipient_is_suppressed_still_gets_its_dsn(net: World) -> None:
    senders_mx = net.smtp_host("example.com")
    relay = net.start()
    store = SQLiteSuppressionStore(relay.config.state_path)
    store.open()
    store.add("acme", "gone@dest.test", "BOUNCE")
    store.close()
    message_id = net.submit(["gone@dest.test"])
    assert net.states(message_id) == {"gone@dest.test": "suppressed"}
    wait_for(lambda: senders_mx.received)
    [dsn] = senders_mx.received
    text = dsn.data.decode()
    assert "Final-Recipient: rfc822; gone@dest.test" in text
    assert "suppression list" in text
    assert [m.attrs for m in _dsns(net)] == [{"dsn_for": message_id}]
