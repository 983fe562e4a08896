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


class _Keys:
    """The tracking and DKIM keys a CopyMaker reads (no DKIM identities here)."""

    def __init__(self) -> None:
        from smtprelay.transform.dkim import Signer
        from smtprelay.transform.tokens import KeyRing
        self.keyring = KeyRing.generate()
        self.signer = Signer()


async def _deliver_copies(tmp_path: Path, copies: object,
                          maker: object) -> tuple[ScriptedRemote, QueuedMessage]:
    from smtprelay.spool.model import MessageAttributes
    spool = Spool(tmp_path / "spool.db")
    spool.open()
    rcpts = ("a@example.net", "b@example.net")
    attrs = MessageAttributes.from_json({"copies": copies})
    message = NewMessage(
        message_id=new_message_id(), account="acme", attrs=attrs,
        data=b"From: a@example.com\r\n\r\n<a href=\"{{unsubscribe_url}}\">x</a>\r\n",
        envelope=Envelope(mail_from="a@example.com", recipients=rcpts),
        configuration_set=None, received_at=time.time(), client_ip="127.0.0.1",
        client_helo="c", auth_user="u", listener="submission")
    await spool.enqueue(message)
    remote = ScriptedRemote({r: result(r, Verdict.DELIVERED, 250, "2.0.0", "ok")
                             for r in rcpts})
    scheduler = Scheduler(spool, remote, copies=maker)  # type: ignore[arg-type]
    scheduler.start()
    try:
        for _ in range(200):
            stored = spool.get(message.message_id)
            assert stored is not None
            if all(r.attempts for r in stored.recipients):
                break
            await asyncio.sleep(0.02)
    finally:
        await scheduler.stop()
    return remote, stored


async def test_per_recipient_copies_are_one_transaction_each(tmp_path: Path) -> None:
    from smtprelay.transform.copies import CopyMaker
    remote, stored = await _deliver_copies(
        tmp_path, {"unsubscribe_host": "links.example.com"}, CopyMaker(_Keys()))
    assert sorted(t.recipients for _, t in remote.transactions) == [
        ("a@example.net",), ("b@example.net",)]
    for _, txn in remote.transactions:
        assert b"{{unsubscribe_url}}" not in txn.data
        assert b"List-Unsubscribe: <https://links.example.com/u/" in txn.data
    assert {r.state.value for r in stored.recipients} == {"delivered"}


async def test_a_copy_that_cannot_be_made_is_deferred_never_sent_unrendered(
        tmp_path: Path) -> None:
    from smtprelay.transform.copies import CopyMaker
    for name, copies, maker in (("damaged", ["not", "a", "plan"], CopyMaker(_Keys())),
                                ("no-maker", {"unsubscribe_host": "links.example.com"},
                                 None)):
        remote, stored = await _deliver_copies(tmp_path / name, copies, maker)
        assert remote.transactions == [], name
        assert {(r.state.value, r.attempts) for r in stored.recipients} == {
            ("deferred", 1)}, name
        assert all("copy for this recipient could not be made" in (r.last_reply or "")
                   for r in stored.recipients), name
