"""Delivery end to end: submission -> spool -> MX lookup on a real DNS server -> SMTP sinks.

Every remote here is a real server on 127.0.0.N: aiosmtpd sinks scripted to misbehave,
raw asyncio servers for what a library will not do, and tests/dnsserver for DNS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import TestDNSServer, dns_server  # noqa: F401 - fixture
from tests.e2e.delivery_world import World, world
from tests.sinks import SinkFactory, sink_tls, sink_tls_dir, sinks  # noqa: F401 - fixtures


@pytest.fixture
def net(tmp_path: Path, dns_server: TestDNSServer,  # noqa: F811
        sinks: SinkFactory) -> Iterator[World]:  # noqa: F811
    with world(tmp_path, dns_server, sinks) as w:
        yield w


def test_recipients_of_one_domain_go_in_one_transaction_with_the_spooled_bytes(
        net: World) -> None:
    mx = net.smtp_host("dest.test")
    net.start()
    message_id = net.submit(["a@dest.test", "b@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered", "b@dest.test": "delivered"}
    [txn] = mx.received
    assert txn.mail_from == "app@example.com"
    assert txn.rcpt_tos == ("a@dest.test", "b@dest.test")
    assert b"Subject: delivery test" in txn.data
    kinds = [(o.index, o.kind, o.remote_mta) for o in net.outcomes(message_id)]
    assert kinds == [(0, "delivery", "mx2.dest.test [127.0.0.2]"),
                     (1, "delivery", "mx2.dest.test [127.0.0.2]")]
