"""Capture delivery: each transaction becomes an .eml file under data_dir/captured/.

For development and staging: the whole pipeline runs and nothing leaves the machine.
The .eml holds exactly the bytes a remote MX would receive; a .json beside it holds
the envelope. Files are written to a temporary name, fsynced and renamed, so a
captured message is either complete or absent.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smtprelay.delivery.model import RecipientResult, Transaction, Verdict, same_result
from smtprelay.infra.safeio import fsync_dir, write_durably
from smtprelay.spool.model import QueuedMessage


@dataclass(frozen=True, slots=True)
class Captured:
    name: str  # "<message id>.<domain>"
    message_id: str
    domain: str
    mail_from: str
    recipients: list[str]
    captured_at: float
    size: int

    @property
    def eml(self) -> str:
        return f"{self.name}.eml"


class CaptureTransport:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _capture(self, message: QueuedMessage, domain: str, txn: Transaction) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{message.message_id}.{domain}"
        envelope = {"message_id": message.message_id, "domain": domain,
                    "mail_from": txn.mail_from, "recipients": list(txn.recipients),
                    "captured_at": time.time(), "size": txn.size}
        write_durably(self.directory / f"{name}.eml", txn.whole, 0o640, sync_dir=False)
        write_durably(self.directory / f"{name}.json", json.dumps(envelope, indent=2).encode(),
                      0o640, sync_dir=False)
        fsync_dir(self.directory)

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]:
        try:
            await asyncio.to_thread(self._capture, message, domain, txn)
        except OSError as exc:
            return same_result(txn.recipients, Verdict.DEFERRED, "4.3.0",
                               f"x-local; capture failed: {exc}")
        where = f"captured {self.directory / (message.message_id + '.' + domain)}.eml"
        return same_result(txn.recipients, Verdict.DELIVERED, "2.0.0", f"x-local; {where}",
                           code=250, remote_mta="capture")


def list_captured(directory: Path) -> list[Captured]:
    """Captured messages, oldest first."""
    result: list[Captured] = []
    if not directory.is_dir():
        return result
    for meta in sorted(directory.glob("*.json")):
        try:
            data: dict[str, Any] = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        result.append(Captured(name=meta.name[: -len(".json")], message_id=data["message_id"],
                               domain=data["domain"], mail_from=data["mail_from"],
                               recipients=list(data["recipients"]),
                               captured_at=float(data["captured_at"]), size=int(data["size"])))
    result.sort(key=lambda c: (c.captured_at, c.name))
    return result
