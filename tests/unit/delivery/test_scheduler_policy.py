"""What the scheduler makes of results: retries, queue lifetime, delay records, bounces.

The scheduler runs for real (start/wake/stop) on a real spool, with a wall clock the
test sets before each attempt; the transport is either a scripted remote (for exact
replies) or the real SMTPTransport against sinks and the test DNS server.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from smtprelay.config import DelayConfig, RetryConfig
from smtprelay.delivery.dns import MXResolver
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.notify_sender import DSNFactory
from smtprelay.delivery.pool import ConnectionPool
from smtprelay.delivery.retry import next_retry
from smtprelay.delivery.scheduler import DeliveryPolicy, Scheduler, recipient_domain
from smtprelay.delivery.smtp_transport import SMTPTransport
from smtprelay.spool.model import (
    Envelope,
    NewMessage,
    Outcome,
    QueuedMessage,
    RecipientState,
    new_message_id,
)
from smtprelay.spool.store import Spool, get_outcomes, open_for_cli
from tests.dnsserver import ANSWER_TIMEOUT, TestDNSServer
from tests.sinks import SinkFactory
from tests.support import free_port
from tests.unit.delivery.kit import WallClock, live, make_config, mx, sample, wait_until

SENDER = "app@example.com"
BODY = b"From: app@example.com\r\nTo: x@a.test\r\nSubject: policy\r\n\r\nHello.\r\n"
RETRY = RetryConfig(first=60.0, max_interval=3600.0, max_lifetime=86400.0)
DELAY = DelayConfig(after=900.0, every=3600.0)
T0 = float(int(time.time()))  # received_at of every message; attempts are T0 + offsets


def result(rcpt: str, verdict: Verdict, code: int | None, status: str, text: str,
           retry_after: float | None = None) -> RecipientResult:
    diagnostic = f"smtp; {code} {status} {text}" if code is not None else text
    return RecipientResult(recipient=rcpt, verdict=verdict, code=code, status=status,
                           diagnostic=diagnostic, remote_mta="mx.a.test [127.0.0.2]",
                           retry_after=retry_after)


def ok(rcpt: str) -> RecipientResult:
    return result(rcpt, Verdict.DELIVERED, 250, "2.0.0", "Ok")


def busy(rcpt: str, retry_after: float | None = None) -> RecipientResult:
    return result(rcpt, Verdict.DEFERRED, 451, "4.3.0", "local error", retry_after)


def full(rcpt: str) -> RecipientResult:
    # The hint of one second keeps every later attempt of a test due.
    return result(rcpt, Verdict.DEFERRED, 452, "4.2.2", "mailbox full", retry_after=1.0)


class Remote:
    """A transport that answers each recipient with `reply(rcpt)`; the test swaps it.

    DSNs (to SENDER) are always taken, so they add no bounce or deferral of their own.
    """

    def __init__(self) -> None:
        self.reply: Callable[[str], RecipientResult] = ok
        self.calls: list[tuple[str, Transaction]] = []
        self.raise_error: Exception | None = None

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]:
        self.calls.append((domain, txn))
        if self.raise_error is not None:
            raise self.raise_error
        return [ok(r) if r == SENDER else self.reply(r) for r in txn.recipients]


class Bench:
    """A running scheduler on a real spool, stepped by setting its clock and waking it."""

    def __init__(self, spool: Spool, transport: Remote | SMTPTransport, *,
                 rng_seed: int = 7, delay: DelayConfig = DELAY,
                 dsns: bool = True) -> None:
        self.spool = spool
        self.clock = WallClock(T0 - 1)  # nothing submitted is due before attempt()
        self.rng_seed = rng_seed
        factory = DSNFactory("relay.test", clock=self.clock) if dsns else None
        self.scheduler = Scheduler(spool, transport, clock=self.clock,
                                   policy=lambda: DeliveryPolicy(retry=RETRY, delay=delay),
                                   dsns=factory, rng=random.Random(rng_seed))

    async def submit(self, *recipients: str, sender: str = SENDER) -> str:
        message = NewMessage(
            message_id=new_message_id(T0), data=BODY, account="acme",
            envelope=Envelope(mail_from=sender, recipients=recipients),
            configuration_set=None, received_at=T0, client_ip="127.0.0.1",
            client_helo="client.test", auth_user="u", listener="submission")
        await self.spool.enqueue(message)
        return message.message_id

    def get(self, message_id: str) -> QueuedMessage:
        found = self.spool.get(message_id)
        assert found is not None
        return found

    async def attempt(self, message_id: str, offset: float) -> QueuedMessage:
        """Move the clock to T0 + offset, wake the scheduler, wait for the results."""
        at = T0 + offset
        before = self.get(message_id)
        due = [r.index for r in before.recipients
               if r.state in (RecipientState.QUEUED, RecipientState.DEFERRED)
               and r.next_attempt <= at]
        assert due, "nothing of this message is due then"
        self.clock.set(at)
        self.scheduler.wake()

        def recorded() -> bool:
            now = self.get(message_id).recipients
            return all(now[i].attempts > before.recipients[i].attempts
                       and now[i].state is not RecipientState.SENDING for i in due)

        assert await wait_until(recorded), self.get(message_id)
        return self.get(message_id)

    def outcomes(self, message_id: str) -> list[Outcome]:
        conn = open_for_cli(self.spool.path)
        try:
            return get_outcomes(conn, message_id)
        finally:
            conn.close()

    def all_messages(self) -> list[str]:
        conn = open_for_cli(self.spool.path)
        try:
            return [row[0] for row in conn.execute("SELECT id FROM messages ORDER BY id")]
        finally:
            conn.close()


@pytest.fixture
def remote() -> Remote:
    return Remote()


@pytest.fixture
async def bench(spool: Spool, remote: Remote) -> AsyncIterator[Bench]:
    b = Bench(spool, remote)
    b.scheduler.start()
    yield b
    await b.scheduler.stop(grace=1)


# ------------------------------------------------------------------ retries

async def test_deferral_is_retried_at_next_retry_with_doubling(bench: Bench,
                                                               remote: Remote) -> None:
    remote.reply = busy
    mid = await bench.submit("x@a.test")
    expected_rng = random.Random(bench.rng_seed)  # the scheduler's, step for step
    expires = T0 + RETRY.max_lifetime
    offset = 10.0
    waits: list[float] = []
    for attempts in (1, 2, 3):
        message = await bench.attempt(mid, offset)
        (r,) = message.recipients
        now = T0 + offset
        assert r.state is RecipientState.DEFERRED
        assert r.attempts == attempts
        assert r.last_attempt == now
        assert r.last_reply == "smtp; 451 4.3.0 local error"
        assert r.next_attempt == next_retry(attempts, busy("x@a.test"), RETRY, now=now,
                                            expires_at=expires, rng=expected_rng)
        waits.append(r.next_attempt - now)
        offset = r.next_attempt - T0
    for n, wait in enumerate(waits):
        base = RETRY.first * 2**n
        assert base * 0.8 <= wait <= base * 1.2
    assert bench.outcomes(mid) == []  # deferrals before delay.after leave no record


async def test_not_claimed_before_next_attempt(bench: Bench, remote: Remote) -> None:
    remote.reply = busy
    mid = await bench.submit("x@a.test")
    (r,) = (await bench.attempt(mid, 0)).recipients
    calls = len(remote.calls)
    bench.clock.set(r.next_attempt - 1)
    bench.scheduler.wake()
    await asyncio.sleep(0.1)
    assert len(remote.calls) == calls
    assert bench.get(mid).recipients[0].state is RecipientState.DEFERRED


async def test_retry_hint_sets_the_next_attempt(bench: Bench, remote: Remote) -> None:
    remote.reply = lambda rcpt: busy(rcpt, retry_after=300.0)
    mid = await bench.submit("x@a.test")
    (r,) = (await bench.attempt(mid, 5)).recipients
    assert r.next_attempt == T0 + 5 + 300


async def test_next_attempt_is_never_past_the_expiry(bench: Bench, remote: Remote) -> None:
    remote.reply = busy
    mid = await bench.submit("x@a.test")
    (r,) = (await bench.attempt(mid, RETRY.max_lifetime - 30)).recipients
    assert r.state is RecipientState.DEFERRED
    assert r.next_attempt == T0 + RETRY.max_lifetime


async def test_deferral_at_the_end_of_the_lifetime_becomes_a_bounce(
        bench: Bench, remote: Remote) -> None:
    remote.reply = busy
    mid = await bench.submit("x@a.test")
    await bench.attempt(mid, 10)
    bounces_before = sample("smtprelay_bounces_total",
                            {"type": "Transient", "subtype": "General"})
    deferrals_before = sample("smtprelay_deferrals_total")
    (r,) = (await bench.attempt(mid, RETRY.max_lifetime)).recipients
    assert r.state is RecipientState.BOUNCED
    assert r.last_reply is not None
    assert r.last_reply.startswith("smtp; 451 4.3.0 local error (gave up after ")
    assert r.last_reply.endswith("(gave up after 24.0h in the queue)")
    (o,) = [o for o in bench.outcomes(mid) if o.kind == "bounce"]
    assert (o.bounce_type, o.bounce_subtype) == ("Transient", "General")
    assert o.status == "4.3.0"
    assert o.diagnostic == r.last_reply
    assert o.remote_mta == "mx.a.test [127.0.0.2]"
    assert sample("smtprelay_bounces_total",
                  {"type": "Transient", "subtype": "General"}) == bounces_before + 1
    assert sample("smtprelay_deferrals_total") == deferrals_before


async def test_a_host_never_reached_bounces_at_expiry_as_transient(
        bench: Bench, remote: Remote) -> None:
    refused = "connect to mx.a.test [127.0.0.2]:25: Connection refused"
    remote.reply = lambda rcpt: result(rcpt, Verdict.DEFERRED, None, "4.4.1", refused)
    mid = await bench.submit("x@a.test")
    (r,) = (await bench.attempt(mid, RETRY.max_lifetime + 60)).recipients
    assert r.state is RecipientState.BOUNCED
    (o,) = [o for o in bench.outcomes(mid) if o.kind == "bounce"]
    assert (o.bounce_type, o.bounce_subtype, o.status) == ("Transient", "General", "4.4.1")
    assert o.diagnostic is not None and o.diagnostic.startswith(refused + " (gave up after")


async def test_delivery_at_the_end_of_the_lifetime_is_still_a_delivery(
        bench: Bench, remote: Remote) -> None:
    remote.reply = busy
    mid = await bench.submit("x@a.test")
    await bench.attempt(mid, 10)
    remote.reply = ok
    (r,) = (await bench.attempt(mid, RETRY.max_lifetime + 5)).recipients
    assert r.state is RecipientState.DELIVERED
    assert [o.kind for o in bench.outcomes(mid)] == ["delivery"]


async def test_transport_error_defers_with_our_own_reason(bench: Bench,
                                                          remote: Remote) -> None:
    remote.raise_error = RuntimeError("boom")
    mid = await bench.submit("x@a.test")
    (r,) = (await bench.attempt(mid, 1000)).recipients
    assert r.state is RecipientState.DEFERRED
    assert r.last_reply == "x-local; boom"
    (o,) = bench.outcomes(mid)
    assert (o.kind, o.delay_type, o.status) == ("delay", "InternalFailure", "4.3.0")


# ------------------------------------------------------------------ delay records

async def test_delay_records_after_delay_after_then_at_most_once_per_every(
        bench: Bench, remote: Remote) -> None:
    remote.reply = full
    mid = await bench.submit("x@a.test")
    delays_before = sample("smtprelay_delivery_delays_total", {"type": "MailboxFull"})
    noted: list[float | None] = []
    # delay.after = 900, delay.every = 3600
    for offset in (60, 899, 900, 2000, 4499, 4500, 4600):
        (r,) = (await bench.attempt(mid, offset)).recipients
        noted.append(r.delay_noted)
    delays = [o for o in bench.outcomes(mid) if o.kind == "delay"]
    assert [o.at - T0 for o in delays] == [900, 4500]
    assert noted == [None, None, T0 + 900, T0 + 900, T0 + 900, T0 + 4500, T0 + 4500]
    first = delays[0]
    assert first.delay_type == "MailboxFull"
    assert first.status == "4.2.2"
    assert first.diagnostic == "smtp; 452 4.2.2 mailbox full"
    assert first.remote_mta == "mx.a.test [127.0.0.2]"
    assert first.bounce_type is None
    assert sample("smtprelay_delivery_delays_total",
                  {"type": "MailboxFull"}) == delays_before + 2


async def test_delay_records_are_kept_per_recipient(bench: Bench, remote: Remote) -> None:
    remote.reply = lambda rcpt: (full(rcpt) if rcpt == "x@a.test"
                                 else busy(rcpt, retry_after=2000.0))
    mid = await bench.submit("x@a.test", "y@b.test")
    await bench.attempt(mid, 100)  # both deferred, too early for a delay record
    await bench.attempt(mid, 1000)  # only x is due: x gets one
    message = await bench.attempt(mid, 2100)  # both due: x had one an hour ago, y never
    assert [r.delay_noted for r in message.recipients] == [T0 + 1000, T0 + 2100]
    delays = [(o.index, o.at - T0, o.delay_type) for o in bench.outcomes(mid)]
    assert delays == [(0, 1000, "MailboxFull"), (1, 2100, "RecipientServerError")]


async def test_no_delay_record_for_a_delivery_or_bounce(bench: Bench,
                                                        remote: Remote) -> None:
    remote.reply = lambda rcpt: (ok(rcpt) if rcpt.startswith("ok") else
                                 result(rcpt, Verdict.BOUNCED, 550, "5.1.1", "unknown"))
    mid = await bench.submit("ok@a.test", "gone@a.test")
    await bench.attempt(mid, 5000)
    assert sorted(o.kind for o in bench.outcomes(mid)) == ["bounce", "delivery"]


# ------------------------------------------------------------------ bounces

@pytest.mark.parametrize(("code", "status", "text", "kind"), [
    (550, "5.1.1", "The email account that you tried to reach does not exist",
     ("Permanent", "NoEmail")),
    (552, "5.2.2", "mailbox full", ("Transient", "MailboxFull")),
    (552, "5.3.4", "message too big", ("Transient", "MessageTooLarge")),
    (554, "5.7.1", "Service unavailable; client host blocked using zen.spamhaus.org",
     ("Transient", "General")),
    (550, "5.0.0", "rejected", ("Permanent", "General")),
])
async def test_bounces_are_classified_and_counted(bench: Bench, remote: Remote, code: int,
                                                  status: str, text: str,
                                                  kind: tuple[str, str]) -> None:
    remote.reply = lambda rcpt: result(rcpt, Verdict.BOUNCED, code, status, text)
    labels = {"type": kind[0], "subtype": kind[1]}
    before = sample("smtprelay_bounces_total", labels)
    mid = await bench.submit("x@a.test")
    (r,) = (await bench.attempt(mid, 1)).recipients
    assert r.state is RecipientState.BOUNCED
    assert r.next_attempt == T0 + 1  # no retry is scheduled
    (o,) = [o for o in bench.outcomes(mid) if o.kind == "bounce"]
    assert (o.bounce_type, o.bounce_subtype) == kind
    assert o.status == status
    assert o.diagnostic == f"smtp; {code} {status} {text}"
    assert sample("smtprelay_bounces_total", labels) == before + 1


async def test_every_deferral_is_counted(bench: Bench, remote: Remote) -> None:
    remote.reply = busy
    before = sample("smtprelay_deferrals_total")
    mid = await bench.submit("x@a.test", "y@a.test", "z@b.test")
    await bench.attempt(mid, 1)
    assert sample("smtprelay_deferrals_total") == before + 3


async def test_recipients_are_grouped_per_domain(bench: Bench, remote: Remote) -> None:
    mid = await bench.submit("x@a.test", "y@B.test", "z@a.test")
    await bench.attempt(mid, 1)
    assert sorted((d, t.recipients) for d, t in remote.calls) == [
        ("a.test", ("x@a.test", "z@a.test")), ("b.test", ("y@B.test",))]
    assert recipient_domain("Someone@Example.NET") == "example.net"


async def test_one_dsn_when_the_last_recipient_bounces(bench: Bench, remote: Remote) -> None:
    dsns_before = sample("smtprelay_dsns_total")
    remote.reply = lambda rcpt: (result(rcpt, Verdict.BOUNCED, 550, "5.1.1", "unknown")
                                 if rcpt.endswith("a.test") else busy(rcpt))
    mid = await bench.submit("x@a.test", "y@b.test")
    await bench.attempt(mid, 1)
    assert bench.all_messages() == [mid]  # y still waits: no DSN yet
    remote.reply = lambda rcpt: result(rcpt, Verdict.BOUNCED, 550, "5.1.1", "gone")
    await bench.attempt(mid, RETRY.first * 2)
    ids = bench.all_messages()
    assert len(ids) == 2
    assert sample("smtprelay_dsns_total") == dsns_before + 1
    # The DSN is delivered by the same scheduler, from the null sender.
    assert await wait_until(lambda: any(t.mail_from == "" for _, t in remote.calls))
    (dsn_domain, dsn) = next((d, t) for d, t in remote.calls if t.mail_from == "")
    assert (dsn_domain, dsn.recipients) == ("example.com", (SENDER,))
    text = dsn.data.decode()
    assert "Final-Recipient: rfc822; x@a.test" in text
    assert "Final-Recipient: rfc822; y@b.test" in text


# ------------------------------------------------------------------ with real SMTP

async def test_deferred_by_a_real_mx_then_bounced_at_expiry_and_the_dsn_delivered(
        spool: Spool, tmp_path: Path, dns_server: TestDNSServer,
        sinks: SinkFactory) -> None:
    port = free_port()
    rcpt_mx = sinks.smtp(host="127.0.0.2", port=port,
                         rcpt_replies={"x@a.test": "451 4.7.1 greylisted, try again later"})
    sender_mx = sinks.smtp(host="127.0.0.3", port=port)
    mx(dns_server, "a.test", (10, "mx.a.test", "127.0.0.2"))
    mx(dns_server, "example.com", (10, "mx.example.com", "127.0.0.3"))
    config = make_config(tmp_path, port=port)
    pool = ConnectionPool(max_connections=4, max_per_domain=2, idle_timeout=30.0)
    resolver = MXResolver([dns_server.nameserver], timeout=ANSWER_TIMEOUT)
    transport = SMTPTransport(live(config), resolver, pool)
    bench = Bench(spool, transport)
    bench.scheduler.start()
    try:
        mid = await bench.submit("x@a.test")
        (r,) = (await bench.attempt(mid, 1000)).recipients
        assert r.state is RecipientState.DEFERRED
        (delay,) = bench.outcomes(mid)
        assert (delay.kind, delay.delay_type) == ("delay", "IPFailure")
        assert delay.remote_mta == "mx.a.test [127.0.0.2]"
        (r,) = (await bench.attempt(mid, RETRY.max_lifetime)).recipients
        assert r.state is RecipientState.BOUNCED
        assert await wait_until(lambda: len(sender_mx.received) == 1)
    finally:
        await bench.scheduler.stop(grace=1)
        await transport.close()
    (dsn,) = sender_mx.received
    assert dsn.mail_from in ("", "<>")  # aiosmtpd records the null sender as "<>"
    assert dsn.rcpt_tos == (SENDER,)
    assert b"Final-Recipient: rfc822; x@a.test" in dsn.data
    assert b"Status: 4.7.1" in dsn.data
    assert b"greylisted" in dsn.data
    assert rcpt_mx.received == []
    assert sum(s.commands.count("RCPT") for s in rcpt_mx.sessions) == 2  # both attempts
