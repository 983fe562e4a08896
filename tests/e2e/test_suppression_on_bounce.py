"""A hard bounce at delivery puts the address on the suppression list (issue 15): the
receiving MX says 550 at RCPT, the relay lists the address once, with the reply, and
the next message to it is accepted but not sent. Through a real relay, real DNS and
a real SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smtprelay.policy.suppression import SQLiteSuppressionStore, SuppressionEntry
from tests.e2e.delivery_world import World, wait_for

pytestmark = pytest.mark.peer

GONE_REPLY = "550 5.1.1 <gone@dest.test>: no such user"


def entries(net: World) -> list[SuppressionEntry]:
    assert net.relay is not None
    store = SQLiteSuppressionStore(net.relay.config.state_path)
    store.open()
    try:
        return store.list()
    finally:
        store.close()


@pytest.fixture
def mx(net: World) -> Iterator[object]:
    yield net.smtp_host("dest.test", rcpt_replies={"gone@dest.test": GONE_REPLY})


def test_a_550_at_rcpt_lists_the_address_once_with_the_reply(net: World, mx: object) -> None:
    net.smtp_host("example.com")  # where the DSN goes
    net.start()
    first = net.submit(["a@dest.test", "gone@dest.test"])
    assert net.wait_final(first) == {"a@dest.test": "delivered", "gone@dest.test": "bounced"}
    [entry] = entries(net)
    assert (entry.account, entry.address, entry.reason, entry.source_message_id) == (
        "acme", "gone@dest.test", "BOUNCE", first)
    assert entry.diagnostic == f"smtp; {GONE_REPLY}"
    # The next message to it is accepted and not sent; still one entry.
    second = net.submit(["gone@dest.test", "b@dest.test"])
    assert net.wait_final(second) == {"gone@dest.test": "suppressed",
                                      "b@dest.test": "delivered"}
    assert [e.address for e in entries(net)] == ["gone@dest.test"]
    assert all("gone@dest.test" not in t.rcpt_tos for t in mx.received)  # type: ignore[attr-defined]


def test_a_domain_that_does_not_exist_is_a_hard_bounce_too(net: World) -> None:
    net.smtp_host("example.com")
    net.start()
    message_id = net.submit(["someone@nowhere.test"])
    assert net.wait_final(message_id) == {"someone@nowhere.test": "bounced"}
    [entry] = entries(net)
    assert (entry.address, entry.reason) == ("someone@nowhere.test", "BOUNCE")
    assert entry.diagnostic is not None and "NXDOMAIN" in entry.diagnostic


def test_a_set_whose_reasons_leave_out_bounce_lists_no_one(net: World, mx: object) -> None:
    net.smtp_host("example.com")
    net.start(top={"configuration_sets": {
        "transactional": {"suppression": {"reasons": ["COMPLAINT"]}}}})
    message_id = net.submit(["gone@dest.test"])
    assert net.wait_final(message_id) == {"gone@dest.test": "bounced"}
    assert entries(net) == []


def test_a_temporary_failure_lists_no_one(net: World) -> None:
    net.smtp_host("dest.test", rcpt_replies={"busy@dest.test": "452 4.2.2 mailbox full"})
    net.start()
    message_id = net.submit(["busy@dest.test"])
    wait_for(lambda: net.states(message_id) == {"busy@dest.test": "deferred"})
    assert entries(net) == []


def test_the_mailbox_simulators_bounce_lists_no_one(net: World) -> None:
    net.start()
    message_id = net.submit(["bounce@simulator.smtprelay.invalid"])
    assert net.wait_final(message_id) == {"bounce@simulator.smtprelay.invalid": "bounced"}
    assert entries(net) == []
