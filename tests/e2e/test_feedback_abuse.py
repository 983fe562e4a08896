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

from smtprelay.infra import metrics
from tests.e2e.delivery_world import World
from tests.e2e.test_feedback_loop import (
    FBL,
    drained,
    mx,
    settings,
    start_with_mx,
)
from tests.support import RunningRelay


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
