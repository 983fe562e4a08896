"""Bounce messages spooled with the results: DSNFactory.build and Spool.record(finalize).

The spool is a real SQLite file; a DSN returned by `record` must already be in it
(same transaction), and exist exactly when the message has nothing left pending.
"""

from __future__ import annotations

import email
import email.utils
import re
import sqlite3
from pathlib import Path

import pytest

from smtprelay.delivery.notify_sender import DSN_LISTENER, DSNFactory
from smtprelay.spool.model import (
    Envelope,
    NewMessage,
    Outcome,
    QueuedMessage,
    RecipientState,
    RecipientUpdate,
    new_message_id,
)
from smtprelay.spool.store import (
    _MIGRATIONS,
    Spool,
    connect,
    get_outcomes,
    list_messages,
    migrate,
    open_for_cli,
)
from tests.unit.delivery.kit import queued

SENDER = "app@example.com"
NOW = 1_700_000_000.0
BODY = (b"From: App <app@example.com>\r\nTo: x@a.test\r\nSubject: invoice 42\r\n"
        b"Message-ID: <m42@example.com>\r\n\r\nPlease pay.\r\n")


def new_message(*recipients: str, sender: str = SENDER, data: bytes = BODY,
                suppressed: dict[int, str] | None = None) -> NewMessage:
    return NewMessage(
        message_id=new_message_id(), data=data, account="acme",
        envelope=Envelope(mail_from=sender, recipients=recipients,
                          smtputf8=not sender.isascii()),
        configuration_set="transactional", received_at=NOW - 60, client_ip="127.0.0.1",
        client_helo="client.test", auth_user="u", listener="submission",
        suppressed=suppressed or {})


def bounce(message_id: str, index: int, status: str = "5.1.1",
           text: str = "smtp; 550 5.1.1 user unknown", at: float = NOW) -> RecipientUpdate:
    return RecipientUpdate(
        index=index, state=RecipientState.BOUNCED, at=at, reply=text,
        outcomes=(Outcome(message_id=message_id, index=index, kind="bounce", at=at,
                          bounce_type="Permanent", bounce_subtype="NoEmail", status=status,
                          diagnostic=text, remote_mta="mx.a.test [127.0.0.2]"),))


def delivered(message_id: str, index: int) -> RecipientUpdate:
    return RecipientUpdate(
        index=index, state=RecipientState.DELIVERED, at=NOW, reply="smtp; 250 ok",
        outcomes=(Outcome(message_id=message_id, index=index, kind="delivery", at=NOW,
                          status="2.0.0", diagnostic="smtp; 250 ok"),))


def deferred(index: int) -> RecipientUpdate:
    return RecipientUpdate(index=index, state=RecipientState.DEFERRED, at=NOW,
                           reply="smtp; 451 4.3.0 later", next_attempt=NOW + 60)


def message_count(spool: Spool) -> int:
    conn = open_for_cli(spool.path)
    try:
        return len(list_messages(conn))
    finally:
        conn.close()


def final_recipients(data: bytes) -> list[str]:
    return re.findall(r"^Final-Recipient: rfc822; (\S+)\r$", data.decode(), re.M)


def header(data: bytes, name: str) -> str | None:
    parsed = email.message_from_bytes(data)
    value = parsed[name]
    return None if value is None else str(value)


FACTORY = DSNFactory("relay.test", clock=lambda: NOW)


async def enqueue(spool: Spool, message: NewMessage) -> QueuedMessage:
    await spool.enqueue(message)
    claimed = await spool.claim_due(NOW, 10)
    (found,) = [m for m in claimed if m.message_id == message.message_id]
    return found


# ------------------------------------------------------------------ DSNFactory.build

def queued_message(*recipients: str, sender: str = SENDER) -> QueuedMessage:
    return queued(*recipients, mail_from=sender, received_at=NOW - 60)


def outcome(index: int, status: str, text: str, at: float = NOW) -> Outcome:
    return Outcome(message_id="m", index=index, kind="bounce", at=at,
                   bounce_type="Permanent", bounce_subtype="General", status=status,
                   diagnostic=text, remote_mta="mx.a.test [127.0.0.2]")


def test_build_one_dsn_from_the_null_sender_to_the_envelope_sender() -> None:
    message = queued_message("x@a.test", "ok@a.test", "y@b.test")
    dsn = FACTORY.build(message, [outcome(0, "5.1.1", "smtp; 550 5.1.1 no such user"),
                                  outcome(2, "5.7.1", "smtp; 554 5.7.1 rejected")], BODY)
    assert dsn is not None
    assert dsn.envelope.mail_from == ""
    assert dsn.envelope.recipients == (SENDER,)
    assert dsn.listener == DSN_LISTENER == "dsn"
    assert dsn.attrs == {"dsn_for": message.message_id}
    assert dsn.account == "acme"
    assert dsn.configuration_set is None
    assert dsn.received_at == NOW
    assert dsn.message_id.startswith(f"{int(NOW * 1000):012x}-")
    assert final_recipients(dsn.data) == ["x@a.test", "y@b.test"]
    assert b"Status: 5.1.1\r\n" in dsn.data and b"Status: 5.7.1\r\n" in dsn.data
    assert header(dsn.data, "To") == f"<{SENDER}>"
    assert header(dsn.data, "Auto-Submitted") == "auto-replied"
    assert b"Subject: invoice 42" in dsn.data  # the original header section
    assert b"Please pay." not in dsn.data  # not the body, by default


def test_build_uses_the_latest_outcome_of_each_recipient() -> None:
    message = queued_message("x@a.test")
    dsn = FACTORY.build(message, [outcome(0, "5.0.0", "smtp; 550 first", NOW - 10),
                                  outcome(0, "5.2.1", "smtp; 550 5.2.1 disabled")], BODY)
    assert dsn is not None
    assert final_recipients(dsn.data) == ["x@a.test"]
    assert b"Status: 5.2.1" in dsn.data
    assert b"550 first" not in dsn.data


def test_build_full_original_on_request() -> None:
    factory = DSNFactory("relay.test", return_full_message=True, clock=lambda: NOW)
    dsn = factory.build(queued_message("x@a.test"),
                        [outcome(0, "5.1.1", "smtp; 550 no")], BODY)
    assert dsn is not None
    assert b"message/rfc822" in dsn.data
    assert b"Please pay." in dsn.data


def test_build_for_an_internationalised_sender_needs_smtputf8() -> None:
    sender = "jos\u00e9@example.com"
    dsn = FACTORY.build(queued_message("x@a.test", sender=sender),
                        [outcome(0, "5.1.1", "smtp; 550 no")], BODY)
    assert dsn is not None
    assert dsn.envelope.recipients == (sender,)
    assert dsn.envelope.smtputf8


@pytest.mark.parametrize(("sender", "extra_header"), [
    ("", b""),
    ("MAILER-DAEMON@example.com", b""),
    ("mailer-daemon", b""),
    (SENDER, b"Auto-Submitted: auto-replied\r\n"),
    (SENDER, b"Auto-Submitted: auto-generated (vacation)\r\n"),
    (SENDER, b"Content-Type: multipart/report; report-type=delivery-status; "
             b"boundary=x\r\n"),
], ids=["null", "mailer-daemon", "bare-mailer-daemon", "auto-replied", "auto-generated",
        "dsn"])
def test_no_dsn_about_automatic_mail(sender: str, extra_header: bytes) -> None:
    body = extra_header + BODY
    assert FACTORY.build(queued_message("x@a.test", sender=sender),
                         [outcome(0, "5.1.1", "smtp; 550 no")], body) is None


def test_auto_submitted_no_still_gets_a_dsn() -> None:
    body = b"Auto-Submitted: no\r\n" + BODY
    assert FACTORY.build(queued_message("x@a.test"),
                         [outcome(0, "5.1.1", "smtp; 550 no")], body) is not None


def test_no_dsn_without_a_known_bounced_recipient() -> None:
    message = queued_message("x@a.test")
    assert FACTORY.build(message, [], BODY) is None
    assert FACTORY.build(message, [outcome(7, "5.1.1", "smtp; 550 no")], BODY) is None


# ------------------------------------------------------------------ Spool.record

async def test_no_dsn_while_a_recipient_is_pending_then_one_listing_all(
        spool: Spool) -> None:
    m = new_message("x@a.test", "y@b.test", "z@c.test")
    await enqueue(spool, m)
    mid = m.message_id
    # First attempt: x bounces, y waits, z is delivered.
    first = await spool.record(mid, [bounce(mid, 0), deferred(1), delivered(mid, 2)],
                               FACTORY.build)
    assert first is None
    assert message_count(spool) == 1
    # Last attempt for y: bounced too. One DSN for x and y, spooled with the results.
    dsn = await spool.record(mid, [bounce(mid, 1, "5.2.2",
                                          "smtp; 552 5.2.2 mailbox full")], FACTORY.build)
    assert dsn is not None
    assert final_recipients(dsn.data) == ["x@a.test", "y@b.test"]
    assert b"552 5.2.2 mailbox full" in dsn.data
    stored = spool.get(dsn.message_id)
    assert stored is not None
    assert stored.mail_from == ""
    assert stored.listener == "dsn"
    assert stored.attrs == {"dsn_for": mid}
    assert [(r.address, r.state) for r in stored.recipients] == [
        (SENDER, RecipientState.QUEUED)]
    assert spool.body(dsn.message_id) == dsn.data


async def test_suppressed_recipients_are_listed_in_the_dsn(spool: Spool) -> None:
    m = new_message("x@a.test", "listed@a.test", suppressed={1: "BOUNCE"})
    claimed = await enqueue(spool, m)
    assert [r.state for r in claimed.recipients] == [RecipientState.SENDING,
                                                    RecipientState.SUPPRESSED]
    dsn = await spool.record(m.message_id, [bounce(m.message_id, 0)], FACTORY.build)
    assert dsn is not None
    assert final_recipients(dsn.data) == ["x@a.test", "listed@a.test"]
    assert b"suppression list" in dsn.data


async def test_delivered_recipients_are_not_in_the_dsn(spool: Spool) -> None:
    m = new_message("ok@a.test", "x@a.test")
    await enqueue(spool, m)
    mid = m.message_id
    dsn = await spool.record(mid, [delivered(mid, 0), bounce(mid, 1)], FACTORY.build)
    assert dsn is not None
    assert final_recipients(dsn.data) == ["x@a.test"]


async def test_dsn_is_spooled_in_the_same_transaction_as_the_results(spool: Spool) -> None:
    m = new_message("x@a.test")
    await enqueue(spool, m)

    def broken(message: QueuedMessage, bounces: list[Outcome], body: bytes) -> NewMessage:
        raise RuntimeError("DSN could not be built")

    with pytest.raises(RuntimeError):
        await spool.record(m.message_id, [bounce(m.message_id, 0)], broken)
    # Neither the result nor its outcome was kept: the attempt is as if never recorded.
    stored = spool.get(m.message_id)
    assert stored is not None
    assert stored.recipients[0].state is RecipientState.SENDING
    assert stored.recipients[0].attempts == 0
    conn = open_for_cli(spool.path)
    assert get_outcomes(conn, m.message_id) == []
    conn.close()


async def test_finalize_sees_the_message_its_bounces_and_its_bytes(spool: Spool) -> None:
    m = new_message("x@a.test", "y@a.test")
    await enqueue(spool, m)
    seen: list[tuple[list[RecipientState], list[int], bytes]] = []

    def spy(message: QueuedMessage, bounces: list[Outcome], body: bytes) -> None:
        seen.append(([r.state for r in message.recipients], [o.index for o in bounces],
                      body))

    assert await spool.record(m.message_id, [bounce(m.message_id, 0),
                                             bounce(m.message_id, 1)], spy) is None
    assert seen == [([RecipientState.BOUNCED] * 2, [0, 1], BODY)]
    assert message_count(spool) == 1


async def test_no_dsn_without_a_finalizer(spool: Spool) -> None:
    m = new_message("x@a.test")
    await enqueue(spool, m)
    assert await spool.record(m.message_id, [bounce(m.message_id, 0)]) is None
    assert message_count(spool) == 1


async def test_a_dsn_that_bounces_is_not_answered(spool: Spool) -> None:
    m = new_message("x@a.test")
    await enqueue(spool, m)
    dsn = await spool.record(m.message_id, [bounce(m.message_id, 0)], FACTORY.build)
    assert dsn is not None
    claimed = await spool.claim_due(NOW + 1, 10)
    assert [c.message_id for c in claimed] == [dsn.message_id]
    again = await spool.record(dsn.message_id, [bounce(dsn.message_id, 0)], FACTORY.build)
    assert again is None
    assert message_count(spool) == 2


@pytest.mark.parametrize("earlier", ["remote-bounce", "suppressed"])
async def test_dsn_when_the_last_pending_recipient_is_delivered(spool: Spool,
                                                                earlier: str) -> None:
    if earlier == "suppressed":
        m = new_message("x@a.test", "ok@b.test", suppressed={0: "BOUNCE"})
        await enqueue(spool, m)
    else:
        m = new_message("x@a.test", "ok@b.test")
        await enqueue(spool, m)
        assert await spool.record(m.message_id, [bounce(m.message_id, 0), deferred(1)],
                                  FACTORY.build) is None
    dsn = await spool.record(m.message_id, [delivered(m.message_id, 1)], FACTORY.build)
    assert dsn is not None
    assert final_recipients(dsn.data) == ["x@a.test"]


# ------------------------------------------------------------------ migration 3

def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_new_spool_has_schema_3_with_delay_and_remote_mta_columns(spool: Spool) -> None:
    conn = open_for_cli(spool.path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS) >= 3
        assert {"remote_mta", "delay_type"} <= columns(conn, "outcomes")
        assert "delay_noted" in columns(conn, "recipients")
    finally:
        conn.close()


async def test_a_version_2_spool_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = connect(path)
    migrate(old, _MIGRATIONS[:2])
    assert old.execute("PRAGMA user_version").fetchone()[0] == 2
    old.execute("INSERT INTO messages (id, received_at, account, mail_from, size, client_ip,"
                " client_helo, listener) VALUES ('old', ?, 'acme', ?, 3, '127.0.0.1', 'c',"
                " 'submission')", (NOW, SENDER))
    old.execute("INSERT INTO bodies VALUES ('old', x'616263')")
    old.execute("INSERT INTO recipients (message_id, idx, address, state, next_attempt)"
                " VALUES ('old', 0, 'x@a.test', 'deferred', ?)", (NOW,))
    old.execute("INSERT INTO outcomes (message_id, idx, kind, at) VALUES ('old', 0, 'delay',"
                " ?)", (NOW,))
    old.close()

    spool = Spool(path)
    spool.open()
    try:
        stored = spool.get("old")
        assert stored is not None
        assert stored.recipients[0].delay_noted is None
        conn = open_for_cli(path)
        (o,) = get_outcomes(conn, "old")
        assert (o.remote_mta, o.delay_type) == (None, None)
        # every later migration ran
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
        conn.close()
    finally:
        spool.close()


async def test_delay_noted_remote_mta_and_delay_type_round_trip(spool: Spool) -> None:
    m = new_message("x@a.test")
    await enqueue(spool, m)
    mid = m.message_id
    delay = Outcome(message_id=mid, index=0, kind="delay", at=NOW, status="4.2.2",
                    diagnostic="smtp; 452 4.2.2 full", remote_mta="mx.a.test [127.0.0.2]",
                    delay_type="MailboxFull")
    await spool.record(mid, [RecipientUpdate(index=0, state=RecipientState.DEFERRED, at=NOW,
                                             reply="smtp; 452 4.2.2 full",
                                             next_attempt=NOW + 60, outcomes=(delay,),
                                             delay_noted=NOW)])
    stored = spool.get(mid)
    assert stored is not None and stored.recipients[0].delay_noted == NOW
    # A later attempt without a delay record keeps the time of the last one.
    await spool.record(mid, [RecipientUpdate(index=0, state=RecipientState.DEFERRED,
                                             at=NOW + 60, reply="again",
                                             next_attempt=NOW + 180)])
    stored = spool.get(mid)
    assert stored is not None
    assert stored.recipients[0].delay_noted == NOW
    assert stored.recipients[0].attempts == 2
    assert stored.recipients[0].next_attempt == NOW + 180
    conn = open_for_cli(spool.path)
    (got,) = get_outcomes(conn, mid)
    conn.close()
    assert got == delay


def test_message_ids_follow_the_dsn_clock() -> None:
    later = DSNFactory("relay.test", clock=lambda: NOW + 3600)
    a = FACTORY.build(queued_message("x@a.test"), [outcome(0, "5.1.1", "smtp; 550")], BODY)
    b = later.build(queued_message("x@a.test"), [outcome(0, "5.1.1", "smtp; 550")], BODY)
    assert a is not None and b is not None
    assert a.message_id < b.message_id
    assert header(b.data, "Date") == email.utils.formatdate(NOW + 3600, usegmt=True)
