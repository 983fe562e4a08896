"""The control socket's requests: plain words, and JSON lines for requests with
arguments, over a real Unix socket; every malformed line gets an error, not a hang."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from smtprelay.app.control import ControlServer


async def ask(path: Path, line: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(line + b"\n")
    await writer.drain()
    answer: dict[str, Any] = json.loads(await reader.readline())
    writer.close()
    return answer


async def test_words_and_json_requests_reach_their_handlers(tmp_path: Path) -> None:
    given: list[dict[str, Any]] = []

    async def status() -> dict[str, Any]:
        return {"pid": 1}

    async def warmup(arguments: dict[str, Any]) -> dict[str, Any]:
        given.append(arguments)
        return {"day": arguments["day"]}

    server = ControlServer(tmp_path / "control.sock", {"status": status},
                           with_arguments={"warmup-day": warmup})
    await server.start()
    try:
        assert await ask(server.path, b"status") == {"pid": 1}
        line = json.dumps({"request": "warmup-day", "pool": "p", "day": 3}).encode()
        assert await ask(server.path, line) == {"day": 3}
        assert given == [{"request": "warmup-day", "pool": "p", "day": 3}]
        for bad, says in ((b"{not json", "must be JSON"),
                          (b'{"request": "status"}', "unknown request 'status'"),
                          (b'{"pool": "p"}', "unknown request 'None'"),
                          (b'["warmup-day"]', "unknown request '["),
                          (b'[1]', "unknown request"),
                          (b"warmup-day", "unknown request 'warmup-day'"),
                          (b"\xff\xfe", "unknown request")):
            answer = await ask(server.path, bad)
            assert says in answer["error"], (bad, answer)
        assert len(given) == 1  # none of them reached the handler
        assert await ask(server.path, b"status") == {"pid": 1}  # still answering
    finally:
        await server.stop()
