"""The scheduler: takes due recipients from the spool, hands them to a transport, records results.

Like Postfix's qmgr in one process. It wakes when a message is spooled or on a
timer, claims due recipients (they turn `sending`, so a crash hands them back on
start-up), groups each message's recipients by domain into one transaction, and
records every result in the spool before anything else happens to the message.

VERP: when the identity covering a message's envelope sender has a custom MAIL FROM
domain (``smtprelay.bounces.return_path``), each recipient goes in a transaction of
its own with ``MAIL FROM:<b-TAG@mail_from_domain>``, the tag naming message and
recipient, so an asynchronous bounce or complaint maps back to exactly one recipient.
SES sends one copy per recipient too. The price: a message to 50 addresses at one
domain is 50 transactions instead of one (on the same pooled connection, so no extra
connections or TLS handshakes, but 50 round trips of MAIL/RCPT/DATA and 50 copies of
the body on the wire). Without a MAIL FROM domain, recipients of one domain share a
transaction and the sender's own address, as before; our DSNs keep the null sender.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from smtprelay.bounces import return_path, verp
from smtprelay.bounces.classification import DEFAULT_RULES, Rule, classify
from smtprelay.config import Config, DelayConfig, RetryConfig, is_simulator_address
from smtprelay.delivery.model import (
    RecipientResult,
    Transaction,
    Verdict,
    WireForm,
    same_result,
)
from smtprelay.delivery.notify_sender import DSNFactory
from smtprelay.delivery.retry import delay_type, next_retry
from smtprelay.events import records
from smtprelay.infra import metrics
from smtprelay.infra.background import BackgroundLoop
from smtprelay.mail.address import domain_of
from smtprelay.policy.suppression import Suppress
from smtprelay.spool.model import (
    EventRecord,
    NewMessage,
    Outcome,
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    RecipientUpdate,
)
from smtprelay.spool.store import Finalizer, Spool, SpoolError
from smtprelay.transform.copies import Copies, CopyFailed, CopyMaker
from smtprelay.transform.keys import KeySource
from smtprelay.transform.tokens import KeyRing

log = logging.getLogger("smtprelay.delivery")

_IDLE_POLL = 5.0  # seconds between looks at the spool when nobody wakes us
_CLAIM_BATCH = 200
# Results the spool cannot take (a full disk) are retried after 1 s, 2 s, ... 30 s.
_RECORD_RETRY_FIRST = 1.0
_RECORD_RETRY_MAX = 30.0
_MIN_SLEEP = 0.05  # a recipient due "now" but not claimed is held by a running attempt


class Transport(Protocol):
    """Carries one transaction (one message, one recipient domain) somewhere."""

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]: ...


def recipient_domain(address: str) -> str:
    return domain_of(address)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """What the scheduler does with results: retries, delay records, bounce types."""

    retry: RetryConfig = field(default_factory=RetryConfig)
    delay: DelayConfig = field(default_factory=DelayConfig)
    bounce_rules: tuple[Rule, ...] = DEFAULT_RULES
    hostname: str = "localhost"  # the reporting MTA in events
    # Identity domain -> custom MAIL FROM domain (return_path.mail_from_domains).
    mail_from_domains: Mapping[str, str] = field(default_factory=dict)
    # The mailbox simulator's domain: its bounces list no one (SES keeps simulator
    # traffic off the suppression list).
    simulator_domain: str | None = None

    @classmethod
    def from_config(cls, config: Config) -> DeliveryPolicy:
        return cls(retry=config.delivery.retry, delay=config.delivery.delay,
                   hostname=config.server.hostname,
                   mail_from_domains=return_path.mail_from_domains(config),
                   simulator_domain=config.simulator.domain)

    def suppresses(self, address: str) -> bool:
        """Whether a hard bounce of `address` puts it on the suppression list."""
        return self.simulator_domain is None or not is_simulator_address(
            address, self.simulator_domain)


class Scheduler:
    def __init__(self, spool: Spool, transport: Transport, *, max_concurrent: int = 100,
                 policy: Callable[[], DeliveryPolicy] | None = None,
                 dsns: DSNFactory | None = None,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 keys: KeySource | None = None,
                 suppress: Callable[[Sequence[Suppress]], Awaitable[None]] | None = None,
                 mail_from: return_path.MailFromVerification | None = None,
                 copies: CopyMaker | None = None) -> None:
        self._spool = spool
        # Makes the per-recipient copies of messages that need them (None: such a
        # message is deferred, never sent with its placeholders and no tokens).
        self._copies = copies
        # Which custom MAIL FROM domains have their MX record now (None: all of them).
        self._mail_from = mail_from or return_path.AllVerified()
        # Where a hard bounce at delivery lists its address (the daemon's feedback
        # recorder, which applies the set's suppression.reasons as for a DSN's).
        self._suppress = suppress
        # The tracking keys in force, which sign VERP tags too (None: no VERP).
        self._keys = keys
        self._transport = transport
        # The policy in force: the daemon's follows a reload (DeliveryPolicy.from_config
        # of the holder's configuration, in a config.Derived).
        default = DeliveryPolicy()
        self._policy = policy if policy is not None else lambda: default
        self._dsns = dsns
        self._rng = rng or random.Random()
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._rounds = BackgroundLoop("scheduler", self._round)
        self._claim_failing_since: float | None = None
        self._claim_pause = 0.0
        self._in_flight: set[asyncio.Task[None]] = set()

    @property
    def policy(self) -> DeliveryPolicy:
        return self._policy()

    def wake(self) -> None:
        """A message was spooled: look now instead of at the next poll."""
        self._rounds.wake()

    @property
    def in_flight(self) -> int:
        """Deliveries under way (a drained node is safe to stop at 0 with nothing queued)."""
        return len(self._in_flight)

    def start(self) -> None:
        self._rounds.start()

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give deliveries under way `grace` seconds, then cancel them.

        A cancelled delivery's recipients stay `sending` in the spool and are handed
        back at the next start: at-least-once, never lost.
        """
        await self._rounds.stop(finish_round=True)
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def _record(self, message: QueuedMessage, updates: list[RecipientUpdate],
                      finalize: Finalizer | None, events: tuple[EventRecord, ...]
                      ) -> NewMessage | None:
        """Record an attempt's results. A spool that cannot take them (a full disk) is
        retried, from memory, until it can: the recipients stay held meanwhile, so none
        is sent again (only a crash in between loses the results, and then the
        recipients are handed back as after any crash)."""
        pause = _RECORD_RETRY_FIRST
        failing_since: float | None = None
        while True:
            try:
                dsn = await self._spool.record(message.message_id, updates, finalize, events)
            except SpoolError as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error("msg=%s delivery results not recorded (%s): kept in memory "
                              "and retried until the spool takes them", message.message_id,
                              exc)
                metrics.DELIVERY_RESULTS_UNRECORDED.inc()
                await asyncio.sleep(pause)
                pause = min(pause * 2, _RECORD_RETRY_MAX)
                continue
            if failing_since is not None:
                log.info("msg=%s delivery results recorded after %.0f s", message.message_id,
                         time.monotonic() - failing_since)
            return dsn

    async def _round(self) -> float:
        try:
            claimed = await self._spool.claim_due(self._clock(), _CLAIM_BATCH)
        except Exception as exc:
            # Once per state change, and backing off: a full disk made this a line
            # every 50 ms (the due recipients looked ready at once).
            if self._claim_failing_since is None:
                self._claim_failing_since = time.monotonic()
                log.error("scheduler cannot claim mail from the spool (%s); retrying with "
                          "backoff", exc)
            self._claim_pause = min(self._claim_pause * 2, _RECORD_RETRY_MAX) \
                if self._claim_pause else _RECORD_RETRY_FIRST
            return self._claim_pause
        if self._claim_failing_since is not None:
            log.info("scheduler claims mail from the spool again after %.0f s",
                     time.monotonic() - self._claim_failing_since)
            self._claim_failing_since = None
            self._claim_pause = 0.0
        for message in claimed:
            await self._slots.acquire()
            if self._rounds.stopping:
                self._slots.release()
                break
            task = asyncio.create_task(self._deliver(message))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        if len(claimed) == _CLAIM_BATCH:
            return 0  # more may be due: no sleep
        return await self._sleep_time()

    async def _sleep_time(self) -> float:
        """Until the next deferred recipient is due, at most _IDLE_POLL (operators change
        the queue from the CLI, outside this process)."""
        try:
            due = await asyncio.to_thread(self._spool.next_due)
        except Exception:
            return _IDLE_POLL
        if due is None:
            return _IDLE_POLL
        return min(_IDLE_POLL, max(_MIN_SLEEP, due - self._clock()))

    async def _deliver(self, message: QueuedMessage) -> None:
        metrics.DELIVERIES_IN_FLIGHT.inc()
        try:
            await self._deliver_held(message)
        finally:
            metrics.DELIVERIES_IN_FLIGHT.dec()
            self._slots.release()

    async def _deliver_held(self, message: QueuedMessage) -> None:
        held = [r for r in message.recipients if r.state is RecipientState.SENDING]
        if not held:
            return
        parts = await asyncio.to_thread(self._spool.body_parts, message.message_id)
        if parts is None:
            return  # deleted by an operator meanwhile
        prefix, data = parts
        by_domain: dict[str, list[QueuedRecipient]] = {}
        for r in held:
            by_domain.setdefault(recipient_domain(r.address), []).append(r)
        verp_domain, keyring = self._verp(message)
        copies = self._copies_of(message, data, prefix)
        wire = WireForm(data, prefix)
        for domain, recipients in by_domain.items():
            if copies is None and (verp_domain is None or keyring is None):
                await self._attempt(message, domain, message.mail_from, recipients, data,
                                    prefix, wire)
                continue
            for r in recipients:
                sender = self._verp_sender(message, r, verp_domain, keyring)
                if copies is not None:
                    await self._attempt_copy(message, domain, r, copies, sender)
                else:
                    await self._attempt(message, domain, sender, [r], data, prefix, wire)

    def _copies_of(self, message: QueuedMessage, data: bytes,
                   received: bytes) -> Copies | CopyFailed | None:
        """The message's per-recipient copies (or why none can be made), or None: one
        body for every recipient."""
        attrs = message.attrs
        plan = attrs.copies if attrs.copies is not None else attrs.extra.get("copies")
        if plan is None:
            return None
        if self._copies is None:
            return CopyFailed("this relay makes no per-recipient copies")
        try:
            return self._copies.prepare(message.message_id, data, received, plan,
                                        message.received_at)
        except CopyFailed as exc:
            return exc

    @staticmethod
    def _verp_sender(message: QueuedMessage, recipient: QueuedRecipient,
                     verp_domain: str | None, keyring: KeyRing | None) -> str:
        """The MAIL FROM of a transaction to `recipient` alone."""
        if verp_domain is None or keyring is None:
            return message.mail_from
        try:
            return verp.address(message.message_id, recipient.index, verp_domain, keyring)
        except ValueError as exc:  # not a spool id: cannot happen, must not stick
            log.error("msg=%s no VERP sender: %s", message.message_id, exc)
            return message.mail_from

    async def _attempt_copy(self, message: QueuedMessage, domain: str,
                            recipient: QueuedRecipient, copies: Copies | CopyFailed,
                            mail_from: str) -> None:
        """One transaction of `recipient`'s own copy; a copy that cannot be made defers
        the recipient (recorded like any attempt), so it is tried again."""
        if isinstance(copies, CopyFailed):
            failure = copies
        else:
            try:
                prefix, copy = await copies.copy_for(recipient.index)
            except CopyFailed as exc:
                failure = exc
            else:
                await self._attempt(message, domain, mail_from, [recipient], copy, prefix,
                                    WireForm(copy, prefix))
                return
        log.error("msg=%s recipient %d deferred: %s", message.message_id, recipient.index,
                  failure)
        await self._conclude(message, [recipient], None, same_result(
            [recipient.address], Verdict.DEFERRED, "4.3.0",
            f"x-local; the copy for this recipient could not be made: {failure}"))

    def _verp(self, message: QueuedMessage) -> tuple[str | None, KeyRing | None]:
        """The MAIL FROM domain for this message's VERP senders and the keys to sign
        them, or (None, None): the envelope sender as submitted."""
        if not message.mail_from:
            return None, None  # our DSNs: the null sender stays
        domain = return_path.mail_from_domain_for(message.mail_from,
                                                  self.policy.mail_from_domains)
        if domain is None:
            return None, None
        if not self._mail_from.verified(domain):
            # SES's "use default MAIL FROM domain": no MX, so VERP bounces would be lost
            # (an identity set to reject had its mail refused at submission).
            log.info("msg=%s MAIL FROM domain %s has no MX record: sending with <%s>",
                     message.message_id, domain, message.mail_from)
            return None, None
        keyring = self._keys.keyring if self._keys is not None else None
        if keyring is None:
            log.warning("msg=%s no tracking keys loaded to sign VERP senders with; "
                        "sending with <%s>", message.message_id, message.mail_from)
            return None, None
        return domain, keyring

    async def _attempt(self, message: QueuedMessage, domain: str, mail_from: str,
                       recipients: list[QueuedRecipient], data: bytes, prefix: bytes,
                       wire: WireForm) -> None:
        """One transaction to `domain`, its results recorded before anything else."""
        txn = Transaction(mail_from=mail_from,
                          recipients=tuple(r.address for r in recipients), data=data,
                          smtputf8=message.smtputf8, body_8bitmime=message.body_8bitmime,
                          wire=wire, prefix=prefix)
        try:
            results = await self._transport.deliver(message, domain, txn)
        except Exception as exc:
            log.exception("msg=%s domain=%s transport failed", message.message_id, domain)
            results = same_result(txn.recipients, Verdict.DEFERRED, "4.3.0",
                                  f"x-local; {exc}")
        await self._conclude(message, recipients, txn, results)

    async def _conclude(self, message: QueuedMessage, recipients: list[QueuedRecipient],
                        txn: Transaction | None, results: list[RecipientResult]) -> None:
        """Record an attempt's results before anything else happens to the message;
        `txn`: what was sent (None when nothing could be)."""
        updates = self._updates(message, recipients, results)
        # Before the attempt is recorded: an upsert, harmless to repeat if recording
        # fails and the recipient bounces again at the next attempt.
        await self._suppress_hard_bounces(message, recipients, updates)
        finalize = self._dsns.build if self._dsns is not None else None
        events = self._events(message, updates)
        dsn = await self._record(message, updates, finalize, events)
        # What follows a recorded attempt (the mailbox simulator's complaints and
        # auto-replies), after it so its events come after the Delivery.
        after_record = getattr(self._transport, "after_record", None)
        if after_record is not None and txn is not None:
            try:
                await after_record(message, txn, results)
            except Exception:
                log.exception("msg=%s after-delivery step failed", message.message_id)
        if any(u.state is RecipientState.DEFERRED for u in updates):
            self.wake()  # the loop's sleep was computed without this retry time
        if dsn is not None:
            metrics.DSNS.inc()
            log.info("msg=%s dsn=%s to=%s", message.message_id, dsn.message_id,
                     dsn.envelope.recipients[0])
            self.wake()

    def _events(self, message: QueuedMessage,
                updates: list[RecipientUpdate]) -> tuple[EventRecord, ...]:
        if not message.attrs.events:
            return ()
        addresses = {r.index: r.address for r in message.recipients}
        return records.attempt(
            message.message_id, message.configuration_set, message.received_at,
            message.received_at + self.policy.retry.max_lifetime,
            [(addresses[u.index], o) for u in updates for o in u.outcomes],
            self.policy.hostname)

    async def _suppress_hard_bounces(self, message: QueuedMessage,
                                     recipients: list[QueuedRecipient],
                                     updates: list[RecipientUpdate]) -> None:
        """A Permanent bounce at delivery (a 5xx reply, a null MX, a host that does not
        exist) lists the recipient, as a DSN saying so later would; not for the mailbox
        simulator, nor for our own DSNs and auto-replies, which have no sender to
        protect."""
        if self._suppress is None or message.attrs.dsn_for or message.attrs.auto_reply_for:
            return
        policy = self.policy
        addresses = {r.index: r.address for r in recipients}
        entries = [
            Suppress(message.account, addresses[u.index], "BOUNCE", message.message_id,
                     outcome.at, message.configuration_set, outcome.diagnostic)
            for u in updates for outcome in u.outcomes
            if outcome.kind == "bounce" and outcome.bounce_type == "Permanent"
            and policy.suppresses(addresses[u.index])]
        if not entries:
            return
        try:
            await self._suppress(entries)
        except Exception as exc:
            log.error("msg=%s hard bounces not put on the suppression list (%s): %s",
                      message.message_id, ", ".join(e.address for e in entries), exc)

    def _updates(self, message: QueuedMessage, recipients: list[QueuedRecipient],
                 results: list[RecipientResult]) -> list[RecipientUpdate]:
        now = self._clock()
        policy = self.policy
        expires_at = message.received_at + policy.retry.max_lifetime
        age = max(0.0, now - message.received_at)
        updates: list[RecipientUpdate] = []
        for r, result in zip(recipients, results, strict=True):
            metrics.QUEUE_AGE_SECONDS.observe(age)
            verdict = result.verdict
            reply = result.diagnostic
            if verdict is Verdict.DEFERRED and now >= expires_at:
                # Postfix's maximal_queue_lifetime: the last temporary error becomes final.
                verdict = Verdict.BOUNCED
                reply = (f"{result.diagnostic} (gave up after "
                         f"{_span(age)} in the queue)")
            delay_noted: float | None = None
            outcomes: tuple[Outcome, ...] = ()
            next_attempt: float | None = None
            if verdict is Verdict.DELIVERED:
                metrics.DELIVERY_SECONDS.observe(age)
                state = RecipientState.DELIVERED
                outcomes = (Outcome(message_id=message.message_id, index=r.index,
                                    kind="delivery", at=now, status=result.status,
                                    diagnostic=result.diagnostic,
                                    remote_mta=result.remote_mta,
                                    outgoing_ip=result.outgoing_ip),)
            elif verdict is Verdict.BOUNCED:
                state = RecipientState.BOUNCED
                bounce_type, subtype = result.bounce or classify(
                    result.code, result.status, result.diagnostic, policy.bounce_rules)
                metrics.BOUNCES.labels(type=bounce_type, subtype=subtype).inc()
                outcomes = (Outcome(message_id=message.message_id, index=r.index, kind="bounce",
                                    at=now, bounce_type=bounce_type, bounce_subtype=subtype,
                                    status=result.status, diagnostic=reply,
                                    remote_mta=result.remote_mta,
                                    outgoing_ip=result.outgoing_ip),)
            else:
                state = RecipientState.DEFERRED
                metrics.DEFERRALS.inc()
                next_attempt = next_retry(r.attempts + 1, result, policy.retry, now=now,
                                          expires_at=expires_at, rng=self._rng)
                if age >= policy.delay.after and (
                        r.delay_noted is None or now - r.delay_noted >= policy.delay.every):
                    kind = delay_type(result)
                    metrics.DELAYS.labels(type=kind).inc()
                    delay_noted = now
                    outcomes = (Outcome(message_id=message.message_id, index=r.index,
                                        kind="delay", at=now, status=result.status,
                                        diagnostic=result.diagnostic,
                                        remote_mta=result.remote_mta, delay_type=kind,
                                        outgoing_ip=result.outgoing_ip),)
            metrics.DELIVERIES.labels(result=verdict.value).inc()
            log.info("msg=%s rcpt=%s %s status=%s %s%s", message.message_id, result.recipient,
                     verdict.value, result.status, reply,
                     f" next={_span(next_attempt - now)}" if next_attempt else "")
            updates.append(RecipientUpdate(index=r.index, state=state, at=now, reply=reply,
                                           next_attempt=next_attempt, outcomes=outcomes,
                                           delay_noted=delay_noted))
        return updates


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
