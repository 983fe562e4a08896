"""GroupCall: the batching behind clicks' group commit."""

from __future__ import annotations

import asyncio

import pytest

from smtprelay.infra.batching import GroupCall


async def test_what_comes_during_a_call_goes_in_the_next_and_callers_wait_for_theirs() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def call(items: list[int]) -> None:
        calls.append(items)
        if len(calls) == 1:
            await release.wait()

    group: GroupCall[int] = GroupCall(call)
    first = [asyncio.create_task(group.add(n)) for n in range(3)]  # the same turn
    while not calls:
        await asyncio.sleep(0)
    later = [asyncio.create_task(group.add(n)) for n in range(3, 5)]
    await asyncio.sleep(0)
    assert calls == [[0, 1, 2]] and not any(t.done() for t in first + later)
    release.set()
    await asyncio.gather(*first, *later)
    assert calls == [[0, 1, 2], [3, 4]]


async def test_a_caller_that_goes_away_does_not_cancel_the_others_call() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def call(items: list[int]) -> None:
        await release.wait()
        calls.append(items)

    group: GroupCall[int] = GroupCall(call)
    gone = asyncio.create_task(group.add(1))
    stays = asyncio.create_task(group.add(2))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    await stays
    assert calls == [[1, 2]]


async def test_a_failing_call_is_logged_and_the_next_items_are_still_called(
        caplog: pytest.LogCaptureFixture) -> None:
    calls: list[list[int]] = []

    async def call(items: list[int]) -> None:
        calls.append(items)
        if items == [1]:
            raise RuntimeError("bug")

    group: GroupCall[int] = GroupCall(call)
    await group.add(1)  # returns: the failure is the call's to report
    await group.add(2)
    assert calls == [[1], [2]]
    assert "a group call of 1 items failed" in caplog.text


async def test_add_all_puts_its_items_in_one_call_and_nothing_waits_for_nothing() -> None:
    calls: list[list[int]] = []

    async def call(items: list[int]) -> None:
        calls.append(items)

    group: GroupCall[int] = GroupCall(call)
    await asyncio.wait_for(group.add_all([]), 1)  # returns at once, calls nothing
    await asyncio.gather(group.add_all([1, 2, 3]), group.add(4))
    assert calls == [[1, 2, 3, 4]]
