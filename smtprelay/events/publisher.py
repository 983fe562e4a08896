"""Event publication: from the outbox to each configuration set's destinations.

Every destination (``configuration_sets.<set>.event_destinations[]``) has its own task
that reads the outbox from the destination's saved position, takes the events of its
set and types, hands them over, and only then saves its new position: an event is
published at least once, in order, whatever crashes in between (a crash after the
hand-over and before the save repeats at most the last batch; receivers drop repeats
by the event id). The tasks are independent, so a slow or hanging receiver holds up
only its own destination. Events every destination has passed are deleted.

A destination that fails keeps its position and is retried with exponential backoff,
from 1s up to its ``retry_max_interval``. A webhook that has been failing for
``retry_for`` without a break has the events older than that set aside, appended to
``data_dir/events-undelivered/<set>.<name>.ndjson`` (so nothing is dropped and the
outbox cannot grow without end); newer events keep being retried. When each failing
destination started failing is kept in ``data_dir/events-retry.json``, so a restart
neither forgets nor extends that period (it does retry at once).

A webhook with ``format: notification`` starts as SNS starts an HTTP(S) subscription
(smtprelay.events.subscriptions): it POSTs a ``SubscriptionConfirmation`` and holds its
events until the receiver has GET the SubscribeURL in it. Until then it re-sends the
confirmation with the same backoff as a failing receiver (1s, 2s, 4s, ... up to
``retry_max_interval``), and counts as failing for ``retry_for``: a receiver that never
confirms has its older events set aside as a failing one's are. The confirmation
itself (GET /sns/confirm, smtprelay.http.sns) wakes the destination at once.

A destination added while the relay runs starts with the events made after that
(as with SES, nothing is replayed); a removed one stops holding events back.

Destinations: ``file`` (NDJSON, one SES record per line, fsync per batch, rotated by
size; written in a thread: the event loop never waits on the disk) and ``webhook``
(smtprelay.events.webhook: one signed POST per event, one at a time, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

from smtprelay.config import Config, ConfigSource, EventDestinationConfig
from smtprelay.events.notifications import Renderer, Unrenderable, default_topic_arn
from smtprelay.events.stream import StreamDestination
from smtprelay.events.subscriptions import (
    CONFIRM_PATH,
    SUBSCRIPTIONS_FILE,
    Subscriptions,
    endpoint_id,
    subscribe_url,
)
from smtprelay.events.webhook import WebhookDestination, WebhookFailure
from smtprelay.infra import metrics
from smtprelay.infra.background import BackgroundLoop
from smtprelay.infra.safeio import append_durably, fsync_dir, write_durably
from smtprelay.spool.outbox import StoredEvent
from smtprelay.spool.store import Spool

log = logging.getLogger("smtprelay.events")

_BATCH = 500
_IDLE = 1.0  # seconds between looks at the outbox when there is nothing new
_BACKOFF_FIRST = 1.0
_DEPTH_REFRESH = 5.0  # seconds between counts of the whole outbox (a full COUNT(*))
# A clean stop publishes what can go now, for at most this long (a hanging webhook
# must not hold the shutdown up).
_FINAL_PASS_SECONDS = 5.0
UNDELIVERED_DIR = "events-undelivered"
RETRY_STATE_FILE = "events-retry.json"


@dataclass(frozen=True, slots=True)
class _Target:
    key: str  # "<set>/<destination>", the saved position's name
    configuration_set: str
    settings: EventDestinationConfig

    @property
    def config_key(self) -> str:
        return (f"configuration_sets.{self.configuration_set}"
                f".event_destinations[{self.settings.name}]")

    def wants(self, event: StoredEvent) -> bool:
        return (event.configuration_set == self.configuration_set
                and self.settings.wants(event.type))

    @property
    def handshake(self) -> bool:
        """A webhook in SNS's form: it sends nothing before its receiver confirms."""
        return self.settings.type == "webhook" and self.settings.format == "notification"


def targets(config: Config) -> list[_Target]:
    return [_Target(f"{set_name}/{dest.name}", set_name, dest)
            for set_name, settings in config.configuration_sets.items()
            for dest in settings.event_destinations if dest.enabled]


class FileDestination:
    """Appends NDJSON; rotates to path.1 ... path.<keep> when the file reaches max_size."""

    def __init__(self, settings: EventDestinationConfig) -> None:
        assert settings.path is not None
        self.path: Path = settings.path
        self.max_size = settings.max_size
        self.keep = settings.keep

    def write(self, lines: list[bytes]) -> None:
        """Durably append `lines` (each a complete record with its newline)."""
        if append_durably(self.path, lines) >= self.max_size:
            self._rotate()

    def _rotate(self) -> None:
        if self.keep == 0:
            os.replace(self.path, self.path.with_name(self.path.name + ".old"))
            os.unlink(self.path.with_name(self.path.name + ".old"))
        else:
            for index in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{index}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        fsync_dir(self.path.parent)
        log.info("events file rotated path=%s", self.path)


class RetryState:
    """Since when (Unix time) each failing destination has been failing, on disk.

    Written only when a destination starts failing or recovers, so a receiver that
    is down costs two small writes, not one per retry.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._since: dict[str, float] = {}
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file (blocking: call in a thread); a damaged one is started afresh."""
        try:
            data = json.loads(self.path.read_bytes())
            self._since = {str(k): float(v) for k, v in data.items()}
        except FileNotFoundError:
            self._since = {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s cannot be read (%s); failing event destinations start their "
                        "retry period again", self.path, exc)
            self._since = {}

    def since(self, key: str) -> float | None:
        return self._since.get(key)

    def keys(self) -> set[str]:
        return set(self._since)

    async def update(self, changes: dict[str, float | None]) -> None:
        async with self._lock:
            before = dict(self._since)
            for key, value in changes.items():
                if value is None:
                    self._since.pop(key, None)
                else:
                    self._since[key] = value
            if self._since == before:
                return
            data = json.dumps(self._since, indent=1, sort_keys=True).encode() + b"\n"
            try:
                await asyncio.to_thread(write_durably, self.path, data, 0o640)
            except OSError as exc:
                # Only the retry period's start is at stake: after a restart it would
                # count from the first new failure.
                log.warning("cannot save %s: %s", self.path,
                            exc.strerror or exc)


class _Worker:
    """Publishes one destination's events, in order, in its own task."""

    def __init__(self, publisher: Publisher, target: _Target, position: int) -> None:
        self.target = target
        self._publisher = publisher
        self.position = position  # the last event id handed over (and saved)
        self._rounds = BackgroundLoop(f"events {target.key}", self._round)
        self._delay = 0.0
        self._retry_at = 0.0  # time.monotonic() of the next attempt while failing
        self._failures = 0
        # Restored from disk: a restart retries at once but does not restart the clock.
        self.failing_since = publisher.retry_state.since(target.key)
        self._renderer = Renderer(target.settings, hostname=publisher.hostname,
                                  topic_arn=default_topic_arn(
                                      publisher.hostname, target.configuration_set,
                                      target.settings.name))
        self._webhook = (WebhookDestination(target.settings, self._renderer)
                         if target.settings.type == "webhook" else None)
        self._stream = (StreamDestination(target.settings, target.configuration_set)
                        if target.settings.type == "redis_stream" else None)
        self.where = (self._webhook.shown_url if self._webhook is not None
                      else self._stream.shown_url if self._stream is not None
                      else str(target.settings.path))
        self._labels = {"configuration_set": target.configuration_set,
                        "destination": target.settings.name}
        self._endpoint = endpoint_id(target.settings.url or "")
        # True while the receiver has not confirmed the subscription (handshake only).
        self._awaiting = not self.confirmed
        if target.handshake:
            metrics.EVENT_DESTINATION_UNCONFIRMED.labels(**self._labels).set(
                int(self._awaiting))

    @property
    def confirmed(self) -> bool:
        """Events may go: no handshake, or its receiver confirmed the subscription."""
        return not self.target.handshake or self._publisher.subscriptions.confirmed(
            self.target.key, self._endpoint, self._renderer.topic_arn)

    @property
    def backing_off(self) -> bool:
        return self._retry_at > time.monotonic()

    def start(self) -> None:
        self._rounds.start()

    def wake(self) -> None:
        self._rounds.wake()

    async def stop(self) -> None:
        """Cancel the task; a batch half handed over saves its progress first."""
        await self._rounds.stop()

    async def close(self) -> None:
        if self._webhook is not None:
            await self._webhook.close()
        if self._stream is not None:
            await self._stream.close()

    def forget_metrics(self) -> None:
        with contextlib.suppress(KeyError):
            metrics.EVENT_DESTINATION_PENDING.remove(*self._labels.values())
        with contextlib.suppress(KeyError):
            metrics.EVENT_DESTINATION_UNCONFIRMED.remove(*self._labels.values())

    async def _round(self) -> float:
        if not self.confirmed:
            return await self._handshake_round()
        if self._awaiting:
            await self._confirmed_now()
        pause = self._retry_at - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)  # backing off: new events do not cut it short
        try:
            more = await self.publish_batch()
        except Exception as exc:  # the spool could not be read or written
            log.error("events destination %s: reading or saving its position in the "
                      "outbox failed, retrying: %s", self.target.config_key, exc)
            self._back_off()
            more = False
        if more or self.backing_off:
            return 0  # straight on, or to the backoff's sleep above
        return _IDLE

    async def final_pass(self) -> None:
        """At a clean stop: what can go now goes (skipped while backing off)."""
        if self.backing_off:
            return
        while await self.publish_batch() and not self.backing_off:
            pass

    async def publish_batch(self) -> bool:
        """Hand over the next batch; True when more is waiting right behind it."""
        if not self.confirmed:
            return False  # (final_pass) held until the receiver confirms
        spool = self._publisher.spool
        batch = await asyncio.to_thread(spool.events_after, self.position, _BATCH)
        if not batch:
            metrics.EVENT_DESTINATION_PENDING.labels(**self._labels).set(0)
            return False
        full = len(batch) == _BATCH
        newest = batch[-1].id if not full else await asyncio.to_thread(spool.last_event_id)
        # The last event id handed over; it moves on through events the destination does
        # not take, so a failure part way keeps what went.
        progress = [self.position]
        try:
            await self._hand_over(batch, progress)
        except asyncio.CancelledError:
            # Stopping: keep what went (fewer repeats after the restart), then stop.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._save(progress[0]))
            raise
        except Exception as exc:
            await self._save(progress[0])
            failed = next((e for e in batch if e.id > progress[0]), None)
            await self._failed(exc, failed)
            metrics.EVENT_DESTINATION_PENDING.labels(**self._labels).set(
                max(0, newest - self.position))
            return False
        await self._save(progress[0])
        metrics.EVENT_DESTINATION_PENDING.labels(**self._labels).set(
            max(0, newest - self.position))
        await self._succeeded()
        return full

    async def _hand_over(self, batch: list[StoredEvent], progress: list[int]) -> None:
        target = self.target
        published = metrics.EVENTS_PUBLISHED
        if self._webhook is None:
            wanted = [event for event in batch if target.wants(event)]
            rendered = await self._lines(wanted)
            if rendered and self._stream is not None:
                await self._stream.add([event for event, _ in rendered],
                                       [line for _, line in rendered])
            elif rendered:
                await asyncio.to_thread(FileDestination(target.settings).write,
                                        [line for _, line in rendered])
            progress[0] = batch[-1].id
            for event in wanted:
                published.labels(type=event.type, **self._labels).inc()
            return
        for event in batch:
            if target.wants(event):
                try:
                    await self._webhook.post(event)
                except Unrenderable as exc:
                    await self._set_aside_unrenderable(exc)
                else:
                    published.labels(type=event.type, **self._labels).inc()
            progress[0] = event.id

    async def _lines(self, events: list[StoredEvent]) -> list[tuple[StoredEvent, bytes]]:
        """The events with their lines; a record no line can be made of is set aside
        instead."""
        lines: list[tuple[StoredEvent, bytes]] = []
        for event in events:
            try:
                lines.append((event, self._renderer.line(event) + b"\n"))
            except Unrenderable as exc:
                await self._set_aside_unrenderable(exc)
        return lines

    async def _set_aside_unrenderable(self, exc: Unrenderable) -> None:
        """Keep a record that cannot be rendered (what it holds, as far as JSON can say
        it) beside the undelivered events, log it once and move on: one record must not
        stop the stream behind it (issue 16)."""
        event = exc.event
        path = self._publisher.undelivered_path(self.target).with_suffix(".unrenderable")
        row = {"eventId": event.event_id, "messageId": event.message_id,
               "eventType": event.type, "configurationSet": event.configuration_set,
               "at": event.at, "reason": exc.reason, "detail": event.detail}
        line = json.dumps(row, ensure_ascii=True, default=repr).encode() + b"\n"
        try:
            await asyncio.to_thread(append_durably, path, [line])
        except OSError as error:
            log.error("events destination %s: event %s cannot be rendered (%s) nor kept "
                      "in %s (%s); skipped", self.target.config_key, event.event_id,
                      exc.reason, path, error.strerror or error)
        else:
            log.error("events destination %s: event %s cannot be rendered (%s); kept in "
                      "%s and skipped", self.target.config_key, event.event_id, exc.reason,
                      path)
        metrics.EVENTS_UNRENDERABLE.labels(**self._labels).inc()

    # --- SNS's subscription handshake (format: notification) ---------------------------

    async def _handshake_round(self) -> float:
        """Ask the receiver to confirm, when due; the time until the next round. A
        confirmation wakes the task, so the wait is not slept through."""
        if not self._publisher.serving.is_set():
            return _IDLE  # the HTTP listener that answers the SubscribeURL is not up yet
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            return wait
        target = self.target
        try:
            url = await self._ask_to_confirm()
        except Exception as exc:
            delay = self._back_off()
            self._failures += 1
            metrics.EVENT_PUBLISH_FAILURES.labels(destination=target.key).inc()
            if isinstance(exc, WebhookFailure):
                metrics.WEBHOOK_FAILURES.labels(reason=exc.reason, **self._labels).inc()
            reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                      else str(exc) or exc.__class__.__name__)
            log.error("events destination %s (%s): the SNS SubscriptionConfirmation failed, "
                      "retrying in %ss: %s", target.config_key, self.where, f"{delay:.3g}",
                      reason)
        else:
            if self.confirmed:
                return 0  # the receiver confirmed while it was answering the POST
            delay = self._back_off()
            log.warning("events destination %s (%s) is waiting for the receiver to confirm "
                        "the subscription: it must GET the SubscribeURL of the SNS "
                        "SubscriptionConfirmation POSTed to it (%s?Action=ConfirmSubscription"
                        "&TopicArn=...&Token=...); notifications are held until then, the "
                        "confirmation is sent again in %ss", target.config_key, self.where,
                        url, f"{delay:.3g}")
        await self._hold()
        return max(0.0, self._retry_at - time.monotonic())

    async def _ask_to_confirm(self) -> str:
        """POST a SubscriptionConfirmation; the SubscribeURL's base and path (the
        token is not logged)."""
        assert self._webhook is not None
        base = self._publisher.public_url
        if base is None:
            raise ValueError("http.public_url is not set, so there is no SubscribeURL to "
                             "send; set it and restart")
        topic_arn = self._renderer.topic_arn
        subscription = await self._publisher.subscriptions.request(
            self.target.key, self._endpoint, topic_arn)
        message_id = str(uuid.uuid4())
        body, headers = self._renderer.confirmation(
            token=subscription.token, message_id=message_id,
            subscribe_url=subscribe_url(base, topic_arn, subscription.token))
        await self._webhook.post_message(message_id, body, headers)
        return base + CONFIRM_PATH

    async def _hold(self) -> None:
        """Unconfirmed: counted as failing since the first try (for retry_for), the held
        events shown, and those past retry_for set aside."""
        now = time.time()
        if self.failing_since is None:
            self.failing_since = now
            await self._publisher.retry_state.update({self.target.key: now})
        newest = await asyncio.to_thread(self._publisher.spool.last_event_id)
        metrics.EVENT_DESTINATION_PENDING.labels(**self._labels).set(
            max(0, newest - self.position))
        if now - self.failing_since >= self.target.settings.retry_for:
            await self._set_aside(now)

    async def _confirmed_now(self) -> None:
        subscription = self._publisher.subscriptions.get(self.target.key)
        log.info("events destination %s (%s): the receiver confirmed the subscription "
                 "(SubscriptionArn %s); its notifications go now", self.target.config_key,
                 self.where, subscription.subscription_arn if subscription else "?")
        self._awaiting = False
        metrics.EVENT_DESTINATION_UNCONFIRMED.labels(**self._labels).set(0)
        self._failures = 0
        self._delay = 0.0
        self._retry_at = 0.0
        if self.failing_since is not None:
            self.failing_since = None
            await self._publisher.retry_state.update({self.target.key: None})

    async def _save(self, position: int) -> None:
        if position > self.position:
            await self._publisher.spool.advance_cursors({self.target.key: position},
                                                        keep=self._publisher.keys())
            self.position = position

    def _back_off(self) -> float:
        ceiling = self.target.settings.retry_max_interval
        self._delay = min(ceiling, self._delay * 2 if self._delay else _BACKOFF_FIRST)
        self._retry_at = time.monotonic() + self._delay
        return self._delay

    async def _failed(self, exc: Exception, event: StoredEvent | None) -> None:
        target = self.target
        now = time.time()
        self._failures += 1
        if self.failing_since is None:
            self.failing_since = now
            await self._publisher.retry_state.update({target.key: now})
        delay = self._back_off()
        metrics.EVENT_PUBLISH_FAILURES.labels(destination=target.key).inc()
        if isinstance(exc, WebhookFailure):
            metrics.WEBHOOK_FAILURES.labels(reason=exc.reason, **self._labels).inc()
            reason = f"{exc} (event {event.event_id})" if event is not None else str(exc)
        elif isinstance(exc, OSError) and exc.strerror:
            reason = exc.strerror
        else:
            reason = str(exc) or exc.__class__.__name__
        log.error("events destination %s (%s) failed, retrying in %ss: %s",
                  target.config_key, self.where, f"{delay:.3g}", reason)
        if target.settings.type != "file" and now - self.failing_since >= target.settings.retry_for:
            await self._set_aside(now)

    async def _succeeded(self) -> None:
        if self.failing_since is None and not self._failures:
            return
        if self._failures:
            log.info("events destination %s (%s) delivering again after %d failed attempts",
                     self.target.config_key, self.where, self._failures)
        self._failures = 0
        self._delay = 0.0
        self._retry_at = 0.0
        self.failing_since = None
        await self._publisher.retry_state.update({self.target.key: None})

    async def _set_aside(self, now: float) -> None:
        """Move the events older than retry_for out of the way, into a file of their own."""
        target = self.target
        retry_for = target.settings.retry_for
        cutoff = now - retry_for
        path = self._publisher.undelivered_path(target)
        # Counted, not kept: a receiver gone for days can leave millions behind.
        moved, first_id, last_id = 0, "", ""
        while True:
            batch = await asyncio.to_thread(self._publisher.spool.events_after,
                                            self.position, _BATCH)
            # Only a prefix can go: the cursor passes events strictly in order.
            old = list(takewhile(lambda e: e.at <= cutoff, batch))
            if not old:
                break
            wanted = [event for event in old if target.wants(event)]
            if wanted:
                try:
                    await asyncio.to_thread(append_durably, path,
                                            [line for _, line in await self._lines(wanted)])
                except OSError as exc:
                    log.error("events destination %s: cannot set aside its undelivered "
                              "events in %s (%s); they stay in the outbox and are retried",
                              target.config_key, path, exc.strerror or exc)
                    break
            await self._save(old[-1].id)
            metrics.EVENTS_SET_ASIDE.labels(**self._labels).inc(len(wanted))
            if wanted:
                moved += len(wanted)
                first_id = first_id or wanted[0].event_id
                last_id = wanted[-1].event_id
            if len(old) < len(batch) or len(batch) < _BATCH:
                break
        if moved:
            state = ("waiting for its receiver to confirm the subscription"
                     if self._awaiting else "failing")
            log.error("events destination %s (%s) has been %s for %s (retry_for %s): "
                      "%d events older than %s set aside in %s (event ids %s to %s); newer "
                      "events are still retried", target.config_key, self.where, state,
                      _duration(now - (self.failing_since or now)), _duration(retry_for),
                      moved, _duration(retry_for), path, first_id, last_id)


class Publisher:
    def __init__(self, spool: Spool, live: ConfigSource) -> None:
        self.spool = spool
        self._live = live
        # The configuration whose destinations run (set by _reconcile).
        self._applied: Config | None = None
        self._workers: dict[str, _Worker] = {}
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retry_state = RetryState(live.config.server.data_dir / RETRY_STATE_FILE)
        self.subscriptions = Subscriptions(live.config.server.data_dir / SUBSCRIPTIONS_FILE)
        # Set once the HTTP listener answers GET /sns/confirm: no SubscriptionConfirmation
        # goes out before a receiver could confirm it.
        self.serving = asyncio.Event()

    @property
    def hostname(self) -> str:
        return self._live.config.server.hostname

    @property
    def public_url(self) -> str | None:
        return self._live.config.http.public_url

    def http_started(self) -> None:
        """The HTTP listener is up (GET /sns/confirm answers): subscriptions may be
        requested (event loop thread)."""
        self.serving.set()
        self._wake_all()

    async def confirm(self, topic_arn: str, token: str) -> str | None:
        """GET /sns/confirm (events.subscriptions.Confirmer): the SubscriptionArn, and
        the destination woken, for a known TopicArn and token; else None."""
        found = await self.subscriptions.confirm(topic_arn, token)
        if found is None:
            return None
        key, subscription = found
        worker = self._workers.get(key)
        if worker is not None:
            worker.wake()
        return subscription.subscription_arn

    def keys(self) -> set[str]:
        return {target.key for target in targets(self._live.config)}

    def undelivered_path(self, target: _Target) -> Path:
        return (self._live.config.server.data_dir / UNDELIVERED_DIR
                / f"{target.configuration_set}.{target.settings.name}.ndjson")

    async def start(self) -> None:
        """Give new destinations their starting position, then publish in the background."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.retry_state.load)
        await asyncio.to_thread(self.subscriptions.load)
        await self._reconcile()
        self._supervisor = asyncio.create_task(self._supervise(), name="events")

    def config_swapped(self) -> None:
        """The holder's configuration was swapped (SIGHUP): its destinations are added,
        removed or restarted now rather than at the next pass (any thread)."""
        self._call(self._changed.set)

    def wake(self) -> None:
        """New events are in the outbox (any thread)."""
        self._call(self._wake_all)

    def _call(self, fn: Callable[[], None]) -> None:
        if self._loop is None:
            fn()
        else:
            self._loop.call_soon_threadsafe(fn)

    def _wake_all(self) -> None:
        for worker in self._workers.values():
            worker.wake()

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            await worker.stop()
        # One last pass, so a clean stop leaves nothing unpublished that could go now.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(worker.final_pass() for worker in workers),
                               return_exceptions=True), _FINAL_PASS_SECONDS)
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.close()

    async def _supervise(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_DEPTH_REFRESH):
                    await self._changed.wait()
            try:
                if self._changed.is_set() or self._live.config is not self._applied:
                    self._changed.clear()
                    await self._reconcile()
                metrics.EVENT_OUTBOX_DEPTH.set(
                    await asyncio.to_thread(self.spool.event_backlog))
            except Exception as exc:
                log.error("event publication: applying the destinations failed: %s", exc)

    async def _reconcile(self) -> None:
        """Run one worker per enabled destination of the current config."""
        self._applied = config = self._live.config
        wanted = {target.key: target for target in targets(config)}
        for key, worker in list(self._workers.items()):
            if wanted.get(key) != worker.target:
                del self._workers[key]
                await worker.stop()
                await worker.close()
                if key not in wanted:
                    worker.forget_metrics()
        positions = await asyncio.to_thread(self.spool.cursors)
        missing = [key for key in wanted if key not in positions]
        if missing or positions.keys() - wanted.keys():
            # New destinations start at the outbox's end; removed ones stop holding
            # events back.
            latest = await asyncio.to_thread(self.spool.last_event_id)
            placed = {key: latest for key in missing}
            await self.spool.advance_cursors(placed, keep=set(wanted))
            positions.update(placed)
        gone = self.retry_state.keys() - wanted.keys()
        await self.retry_state.update(dict.fromkeys(gone))
        # A destination removed, disabled or sending events now has no subscription:
        # it asks to be confirmed again when it comes back.
        unsubscribed = self.subscriptions.keys() - {
            key for key, target in wanted.items() if target.handshake}
        if unsubscribed:
            try:
                await self.subscriptions.forget(unsubscribed)
            except OSError as exc:
                log.warning("cannot save %s: %s", self.subscriptions.path,
                            exc.strerror or exc)
        for key, target in wanted.items():
            if key not in self._workers:
                worker = _Worker(self, target, positions[key])
                self._workers[key] = worker
                worker.start()


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"
