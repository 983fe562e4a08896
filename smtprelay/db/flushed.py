"""Stores whose writes gather in memory and reach their database once per interval.

Counts that change with every message (quota usage, warm-up counts) would otherwise
cost a transaction and an fsync each, competing with the spool's own commits on the
hot path. Here they wait in memory and a thread of the store's own writes them in one
transaction per interval; a crash forgets at most one interval of counting.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

from smtprelay.db.writer import GroupCommitWriter


class FlushedStore:
    """The writer, its flushing thread and their lifecycle; a subclass keeps what is
    pending under `_lock` and writes it in `flush()`."""

    MIGRATIONS: ClassVar[tuple[str, ...]]

    def __init__(self, path: Path, component: str, flush_interval: float) -> None:
        self.path = path
        self._component = component
        self._writer = GroupCommitWriter(path, component)
        self._lock = threading.Lock()
        self._flush_interval = flush_interval
        self._stopped = threading.Event()
        self._flusher: threading.Thread | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer.start(self.MIGRATIONS, component=self._component)
        self._stopped.clear()
        self._flusher = threading.Thread(target=self._flush_loop,
                                         name=f"{self._component}-flush", daemon=True)
        self._flusher.start()

    def close(self) -> None:
        self._stopped.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        self.flush()
        self._writer.stop()

    def _flush_loop(self) -> None:
        while not self._stopped.wait(self._flush_interval):
            self.flush()

    def flush(self) -> None:
        """Write what is pending (blocking); keep it for the next flush on failure."""
        raise NotImplementedError
