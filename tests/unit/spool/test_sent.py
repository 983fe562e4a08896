"""What feedback reports find of a message after it left the spool (smtprelay.spool.sent):
the live message, then the compact row kept at purge time, then the mail record."""

from __future__ import annotations

from pathlib import Path

from smtprelay.spool.model import Envelope, NewMessage, RecipientState, RecipientUpdate
from smtprelay.spool.sent import SentMessage
from smtprelay.spool.store import Spool


def _message(message_id: str, rcpts: tuple[str, ...], *, publishes: bool = False,
             listener: str = "submission", at: float = 1000.0) -> NewMessage:
    return NewMessage(message_id=message_id, envelope=Envelope("a@example.com", rcpts),
                      data=b"Subject: x\r\n\r\nbody\r\n", account="acme",
                      configuration_set="tx", received_at=at, client_ip="127.0.0.1",
                      client_helo="h", auth_user=None, listener=listener, publishes=publishes)


async def _send(spool: Spool, message: NewMessage, *states: RecipientState) -> None:
    await spool.enqueue(message)
    await spool.claim_due(2000.0, 10)
    await spool.record(message.message_id, [RecipientUpdate(i, state, 2000.0, "r")
                                            for i, state in enumerate(states)])


async def test_purged_messages_stay_findable_while_a_feedback_listener_runs(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", keep_sent_index=True)
    spool.open()
    try:
        delivered, bounced = RecipientState.DELIVERED, RecipientState.BOUNCED
        await _send(spool, _message("m1", ("x@a.test", "y@a.test")), bounced, delivered)
        await _send(spool, _message("m2", ("z@a.test",), publishes=True), delivered)
        await _send(spool, _message("m3", ("w@a.test",)), bounced)  # nothing delivered
        await _send(spool, _message("m4", ("v@a.test",), listener="dsn"), delivered)
        live = spool.sent_messages(["m1", "m2", "m3", "m4", "nope"])
        assert live["m1"] == SentMessage("m1", "acme", "tx", ("x@a.test", "y@a.test"), False)
        assert live["m2"].mail_record and set(live) == {"m1", "m2", "m3"}

        assert await spool.purge_finished(before=3000.0) == 4
        kept = spool.sent_messages(["m1", "m2", "m3", "m4"])
        assert kept["m1"] == live["m1"]
        assert kept["m2"] == SentMessage("m2", "acme", "tx", ("z@a.test",), True)
        assert set(kept) == {"m1", "m2"}
        reader = spool._reader
        assert reader is not None
        # m2's mail record says it all: no second row for it.
        assert [r[0] for r in reader.execute("SELECT message_id FROM sent_messages")] == ["m1"]

        assert await spool.purge_sent_index(before=500.0) == 0
        assert await spool.purge_sent_index(before=1500.0) == 1
        assert set(spool.sent_messages(["m1", "m2"])) == {"m2"}
    finally:
        spool.close()


async def test_without_a_feedback_listener_purged_messages_are_forgotten(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.open()
    try:
        await _send(spool, _message("m1", ("x@a.test",)), RecipientState.DELIVERED)
        assert await spool.purge_finished(before=3000.0) == 1
        assert spool.sent_messages(["m1"]) == {}
    finally:
        spool.close()
