"""The control socket: `smtprelay status` asks the running relay how it is.

A Unix socket at data_dir/control.sock, mode 0600, so only the relay's user (and root)
can ask. A client writes one line, `status`, and reads one line of JSON back: the
process, its event loop's lag, the connections counted in the shared state, the queue,
and each worker process with its pid, sessions and loop lag as it last reported them.
A request with arguments is one line of JSON instead: {"request": NAME, ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("smtprelay.control")

SOCKET_NAME = "control.sock"
_LAG_INTERVAL = 1.0
_REQUEST_TIMEOUT = 5.0


def control_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


class LoopLag:
    """How late this process's event loop runs a timer, measured once a second: what a
    session waits beyond its own work when the loop is busy."""

    def __init__(self) -> None:
        self.last_ms = 0.0
        self.max_ms = 0.0  # since the last take_max()
        self._task: asyncio.Task[None] | None = None

    def start(self, report: Callable[[float], None] = lambda _: None) -> None:
        self._task = asyncio.create_task(self._measure(report))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def take_max(self) -> float:
        worst, self.max_ms = self.max_ms, self.last_ms
        return worst

    async def _measure(self, report: Callable[[float], None]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + _LAG_INTERVAL
            await asyncio.sleep(_LAG_INTERVAL)
            self.last_ms = max(0.0, (loop.time() - planned) * 1000)
            self.max_ms = max(self.max_ms, self.last_ms)
            report(self.last_ms)


Answer = Callable[[], Awaitable[dict[str, Any]]]
AnswerTo = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    """`requests`: what the relay answers, by request line (status, drain, undrain);
    `with_arguments`: by the "request" of a JSON line, given the whole object."""

    def __init__(self, path: Path, requests: dict[str, Answer],
                 with_arguments: dict[str, AnswerTo] | None = None) -> None:
        self.path = path
        self._requests = requests
        self._with_arguments = with_arguments or {}
        self._server: asyncio.Server | None = None
        self.started_at = time.time()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a relay that was killed; data_dir is ours (locked)
        self._server = await asyncio.start_unix_server(self._answer, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _answer(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                line = (await reader.readline()).strip()
                answer = await self._answer_to(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, OSError) as exc:
            log.info("control client went away: %s", exc)
        finally:
            writer.close()

    async def _answer_to(self, line: bytes) -> dict[str, Any]:
        if line.startswith(b"{"):
            try:
                arguments = json.loads(line)
            except ValueError as exc:
                return {"error": f"a request line starting with {{ must be JSON: {exc}"}
            name = arguments.get("request") if isinstance(arguments, dict) else None
            takes = self._with_arguments.get(name) if isinstance(name, str) else None
            if takes is None:
                return {"error": f"unknown request {str(name)[:40]!r}; with arguments: "
                                 + ", ".join(self._with_arguments)}
            return await takes(arguments)
        request = line.decode("ascii", "replace")
        handler = self._requests.get(request)
        if handler is None:
            return {"error": f"unknown request {request[:40]!r}; try: "
                             + ", ".join(self._requests)}
        return await handler()
