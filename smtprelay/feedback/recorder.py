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
import logging
from collections.abc import Iterable, Sequence

from smtprelay.config import ConfigSource
from smtprelay.events import records
from smtprelay.events.model import Bounce, BounceType, Complaint, DeliveryDelay
from smtprelay.policy.suppression import Reason, Suppress, SuppressionStore, reasons_for
from smtprelay.spool import set_stats
from smtprelay.spool.model import EventRecord
from smtprelay.spool.store import Spool

log = logging.getLogger("smtprelay.feedback")


class FeedbackRecorder:
    def __init__(self, spool: Spool, suppression: SuppressionStore,
                 live: ConfigSource) -> None:
        self._spool = spool
        self._suppression = suppression
        self._live = live

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
