"""Per-client limits of the feedback listener (smtprelay.feedback.peers): counted like
Postfix's anvil, per IPv4 address or IPv6 /64, windows that start again."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.config import ConfigError, load_config
from smtprelay.feedback.peers import PeerLimits, PeerLimitSettings, client_key
from tests.support import base_config, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, **settings: int) -> PeerLimits:
    chosen = PeerLimitSettings(**{"connections": 2, "messages": 3, "bytes": 1000,
                                  "window": 60.0, **settings})
    return PeerLimits(lambda: chosen, clock)


def test_a_client_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") \
        == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_connections_are_counted_while_open() -> None:
    peers = limits(Clock())
    assert peers.connect("192.0.2.1") is None and peers.connect("192.0.2.1") is None
    refusal = peers.connect("192.0.2.1")
    assert refusal is not None and refusal.code == 421
    assert peers.connect("192.0.2.2") is None  # another client has its own count
    peers.disconnect("192.0.2.1")
    assert peers.connect("192.0.2.1") is None


def test_messages_and_bytes_per_window_start_again_after_it() -> None:
    clock = Clock()
    peers = limits(clock)
    assert [peers.mail("2001:db8::1", None) for _ in range(3)] == [None] * 3
    refusal = peers.mail("2001:db8::2", None)  # the same /64
    assert refusal is not None and (refusal.code, refusal.text[:5]) == (450, "4.7.1")
    assert peers.mail("192.0.2.1", None) is None
    clock.now += 59
    assert peers.mail("2001:db8::1", None) is not None
    clock.now += 1
    assert peers.mail("2001:db8::1", None) is None

    # Bytes: a first report bigger than what is left still goes (SIZE counts only
    # against what was sent), then MAIL is refused until the window ends.
    assert peers.mail("192.0.2.9", 1500) is None
    peers.stored("192.0.2.9", 900)
    refusal = peers.mail("192.0.2.9", 200)
    assert refusal is not None and (refusal.code, refusal.text[:5]) == (452, "4.3.1")
    peers.stored("192.0.2.9", 100)
    assert peers.mail("192.0.2.9", None) is not None
    clock.now += 60
    assert peers.mail("192.0.2.9", None) is None


def test_clients_seen_only_in_an_old_window_are_forgotten() -> None:
    clock = Clock()
    peers = limits(clock)
    for n in range(100):
        peers.mail(f"192.0.2.{n}", None)
    clock.now += 61
    peers.mail("198.51.100.1", None)
    assert list(peers._usage) == ["198.51.100.1"]


def test_the_byte_limit_must_take_one_report_of_the_largest_size(tmp_path: Path) -> None:
    path = write_config(tmp_path / "smtprelay.yaml", base_config(
        tmp_path / "var", feedback={"max_bytes_per_ip": "1M", "max_message_size": "10M"}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "feedback" in str(info.value) and "raise max_bytes_per_ip" in str(info.value)
