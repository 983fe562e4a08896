"""The outbound SMTP client against real receiving MTAs on loopback (tests/sinks.py).

Each test scripts a sink (aiosmtpd, or a raw asyncio server where a library will not
misbehave), runs one Connection against it and checks both sides: the per-recipient
results the scheduler will act on, and what the sink actually received.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from smtprelay.delivery.client import (
    ClientSettings,
    ConnectError,
    Connection,
    Reply,
    TLSPolicy,
    parse_retry_hint,
)
from smtprelay.delivery.model import Destination, Transaction, Verdict, WireForm
from tests.sinks import HOST, MX_NAME, Sink, SinkFactory, closed_port
from tests.support import examples

MESSAGE = (
    b"From: sender@example.com\r\n"
    b"To: rcpt@example.net\r\n"
    b"Subject: delivery test\r\n"
    b"\r\n"
    b"Hello.\r\n"
    b".a line that starts with a dot must survive transparency\r\n"
    b"..and two dots too\r\n"
)
SENDER = "bounces@mail.example.com"


def settings(sink: Sink | int, **options: Any) -> ClientSettings:
    port = sink if isinstance(sink, int) else sink.port
    values: dict[str, Any] = {"helo": "relay.test", "port": port, "connect_timeout": 5.0,
                              "command_timeout": 5.0}
    values.update(options)
    return ClientSettings(**values)


def txn(*recipients: str, data: bytes = MESSAGE, **options: Any) -> Transaction:
    return Transaction(mail_from=SENDER, recipients=recipients or ("rcpt@example.net",),
                       data=data, **options)


async def deliver(sink: Sink, transaction: Transaction, **options: Any) -> list[Any]:
    conn = await Connection.open(sink.destination, settings(sink, **options))
    try:
        return await conn.send(transaction)
    finally:
        await conn.close()


# ---------------------------------------------------------------- delivered

async def test_delivered_in_clear(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await Connection.open(sink.destination, settings(sink))
    assert conn.tls_version is None
    results = await conn.send(txn("a@example.net", "b@example.net"))
    await conn.close()

    assert [r.verdict for r in results] == [Verdict.DELIVERED, Verdict.DELIVERED]
    assert [r.recipient for r in results] == ["a@example.net", "b@example.net"]
    first = results[0]
    assert first.code == 250 and first.status == "2.0.0"
    assert first.diagnostic.startswith("smtp; 250 2.0.0 Ok")
    assert first.remote_mta == f"{MX_NAME} [{HOST}]"
    (got,) = sink.received
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ("a@example.net", "b@example.net")
    assert got.data == MESSAGE  # byte for byte, dots unstuffed by the sink
    assert not got.tls
    assert sink.sessions[0].commands[-1] == "QUIT"


async def test_delivered_over_opportunistic_starttls(sinks: SinkFactory) -> None:
    sink = sinks.smtp(starttls=True)
    conn = await Connection.open(sink.destination, settings(sink))
    assert conn.tls_version is not None and conn.tls_version.startswith("TLSv1.")
    results = await conn.send(txn())
    await conn.close()

    assert results[0].verdict is Verdict.DELIVERED
    (got,) = sink.received
    assert got.tls and got.data == MESSAGE
    # RFC 3207 4.2: EHLO again after the handshake.
    assert sink.sessions[0].commands[:3] == ["EHLO", "STARTTLS", "EHLO"]


async def test_require_tls_with_starttls_offered_delivers(sinks: SinkFactory) -> None:
    sink = sinks.smtp(starttls=True)
    results = await deliver(sink, txn(), tls=TLSPolicy.REQUIRE)
    assert results[0].verdict is Verdict.DELIVERED
    assert sink.received[0].tls


async def test_tls_policy_none_never_starts_tls(sinks: SinkFactory) -> None:
    sink = sinks.smtp(starttls=True)
    await deliver(sink, txn(), tls=TLSPolicy.NONE)
    assert "STARTTLS" not in sink.sessions[0].commands
    assert not sink.received[0].tls


async def test_null_sender(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    dsn = Transaction(mail_from="", recipients=("a@example.net",), data=MESSAGE)
    results = await deliver(sink, dsn)
    assert results[0].verdict is Verdict.DELIVERED
    assert sink.received[0].mail_from == "<>"  # aiosmtpd's spelling of the null path


async def test_body_without_final_crlf_is_terminated(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    results = await deliver(sink, txn(data=b"Subject: x\r\n\r\nno newline at the end"))
    assert results[0].verdict is Verdict.DELIVERED
    assert sink.received[0].data == b"Subject: x\r\n\r\nno newline at the end\r\n"


# --------------------------------------------------------------- pipelining

async def test_pipelining_used_when_offered(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    results = await deliver(sink, txn("a@example.net", "b@example.net", "c@example.net"))
    assert all(r.verdict is Verdict.DELIVERED for r in results)
    assert sink.sessions[0].mail_pipelined == [True]


async def test_no_pipelining_when_not_offered(sinks: SinkFactory) -> None:
    sink = sinks.smtp(pipelining=False)
    results = await deliver(sink, txn("a@example.net", "b@example.net"))
    assert all(r.verdict is Verdict.DELIVERED for r in results)
    assert sink.sessions[0].mail_pipelined == [False]


# ------------------------------------------------------------------- reuse

async def test_two_transactions_on_one_connection(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await Connection.open(sink.destination, settings(sink))
    first = await conn.send(txn("a@example.net"))
    assert conn.reusable
    second = await conn.send(txn("b@example.net", data=MESSAGE + b"second\r\n"))
    await conn.close()

    assert first[0].verdict is second[0].verdict is Verdict.DELIVERED
    assert len(sink.sessions) == 1
    assert [(r.rcpt_tos, r.session) for r in sink.received] == [
        (("a@example.net",), 0), (("b@example.net",), 0)]
    assert conn.transactions == 2 and not conn.reusable


async def test_rset_after_failed_transaction_then_reuse(sinks: SinkFactory) -> None:
    sink = sinks.smtp(rcpt_replies={"gone@example.net": "550 5.1.1 <gone@example.net>: "
                                                         "Recipient address rejected"})
    conn = await Connection.open(sink.destination, settings(sink))
    failed = await conn.send(txn("gone@example.net"))
    assert failed[0].verdict is Verdict.BOUNCED
    assert conn.reusable
    ok = await conn.send(txn("here@example.net"))
    await conn.close()

    assert ok[0].verdict is Verdict.DELIVERED
    commands = sink.sessions[0].commands
    # Every RCPT refused: the pipelined DATA is refused by the server (nothing is
    # sent), then RSET, and the session carries the next message.
    assert commands == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    assert [r.rcpt_tos for r in sink.received] == [("here@example.net",)]


async def test_send_on_closed_connection_defers(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    conn = await Connection.open(sink.destination, settings(sink))
    await conn.close()
    await conn.close()  # idempotent
    results = await conn.send(txn())
    assert results[0].verdict is Verdict.DEFERRED and results[0].status == "4.4.2"
    assert sink.received == []


# ------------------------------------------------------- connection trouble

async def test_connection_refused_is_deferred() -> None:
    port = closed_port()
    dest = Destination(host=MX_NAME, address=HOST)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(dest, settings(port))
    err = caught.value
    assert err.verdict is Verdict.DEFERRED and err.status == "4.4.1"
    assert f"{MX_NAME} [{HOST}]:{port}" in err.diagnostic and err.code is None


async def test_421_greeting_is_deferred_with_retry_hint(sinks: SinkFactory) -> None:
    sink = sinks.greeting("421 4.3.2 Service shutting down, try again in 2 minutes")
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(sink))
    err = caught.value
    assert err.verdict is Verdict.DEFERRED and err.code == 421 and err.status == "4.3.2"
    assert err.diagnostic == "smtp; 421 4.3.2 Service shutting down, try again in 2 minutes"
    assert err.retry_after == 120
    assert err.remote_mta == f"{MX_NAME} [{HOST}]"


async def test_554_greeting_is_a_bounce_for_this_host(sinks: SinkFactory) -> None:
    sink = sinks.greeting("554 5.7.1 No SMTP service here")
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(sink))
    assert caught.value.verdict is Verdict.BOUNCED and caught.value.status == "5.7.1"


async def test_drop_mid_data_defers_everyone(sinks: SinkFactory) -> None:
    sink = sinks.smtp(drop_mid_data=True)
    conn = await Connection.open(sink.destination, settings(sink))
    big = MESSAGE + b"x" * 200_000 + b"\r\n"
    results = await conn.send(txn("a@example.net", "b@example.net", data=big))
    assert [(r.verdict, r.status, r.code) for r in results] == [
        (Verdict.DEFERRED, "4.4.2", None)] * 2
    assert "lost connection" in results[0].diagnostic
    assert not conn.reusable
    await conn.close()  # never raises on a dead connection
    assert sink.events == ["dropped"] and sink.received == []


async def test_greeting_then_stall_times_out(sinks: SinkFactory) -> None:
    sink = sinks.smtp(stall_at="EHLO")
    started = time.monotonic()
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(sink, command_timeout=1.0))
    assert time.monotonic() - started < 3
    err = caught.value
    assert err.verdict is Verdict.DEFERRED and err.status == "4.4.2"
    assert "timed out while sending EHLO" in err.diagnostic


async def test_stall_after_end_of_data_defers(sinks: SinkFactory) -> None:
    sink = sinks.smtp(stall_at="DATA")
    conn = await Connection.open(sink.destination, settings(sink, command_timeout=0.5))
    started = time.monotonic()
    results = await conn.send(txn())
    assert time.monotonic() - started < 3
    assert results[0].verdict is Verdict.DEFERRED and results[0].status == "4.4.2"
    assert "may be sent more than once" in results[0].diagnostic
    assert not conn.reusable
    await conn.close()


async def test_421_on_rcpt_defers_the_rest_and_ends_the_session(sinks: SinkFactory) -> None:
    sink = sinks.smtp(rcpt_replies={
        "a@example.net": "550 5.1.1 user unknown",
        "b@example.net": "421 4.7.0 Too many errors, closing"})
    conn = await Connection.open(sink.destination, settings(sink))
    results = await conn.send(txn("a@example.net", "b@example.net", "c@example.net"))
    # The refusal read before the 421 stands; everyone not yet answered waits.
    assert [(r.verdict, r.code) for r in results] == [
        (Verdict.BOUNCED, 550), (Verdict.DEFERRED, 421), (Verdict.DEFERRED, 421)]
    assert results[2].diagnostic == "smtp; 421 4.7.0 Too many errors, closing"
    assert results[2].status == "4.7.0"
    assert not conn.reusable
    await conn.close()
    assert sink.received == []


# ----------------------------------------------------------------- replies

async def test_451_for_one_of_three(sinks: SinkFactory) -> None:
    sink = sinks.smtp(rcpt_replies={
        "b@example.net": "451 4.7.1 Greylisted, please try again in 5 minutes"})
    results = await deliver(sink, txn("a@example.net", "b@example.net", "c@example.net"))
    assert [r.verdict for r in results] == [
        Verdict.DELIVERED, Verdict.DEFERRED, Verdict.DELIVERED]
    deferred = results[1]
    assert deferred.code == 451 and deferred.status == "4.7.1"
    assert deferred.diagnostic == (
        "smtp; 451 4.7.1 Greylisted, please try again in 5 minutes")
    assert deferred.retry_after == 300
    assert results[0].retry_after is None
    (got,) = sink.received  # one message, two recipients
    assert got.rcpt_tos == ("a@example.net", "c@example.net")


async def test_550_user_unknown_bounces(sinks: SinkFactory) -> None:
    sink = sinks.smtp(rcpt_replies={
        "gone@example.net": "550 5.1.1 <gone@example.net>: Recipient address rejected: "
                            "User unknown"})
    results = await deliver(sink, txn("gone@example.net", "here@example.net"))
    gone, here = results
    assert gone.verdict is Verdict.BOUNCED and gone.code == 550 and gone.status == "5.1.1"
    assert gone.diagnostic.startswith("smtp; 550 5.1.1 <gone@example.net>: Recipient")
    assert gone.retry_after is None
    assert here.verdict is Verdict.DELIVERED
    assert sink.received[0].rcpt_tos == ("here@example.net",)


async def test_552_on_end_of_data_bounces_all(sinks: SinkFactory) -> None:
    sink = sinks.smtp(data_reply="552 5.3.4 Message size exceeds fixed limit")
    conn = await Connection.open(sink.destination, settings(sink))
    results = await conn.send(txn("a@example.net", "b@example.net"))
    assert [(r.verdict, r.code, r.status) for r in results] == [
        (Verdict.BOUNCED, 552, "5.3.4")] * 2
    assert conn.reusable
    await conn.close()
    assert sink.received == [] and len(sink.transactions) == 1


async def test_451_on_end_of_data_defers(sinks: SinkFactory) -> None:
    sink = sinks.smtp(data_reply="451 4.3.0 Temporary local problem, retry in 300 seconds")
    results = await deliver(sink, txn("a@example.net"))
    assert results[0].verdict is Verdict.DEFERRED and results[0].retry_after == 300


async def test_control_characters_in_a_reply_are_kept_as_escapes(sinks: SinkFactory) -> None:
    sink = sinks.smtp(data_reply="451 4.3.0 busy\x1b[2J\x07 try later")
    [result] = await deliver(sink, txn("a@example.net"))
    assert result.verdict is Verdict.DEFERRED
    assert result.diagnostic == "smtp; 451 4.3.0 busy\\x1b[2J\\x07 try later"


@pytest.mark.parametrize(("reply", "verdict", "status"), [
    ("451 4.3.0 Sender domain temporarily unresolvable", Verdict.DEFERRED, "4.3.0"),
    ("553 5.7.1 Sender address rejected", Verdict.BOUNCED, "5.7.1"),
    ("550 sender rejected", Verdict.BOUNCED, "5.0.0"),  # no enhanced code: from the class
    ("452 too busy", Verdict.DEFERRED, "4.0.0"),
])
async def test_mail_refused_applies_to_all(sinks: SinkFactory, reply: str,
                                           verdict: Verdict, status: str) -> None:
    sink = sinks.smtp(mail_reply=reply)
    conn = await Connection.open(sink.destination, settings(sink))
    results = await conn.send(txn("a@example.net", "b@example.net"))
    assert [(r.verdict, r.status) for r in results] == [(verdict, status)] * 2
    assert results[0].diagnostic == f"smtp; {reply}"
    assert conn.reusable
    await conn.close()
    # DATA went in the pipelined group and was refused: nothing was transferred.
    assert sink.received == [] and sink.transactions == []
    assert sink.sessions[0].commands[-2:] == ["RSET", "QUIT"]


# ---------------------------------------------------------------- STARTTLS

@pytest.mark.parametrize("failure", ["garbage", "close"])
async def test_starttls_failure_opportunistic_retries_in_clear(
        sinks: SinkFactory, failure: str) -> None:
    sink = sinks.smtp(starttls=True, starttls_failure=failure)
    conn = await Connection.open(sink.destination, settings(sink))
    assert conn.tls_fallback and conn.tls_version is None
    results = await conn.send(txn())
    await conn.close()

    assert results[0].verdict is Verdict.DELIVERED
    assert sink.events == ["tls-broken"]
    assert len(sink.sessions) == 2  # the broken session, then a fresh one in clear
    assert "STARTTLS" not in sink.sessions[1].commands
    (got,) = sink.received
    assert not got.tls and got.session == 1


@pytest.mark.parametrize("failure", ["garbage", "close"])
async def test_starttls_failure_required_defers(sinks: SinkFactory, failure: str) -> None:
    sink = sinks.smtp(starttls=True, starttls_failure=failure)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(sink, tls=TLSPolicy.REQUIRE))
    assert caught.value.verdict is Verdict.DEFERRED and caught.value.status == "4.7.5"
    assert len(sink.sessions) == 1 and sink.transactions == []


async def test_starttls_not_offered_required_defers(sinks: SinkFactory) -> None:
    sink = sinks.smtp(starttls=False)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(sink, tls=TLSPolicy.REQUIRE))
    err = caught.value
    assert err.verdict is Verdict.DEFERRED and err.status == "4.7.4"
    assert "not offered" in err.diagnostic
    assert "MAIL" not in sink.sessions[0].commands


async def test_verified_tls_with_the_sink_certificate_as_ca(
        sinks: SinkFactory, sink_tls_dir: Path) -> None:
    sink = sinks.smtp(starttls=True)
    results = await deliver(sink, txn(), tls=TLSPolicy.REQUIRE, verify_certificates=True,
                            ca_file=str(sink_tls_dir / "sink-cert.pem"))
    assert results[0].verdict is Verdict.DELIVERED and sink.received[0].tls


async def test_verification_failure_with_require_defers(sinks: SinkFactory) -> None:
    sink = sinks.smtp(starttls=True)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(
            sink, tls=TLSPolicy.REQUIRE, verify_certificates=True))
    assert caught.value.status == "4.7.5" and "certificate" in caught.value.diagnostic.lower()


# --------------------------------------------------------------------- AUTH

USERS = {"relay": "s3cret"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_auth_good_credentials(sinks: SinkFactory, mechanism: str) -> None:
    sink = sinks.smtp(starttls=True, auth=USERS, auth_mechanisms=(mechanism,))
    results = await deliver(sink, txn(), tls=TLSPolicy.REQUIRE, username="relay",
                            password="s3cret")
    assert results[0].verdict is Verdict.DELIVERED
    got = sink.received[0]
    assert got.auth_login == "relay" and got.tls


async def test_auth_bad_credentials_defers(sinks: SinkFactory) -> None:
    # A wrong smarthost password is the operator's problem: mail waits in the queue.
    sink = sinks.smtp(starttls=True, auth=USERS)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(
            sink, tls=TLSPolicy.REQUIRE, username="relay", password="wrong"))
    err = caught.value
    assert err.verdict is Verdict.DEFERRED and err.code == 535 and err.status == "4.7.8"
    assert err.diagnostic.startswith("smtp; 535 5.7.8")
    assert "wrong" not in err.diagnostic
    assert sink.transactions == []


async def test_auth_never_in_clear(sinks: SinkFactory) -> None:
    sink = sinks.smtp(implicit_tls=False, auth=USERS)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(
            sink, tls=TLSPolicy.OPPORTUNISTIC, username="relay", password="s3cret"))
    assert caught.value.verdict is Verdict.DEFERRED and "without TLS" in str(caught.value)
    assert "AUTH" not in sink.sessions[0].commands


async def test_implicit_tls_smarthost_with_auth(sinks: SinkFactory) -> None:
    sink = sinks.smtp(implicit_tls=True, auth=USERS)
    results = await deliver(sink, txn(), implicit_tls=True, tls=TLSPolicy.REQUIRE,
                            username="relay", password="s3cret")
    assert results[0].verdict is Verdict.DELIVERED
    got = sink.received[0]
    assert got.tls and got.auth_login == "relay"
    assert "STARTTLS" not in sink.sessions[0].commands


# ------------------------------------------------------ SMTPUTF8 / 8BITMIME

UTF8_RCPT = "jörg@exämple.net"
UTF8_MESSAGE = "Subject: grüße\r\nTo: jörg@exämple.net\r\n\r\nschön\r\n".encode()


async def test_smtputf8_offered(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    results = await deliver(sink, txn(UTF8_RCPT, data=UTF8_MESSAGE, smtputf8=True,
                                      body_8bitmime=True))
    assert results[0].verdict is Verdict.DELIVERED
    got = sink.received[0]
    assert got.rcpt_tos == (UTF8_RCPT,) and got.data == UTF8_MESSAGE
    assert "SMTPUTF8" in got.mail_options and "BODY=8BITMIME" in got.mail_options


async def test_smtputf8_not_offered_bounces_without_sending(sinks: SinkFactory) -> None:
    sink = sinks.smtp(smtputf8=False)
    conn = await Connection.open(sink.destination, settings(sink))
    results = await conn.send(txn(UTF8_RCPT, "b@example.net", data=UTF8_MESSAGE,
                                  smtputf8=True))
    assert [(r.verdict, r.status, r.code) for r in results] == [
        (Verdict.BOUNCED, "5.6.7", None)] * 2
    assert conn.reusable  # nothing was said, the session is clean
    await conn.close()
    assert "MAIL" not in sink.sessions[0].commands


async def test_plain_message_does_not_claim_smtputf8(sinks: SinkFactory) -> None:
    sink = sinks.smtp()
    await deliver(sink, txn())
    assert "SMTPUTF8" not in sink.received[0].mail_options
    assert "BODY=8BITMIME" not in sink.received[0].mail_options


async def test_8bitmime_not_offered_bounces(sinks: SinkFactory) -> None:
    sink = sinks.smtp(eightbitmime=False)
    results = await deliver(sink, txn(data="Subject: x\r\n\r\nschön\r\n".encode(),
                                      body_8bitmime=True))
    assert results[0].verdict is Verdict.BOUNCED and results[0].status == "5.6.3"
    assert "MAIL" not in sink.sessions[0].commands


# --------------------------------------------------------------------- SIZE

async def test_size_declared_when_offered(sinks: SinkFactory) -> None:
    sink = sinks.smtp(size=100_000)
    await deliver(sink, txn())
    assert f"SIZE={len(MESSAGE)}" in sink.received[0].mail_options


async def test_message_over_advertised_size_bounces_without_sending(
        sinks: SinkFactory) -> None:
    sink = sinks.smtp(size=1000)
    results = await deliver(sink, txn(data=MESSAGE + b"y" * 2000 + b"\r\n"))
    assert results[0].verdict is Verdict.BOUNCED and results[0].status == "5.3.4"
    assert "MAIL" not in sink.sessions[0].commands


# ------------------------------------------------------------ HELO fallback

async def test_helo_fallback_when_ehlo_unknown(sinks: SinkFactory) -> None:
    """An RFC 821 server: 502 to EHLO, then HELO and plain MAIL without parameters."""
    lines: list[str] = []

    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 old.example ready\r\n")
        while line := (await reader.readline()).decode():
            lines.append(line.rstrip("\r\n"))
            verb = line[:4].upper()
            if verb == "EHLO":
                writer.write(b"502 command not recognized\r\n")
            elif verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                while (await reader.readline()) != b".\r\n":
                    pass
                writer.write(b"250 accepted\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()

    sink = sinks.raw(old_server)
    conn = await Connection.open(sink.destination, settings(sink))
    assert not conn.esmtp and conn.extensions == {}
    results = await conn.send(txn())
    await conn.close()
    assert results[0].verdict is Verdict.DELIVERED and results[0].status == "2.0.0"
    assert lines[:3] == ["EHLO relay.test", "HELO relay.test", f"MAIL FROM:<{SENDER}>"]


async def test_plaintext_after_starttls_220_is_refused(sinks: SinkFactory) -> None:
    """Bytes sent in clear after "220" to STARTTLS are an injection (CVE-2011-0411)."""

    async def injector(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mx ready\r\n")
        await reader.readline()
        writer.write(b"250-mx\r\n250 STARTTLS\r\n")
        await reader.readline()
        writer.write(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        await writer.drain()
        await reader.read(1)

    sink = sinks.raw(injector)
    with pytest.raises(ConnectError) as caught:
        await Connection.open(sink.destination, settings(sink, tls=TLSPolicy.REQUIRE))
    assert caught.value.status == "4.7.5" and "after its STARTTLS" in caught.value.diagnostic


# -------------------------------------------------------------- reply parts

@pytest.mark.parametrize(("text", "seconds"), [
    ("4.7.1 Greylisted, try again in 5 minutes", 300),
    ("4.3.0 retry in 300 seconds", 300),
    ("Greylisted for 60s", 60),
    ("please wait 2 min before retrying", 120),
    ("Try again in 1 hour", 3600),
    ("4.2.1 Please try again later", None),
    ("4.7.0 Try again at 10:30", None),
    ("4.4.5 Insufficient system storage", None),
    ("retry in 9999 hours", 86400),  # capped: a hint is advice, not a command
])
def test_retry_hint(text: str, seconds: float | None) -> None:
    assert parse_retry_hint(text) == seconds


@pytest.mark.parametrize(("code", "text", "status"), [
    (250, "2.0.0 Ok: queued as ABC", "2.0.0"),
    (550, "5.1.1 user unknown", "5.1.1"),
    (451, "5.7.1 mismatched class", "4.7.1"),  # the reply code's class wins
    (554, "no enhanced code", "5.0.0"),
    (421, "", "4.0.0"),
])
def test_reply_status(code: int, text: str, status: str) -> None:
    assert Reply(code, (text,)).status == status


def test_multiline_reply_diagnostic() -> None:
    reply = Reply(550, ("5.7.1 Message rejected", "5.7.1 see https://example.net/why"))
    assert reply.diagnostic == (
        "smtp; 550 5.7.1 Message rejected 5.7.1 see https://example.net/why")


# ------------------------------------------------------------ DATA in the pipeline

def _pipelining_server(lines: list[str], batches: list[bytes], *,
                       data_reply: bytes) -> Any:
    """A server offering PIPELINING that records what arrived in each read."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 pipe.example ready\r\n")
        await writer.drain()
        line = await reader.readline()  # EHLO
        lines.append(line.decode().rstrip("\r\n"))
        writer.write(b"250-pipe.example\r\n250 PIPELINING\r\n")
        await writer.drain()
        batch = await reader.readuntil(b"DATA\r\n")
        batches.append(batch)
        commands = batch.decode().split("\r\n")[:-1]
        for command in commands[:-1]:  # MAIL and the RCPTs
            refused = command.startswith("RCPT") and "gone@" in command
            writer.write(b"550 5.1.1 no such user\r\n" if refused else b"250 ok\r\n")
        writer.write(data_reply)
        await writer.drain()
        while line := await reader.readline():
            lines.append(line.decode().rstrip("\r\n"))
            if line == b".\r\n":
                writer.write(b"250 2.0.0 queued\r\n")
            elif line.startswith((b"RSET", b"QUIT")):
                writer.write(b"221 bye\r\n" if line.startswith(b"QUIT") else b"250 ok\r\n")
            await writer.drain()
            if line.startswith(b"QUIT"):
                break

    return handler


async def test_mail_rcpt_and_data_go_in_one_write(sinks: SinkFactory) -> None:
    lines: list[str] = []
    batches: list[bytes] = []
    sink = sinks.raw(_pipelining_server(lines, batches, data_reply=b"354 go ahead\r\n"))
    conn = await Connection.open(sink.destination, settings(sink))
    results = await conn.send(txn("a@example.net", "b@example.net"))
    await conn.close()
    assert [r.verdict for r in results] == [Verdict.DELIVERED] * 2
    # One round trip before the body: the server read MAIL, both RCPTs and DATA at once.
    assert batches == [f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<a@example.net>\r\n"
                       "RCPT TO:<b@example.net>\r\nDATA\r\n".encode()]
    assert "." in lines


async def test_a_354_after_every_recipient_was_refused_ends_an_empty_message(
        sinks: SinkFactory) -> None:
    """A server that says 354 to the pipelined DATA though no RCPT was accepted gets
    an empty message ended at once: the real message is never sent to nobody."""
    lines: list[str] = []
    batches: list[bytes] = []
    sink = sinks.raw(_pipelining_server(lines, batches, data_reply=b"354 go ahead\r\n"))
    conn = await Connection.open(sink.destination, settings(sink))
    results = await conn.send(txn("gone@example.net"))
    assert results[0].verdict is Verdict.BOUNCED and results[0].status == "5.1.1"
    assert not conn.body_started and conn.reusable
    await conn.close()
    assert lines[1:] == [".", "RSET", "QUIT"]  # no header or body line was sent


def _stuffed_as_before(data: bytes) -> bytes:
    """The transparency the client applied per transaction until the wire form was
    made once per message (delivery.client._dot_stuff plus the final dot)."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@hypothesis_settings(max_examples=examples(300))
@given(st.lists(st.sampled_from([b".", b"..", b"x", b"\r\n", b"\r\n.", b".\r\n"]),
                max_size=12).map(b"".join))
def test_the_wire_form_stuffs_dots_as_the_client_did(data: bytes) -> None:
    assert WireForm(data).as_sent() == _stuffed_as_before(data)


@hypothesis_settings(max_examples=examples(300))
@given(st.lists(st.sampled_from([b".", b"..", b"x", b"\r\n", b"\r\n.", b".\r\n"]),
                max_size=6).map(lambda pieces: b"".join(pieces) + b"\r\n"),
       st.lists(st.sampled_from([b".", b"..", b"x", b"\r\n", b"\r\n.", b".\r\n"]),
                max_size=12).map(b"".join))
def test_a_prefix_and_the_clients_bytes_stuff_as_the_joined_message(prefix: bytes,
                                                                    data: bytes) -> None:
    # The prefix is whole lines (the relay's own header fields), so it ends in CRLF.
    pieces = WireForm(data, prefix).pieces()
    assert b"".join(pieces) == _stuffed_as_before(prefix + data)
    if data and b"\r\n." not in data:
        assert any(piece is data for piece in pieces)  # the client's bytes, not a copy
