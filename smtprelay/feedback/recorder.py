"""Recording feedback: suppression entries, then events and set statistics.

The feedback processor records the plans of a batch of reports here; anything else
that learns of a bounce or complaint after delivery (the mailbox simulator, a test,
an operator tool) uses ``inject`` to have it recorded the same way: the same SES
event in the outbox, the same suppression entry, the same counters behind the
reputation's bounce and complaint rates.

Order: suppression first (an upsert, harmless to repeat), then events and counters in
one spool transaction. A failure in between leaves the entries and nothing else, so
trying again repeats only what is idempotent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from smtprelay.config import ConfigSource
from smtprelay.events import records
from smtprelay.events.model import Bounce, BounceType, Complaint, DeliveryDelay
from smtprelay.infra.safeio import append_durably
from smtprelay.policy.suppression import Reason, Suppress, SuppressionStore, reasons_for
from smtprelay.spool import set_stats
from smtprelay.spool.model import EventRecord
from smtprelay.spool.store import Spool

log = logging.getLogger("smtprelay.feedback")


PENDING_RETRY = 5.0  # seconds between attempts to write held suppression entries


class FeedbackRecorder:
    """`pending`: where suppression entries wait that could not be written when they
    came (a hard bounce at delivery while Redis is away): appended durably, written
    to the list by `run` once the store answers again. None: no such file (tests)."""

    def __init__(self, spool: Spool, suppression: SuppressionStore,
                 live: ConfigSource, pending: Path | None = None) -> None:
        self._spool = spool
        self._suppression = suppression
        self._live = live
        self._pending = pending
        self._pending_lock = asyncio.Lock()

    def publishes(self, set_name: str | None) -> bool:
        """Whether events of ``set_name`` go anywhere (it has an event destination)."""
        settings = self._live.config.configuration_sets.get(set_name) if set_name else None
        return settings is not None and settings.publishes

    async def record(self, suppressions: Sequence[Suppress], events: Sequence[EventRecord],
                     counts: Sequence[set_stats.Bump],
                     counted: Sequence[tuple[str, str, str, float]] = ()) -> None:
        """Durably record, in this order: the suppression entries (the last one per
        account and address wins), then in one transaction the events, the counters
        and what they counted (so a repeat of a report is not counted again)."""
        await self.suppress(suppressions)
        if events or counts or counted:
            await self._spool.add_events(tuple(events), tuple(counts), tuple(counted))

    async def suppress(self, suppressions: Sequence[Suppress]) -> None:
        """Put each address on its account's list, when the reason is one its message's
        configuration set applies (suppression.reasons); the last entry per account and
        address wins. Raises what the store raises."""
        config = self._live.config
        unique = {(s.account, s.address.lower()): s for s in suppressions
                  if s.reason in reasons_for(config, s.configuration_set)}
        if unique:
            await asyncio.to_thread(self._suppress, unique.values())

    async def suppress_or_hold(self, suppressions: Sequence[Suppress]) -> None:
        """suppress(), and when the store cannot take the entries now, keep them on disk
        for `run` to write later: a hard bounce is never left off the list."""
        try:
            await self.suppress(suppressions)
        except Exception as exc:
            if self._pending is None:
                raise
            lines = [json.dumps(dataclasses.asdict(s), ensure_ascii=False).encode() + b"\n"
                     for s in suppressions]
            async with self._pending_lock:
                await asyncio.to_thread(append_durably, self._pending, lines)
            log.error("suppression list not answering (%s): %d entries (%s) held in %s, "
                      "written when it answers", exc, len(lines),
                      ", ".join(s.address for s in suppressions), self._pending)

    async def run(self, every: float = PENDING_RETRY) -> None:
        """Write held entries (`suppress_or_hold`) once the store takes them; a file
        left by an earlier run first."""
        while True:
            if self._pending is not None:
                async with self._pending_lock:
                    await self._write_held(self._pending)
            await asyncio.sleep(every)

    async def _write_held(self, path: Path) -> None:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return
        held = [Suppress(**json.loads(line)) for line in data.splitlines() if line.strip()]
        try:
            await self.suppress(held)
        except Exception as exc:
            log.info("%d held suppression entries wait on: %s", len(held), exc)
            return
        await asyncio.to_thread(path.unlink)
        log.warning("%d held suppression entries written to the list", len(held))

    def _suppress(self, entries: Iterable[Suppress]) -> None:
        for entry in entries:
            self._suppression.add(entry.account, entry.address, entry.reason,
                                  source_message_id=entry.message_id, created_at=entry.at,
                                  diagnostic=entry.diagnostic)

    async def inject(self, message_id: str, recipient_index: int,
                     detail: Bounce | Complaint | DeliveryDelay, *, suppress: bool = True,
                     count: bool = True) -> bool:
        """Record ``detail`` about one recipient of a message this relay sent, as if a
        report had come back for it: the event (when the message's set publishes and
        its mail record is kept), a suppression entry for a Permanent bounce or a
        complaint when ``suppress``, and the set's counter when ``count`` (the
        simulator passes False for both: SES keeps simulator traffic off the
        suppression list and out of the reputation). The detail's recipient list is
        the caller's; the address suppressed is the message's own recipient.

        False when the message or the recipient is unknown (nothing recorded).
        """
        found = await asyncio.to_thread(self._spool.sent_messages, [message_id])
        message = found.get(message_id)
        if message is None or not 0 <= recipient_index < len(message.recipients):
            return False
        address = message.recipients[recipient_index]
        at = detail.timestamp
        reason: Reason | None = None
        kind: set_stats.Kind | None
        if isinstance(detail, Bounce):
            kind = set_stats.outcome_kind("bounce", str(detail.bounce_type))
            if detail.bounce_type is BounceType.PERMANENT:
                reason = "BOUNCE"
        elif isinstance(detail, Complaint):
            kind = set_stats.Kind.COMPLAINT
            reason = "COMPLAINT"
        else:
            kind = set_stats.Kind.DELIVERY_DELAY
        diagnostic = (detail.bounced_recipients[0].diagnostic_code
                      if isinstance(detail, Bounce) and detail.bounced_recipients else None)
        counted: list[tuple[str, str, str, float]] = []
        once = "complaint" if isinstance(detail, Complaint) else \
            "bounce" if isinstance(detail, Bounce) else None
        if count and once is not None:
            seen = await asyncio.to_thread(self._spool.counted_feedback, [message_id])
            if (message_id, address.lower(), once) in seen:
                log.info("msg=%s recipient %d: %s already counted, not again", message_id,
                         recipient_index, type(detail).__name__)
                return True
            counted.append((message_id, address, once, at))
        suppressions = ([Suppress(message.account, address, reason, message_id, at,
                                  message.configuration_set, diagnostic)]
                        if suppress and reason is not None else [])
        events = ([records.make(message_id, message.configuration_set, at, detail)]
                  if message.mail_record and self.publishes(message.configuration_set)
                  else [])
        counts = ([set_stats.Bump(message.account, message.configuration_set, at, {kind: 1})]
                  if count and kind is not None else [])
        await self.record(suppressions, events, counts, counted)
        log.info("msg=%s recipient %d: %s injected (suppress=%s count=%s)", message_id,
                 recipient_index, type(detail).__name__, suppress, count)
        return True
