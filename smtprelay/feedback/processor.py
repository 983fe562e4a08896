"""The feedback processor: drains the inbox in order and records what each report means.

One background task, batch after batch: up to ``BATCH`` reports (and at most
``BATCH_BYTES`` of them) are read, parsed in a worker thread (``actions.examine``:
never on the event loop), the messages they name are looked up in the spool
(``Spool.sent_messages``), and each report's plan (``actions.plan``) is recorded:

1. suppression entries (an upsert: doing it twice changes nothing),
2. events and set statistics, in one spool transaction (1 and 2:
   ``smtprelay.feedback.recorder``),
3. the reports leave the inbox (acted on: deleted; unmatched: kept with the reason).

A crash between the steps processes the batch again at the next start: the same
entries, events with the same ids (``actions.EventIds``), the counters of that batch
counted twice at worst; never a report lost. Ten thousand reports arriving at once
are a hundred batches, each a few short thread hops and three group-committed
writes, with the loop free in between: submissions keep being answered.

Every ``_MAINTENANCE_SECONDS`` it also purges unmatched reports past
``feedback.unmatched_retention`` and the spool's index of purged messages past
``spool.sent.SENT_INDEX_RETENTION``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from smtprelay.bounces.classification import DEFAULT_RULES, Rule
from smtprelay.config import ConfigSource, Derived
from smtprelay.events.model import Engagement, EngagementSink
from smtprelay.feedback import actions, mime, unsubscribes
from smtprelay.feedback.inbox import UNMATCHED, FeedbackInbox, Report, UnmatchedBounds, Verdict
from smtprelay.feedback.recorder import FeedbackRecorder
from smtprelay.feedback.unsubscribes import MailtoTargets
from smtprelay.infra import metrics
from smtprelay.infra.background import BackgroundLoop
from smtprelay.spool.sent import SENT_INDEX_RETENTION, SentMessage
from smtprelay.spool.store import Spool
from smtprelay.transform.keys import KeySource
from smtprelay.transform.tokens import KeyRing

log = logging.getLogger("smtprelay.feedback")

BATCH = 100
BATCH_BYTES = 16 * 1024 * 1024  # besides the count: a batch of big reports stays small
_IDLE_POLL = 5.0  # seconds between looks at the inbox when nobody wakes us
_RETRY_SECONDS = 5.0  # after a failed batch (a database locked or full)
_MAINTENANCE_SECONDS = 600.0
_PURGE_LIMIT = 500


class FeedbackSource(ConfigSource, KeySource, Protocol):
    """What the feedback side reads, swapped by a reload: the configuration and the
    tracking keys, which verify VERP tags (the daemon's holder, smtprelay.app.live)."""


class FeedbackProcessor:
    def __init__(self, inbox: FeedbackInbox, spool: Spool, recorder: FeedbackRecorder,
                 live: FeedbackSource, rules: Sequence[Rule] = DEFAULT_RULES, *,
                 unsubscribes: EngagementSink | None = None) -> None:
        self._inbox = inbox
        self._spool = spool
        self._recorder = recorder
        self._live = live
        self._rules = rules
        # Mail to the List-Unsubscribe mailto addresses goes where the one-click POST
        # goes (smtprelay.feedback.unsubscribes).
        self._unsubscribes = unsubscribes
        self._mailto = Derived(live, MailtoTargets.of)
        self._rounds = BackgroundLoop("feedback-processor", self._round)
        self._next_maintenance = 0.0

    def wake(self) -> None:
        """A report was stored: look now instead of at the next poll."""
        self._rounds.wake()

    def start(self) -> None:
        self._next_maintenance = 0.0
        self._rounds.start()

    async def stop(self) -> None:
        """Stop between steps; a batch cut short is processed again at the next start."""
        await self._rounds.stop()

    async def _round(self) -> float:
        if time.monotonic() >= self._next_maintenance:
            self._next_maintenance = time.monotonic() + _MAINTENANCE_SECONDS
            await self._maintain()
        try:
            processed = await self.process_batch()
        except Exception as exc:
            log.error("feedback processing failed, trying again in %.0fs: %s",
                      _RETRY_SECONDS, exc)
            await asyncio.sleep(_RETRY_SECONDS)  # not cut short by a wake
            return 0
        # Straight on (after other tasks) while there is more, else until woken.
        return 0 if processed else _IDLE_POLL

    async def process_batch(self) -> int:
        """Process the oldest pending reports; how many (0: the inbox is empty)."""
        # Only what the parsers read of each report (mime.MAX_INPUT, and one byte more
        # so that they know it was cut), not all 10 MB of a big one.
        reports = await asyncio.to_thread(self._inbox.pending, BATCH, BATCH_BYTES, 0,
                                          mime.MAX_INPUT + 1)
        if not reports:
            metrics.FEEDBACK_INBOX_DEPTH.set(0)
            return 0
        started = time.perf_counter()
        keyring = self._live.keyring
        mailto = self._mailto()
        unsubscribing = [report for report in reports if mailto.wants(report)]
        # First, so that one that cannot be recorded now fails the batch before the
        # rest of it is recorded (the batch comes back; an unsubscribe twice is one).
        done = [await self._unsubscribe(report, keyring, mailto) for report in unsubscribing]
        reports = [report for report in reports if not mailto.wants(report)]
        examined = await asyncio.to_thread(_examine_all, reports, keyring, self._rules)
        wanted = {tag.message_id for e in examined for tag in e.tags}
        wanted.update(message_id for e in examined for message_id in e.relay_ids)
        messages = (await asyncio.to_thread(self._spool.sent_messages, wanted)
                    if wanted else {})
        # What was counted already (and, as the plans go, what they count): one bounce
        # and one complaint per message and recipient.
        counted = (await asyncio.to_thread(self._spool.counted_feedback, wanted)
                   if wanted else set())
        plans = [self._plan(report, found, messages, counted)
                 for report, found in zip(reports, examined, strict=True)]
        await self._recorder.record([s for p in plans for s in p.suppressions],
                                    [e for p in plans for e in p.events],
                                    [c for p in plans for c in p.counts],
                                    [k for p in plans for k in p.counted])
        settings = self._live.config.feedback
        dropped = await self._inbox.finish(
            [p.verdict for p in plans] + done, time.time(),
            UnmatchedBounds(settings.unmatched_max_size, settings.unmatched_quota))
        if dropped:
            metrics.FEEDBACK_UNMATCHED_DROPPED.inc(dropped)
            log.warning("feedback: %d older unmatched reports dropped: the unmatched store "
                        "is over feedback.unmatched_quota", dropped)
        for report, found, p in zip(reports, examined, plans, strict=True):
            metrics.FEEDBACK_REPORTS.labels(kind=found.feedback.kind, result=p.result).inc()
            _log(report, found, p)
        metrics.FEEDBACK_BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.FEEDBACK_INBOX_DEPTH.set(await asyncio.to_thread(self._inbox.count))
        return len(reports) + len(done)

    async def _unsubscribe(self, report: Report, keyring: KeyRing,
                           mailto: MailtoTargets) -> Verdict:
        """Act on mail to a mailto unsubscribe address, as the one-click POST does;
        RuntimeError when the sink cannot record it now (the batch is tried again)."""
        found = unsubscribes.find(report, keyring, mailto, time.time())
        if self._unsubscribes is None:
            found = unsubscribes.Found((), ("unsubscribes are not recorded here",))
        for token in found.tokens:
            engagement = Engagement(payload=token, at=report.received_at, ip=report.peer_ip,
                                    user_agent="", host="", machine=False,
                                    machine_reason=None)
            assert self._unsubscribes is not None
            if not await self._unsubscribes.unsubscribe(engagement):
                raise RuntimeError(f"feedback report={report.id}: the unsubscribe of "
                                   f"msg={token.message_id} could not be recorded")
            log.info("feedback report=%d unsubscribe msg=%s recipient=%s by mail from %s",
                     report.id, token.message_id, token.recipient, report.peer_ip)
        result = actions.MATCHED if found.tokens else actions.UNMATCHED
        metrics.FEEDBACK_REPORTS.labels(kind=unsubscribes.KIND, result=result).inc()
        for problem in found.problems:
            log.warning("feedback report=%d unsubscribe: %s", report.id, problem)
        if found.tokens:
            return Verdict(report.id, unsubscribes.KIND)
        return Verdict(report.id, unsubscribes.KIND,
                       unmatched="; ".join(found.problems)[:1000] or "no unsubscribe")

    def _plan(self, report: Report, examined: actions.Examined,
              messages: dict[str, SentMessage],
              counted: set[tuple[str, str, str]]) -> actions.Plan:
        try:
            return actions.plan(report, examined, messages, self._recorder.publishes,
                                counted)
        except Exception as exc:
            # A bug must not stop the inbox behind this report, nor lose it.
            log.exception("feedback report=%d could not be planned", report.id)
            return actions.Plan(Verdict(report.id, examined.feedback.kind,
                                                unmatched=f"internal error: {exc!r}"[:500]),
                                actions.UNMATCHED, "internal error")

    async def _maintain(self) -> None:
        now = time.time()
        try:
            for _ in range(100):
                if await self._inbox.purge(now - self._live.config.feedback.unmatched_retention,
                                           _PURGE_LIMIT) < _PURGE_LIMIT:
                    break
                await asyncio.sleep(0.1)
            for _ in range(100):
                if await self._spool.purge_sent_index(now - SENT_INDEX_RETENTION,
                                                      _PURGE_LIMIT) < _PURGE_LIMIT:
                    break
                await asyncio.sleep(0.1)
            metrics.FEEDBACK_UNMATCHED.set(
                await asyncio.to_thread(self._inbox.count, UNMATCHED))
        except Exception as exc:
            log.error("feedback purge failed: %s", exc)


def _examine_all(reports: list[Report], keyring: KeyRing | None,
                 rules: Sequence[Rule]) -> list[actions.Examined]:
    now = time.time()
    return [actions.examine(report, keyring, rules, now) for report in reports]


def _log(report: Report, examined: actions.Examined, plan: actions.Plan) -> None:
    tags = ",".join(f"{t.message_id}/{'*' if t.recipient_index is None else t.recipient_index}"
                    for t in examined.tags) or "-"
    level = logging.WARNING if plan.result == actions.UNMATCHED else logging.INFO
    log.log(level, "feedback report=%d kind=%s verp=%s(%s) %s: %s", report.id,
            examined.feedback.kind, tags, examined.tag_source or "none", plan.result,
            plan.summary)
    for note in plan.notes:
        log.info("feedback report=%d note: %s", report.id, note)
