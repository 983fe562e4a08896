"""The scheduler: takes due recipients from the spool, hands them to a transport, records results.

Like Postfix's qmgr in one process. It wakes when a message is spooled or on a
timer, claims due recipients (they turn `sending`, so a crash hands them back on
start-up), groups each message's recipients by domain into one transaction, and
records every result in the spool before anything else happens to the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

from smtprelay import metrics
from smtprelay.delivery.bounce import classify
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.spool.model import Outcome, QueuedMessage, RecipientState, RecipientUpdate
from smtprelay.spool.store import Spool

log = logging.getLogger("smtprelay.delivery")

_IDLE_POLL = 5.0  # seconds between looks at the spool when nobody wakes us
_CLAIM_BATCH = 200
_DEFER_ON_ERROR = 60.0  # a transport failure we did not expect: try again in a minute


class Transport(Protocol):
    """Carries one transaction (one message, one recipient domain) somewhere."""

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]: ...


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Scheduler:
    def __init__(self, spool: Spool, transport: Transport, *, max_concurrent: int = 100,
                 clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._transport = transport
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    def wake(self) -> None:
        """A message was spooled: look now instead of at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give deliveries under way `grace` seconds, then cancel them.

        A cancelled delivery's recipients stay `sending` in the spool and are handed
        back at the next start: at-least-once, never lost.
        """
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._in_flight:
            _, pending = await asyncio.wait(self._in_flight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await self._spool.claim_due(self._clock(), _CLAIM_BATCH)
            except Exception as exc:
                log.error("scheduler could not read the spool: %s", exc)
                claimed = []
            for message in claimed:
                await self._slots.acquire()
                if self._stopping:
                    self._slots.release()
                    break
                task = asyncio.create_task(self._deliver(message))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if len(claimed) == _CLAIM_BATCH:
                continue  # more may be due: no sleep
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_IDLE_POLL):
                    await self._wake.wait()

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
        data = await asyncio.to_thread(self._spool.body, message.message_id)
        if data is None:
            return  # deleted by an operator meanwhile
        by_domain: dict[str, list[int]] = {}
        for r in held:
            by_domain.setdefault(recipient_domain(r.address), []).append(r.index)
        addresses = {r.index: r.address for r in held}
        for domain, indexes in by_domain.items():
            txn = Transaction(mail_from=message.mail_from,
                              recipients=tuple(addresses[i] for i in indexes), data=data,
                              smtputf8=message.smtputf8, body_8bitmime=message.body_8bitmime)
            try:
                results = await self._transport.deliver(message, domain, txn)
            except Exception as exc:
                log.exception("msg=%s domain=%s transport failed", message.message_id, domain)
                results = [RecipientResult(recipient=a, verdict=Verdict.DEFERRED, code=None,
                                           status="4.3.0", diagnostic=f"x-local; {exc}")
                           for a in txn.recipients]
            await self._spool.record(message.message_id,
                                     self._updates(message, indexes, results))

    def _updates(self, message: QueuedMessage, indexes: list[int],
                 results: list[RecipientResult]) -> list[RecipientUpdate]:
        now = self._clock()
        updates: list[RecipientUpdate] = []
        for index, result in zip(indexes, results, strict=True):
            metrics.DELIVERIES.labels(result=result.verdict.value).inc()
            if result.verdict is Verdict.DELIVERED:
                metrics.DELIVERY_SECONDS.observe(max(0.0, now - message.received_at))
                state = RecipientState.DELIVERED
                outcome: Outcome | None = Outcome(
                    message_id=message.message_id, index=index, kind="delivery", at=now,
                    status=result.status, diagnostic=result.diagnostic)
                next_attempt = None
            elif result.verdict is Verdict.BOUNCED:
                state = RecipientState.BOUNCED
                bounce_type, subtype = classify(result.code, result.status, result.diagnostic)
                outcome = Outcome(message_id=message.message_id, index=index, kind="bounce",
                                  at=now, bounce_type=bounce_type, bounce_subtype=subtype,
                                  status=result.status, diagnostic=result.diagnostic)
                next_attempt = None
            else:
                state = RecipientState.DEFERRED
                outcome = None
                next_attempt = now + (result.retry_after or _DEFER_ON_ERROR)
            log.info("msg=%s rcpt=%s %s status=%s %s", message.message_id, result.recipient,
                     result.verdict.value, result.status, result.diagnostic)
            updates.append(RecipientUpdate(index=index, state=state, at=now,
                                           reply=result.diagnostic, next_attempt=next_attempt,
                                           outcome=outcome))
        return updates
