"""The queue operations on both ways to the spool: a connection of the CLI's own and
the daemon's Spool (writes through its writer thread)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import pytest

from smtprelay.operations import paging
from smtprelay.operations import queue as ops
from smtprelay.operations.errors import MessageNotFound, NothingToRetry
from smtprelay.spool.store import MessageFilter, Spool, open_for_cli
from tests.unit.spool.test_store import new_message


@pytest.fixture(params=["cli", "daemon"])
def backends(request: pytest.FixtureRequest, spool: Spool) -> Iterator[tuple[Spool, ops.Queue]]:
    """The daemon's spool, and the queue as one front end or the other reaches it."""
    own = ops.SpoolConnection(open_for_cli(spool.path))
    yield spool, own if request.param == "cli" else ops.DaemonSpool(spool)
    own.close()


def _enqueue(spool: Spool, count: int) -> list[str]:
    messages = [new_message(i) for i in range(count)]
    for message in messages:
        spool.enqueue_future(message).result(10)
    return sorted(m.message_id for m in messages)


def test_pages_follow_each_other_to_the_end(backends: tuple[Spool, ops.Queue]) -> None:
    spool, queue = backends
    ids = _enqueue(spool, 5)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = ops.page(queue, MessageFilter(account="acme"), limit=2, after=cursor)
        seen += [m.message_id for m in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    assert ops.page(queue, MessageFilter(account="other"), limit=2).items == ()
    assert [m.message_id for m in ops.listing(queue, MessageFilter(), limit=3)] == ids[:3]


def test_show_retry_and_delete_refuse_what_is_not_there(
        backends: tuple[Spool, ops.Queue]) -> None:
    spool, queue = backends
    [message_id] = _enqueue(spool, 1)
    assert ops.show(queue, message_id).account == "acme"
    assert ops.body(queue, message_id) == b"x" * 100
    assert ops.retry(queue, message_id, time.time()) == 2
    assert ops.retry_all(queue, time.time()) == 2
    ops.delete(queue, message_id)
    for call in (lambda: ops.show(queue, message_id), lambda: ops.body(queue, message_id),
                 lambda: ops.delete(queue, message_id),
                 lambda: ops.retry(queue, message_id, time.time())):
        with pytest.raises(MessageNotFound, match=f"^no message {message_id} in the queue$"):
            call()


@pytest.mark.parametrize(("state", "held"), [("delivered", False), ("sending", True)])
def test_nothing_to_retry_says_whether_an_attempt_holds_it(
        backends: tuple[Spool, ops.Queue], state: str, held: bool) -> None:
    spool, queue = backends
    [message_id] = _enqueue(spool, 1)
    conn = sqlite3.connect(spool.path)
    with conn:
        conn.execute("UPDATE recipients SET state = ?", (state,))
    conn.close()
    with pytest.raises(NothingToRetry) as refused:
        ops.retry(queue, message_id, time.time())
    assert refused.value.held is held
    assert ("holds it now" in str(refused.value)) is held


def test_a_page_of_nothing_has_no_cursor() -> None:
    assert paging.page(lambda n: ["a", "b"][:n], 0, key=str) == paging.Page((), None)
    assert paging.page(lambda n: ["a", "b"][:n], 1, key=str) == paging.Page(("a",), "a")
    assert paging.page(lambda n: ["a", "b"][:n], 2, key=str) == paging.Page(("a", "b"), None)
