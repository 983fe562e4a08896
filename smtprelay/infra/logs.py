"""Logging to stderr: one line per event, key=value text or JSON, never a secret."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time


class _JSONFormatter(logging.Formatter):
    def __init__(self, process: str | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.process is not None:
            entry["process"] = self.process
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Every C0 control character and DEL, as a visible escape: a client-supplied value (an
# AUTH user name, a HELO, an address) with CR or LF in it cannot forge another line.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)}
_CONTROLS.update({ord("\r"): "\\r", ord("\n"): "\\n", ord("\t"): "\\t"})


def escape_controls(text: str) -> str:
    """`text` on one line: control characters written as escapes."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


class _TextFormatter(logging.Formatter):
    """key=value text, one line per record whatever the values hold (the JSON format
    escapes them by itself). A traceback, added after the message, keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class _DeferredQueueHandler(logging.handlers.QueueHandler):
    """Queues the record as it is: formatting happens in the writer thread, not the loop.

    The stock QueueHandler formats in the caller to make records picklable; ours stay
    in the process and carry only strings and numbers.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def setup(level: str = "info", fmt: str = "text", process: str | None = None) -> None:
    """`process`: which of the relay's processes logs ("worker1"), written in each line
    after the level (JSON: "process"); None for the relay's own."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter(process))
    else:
        label = f"{process} " if process is not None else ""
        formatter = _TextFormatter(
            f"%(asctime)s.%(msecs)03dZ %(levelname)s {label}%(name)s %(message)s",
            "%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    # The event loop only puts records on a queue; a thread writes them, so a slow
    # stderr (a full pipe to journald) never stalls SMTP sessions.
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=False)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_DeferredQueueHandler(records)]  # type: ignore[arg-type]
    # Neither format shows the caller's file, line, thread or process: skip finding
    # them for each record, a stack walk on the event loop per logged line.
    logging._srcfile = None  # type: ignore[attr-defined]  # the documented switch
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root.setLevel(level.upper())
    # aiohttp and asyncio report every dropped connection; a mail server sees many.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
