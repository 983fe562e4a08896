"""PROXY protocol headers, v1 and v2, as load balancers write them, and what is refused."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from smtprelay.infra.proxy_protocol import V2_SIGNATURE, ProxyHeaderError, read_header


async def parse(data: bytes, eof: bool = False) -> tuple[tuple[str, int] | None, bytes]:
    """The header's answer, and what the session reads after it."""
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    if eof:
        reader.feed_eof()
    found = await read_header(reader.readexactly)
    reader.feed_eof()
    return found, await reader.read()


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


def v2_tcp4(source: str, port: int, tlvs: bytes = b"") -> bytes:
    return v2(1, 0x11, ipaddress.IPv4Address(source).packed
              + ipaddress.IPv4Address("10.0.0.1").packed + struct.pack("!HH", port, 587)
              + tlvs)


async def test_v1_tcp4_and_tcp6_give_the_client_and_leave_its_bytes() -> None:
    assert await parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 587\r\nEHLO x\r\n") == (
        ("203.0.113.7", 56324), b"EHLO x\r\n")
    assert await parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 587\r\n") == (
        ("2001:db8::7", 4000), b"")
    assert await parse(b"PROXY UNKNOWN\r\n") == (None, b"")
    assert await parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == (None, b"")


async def test_v2_tcp4_tcp6_local_and_tlvs() -> None:
    assert await parse(v2_tcp4("198.51.100.9", 40000) + b"\x16\x03\x01") == (
        ("198.51.100.9", 40000), b"\x16\x03\x01")  # a TLS ClientHello follows
    # TLVs (here a PP2_TYPE_AUTHORITY) are skipped whole.
    assert await parse(v2_tcp4("198.51.100.9", 1, b"\x02\x00\x05x.org") + b"rest") == (
        ("198.51.100.9", 1), b"rest")
    six = (ipaddress.IPv6Address("2001:db8::9").packed
           + ipaddress.IPv6Address("2001:db8::1").packed + struct.pack("!HH", 5, 587))
    assert await parse(v2(1, 0x21, six)) == (("2001:db8::9", 5), b"")
    mapped = (ipaddress.IPv6Address("::ffff:192.0.2.5").packed
              + ipaddress.IPv6Address("::1").packed + struct.pack("!HH", 6, 587))
    assert await parse(v2(1, 0x21, mapped)) == (("192.0.2.5", 6), b"")
    assert await parse(v2(0, 0x00, b"") + b"health") == (None, b"health")  # LOCAL


@pytest.mark.parametrize("data, reason", [
    (b"EHLO client.example\r\n", "no PROXY header"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no PROXY header"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\x00", "no PROXY header"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 587" + b" " * 80 + b"\r\n", "longer than"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 56324\r\n", "not PROXY TCP4"),
    (b"PROXY UDP4 203.0.113.7 10.0.0.1 1 2\r\n", "not PROXY TCP4"),
    (b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 203.0.113.777 10.0.0.1 1 2\r\n", "bad address"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 70000 2\r\n", "bad address"),
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 2\r\n", "bad address"),
    (b"PROXY TCP4 203.0.113.\xff 10.0.0.1 1 2\r\n", "not ASCII"),
    (b"PROXY TCP4 203.0.113.7", "closed inside"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12, "version 1"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12, "command 2"),
    (V2_SIGNATURE + b"\x21\x12\x00\x0c" + b"\x00" * 12, "family 0x12"),
    (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4, "family 0x11"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "65535 bytes"),
    (V2_SIGNATURE + b"\x21\x11\x00\x0c" + b"\x00" * 5, "closed inside"),
])
async def test_anything_else_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        await parse(data, eof=True)
