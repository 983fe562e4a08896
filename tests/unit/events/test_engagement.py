"""How a contact's preferences are written in a Subscription event."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

from smtprelay.config import Config, ContactListConfig
from smtprelay.events.engagement import EngagementRecorder, preferences
from smtprelay.events.model import Engagement, SubscriptionStatus, TopicPreferences, TopicStatus
from smtprelay.policy.contacts import Contact, SQLiteContactStore
from smtprelay.spool.set_stats import Kind, Window
from smtprelay.spool.store import Spool
from smtprelay.transform.tokens import ClickToken

NEWS = ContactListConfig.model_validate({
    "account": "acme", "unsubscribe_domain": "links.example.com",
    "topics": [{"name": "sports", "display_name": "S", "default_subscription_status": "OPT_IN"},
               {"name": "daily", "display_name": "D", "default_subscription_status": "OPT_OUT"}]})
IN, OUT = SubscriptionStatus.OPT_IN, SubscriptionStatus.OPT_OUT


class _Fixed:
    def __init__(self, config: Config) -> None:
        self.config = config


def test_every_topic_of_the_list_with_the_contacts_status_or_its_default() -> None:
    assert preferences(None, NEWS) == TopicPreferences(False, (
        TopicStatus("sports", IN), TopicStatus("daily", OUT)))
    contact = Contact("news", "a@example.net", True, {"daily": "OPT_IN", "gone": "OPT_OUT"})
    # A topic the list no longer has is still shown, after the list's own.
    assert preferences(contact, NEWS) == TopicPreferences(True, (
        TopicStatus("sports", IN), TopicStatus("daily", IN), TopicStatus("gone", OUT)))


def test_a_sets_implicit_list_has_no_topics() -> None:
    assert preferences(None, None) == TopicPreferences(False, ())
    assert preferences(Contact("configuration-set:m", "a@example.net", True), None) == \
        TopicPreferences(True, ())


async def test_concurrent_clicks_share_a_write_and_each_is_answered_after_it(
        spool: Spool, tmp_path: Path) -> None:
    """Issue 17: clicks that arrive while a batch is being written join the next one;
    every caller returns only once its click's event is in the outbox."""
    from tests.unit.spool.test_set_stats import new_message

    config = Config.model_validate({
        "listeners": [{"name": "s", "address": "127.0.0.1", "port": 0, "tls": "none"}],
        "accounts": {"acme": {}},
        "configuration_sets": {"news": {"accounts": ["acme"], "event_destinations": [
            {"name": "f", "type": "file", "path": str(tmp_path / "events.ndjson")}]}}})
    message = dataclasses.replace(new_message(tracked=True), publishes=True)
    await spool.enqueue(message)
    writes: list[int] = []
    real = spool.record_engagements

    async def counted(hits: Any, event: Any) -> Any:
        writes.append(len(hits))
        return await real(hits, event)

    spool.record_engagements = counted  # type: ignore[method-assign]
    recorder = EngagementRecorder(spool, SQLiteContactStore(tmp_path / "state.db"),
                                  _Fixed(config))

    async def click(n: int) -> int:
        token = ClickToken(message.message_id, 0, n, f"https://shop.example/{n}", 0)
        await recorder.engaged(Engagement(token, time.time(), "192.0.2.1", "ua", "l.example",
                                          False, None))
        # Durable by now: this click's event is in the outbox.
        return sum(1 for e in spool.events_after(0, 1000)
                   if e.detail["link"] == f"https://shop.example/{n}")

    assert await asyncio.gather(*(click(n) for n in range(40))) == [1] * 40
    assert sum(writes) == 40 and len(writes) <= 2  # one batch, or one and the rest
    assert spool.set_totals(Window.ending(time.time()))["news"][Kind.CLICK_UNIQUE] == 1
    await asyncio.gather(*(click(n) for n in range(40, 45)))
    assert sum(writes) == 45
