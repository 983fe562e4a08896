"""One `smtprelay serve` per data_dir.

Two relays on one spool would each hand the other's deliveries under way back to the
queue at start, and deliver them again. `hold()` takes an flock on data_dir/serve.lock
for as long as the relay runs. The kernel drops the lock when the process ends, however
it ends (kill -9, OOM killer, power loss), so a crashed relay never leaves a lock
behind that blocks the restart; the pid written in the file is there only for the
message to the one refused. The CLI's commands do not take it: they are meant to run
beside the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "serve.lock"


class DataDirError(Exception):
    """data_dir is in use by another relay or cannot be used; the message says what to do."""


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[None]:
    """Hold data_dir for this process, or raise DataDirError before touching anything in it."""
    path = data_dir / LOCK_NAME
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(
            f"server.data_dir: cannot create {data_dir}: {exc.strerror or exc}; create it "
            "owned by the user smtprelay runs as, or point server.data_dir elsewhere"
        ) from None
    try:
        # os.open makes the descriptor non-inheritable: transform workers and other
        # children must not keep the lock after the relay itself has died.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise DataDirError(
            f"server.data_dir: cannot open {path}: {exc.strerror or exc}; data_dir and "
            "what is in it must belong to the user smtprelay runs as") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirError(f"server.data_dir: cannot lock {path}: "
                                   f"{exc.strerror or exc}; put data_dir on a local file "
                                   "system (not NFS)") from None
            raise DataDirError(
                f"server.data_dir: {data_dir} is in use by another smtprelay serve "
                f"({_holder(fd)}); stop that one first, or give this one a data_dir of its "
                "own. Nothing was changed.") from None
        pid = f"{os.getpid()}\n".encode()
        # Written over the old pid, then cut: a relay refused meanwhile never reads
        # an empty file.
        os.pwrite(fd, pid, 0)
        os.ftruncate(fd, len(pid))
        yield
    finally:
        # The file stays: removed, a relay starting just then could lock a new file
        # while one still held the old.
        os.close(fd)


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"
