"""The scheduler on a real spool: results per recipient, classification, deferral, wake-up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.scheduler import Scheduler
from smtprelay.spool.model import Envelope, NewMessage, QueuedMessage, new_message_id
from smtprelay.spool.store import Spool, get_outcomes, open_for_cli


class ScriptedRemote:
    """A transport whose remote answers per recipient from a script (a stand-in MX)."""

    def __init__(self, script: dict[str, RecipientResult]) -> None:
        self.script = script
        self.transactions: list[tuple[str, Transaction]] = []

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]:
        self.transactions.append((domain, txn))
        return [self.script[r] for r in txn.recipients]


def result(rcpt: str, verdict: Verdict, code: int, status: str, text: str,
           retry_after: float | None = None) -> RecipientResult:
    return RecipientResult(recipient=rcpt, verdict=verdict, code=code, status=status,
                           diagnostic=f"smtp; {code} {status} {text}",
                           remote_mta="mx.example.net [127.0.0.2]", retry_after=retry_after)


async def test_results_are_recorded_classified_and_deferred(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.open()
    rcpts = ("ok@example.net", "gone@example.net", "later@example.net", "other@example.org")
    message = NewMessage(
        message_id=new_message_id(), data=b"From: a@example.com\r\n\r\nhi\r\n",
        account="acme", envelope=Envelope(mail_from="a@example.com", recipients=rcpts),
        configuration_set=None, received_at=time.time(), client_ip="127.0.0.1",
        client_helo="c", auth_user="u", listener="submission")
    await spool.enqueue(message)
    remote = ScriptedRemote({
        "ok@example.net": result("ok@example.net", Verdict.DELIVERED, 250, "2.0.0", "ok"),
        "gone@example.net": result("gone@example.net", Verdict.BOUNCED, 550, "5.1.1",
                                   "The email account that you tried to reach does not exist"),
        "later@example.net": result("later@example.net", Verdict.DEFERRED, 451, "4.7.1",
                                    "greylisted", retry_after=300),
        "other@example.org": result("other@example.org", Verdict.DELIVERED, 250, "2.0.0",
                                    "ok"),
    })
    scheduler = Scheduler(spool, remote)
    scheduler.start()
    try:
        for _ in range(200):
            stored = spool.get(message.message_id)
            assert stored is not None
            if not {r.state.value for r in stored.recipients} & {"queued", "sending"}:
                break
            await asyncio.sleep(0.02)
    finally:
        await scheduler.stop()
    assert sorted((d, t.recipients) for d, t in remote.transactions) == [
        ("example.net", ("ok@example.net", "gone@example.net", "later@example.net")),
        ("example.org", ("other@example.org",))]
    states = {r.address: (r.state.value, r.attempts) for r in stored.recipients}
    assert states == {"ok@example.net": ("delivered", 1), "gone@example.net": ("bounced", 1),
                      "later@example.net": ("deferred", 1),
                      "other@example.org": ("delivered", 1)}
    later = next(r for r in stored.recipients if r.address == "later@example.net")
    assert later.last_attempt is not None
    assert 299 <= later.next_attempt - later.last_attempt <= 301
    conn = open_for_cli(tmp_path / "spool.db")
    outcomes = {o.index: o for o in get_outcomes(conn, message.message_id)}
    conn.close()
    assert (outcomes[1].kind, outcomes[1].bounce_type, outcomes[1].bounce_subtype) == (
        "bounce", "Permanent", "NoEmail")
    assert outcomes[0].kind == outcomes[3].kind == "delivery"
    assert 2 not in outcomes  # a deferral is not an outcome yet
    spool.close()
