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
