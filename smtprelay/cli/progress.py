"""Progress of long CLI work on the operator's terminal.

Only when standard error is a terminal: a script or a pipe gets the same output as
before, and the final summary line is printed by the command either way. The line is
rewritten in place at most every `interval` seconds, so a million updates cost a
few hundred writes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, label: str, total: int | None = None, *, unit: str = "rows",
                 stream: IO[str] | None = None, interval: float = 0.2) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self._interval = interval
        self._shown_at = 0.0
        self._started = time.monotonic()
        self._width = 0
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.enabled or now - self._shown_at < self._interval:
            return
        self._shown_at = now
        if self.total:
            text = (f"{self.label}: {done:,}/{self.total:,} {self.unit} "
                    f"({100 * done // self.total}%)")
        else:
            text = f"{self.label}: {done:,} {self.unit}"
        rate = done / max(now - self._started, 1e-6)
        if self.total and done and rate > 0:
            text += f", about {max(0, self.total - done) / rate:.0f}s left"
        self._write(text)

    def note(self, text: str) -> None:
        """A phase with no count yet ("reading FILE...")."""
        if self.enabled:
            self._write(f"{self.label}: {text}")

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, counting them as they go by."""
        done = self.done
        for item in items:
            yield item
            done += 1
            if done % 1000 == 0:
                self.update(done)
        self.done = done

    def finish(self) -> None:
        """Clear the line: the command prints its own summary."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _write(self, text: str) -> None:
        pad = max(0, self._width - len(text))
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()
        self._width = len(text)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()
