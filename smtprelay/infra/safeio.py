"""Durable file writes: the bytes are on disk, under their final name, or not there at all."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a new or renamed file) survive a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, mode: int = 0o644, *, sync_dir: bool = True) -> None:
    """Write to a temporary name, fsync, rename over `path`, then fsync the directory.

    The mode is set at creation (0o600 for keys), never widened afterwards.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)


def append_durably(path: Path, lines: list[bytes]) -> int:
    """Append `lines` (each a whole record with its newline) and fsync; the file's size.

    A write that fails part way (ENOSPC after some blocks) is cut back off, so the file
    never holds half a record and the retry appends whole lines after whole lines.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(b"".join(lines))
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)
    return size
