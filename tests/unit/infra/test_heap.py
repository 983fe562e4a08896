"""freeze_start_up: what start-up made is left out of later collections; what comes
after is collected as before."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from smtprelay.infra.heap import freeze_start_up


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_objects_are_frozen_and_later_cycles_still_collected(unfrozen: None) -> None:
    kept = Cycle()
    freeze_start_up()
    assert gc.get_freeze_count() > 0
    # Frozen: no collection walks it (get_objects lists what collections walk).
    assert all(o is not kept for o in gc.get_objects())
    later = Cycle()
    freed = weakref.ref(later)
    del later
    gc.collect()
    assert freed() is None  # a cycle made after start-up is still found and freed
