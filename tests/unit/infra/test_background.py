"""BackgroundLoop: rounds, wake-ups, idle timeouts, failures and both ways to stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from smtprelay.infra import background
from smtprelay.infra.background import BackgroundLoop


class Rounds:
    """A round that records each call and returns the pauses it is given, in turn."""

    def __init__(self, *pauses: float | None) -> None:
        self.pauses = list(pauses)
        self.calls = 0
        self.called = asyncio.Event()

    async def __call__(self) -> float | None:
        self.calls += 1
        self.called.set()
        return self.pauses.pop(0) if self.pauses else None

    async def next_call(self) -> None:
        self.called.clear()
        async with asyncio.timeout(5):
            await self.called.wait()


async def test_a_round_that_wants_more_runs_again_at_once() -> None:
    rounds = Rounds(0, 0, None)
    loop = BackgroundLoop("t", rounds)
    loop.start()
    async with asyncio.timeout(5):
        while rounds.calls < 3:
            await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert rounds.calls == 3  # the third said "until woken"
    await loop.stop()
    assert not loop.running


async def test_wake_starts_the_next_round_before_the_timeout() -> None:
    rounds = Rounds(3600, 3600)
    loop = BackgroundLoop("t", rounds)
    loop.start()
    await rounds.next_call()
    loop.wake()
    await rounds.next_call()
    assert rounds.calls == 2
    await loop.stop()


async def test_the_timeout_starts_the_next_round_without_a_wake() -> None:
    rounds = Rounds(0.01, None)
    loop = BackgroundLoop("t", rounds)
    loop.start()
    await rounds.next_call()
    await rounds.next_call()
    assert rounds.calls == 2
    await loop.stop()


async def test_a_failing_round_is_logged_and_tried_again(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(background, "ERROR_PAUSE", 0.01)
    calls = 0
    again = asyncio.Event()

    async def flaky() -> float | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        again.set()
        return None

    loop = BackgroundLoop("flaky", flaky)
    with caplog.at_level(logging.ERROR, "smtprelay"):
        loop.start()
        async with asyncio.timeout(5):
            await again.wait()
    assert calls == 2
    assert "flaky: a round failed" in caplog.text and "boom" in caplog.text
    await loop.stop()


async def test_stop_cancels_a_round_under_way() -> None:
    started = asyncio.Event()
    cancelled = False

    async def slow() -> float | None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return None

    loop = BackgroundLoop("slow", slow)
    loop.start()
    await started.wait()
    async with asyncio.timeout(5):
        await loop.stop()
    assert cancelled and loop.stopping and not loop.running


async def test_stop_with_finish_round_lets_the_round_end_and_starts_no_other() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    finished = 0

    async def work() -> float | None:
        nonlocal finished
        started.set()
        await release.wait()
        finished += 1
        return 0  # would go on at once, but the loop is stopping

    loop = BackgroundLoop("work", work)
    loop.start()
    await started.wait()
    stopping = asyncio.create_task(loop.stop(finish_round=True))
    await asyncio.sleep(0.01)
    assert loop.stopping and not stopping.done()
    release.set()
    async with asyncio.timeout(5):
        await stopping
    assert finished == 1


async def test_stop_with_finish_round_wakes_a_sleeping_loop() -> None:
    rounds = Rounds(None)
    loop = BackgroundLoop("t", rounds)
    loop.start()
    await rounds.next_call()
    async with asyncio.timeout(5):
        await loop.stop(finish_round=True)
    assert rounds.calls == 1
