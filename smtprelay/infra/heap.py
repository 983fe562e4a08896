"""The garbage collector after start-up.

CPython's cycle collector walks every tracked object of a generation, and the oldest
generation holds everything made at start-up: the modules, the validated configuration,
pydantic's and aiohttp's tables, tens of thousands of objects that live as long as the
process. Each full collection walked them again, about 60 ms in a relay under load,
several times a minute. Frozen once the daemon is up (gc.freeze), they are left out of
every later collection; objects made afterwards, configurations swapped in by a reload
among them, are collected as before. docs/design.md has the measurement.
"""

from __future__ import annotations

import gc


def freeze_start_up() -> None:
    """Collect what start-up left over, then leave the survivors out of later
    collections (blocking for one full collection: call once, when ready)."""
    gc.collect()
    gc.freeze()
