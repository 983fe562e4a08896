"""Opens, clicks and unsubscribes from the HTTP side, turned into events and suppression.

The tracking server (smtprelay.http.tracking) verifies the token and hands over an
Engagement; this records it:

- Open and Click: an event for the message's configuration set, when the set has an
  event destination. The message comes from its mail record (kept for the tracking
  window), so no token holds more than ids. Machine-made ones are recorded too, with
  ``machine: true`` and the reason: dropping them would hide what scanners do.
  Every set counts them in its statistics (smtprelay.spool.set_stats), in the same
  transaction as the event, whether it publishes events or not.
- Unsubscribe: the recipient goes on the account's suppression list (reason
  COMPLAINT: the person asked not to get this mail, and every configuration set that
  honours complaints stops sending to them), a Subscription event is recorded and
  the set's ``unsubscribe`` count goes up.
  Only a per-recipient token can unsubscribe (the relay issues those only for
  one-recipient messages); the address comes from the mail record, never the URL.
"""

from __future__ import annotations

import asyncio
import logging

from smtprelay.config import ConfigSource
from smtprelay.events import records
from smtprelay.events.model import (
    Click,
    Engagement,
    Open,
    Subscription,
    TopicPreferences,
)
from smtprelay.policy.suppression import SuppressionStore
from smtprelay.spool import set_stats
from smtprelay.spool.model import EventRecord
from smtprelay.spool.store import Spool
from smtprelay.transform.tokens import ClickToken, OpenToken, UnsubscribeToken

log = logging.getLogger("smtprelay.events")

# Subscription events name a contact list; the relay has none, so the set stands in.
_NO_SET = "default"

class EngagementRecorder:
    def __init__(self, spool: Spool, suppression: SuppressionStore,
                 live: ConfigSource) -> None:
        self._spool = spool
        self._suppression = suppression
        self._live = live

    def _publishes(self, set_name: str | None) -> bool:
        settings = self._live.config.configuration_sets.get(set_name) if set_name else None
        return settings is not None and settings.publishes

    async def engaged(self, engagement: Engagement) -> None:
        payload = engagement.payload
        detail: Open | Click
        if isinstance(payload, ClickToken):
            kind = "click"
            detail = Click(ip_address=engagement.ip, timestamp=engagement.at,
                           user_agent=engagement.user_agent, link=payload.url,
                           link_tags={name: [value] for name, value in payload.tags},
                           machine=engagement.machine,
                           machine_reason=engagement.machine_reason)
        elif isinstance(payload, OpenToken):
            kind = "open"
            detail = Open(ip_address=engagement.ip, timestamp=engagement.at,
                          user_agent=engagement.user_agent, machine=engagement.machine,
                          machine_reason=engagement.machine_reason)
        else:
            return

        def event(engaged: set_stats.Engaged) -> EventRecord | None:
            # The set's statistics count every engagement; an event only goes to a
            # set that publishes.
            if not self._publishes(engaged.configuration_set):
                return None
            return records.make(payload.message_id, engaged.configuration_set,
                               engagement.at, detail)

        try:
            await self._spool.record_engagement(payload.message_id, kind, engagement.at,
                                                engagement.machine, event)
        except Exception as exc:
            # The person still gets their redirect or pixel; the event is what is lost,
            # and the log says so.
            log.error("msg=%s %s not recorded: %s", payload.message_id,
                      type(payload).__name__, exc)

    async def unsubscribe(self, engagement: Engagement) -> bool:
        payload = engagement.payload
        if not isinstance(payload, UnsubscribeToken) or not isinstance(payload.recipient, int):
            return False
        try:
            record = await self._spool.mail_record(payload.message_id)
        except Exception as exc:
            log.error("msg=%s unsubscribe: mail record unreadable: %s", payload.message_id, exc)
            return False
        if record is None or not 0 <= payload.recipient < len(record.destination):
            # Past the tracking window (or never recorded): nobody to unsubscribe.
            log.warning("msg=%s unsubscribe for an unknown message or recipient",
                        payload.message_id)
            return True
        address = record.destination[payload.recipient]
        try:
            await asyncio.to_thread(self._suppression.add, record.account, address,
                                    "COMPLAINT", source_message_id=payload.message_id,
                                    created_at=engagement.at)
        except Exception as exc:
            log.error("msg=%s unsubscribe of a recipient not recorded: %s",
                      payload.message_id, exc)
            return False
        log.info("msg=%s account=%s recipient %d unsubscribed (one-click) machine=%s",
                 payload.message_id, record.account, payload.recipient, engagement.machine)
        events: tuple[EventRecord, ...] = ()
        if self._publishes(record.configuration_set):
            detail = Subscription(
                contact_list=record.configuration_set or _NO_SET, timestamp=engagement.at,
                source="UnsubscribeHeader",
                new_topic_preferences=TopicPreferences(unsubscribe_all=True),
                old_topic_preferences=TopicPreferences(unsubscribe_all=False))
            events = (records.make(payload.message_id, record.configuration_set,
                                  engagement.at, detail),)
        counted = set_stats.Bump(record.account, record.configuration_set, engagement.at,
                                {set_stats.Kind.UNSUBSCRIBE: 1})
        try:
            await self._spool.add_events(events, (counted,))
        except Exception as exc:
            log.error("msg=%s Subscription event and statistics not recorded: %s",
                      payload.message_id, exc)
        return True
