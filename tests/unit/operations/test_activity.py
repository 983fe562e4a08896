"""The console's figures from a real spool: per-minute series, destinations, hold."""

from __future__ import annotations

import time
from pathlib import Path

from smtprelay.operations import activity
from smtprelay.operations import queue as queue_ops
from smtprelay.spool import set_stats
from smtprelay.spool.model import Outcome, RecipientState, RecipientUpdate
from smtprelay.spool.store import MessageFilter, Spool
from tests.unit.spool.test_store import new_message


async def test_minute_series_counts_each_kind_in_its_minute(spool: Spool) -> None:
    now = time.time()
    await spool.add_events((), (
        set_stats.Bump("acme", "t", now, {set_stats.Kind.SEND: 3,
                                          set_stats.Kind.BOUNCE_TRANSIENT: 1}),
        set_stats.Bump("other", None, now - 120, {set_stats.Kind.DELIVERY: 2,
                                                  set_stats.Kind.BOUNCE: 1}),
        set_stats.Bump("acme", "t", now - 7200, {set_stats.Kind.COMPLAINT: 1})))
    hour = activity.minute_series(spool, now, set_stats.HOUR)
    assert len(hour.values["accepted"]) == 60 and hour.start % 60 == 0
    assert hour.values["accepted"][-1] == 3 and hour.values["delivered"][-3] == 2
    assert hour.total("bounced") == 2 and hour.total("complained") == 0
    day = activity.minute_series(spool, now, set_stats.DAY)
    assert len(day.values["accepted"]) == 1440 and day.total("complained") == 1
    assert day.as_json()["series"]["delivered"][-3] == 2


async def test_destinations_waiting_outcomes_providers_and_errors(spool: Spool) -> None:
    message = new_message(rcpts=3)  # r0-0, r0-1, r0-2 @example.net
    await spool.enqueue(message)
    now = time.time()
    [claimed] = await spool.claim_due(now, 10)
    await spool.record(claimed.message_id, [
        RecipientUpdate(0, RecipientState.DELIVERED, now, "250 ok", outcomes=(
            Outcome(claimed.message_id, 0, "delivery", now,
                    remote_mta="gmail-smtp-in.l.google.com [192.0.2.1]"),)),
        RecipientUpdate(1, RecipientState.DEFERRED, now, "451 4.7.1 try later",
                        next_attempt=now + 60),
        RecipientUpdate(2, RecipientState.QUEUED, now, "", next_attempt=now)])
    [found] = activity.destinations(spool, now, 3600, 10,
                                    provider_of=lambda host: "gmail"
                                    if host.endswith("google.com") else None,
                                    connections=lambda domain: 2)
    assert found.as_json() | {"last_error_at": None} == {
        "domain": "example.net", "provider": "gmail", "waiting": 2, "deferred": 1,
        "delivered": 1, "bounced": 0, "delayed": 0, "connections": 2,
        "last_remote": "gmail-smtp-in.l.google.com [192.0.2.1]",
        "last_error": "451 4.7.1 try later", "last_error_at": None}
    assert activity.remote_host("mx.example [192.0.2.1]") == "mx.example"
    assert activity.remote_host(None) is None


async def test_hold_release_and_a_flush_that_leaves_held_mail_alone(tmp_path: Path,
                                                                    spool: Spool) -> None:
    first, second = new_message(1), new_message(2)
    await spool.enqueue(first)
    await spool.enqueue(second)
    queue = queue_ops.DaemonSpool(spool)
    assert queue_ops.hold(queue, first.message_id) == 2
    held = spool.get(first.message_id)
    assert held is not None and all(r.held for r in held.recipients)
    assert [m.message_id for m in spool.messages(filters=MessageFilter(state="held"))] == [
        first.message_id]
    # Nothing of it is due, whatever the time; a flush does not release it.
    assert {m.message_id for m in await spool.claim_due(time.time() + 86400 * 365, 10)} == {
        second.message_id}
    assert queue_ops.retry_all(queue, time.time()) == 0
    assert queue_ops.release(queue, first.message_id, time.time()) == 2
    assert [m.message_id for m in await spool.claim_due(time.time() + 1, 10)] == [
        first.message_id]
