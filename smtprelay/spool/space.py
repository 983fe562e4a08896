"""The free space the spool needs, and the check that other writers leave it alone.

The spool itself writes until the disk is full (then 452, smtprelay.submission): it
is what the relay exists for. Everything else written to data_dir's file system is
bounded by ``store.spool_reserve`` instead: such a writer asks ``check_room`` before it
writes, and refuses (``ReserveError``, a ``DiskFullError``, so 452 4.3.1) when what it
is about to write would leave less than the reserve free. The feedback inbox is the
first such writer (issue 16: junk reports must not fill the spool's disk).

Free space is ``statvfs``'s ``f_bavail`` (what an unprivileged writer may still use,
so root's reserved blocks count as used): the figure the spool will meet, whoever
the daemon runs as.
"""

from __future__ import annotations

import os
from pathlib import Path

from smtprelay.config import Config
from smtprelay.db.writer import DiskFullError

MIN_AUTO_RESERVE = 256 * 1024 * 1024


class ReserveError(DiskFullError):
    """Writing would eat into the free space kept for the spool."""


def reserve(config: Config) -> int:
    """store.spool_reserve in bytes ("auto": twice the largest message, at least 256 MiB)."""
    value = config.store.spool_reserve
    if value == "auto":
        return max(MIN_AUTO_RESERVE, 2 * config.limits.max_message_size)
    return int(value)


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of `directory`."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def check_room(directory: Path, needed: int, keep_free: int) -> None:
    """ReserveError unless writing `needed` bytes there leaves `keep_free` free.

    Blocking (a statvfs): call it where the write happens, in the writer's thread."""
    free = free_bytes(directory)
    if free - needed < keep_free:
        raise ReserveError(
            f"{needed} bytes would leave {max(free - needed, 0)} of {free} free on "
            f"{directory}'s file system, under store.spool_reserve ({keep_free}): that "
            "room is kept for the spool; free disk space, or lower store.spool_reserve")
