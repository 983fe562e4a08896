"""Pages of a listing that may be long (the queue, a suppression list)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Some items, and the cursor to pass for the ones after them (None: no more).

    A cursor is the key of the page's last item, so any string is a valid one: the
    next page starts after it, whatever was added or removed since.
    """

    items: tuple[T, ...]
    next_cursor: str | None


def page(fetch: Callable[[int], Sequence[T]], limit: int, key: Callable[[T], str]) -> Page[T]:
    """At most `limit` items from `fetch(n)` (the first n after the cursor).

    One more than the page is fetched, so that whether another follows is known
    without counting the rest.
    """
    found = fetch(limit + 1)
    items = tuple(found[:limit])
    more = len(found) > limit and bool(items)
    return Page(items, key(items[-1]) if more else None)


def scan(fetch: Callable[[str | None, int], Sequence[T]], after: str | None, limit: int,
         key: Callable[[T], str], keep: Callable[[T], bool], budget: int) -> Page[T]:
    """At most `limit` items that `keep` takes, from `fetch(cursor, n)` (the first n
    after the cursor), reading at most about `budget` items: a filter the store cannot
    apply must not turn one request into a read of a whole list. The cursor is the key
    of the last item read, so a page may be short, even empty, and still have one."""
    items: list[T] = []
    cursor = after
    read = 0
    chunk = max(1, min(limit, budget)) + 1
    while True:
        found = fetch(cursor, chunk)
        for index, item in enumerate(found):
            read += 1
            cursor = key(item)
            if keep(item):
                items.append(item)
            if len(items) == limit or read >= budget:
                more = index + 1 < len(found) or bool(fetch(cursor, 1))
                return Page(tuple(items), cursor if more else None)
        if len(found) < chunk:
            return Page(tuple(items), None)
