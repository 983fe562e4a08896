"""VERP on delivery: one transaction per recipient with a signed envelope sender, when the
sender's identity has a custom MAIL FROM domain; the sender's own address otherwise."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from smtprelay.bounces import return_path, verp
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.scheduler import DeliveryPolicy, Scheduler
from smtprelay.spool.model import Envelope, NewMessage, QueuedMessage, new_message_id
from smtprelay.spool.store import Spool
from smtprelay.transform.tokens import KeyRing

DOMAINS = {"example.com": "bounce.example.com", "sub.example.com": "rp.sub.example.com"}


class Remote:
    def __init__(self) -> None:
        self.transactions: list[Transaction] = []

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]:
        self.transactions.append(txn)
        return [RecipientResult(recipient=r, verdict=Verdict.DELIVERED, code=250,
                                status="2.0.0", diagnostic="smtp; 250 2.0.0 ok")
                for r in txn.recipients]


async def deliver(tmp_path: Path, sender: str, rcpts: tuple[str, ...],
                  keyring: KeyRing | None) -> tuple[str, list[Transaction]]:
    spool = Spool(tmp_path / "spool.db")
    spool.open()
    message = NewMessage(
        message_id=new_message_id(), data=b"From: a@example.com\r\n\r\nhi\r\n",
        account="acme", envelope=Envelope(mail_from=sender, recipients=rcpts),
        configuration_set=None, received_at=time.time(), client_ip="127.0.0.1",
        client_helo="c", auth_user="u", listener="submission")
    await spool.enqueue(message)
    remote = Remote()
    scheduler = Scheduler(spool, remote, policy=lambda: DeliveryPolicy(mail_from_domains=DOMAINS),
                          keys=None if keyring is None else SimpleNamespace(keyring=keyring))
    scheduler.start()
    try:
        for _ in range(300):
            stored = spool.get(message.message_id)
            assert stored is not None
            if all(r.state.is_final for r in stored.recipients):
                break
            await asyncio.sleep(0.02)
    finally:
        await scheduler.stop()
        spool.close()
    return message.message_id, remote.transactions


async def test_each_recipient_gets_its_own_transaction_and_signed_sender(
        tmp_path: Path) -> None:
    keyring = KeyRing.generate()
    rcpts = ("a@dest.test", "b@dest.test", "c@other.test")
    message_id, txns = await deliver(tmp_path, "app@example.com", rcpts, keyring)
    assert sorted(t.recipients for t in txns) == [("a@dest.test",), ("b@dest.test",),
                                                  ("c@other.test",)]
    for txn in txns:
        local, _, domain = txn.mail_from.partition("@")
        assert domain == "bounce.example.com"
        tag = verp.decode(local, keyring)
        assert tag == verp.VerpTag(message_id, rcpts.index(txn.recipients[0]))


async def test_the_most_specific_identity_with_a_mail_from_domain_wins(
        tmp_path: Path) -> None:
    keyring = KeyRing.generate()
    _, txns = await deliver(tmp_path, "app@news.sub.example.com", ("a@dest.test",), keyring)
    assert txns[0].mail_from.endswith("@rp.sub.example.com")


async def test_without_a_mail_from_domain_the_sender_stays_and_recipients_share(
        tmp_path: Path) -> None:
    _, txns = await deliver(tmp_path, "app@example.org", ("a@dest.test", "b@dest.test"),
                            KeyRing.generate())
    assert [(t.mail_from, t.recipients) for t in txns] == [
        ("app@example.org", ("a@dest.test", "b@dest.test"))]


async def test_null_sender_and_missing_keys_keep_the_envelope_sender(tmp_path: Path) -> None:
    _, txns = await deliver(tmp_path, "", ("a@dest.test",), KeyRing.generate())
    assert txns[0].mail_from == ""
    _, txns = await deliver(tmp_path / "2", "app@example.com", ("a@dest.test",), None)
    assert txns[0].mail_from == "app@example.com"


def test_mail_from_domain_lookup() -> None:
    assert return_path.mail_from_domain_for("x@EXAMPLE.com.", DOMAINS) == "bounce.example.com"
    assert return_path.mail_from_domain_for("x@deep.a.example.com", DOMAINS) == \
        "bounce.example.com"
    assert return_path.mail_from_domain_for("x@example.net", DOMAINS) is None
    assert return_path.mail_from_domain_for("", DOMAINS) is None
    assert return_path.mail_from_domain_for("x@example.com", {}) is None


async def test_the_transactions_of_one_message_share_one_wire_form(tmp_path: Path) -> None:
    rcpts = ("a@dest.test", "b@dest.test", "c@other.test")
    _, txns = await deliver(tmp_path, "app@example.com", rcpts, KeyRing.generate())
    assert len(txns) == 3
    assert txns[0].wire is not None and all(t.wire is txns[0].wire for t in txns)
    sent = [t.wire_bytes() for t in txns]
    assert sent[0] == b"From: a@example.com\r\n\r\nhi\r\n.\r\n"
    pieces = [t.wire_pieces() for t in txns]
    assert all(p is pieces[0] for p in pieces)  # stuffed once, not once per transaction
