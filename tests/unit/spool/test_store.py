"""The spool on real SQLite: group commit, recovery after a crash, and a full disk."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from pathlib import Path

import pytest

from smtprelay.db.sqlite import connect
from smtprelay.spool.model import Envelope, NewMessage, RecipientState, new_message_id
from smtprelay.spool.store import (
    _MIGRATIONS,
    Spool,
    SpoolFullError,
    count_pending,
    delete_message,
    get_message,
    list_messages,
    migrate,
    open_for_cli,
)


def new_message(i: int = 0, size: int = 100, rcpts: int = 2) -> NewMessage:
    return NewMessage(
        message_id=new_message_id(), data=b"x" * size, account="acme",
        envelope=Envelope(mail_from="a@example.com",
                          recipients=tuple(f"r{i}-{n}@example.net" for n in range(rcpts))),
        configuration_set="transactional", received_at=time.time(), client_ip="127.0.0.1",
        client_helo="client.test", auth_user="u", listener="submission",
    )


async def test_concurrent_enqueues_share_commits(spool: Spool) -> None:
    from smtprelay.infra import metrics

    before = metrics.SPOOL_BATCH_SIZE.collect()[0].samples
    count_before = next(s.value for s in before if s.name.endswith("_count"))
    messages = [new_message(i) for i in range(400)]
    await asyncio.gather(*(spool.enqueue(m) for m in messages))
    after = metrics.SPOOL_BATCH_SIZE.collect()[0].samples
    commits = next(s.value for s in after if s.name.endswith("_count")) - count_before
    assert spool.pending_count() == 400
    # 400 writes handed over at once must not cost 400 commits (400 fsyncs).
    assert commits < 200
    stored = spool.get(messages[7].message_id)
    assert stored is not None
    assert [r.address for r in stored.recipients] == list(messages[7].envelope.recipients)
    assert spool.body(messages[7].message_id) == messages[7].data


async def test_failed_write_fails_alone(spool: Spool) -> None:
    good = new_message(1)
    duplicate = new_message(2)
    await spool.enqueue(duplicate)
    results = await asyncio.gather(spool.enqueue(good), spool.enqueue(duplicate),
                                   return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], Exception)
    assert spool.get(good.message_id) is not None


async def test_recovery_hands_back_in_flight_recipients(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.open()
    message = new_message()
    await spool.enqueue(message)
    spool.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE recipients SET state = 'sending' WHERE idx = 0")
    conn.commit()
    conn.close()
    spool = Spool(path)
    spool.open()
    assert await spool.recover() == 1
    stored = spool.get(message.message_id)
    assert stored is not None
    assert [r.state for r in stored.recipients] == [RecipientState.QUEUED] * 2
    spool.close()


async def test_full_disk_is_reported_as_such(spool: Spool) -> None:
    await spool.enqueue(new_message(0))
    # SQLITE_FULL for real: cap the writer's database at its current size.
    await spool._writer.run(lambda c: c.execute(
        "PRAGMA max_page_count = " + str(c.execute("PRAGMA page_count").fetchone()[0])))
    with pytest.raises(SpoolFullError):
        await spool.enqueue(new_message(1, size=200_000))
    assert spool.pending_count() == 1


def test_cli_connection_reads_and_deletes_while_daemon_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.open()
    futures = [spool.enqueue_future(new_message(i)) for i in range(20)]
    for future in futures:
        future.result(10)
    conn = open_for_cli(tmp_path / "spool.db")
    listed = list_messages(conn, limit=5)
    assert len(listed) == 5
    assert [m.message_id for m in list_messages(conn, after=listed[-1].message_id)][:1] == [
        list_messages(conn)[5].message_id]
    assert delete_message(conn, listed[0].message_id)
    assert not delete_message(conn, listed[0].message_id)
    assert get_message(conn, listed[0].message_id) is None
    assert count_pending(conn) == 19
    spool.enqueue_future(new_message(99)).result(10)
    assert spool.pending_count() == 20
    spool.close()


def test_message_ids_sort_by_time() -> None:
    assert new_message_id(1000.0) < new_message_id(1000.5) < new_message_id(2000.0)
    assert len({new_message_id(5.0) for _ in range(1000)}) == 1000


def test_generated_key_is_private_and_files_are_complete(tmp_path: Path) -> None:
    from smtprelay.infra.tls import ensure_self_signed

    assert ensure_self_signed(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem",
                              "relay.test")
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "tls" / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert not list((tmp_path / "tls").glob(".*.tmp"))
    assert not ensure_self_signed(tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem",
                                  "relay.test")


async def test_the_relays_prefix_is_stored_apart_and_read_back_in_front(spool: Spool) -> None:
    prefix = b"DKIM-Signature: v=1; a=ed25519-sha256\r\nReceived: by relay.test\r\n"
    client = b"From: a@example.com\r\n\r\nbody\r\n"
    message = dataclasses.replace(new_message(), data=client, prefix=prefix)
    await spool.enqueue(message)
    assert spool.body_parts(message.message_id) == (prefix, client)
    assert spool.body(message.message_id) == prefix + client
    stored = spool.get(message.message_id)
    assert stored is not None and stored.size == len(prefix) + len(client)


def test_a_spool_without_the_prefix_column_is_upgraded_and_reads_as_before(
        tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    old = connect(path)
    before_prefix = next(i for i, m in enumerate(_MIGRATIONS) if "ADD COLUMN prefix" in m)
    migrate(old, _MIGRATIONS[:before_prefix])
    old.execute("INSERT INTO messages (id, received_at, account, mail_from, size, client_ip,"
                " client_helo, listener) VALUES ('old', 1, 'acme', 'a@example.com', 3,"
                " '127.0.0.1', 'c', 'submission')")
    old.execute("INSERT INTO bodies VALUES ('old', x'616263')")
    old.close()
    spool = Spool(path)
    spool.open()
    try:
        assert spool.body_parts("old") == (b"", b"abc")
        assert spool.body("old") == b"abc"
    finally:
        spool.close()
