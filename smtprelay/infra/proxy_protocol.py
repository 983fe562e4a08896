"""The PROXY protocol (HAProxy's, versions 1 and 2): who the client is behind a load
balancer, for the SMTP listeners (`listeners[].proxy_protocol`) and the HTTP ones
(`http.proxy_protocol`).

A listener behind a load balancer (HAProxy `send-proxy` or `send-proxy-v2`, AWS NLB,
nginx stream `proxy_protocol on`) gets one header before the client's first byte,
naming the client's address. Only a peer among the listener's trusted proxies may
send one; the header is read before anything else (before the SMTP banner, before an
HTTP request, before a TLS handshake), and from then on the client's address is the
header's: per-address limits, AUTH lockout, the Received field, engagement events
and the logs all see the real client.

The specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt.
What is accepted: v1 "PROXY TCP4|TCP6 src dst sport dport" and "PROXY UNKNOWN";
v2 PROXY over TCP/IPv4 or IPv6, and LOCAL (the balancer's own health checks: the
connection is the balancer's). TLVs (v2's extensions) are skipped. Anything else is
a ProxyHeaderError and the connection is closed without a word, as the specification
asks: a listener that expects a header must not guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable, Iterable

from prometheus_client import Counter

log = logging.getLogger("smtprelay.proxy_protocol")

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


def unmapped(ip: str) -> str:
    """An IPv4 peer of a dual-stack socket ("::ffff:192.0.2.1") as plain IPv4."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


Client = tuple[str, int]


class ProxiedServer:
    """A listener behind a load balancer: its own accept loop, because the PROXY header
    must be read from the socket itself, exactly, before asyncio makes a transport on
    it. What follows the header (a TLS ClientHello, an HTTP request) stays in the
    socket for that transport, which a buffered reader would have swallowed.

    `protocol(client)` makes the protocol (an SMTP session's, aiohttp's) of one
    connection whose client is `client`: the header's address, or the balancer's own
    for its health checks. The same interface as asyncio.Server, as far as the SMTP
    and HTTP servers use it; `listener` and `setting` name the listener and its list
    of trusted proxies in the log, `refusals` counts the connections closed unanswered
    by reason ("untrusted_proxy", "proxy_protocol")."""

    def __init__(self, sock: socket.socket, protocol: Callable[[Client], asyncio.BaseProtocol],
                 *, trusted: Iterable[str], tls: ssl.SSLContext | None,
                 handshake_timeout: float, listener: str, setting: str,
                 refusals: Counter) -> None:
        self.sockets = (sock,)
        self._sock = sock
        self._protocol = protocol
        self._tls = tls
        self._handshake_timeout = handshake_timeout
        self._listener = listener
        self._setting = setting
        self._refusals = refusals
        self._proxies = [ipaddress.ip_network(n) for n in trusted]
        # Connections still in their header or TLS handshake; a served one is its
        # protocol's to close.
        self._connections: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.ensure_future(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if self._sock.fileno() < 0:
                    return  # closed
                log.warning("listener=%s accept failed: %s", self._listener, exc)
                await asyncio.sleep(0.1)  # out of descriptors: do not spin
                continue
            task = asyncio.ensure_future(self._connection(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    def _trusts(self, ip: str) -> bool:
        try:
            return any(ipaddress.ip_address(ip) in n for n in self._proxies)
        except ValueError:
            return False

    async def _connection(self, conn: socket.socket) -> None:
        name = self._listener
        try:
            peer = conn.getpeername()
        except OSError:  # gone already
            conn.close()
            return
        balancer = unmapped(str(peer[0]))
        if not self._trusts(balancer):
            self._refusals.labels(reason="untrusted_proxy").inc()
            log.warning("refused connection client=%s listener=%s: not in %s", balancer,
                        name, self._setting)
            conn.close()
            return
        conn.setblocking(False)
        try:
            await self._serve(conn, balancer, int(peer[1]))
        except asyncio.CancelledError:
            conn.close()  # closed while the header or the handshake was awaited
            raise

    async def _serve(self, conn: socket.socket, balancer: str, port: int) -> None:
        name = self._listener
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                client = await read_header(socket_reader(conn))
        except (ProxyHeaderError, OSError) as exc:  # TimeoutError is an OSError
            self._refusals.labels(reason="proxy_protocol").inc()
            # The reason never quotes the client's bytes, and the log formatter escapes
            # control characters in every line besides.
            log.warning("refused connection from balancer=%s listener=%s: %s", balancer,
                        name, str(exc) or type(exc).__name__)
            conn.close()
            return
        # The balancer's own connection (a health check) is the balancer's.
        named = client or (balancer, port)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self._protocol(named), conn, ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout if self._tls is not None
                else None)
        except OSError as exc:  # ssl.SSLError and TimeoutError too
            # The client left or spoke no TLS of ours: its doing, not the balancer's,
            # and as unremarkable as on a listener without one, where asyncio drops
            # such a connection without a word.
            log.info("connection client=%s listener=%s (through balancer=%s) ended in its "
                     "TLS handshake: %s", named[0], name, balancer,
                     str(exc) or type(exc).__name__)
            conn.close()

    def close(self) -> None:
        self._accepting.cancel()
        self._sock.close()
        for task in self._connections:
            task.cancel()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        if self._connections:
            await asyncio.wait(list(self._connections))
