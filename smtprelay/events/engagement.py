"""Opens, clicks and unsubscribes from the HTTP side, turned into events and suppression.

The tracking server (smtprelay.http.tracking) verifies the token and hands over an
Engagement; this records it:

- Open and Click: an event for the message's configuration set, when the set has an
  event destination. The message comes from its mail record (kept for the tracking
  window), so no token holds more than ids. Machine-made ones are recorded too, with
  ``machine: true`` and the reason: dropping them would hide what scanners do.
  Every set counts them in its statistics (smtprelay.spool.set_stats), in the same
  transaction as the event, whether it publishes events or not.
- Unsubscribe: a subscription change, never an account-wide suppression entry (a
  person who leaves a newsletter still gets password resets). A token that names a
  contact list (the message was sent with X-SES-LIST-MANAGEMENT-OPTIONS) opts the
  contact out of its topic, or of the whole list when it named no topic; any other
  (a configuration set's own one-click unsubscribe) opts the person out of the set's
  implicit list, so later mail of that set, and only of that set, is held back
  (smtprelay.policy.contacts). A Subscription event with the contact's preferences
  before and after is recorded, and the set's ``unsubscribe`` count goes up, when
  something changed.
  Only a per-recipient token can unsubscribe (the relay issues those only for
  one-recipient messages); the address comes from the mail record, never the URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from smtprelay.config import ConfigSource, ContactListConfig
from smtprelay.events import records
from smtprelay.events.model import (
    Click,
    Engagement,
    Open,
    Subscription,
    SubscriptionStatus,
    TopicPreferences,
    TopicStatus,
)
from smtprelay.infra.batching import GroupCall
from smtprelay.policy import contacts
from smtprelay.policy.contacts import Contact, ContactStore
from smtprelay.spool import set_stats
from smtprelay.spool.model import EventRecord
from smtprelay.spool.store import Spool
from smtprelay.transform.tokens import ClickToken, OpenToken, UnsubscribeToken

log = logging.getLogger("smtprelay.events")

_STATUS = {"OPT_IN": SubscriptionStatus.OPT_IN, "OPT_OUT": SubscriptionStatus.OPT_OUT}


def preferences(contact: Contact | None, settings: ContactListConfig | None
                ) -> TopicPreferences:
    """A contact's preferences as a Subscription event writes them: every topic of the
    list with the contact's status for it (its default when the contact has none),
    then any topic the contact has a preference for that the list no longer has."""
    if contact is None:
        contact = Contact("", "")
    statuses: list[TopicStatus] = []
    known: set[str] = set()
    for topic in settings.topics if settings is not None else ():
        known.add(topic.name)
        statuses.append(TopicStatus(topic.name, _STATUS[contact.status(topic)]))
    for name, status in sorted(contact.topics.items()):
        if name not in known:
            statuses.append(TopicStatus(name, _STATUS[status]))
    return TopicPreferences(unsubscribe_all=contact.unsubscribe_all,
                            topic_subscription_status=tuple(statuses))


def _hit(engagement: Engagement) -> tuple[set_stats.Hit, Open | Click] | None:
    """An open or click as the spool counts it, and its event's detail; None for
    anything else."""
    payload = engagement.payload
    detail: Open | Click
    if isinstance(payload, ClickToken):
        kind = "click"
        detail = Click(ip_address=engagement.ip, timestamp=engagement.at,
                       user_agent=engagement.user_agent, link=payload.url,
                       link_tags={name: [value] for name, value in payload.tags},
                       machine=engagement.machine, machine_reason=engagement.machine_reason)
    elif isinstance(payload, OpenToken):
        kind = "open"
        detail = Open(ip_address=engagement.ip, timestamp=engagement.at,
                      user_agent=engagement.user_agent, machine=engagement.machine,
                      machine_reason=engagement.machine_reason)
    else:
        return None
    return set_stats.Hit(payload.message_id, kind, engagement.at, engagement.machine), detail


class EngagementRecorder:
    """Opens and clicks are written in batches (infra.batching): every one that arrives
    while a batch is being written joins the next, which is one piece of spool work
    (one look-up per message, one write per counter, the events in one statement) and
    shares its commit. Each request is answered once its batch is durable."""

    def __init__(self, spool: Spool, contacts: ContactStore, live: ConfigSource) -> None:
        self._spool = spool
        self._contacts = contacts
        self._live = live
        self._batches: GroupCall[tuple[set_stats.Hit, Open | Click]] = GroupCall(self._write)

    def _publishes(self, set_name: str | None) -> bool:
        settings = self._live.config.configuration_sets.get(set_name) if set_name else None
        return settings is not None and settings.publishes

    async def engaged(self, engagement: Engagement) -> None:
        await self.engaged_all((engagement,))

    async def engaged_all(self, engagements: Iterable[Engagement]) -> None:
        """Record opens and clicks (a worker's batch of them) in one batch; return once
        it is durable."""
        await self._batches.add_all(filter(None, map(_hit, engagements)))

    async def _write(self, batch: list[tuple[set_stats.Hit, Open | Click]]) -> None:
        hits = [hit for hit, _ in batch]

        def event(index: int, engaged: set_stats.Engaged) -> EventRecord | None:
            # The set's statistics count every engagement; an event only goes to a
            # set that publishes.
            if not self._publishes(engaged.configuration_set):
                return None
            hit, detail = batch[index]
            return records.make(hit.message_id, engaged.configuration_set, hit.at, detail)

        try:
            await self._spool.record_engagements(hits, event)
        except Exception as exc:
            # The people still get their redirects and pixels; the events are what is
            # lost, and the log says so.
            log.error("%d opens and clicks not recorded (msg=%s ...): %s", len(hits),
                      hits[0].message_id, exc)

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
        settings: ContactListConfig | None = None
        if payload.contact_list is not None:
            # The list and topic the message named; the address is the recipient's.
            contact_list = shown = payload.contact_list
            topic = payload.topic
            settings = self._live.config.contact_lists.get(contact_list)
            if settings is None or settings.account != record.account:
                # Removed (or given away) since: the person's wish is kept all the same,
                # should the list come back.
                log.warning("msg=%s unsubscribe from contact list %s, which account %s "
                            "no longer has", payload.message_id, contact_list, record.account)
                settings = None
        elif record.configuration_set is not None:
            # A set's own one-click unsubscribe: scoped to that set's mail.
            contact_list, topic = contacts.set_scope(record.configuration_set), None
            shown = record.configuration_set
        else:
            log.warning("msg=%s unsubscribe for a message with neither a contact list nor "
                        "a configuration set; nothing to change", payload.message_id)
            return True
        try:
            before, after = await asyncio.to_thread(
                self._contacts.unsubscribe, contact_list, address, topic, at=engagement.at)
        except Exception as exc:
            log.error("msg=%s unsubscribe of a recipient not recorded: %s",
                      payload.message_id, exc)
            return False
        log.info("msg=%s account=%s recipient %d unsubscribed from %s%s (one-click) "
                 "machine=%s", payload.message_id, record.account, payload.recipient,
                 contact_list, f" topic {topic}" if topic else "", engagement.machine)
        old, new = preferences(before, settings), preferences(after, settings)
        if before is not None and old == new:
            return True  # already out: nothing changed, nothing to report or count
        events: tuple[EventRecord, ...] = ()
        if self._publishes(record.configuration_set):
            detail = Subscription(contact_list=shown, timestamp=engagement.at,
                                  source="UnsubscribeHeader", new_topic_preferences=new,
                                  old_topic_preferences=old)
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
