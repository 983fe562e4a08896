"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client is behind a load
balancer.

A listener with `proxy_protocol: true` sits behind a load balancer (HAProxy
`send-proxy` or `send-proxy-v2`, AWS NLB, nginx stream `proxy_protocol on`) that writes
one header before the client's first byte, naming the client's address. Only a peer
in the listener's `trusted_proxies` may; the header is read before anything else
(before the banner, before an implicit TLS handshake), and from then on the client's
address is the header's: per-address limits, AUTH lockout, the Received field and
the logs all see the real client.

The specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt.
What is accepted: v1 "PROXY TCP4|TCP6 src dst sport dport" and "PROXY UNKNOWN";
v2 PROXY over TCP/IPv4 or IPv6, and LOCAL (the balancer's own health checks: the
connection is the balancer's). TLVs (v2's extensions) are skipped. Anything else is
a ProxyHeaderError and the connection is closed without a word, as the specification
asks: a listener that expects a header must not guess.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the longest v1 line, CRLF included
_V2_MAX_BODY = 2048  # addresses and TLVs; a balancer sends far less
HEADER_TIMEOUT = 5.0  # seconds; a balancer writes the header at once


class ProxyHeaderError(ValueError):
    """Not a PROXY header this relay accepts (the reason is for the log)."""


ReadExactly = Callable[[int], Awaitable[bytes]]


def socket_reader(sock: socket.socket) -> ReadExactly:
    """Exact reads straight from an accepted socket, taking nothing past what is asked
    for: what follows the header (a TLS ClientHello) stays in the socket for the
    transport that is made on it afterwards."""
    loop = asyncio.get_running_loop()

    async def read_exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = await loop.sock_recv(sock, count - len(data))
            if not chunk:
                raise asyncio.IncompleteReadError(data, count)
            data += chunk
        return data

    return read_exactly


async def read_header(read_exactly: ReadExactly) -> tuple[str, int] | None:
    """The client's (address, port) from the header at the start of a connection, read
    with `read_exactly` (StreamReader.readexactly, or socket_reader); None when the
    header says the connection is the balancer's own (v2 LOCAL, v1 UNKNOWN)."""
    try:
        start = await read_exactly(12)
        if start == V2_SIGNATURE:
            return await _v2(read_exactly)
        if start.startswith(b"PROXY "):
            return await _v1(read_exactly, start)
    except asyncio.IncompleteReadError as exc:
        raise ProxyHeaderError("the connection closed inside the PROXY header") from exc
    raise ProxyHeaderError("no PROXY header where one was expected")


async def _v1(read_exactly: ReadExactly, start: bytes) -> tuple[str, int] | None:
    # A byte at a time: nothing after the line may be taken from the client.
    line = start
    while not line.endswith(b"\r\n"):
        if len(line) >= _V1_MAX:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        line += await read_exactly(1)
    try:
        words = line[:-2].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    if words[1:2] == ["UNKNOWN"]:
        return None
    if len(words) != 6 or words[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line is not PROXY TCP4|TCP6 src dst sport dport")
    try:
        source = ipaddress.ip_address(words[2])
        ipaddress.ip_address(words[3])
        port = int(words[4])
    except ValueError:
        raise ProxyHeaderError("PROXY v1 line has a bad address or port") from None
    if (source.version == 4) != (words[1] == "TCP4") or not 0 <= port <= 65535 \
            or not words[4].isdigit() or not words[5].isdigit():
        raise ProxyHeaderError("PROXY v1 line has a bad address or port")
    return str(source), port


async def _v2(read_exactly: ReadExactly) -> tuple[str, int] | None:
    version_command, family, length = struct.unpack("!BBH", await read_exactly(4))
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header of version {version_command >> 4}")
    if length > _V2_MAX_BODY:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes")
    body = await read_exactly(length)
    command = version_command & 0x0F
    if command == 0x0:  # LOCAL: the balancer's own connection (a health check)
        return None
    if command != 0x1:
        raise ProxyHeaderError(f"PROXY v2 command {command}")
    if family == 0x11 and length >= 12:  # TCP over IPv4
        return str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0]
    if family == 0x21 and length >= 36:  # TCP over IPv6
        address = ipaddress.IPv6Address(body[0:16])
        port = struct.unpack("!H", body[32:34])[0]
        mapped = address.ipv4_mapped
        return str(mapped if mapped is not None else address), port
    if family == 0x00:  # UNSPEC: the balancer could not tell
        return None
    raise ProxyHeaderError(f"PROXY v2 address family 0x{family:02x} (only TCP over IPv4 "
                           "or IPv6)")
