"""The feedback listener under abuse, over real sockets (issue 16): junk must neither fill
the spool's disk nor crowd out the reports that matter.

* store.spool_reserve: a report that would leave less free space than the spool needs
  gets 452 4.3.1, while mail submitted meanwhile is still accepted and delivered;
* per-IP limits (feedback.max_connections_per_ip, max_messages_per_ip,
  max_bytes_per_ip over rate_window): one address over a limit gets a temporary
  refusal (421, 450, 452) while a report from another address still goes through
  and is acted on.

Client addresses: the relay listens on 127.0.0.1 and each client binds a source
address of its own in 127.0.0.0/8 (Linux routes the whole block to loopback).
"""

from __future__ import annotations

import shutil
import smtplib
from pathlib import Path

import pytest

from bench import feedback_memory
from smtprelay.infra import metrics
from tests.e2e.delivery_world import World, wait_for
from tests.e2e.feedback_mail import postfix_dsn
from tests.e2e.test_feedback_loop import (
    FBL,
    drained,
    mx,
    of,
    settings,
    start_with_mx,
    suppressed,
    verp_senders,
)
from tests.support import RunningRelay, events


def refused(reason: str) -> float:
    return metrics.FEEDBACK_REFUSED.labels(reason=reason)._value.get()


def client(relay: RunningRelay, source: str) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", relay.port("feedback"), timeout=10,
                        source_address=(source, 0))
    smtp.ehlo("mx.dest.test")
    return smtp


def report(smtp: smtplib.SMTP, rcpt: str, data: bytes, sender: str = "") -> tuple[int, bytes]:
    """MAIL, RCPT and DATA; the first reply that is not a success, else DATA's."""
    code, text = smtp.mail(sender)
    if code != 250:
        smtp.rset()
        return code, text
    code, text = smtp.rcpt(rcpt)
    assert code == 250, (code, text)
    return smtp.data(data)


def junk(size: int) -> bytes:
    line = b"y" * 70 + b"\r\n"
    return b"From: someone@else.test\r\nSubject: junk\r\n\r\n" + line * (size // len(line))


def test_a_report_that_would_eat_into_the_spool_reserve_gets_452_and_mail_still_goes(
        net: World, tmp_path: Path) -> None:
    """Issue 16: the feedback store must not fill the spool's disk. With more reserve
    than the disk has free, every report is refused with 452 4.3.1 before anything is
    written, and a message submitted next is still accepted (the spool may use its
    reserve) and delivered."""
    sink = mx(net)
    free = shutil.disk_usage(tmp_path).free
    relay = start_with_mx(net, settings(tmp_path, store={"spool_reserve": free + 2**30}))
    before = refused("spool_reserve")
    with client(relay, "127.0.0.1") as smtp:
        code, text = report(smtp, FBL, junk(20_000), sender="fbl@provider.test")
        assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
        # The session goes on: the next report is refused the same way, not dropped.
        code, text = report(smtp, FBL, junk(1000), sender="fbl@provider.test")
        assert code == 452
    assert refused("spool_reserve") - before == 2
    assert drained(relay)
    inbox = relay.relay.feedback_inbox
    assert inbox is not None and inbox.count("unmatched") == 0
    message_id = net.submit(["carol@dest.test"])
    assert net.wait_final(message_id) == {"carol@dest.test": "delivered"}
    assert len(sink.received) == 1


def test_a_client_over_its_message_limit_gets_450_while_another_client_s_bounce_counts(
        net: World, tmp_path: Path) -> None:
    """feedback.max_messages_per_ip: the third MAIL from 127.0.0.2 within the window
    gets Postfix's 450 4.7.1; a DSN from 127.0.0.3 meanwhile is taken and acted on."""
    mx(net)
    relay = start_with_mx(net, settings(tmp_path, feedback={
        "max_messages_per_ip": 2, "rate_window": "1h"}))
    message_id = net.submit(["alice@dest.test"])
    assert net.wait_final(message_id) == {"alice@dest.test": "delivered"}
    alice = verp_senders(net, message_id, ["alice@dest.test"])["alice@dest.test"]
    before = refused("messages_per_ip")
    with client(relay, "127.0.0.2") as flood:
        for _ in range(2):
            assert report(flood, FBL, junk(2000))[0] == 250
        code, text = report(flood, FBL, junk(2000))
        assert (code, text) == (450, b"4.7.1 Error: too much mail from 127.0.0.2")
        # Refused, not cut off: the session still answers.
        assert flood.noop()[0] == 250
        with client(relay, "127.0.0.3") as provider:
            code, _ = report(provider, alice, postfix_dsn(alice, [(
                "alice@dest.test", "failed", "5.1.1", "550 5.1.1 User unknown")]))
            assert code == 250
    assert refused("messages_per_ip") - before == 1
    found = wait_for(lambda: of(events(tmp_path / "events.ndjson"), message_id, "Bounce"))
    assert found[0]["bounce"]["bouncedRecipients"][0]["emailAddress"] == "alice@dest.test"
    entry = suppressed(relay, "alice@dest.test")
    assert entry is not None and entry.reason == "BOUNCE"


def test_a_client_over_its_byte_limit_gets_452_at_mail_while_others_go_on(
        net: World, tmp_path: Path) -> None:
    """feedback.max_bytes_per_ip: once 127.0.0.2 has sent its bytes for the window,
    MAIL gets 452 4.3.1, and so does a MAIL whose SIZE= would pass the limit; a
    report from 127.0.0.3 is still taken."""
    mx(net)
    relay = start_with_mx(net, settings(tmp_path, feedback={
        "max_bytes_per_ip": "16k", "max_message_size": "16k", "rate_window": "1h"}))
    before = refused("bytes_per_ip")
    with client(relay, "127.0.0.2") as flood:
        assert report(flood, FBL, junk(12_000))[0] == 250
        code, text = flood.mail("", options=["SIZE=12000"])
        assert (code, text) == (452, b"4.3.1 Insufficient system storage: too many bytes "
                                     b"from 127.0.0.2")
        assert report(flood, FBL, junk(6_000))[0] == 250
        code, text = report(flood, FBL, junk(100))
        assert (code, text[:5]) == (452, b"4.3.1")
    with client(relay, "127.0.0.3") as provider:
        assert report(provider, FBL, junk(12_000))[0] == 250
    assert refused("bytes_per_ip") - before == 2
    assert wait_for(lambda: drained(relay))
    inbox = relay.relay.feedback_inbox
    assert inbox is not None and inbox.count("unmatched") == 3


def test_a_client_over_its_connection_limit_gets_421_and_its_open_sessions_go_on(
        net: World, tmp_path: Path) -> None:
    """feedback.max_connections_per_ip: a third session from 127.0.0.2 gets 421 4.7.0
    at connect; its two open sessions and a session from 127.0.0.3 still take
    reports, and once one of the two ends, 127.0.0.2 may connect again."""
    mx(net)
    relay = start_with_mx(net, settings(tmp_path, feedback={"max_connections_per_ip": 2}))
    before = refused("connections_per_ip")
    first, second = client(relay, "127.0.0.2"), client(relay, "127.0.0.2")
    try:
        with pytest.raises(smtplib.SMTPConnectError) as info:
            client(relay, "127.0.0.2")
        assert (info.value.smtp_code, info.value.smtp_error) == (
            421, b"4.7.0 Error: too many connections from 127.0.0.2")
        with client(relay, "127.0.0.3") as provider:
            assert report(provider, FBL, junk(1000))[0] == 250
        assert report(first, FBL, junk(1000))[0] == 250
        assert report(second, FBL, junk(1000))[0] == 250
    finally:
        first.quit()
    assert refused("connections_per_ip") - before == 1

    def again() -> smtplib.SMTP | None:
        try:
            return client(relay, "127.0.0.2")
        except smtplib.SMTPConnectError:
            return None  # the server has not seen the first session end yet

    third = wait_for(again)
    try:
        assert report(third, FBL, junk(1000))[0] == 250
    finally:
        third.quit()
        second.quit()


@pytest.mark.parametrize("shape", ["junk", "dsn"])
def test_a_big_report_is_processed_without_copying_it_whole(shape: str) -> None:
    """Issue 16: RSS peaked at 352 MB for 20 junk reports of 9.5 MB. Processing one now
    reads only what the parsers look at (mime.MAX_INPUT) through the blob handle and
    decodes only the returned original's header section: under half a copy of the
    report in Python's allocations above the idle relay (bench/feedback_memory.py;
    two copies before: the whole report read back while the writer still held the
    stored one, then a slice of its body). Receiving it takes the session's two."""
    measured = feedback_memory.measure(shape, int(9.5 * 1024 * 1024))
    assert measured["process_copies"] < 0.6, measured
    assert measured["receive_copies"] < 2.2, measured
