"""The feedback inbox (smtprelay.feedback.inbox): durable arrival, oldest first in bounded
batches, acted-on reports deleted, unmatched ones kept with their reason, then purged."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.feedback import inbox
from smtprelay.feedback.inbox import Arrival, FeedbackInbox, Verdict
from smtprelay.spool import space


def _arrival(raw: bytes, at: float = 1000.0) -> Arrival:
    return Arrival(received_at=at, listener="feedback", peer_ip="192.0.2.1", helo="mx",
                   tls="TLSv1.3", mail_from="", recipients=("b-x@bounce.example.com",),
                   raw=raw)


async def test_reports_flow_through_the_inbox(tmp_path: Path) -> None:
    box = FeedbackInbox(tmp_path / "feedback.db")
    box.open()
    try:
        ids = [await box.store(_arrival(b"r%d" % n + b"x" * 100)) for n in range(5)]
        assert ids == sorted(ids) and box.count() == 5
        batch = box.pending(limit=3, max_bytes=10_000)
        assert [r.id for r in batch] == ids[:3]
        assert batch[0].raw == b"r0" + b"x" * 100 and batch[0].tls == "TLSv1.3"
        assert len(batch[0].token) == 16 and batch[0].token != batch[1].token
        # The byte bound cuts a batch, but never below one report.
        assert [r.id for r in box.pending(limit=5, max_bytes=250)] == ids[:2]
        assert [r.id for r in box.pending(limit=5, max_bytes=1)] == ids[:1]

        await box.finish([Verdict(ids[0], "delivery-report"),
                          Verdict(ids[1], "unparseable", unmatched="empty message")], 2000.0)
        # A batch finished twice (retried after a crash) keeps its first fate.
        await box.finish([Verdict(ids[1], "unparseable")], 2001.0)
        assert [r.id for r in box.pending(limit=10, max_bytes=10**6)] == ids[2:]
        assert box.count() == 3 and box.count(inbox.UNMATCHED) == 1
        kept = box.get(ids[1])
        assert kept is not None and (kept.state, kept.kind, kept.reason, kept.processed_at) \
            == ("unmatched", "unparseable", "empty message", 2000.0)
        assert box.get(ids[0]) is None

        conn = inbox.open_for_cli(box.path)
        try:
            [listed] = inbox.listing(conn)
            assert listed.id == ids[1] and listed.raw is None
            assert listed.as_json()["reason"] == "empty message"
        finally:
            conn.close()
        assert await box.purge(before=1999.0) == 0
        assert await box.purge(before=2001.0) == 1
        assert box.count(inbox.UNMATCHED) == 0
    finally:
        box.close()


async def test_a_report_is_stored_only_while_the_spool_reserve_stays_free(
        tmp_path: Path) -> None:
    """store.spool_reserve (smtprelay.spool.space): a report that would leave less free
    space than the reserve is refused before anything is written; under it, stored."""
    box = FeedbackInbox(tmp_path / "feedback.db")
    box.open()
    try:
        free = space.free_bytes(tmp_path)
        with pytest.raises(space.ReserveError, match=r"store\.spool_reserve"):
            await box.store(_arrival(b"x" * 1000), keep_free=free + 2**30)
        assert box.count() == 0
        stored = await box.store(_arrival(b"x" * 1000), keep_free=max(free - 2**30, 1))
        assert [r.id for r in box.pending(limit=5, max_bytes=10**6)] == [stored]
    finally:
        box.close()


async def test_a_big_report_is_streamed_in_and_only_its_head_read_back(
        tmp_path: Path) -> None:
    """Issue 16: the report goes in through the blob handle in pieces and the processor
    reads back only the first `head` bytes; an unmatched one keeps its first
    max_size bytes."""
    box = FeedbackInbox(tmp_path / "feedback.db")
    box.open()
    try:
        raw = bytes(range(256)) * 12_000  # 3 MB, every byte value
        stored = await box.store(_arrival(raw))
        [report] = box.pending(limit=5, max_bytes=1000, head=5000)
        assert (report.id, report.size, report.raw) == (stored, len(raw), raw[:5000])
        [whole] = box.pending(limit=5, max_bytes=10**8)
        assert whole.raw == raw
        await box.finish([Verdict(stored, "unparseable", unmatched="junk")], 2000.0,
                         inbox.UnmatchedBounds(max_size=4096, quota=10**6))
        kept = box.get(stored)
        assert kept is not None and kept.raw == raw[:4096] and kept.size == len(raw)
    finally:
        box.close()
