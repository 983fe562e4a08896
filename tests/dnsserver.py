"""A small authoritative DNS server on loopback for tests, built on dnspython.

Tests define records and failures per name through a Python API and point a resolver
at ``server.address``; the server answers over UDP and TCP on the same ephemeral port
(so truncated UDP answers can be retried over TCP, as a real resolver does) from an
asyncio loop in its own thread:

    server = TestDNSServer()
    server.start()
    server.add("example.test", "MX", "10 mx1.example.test.")
    server.add("mx1.example.test", "A", "127.0.0.2", ttl=60)
    server.fail("broken.test", "SERVFAIL")
    ...
    server.stop()

Behaviour, as an authoritative server for the zones it serves:
- a name with records of the asked type: those records (AA set), CNAMEs followed;
- a name that exists without that type: NOERROR with no answer (NODATA) + the SOA;
- an unknown name under a served zone: NXDOMAIN + the SOA (RFC 2308 negative TTL);
- a name under no served zone: REFUSED;
- failures set with ``fail()``: SERVFAIL, REFUSED, NXDOMAIN, NOTIMP, FORMERR, TIMEOUT
  (never answer), GARBAGE (answer with bytes that are not a DNS message);
- a UDP answer larger than the client's payload size (512, or its EDNS size) is
  truncated with TC set.

Every query is logged in ``queries`` as (name, type), so tests can assert caching.
Malformed datagrams are ignored; nothing raised while answering escapes the thread
(errors are kept in ``errors`` for tests to assert on).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

# RFC 2606 / RFC 6761 names that never exist on the Internet, so a test can never
# reach a real domain by accident.
DEFAULT_ZONES = ("test", "example", "invalid", "example.com", "example.net", "example.org")

FAILURES = frozenset({"SERVFAIL", "REFUSED", "NXDOMAIN", "NOTIMP", "FORMERR", "TIMEOUT",
                      "GARBAGE"})

_MAX_CNAME_CHAIN = 8

# The lookup time limit for resolvers that the test expects to get answers. The server
# answers from a thread of the test process, so anything that holds the test process's
# GIL (a full garbage collection of a heap grown over a long run is the usual one)
# holds the answers back too: a 0.5 s limit failed a lookup that way in CI. Tests whose
# subject is a timeout set their own short limit.
ANSWER_TIMEOUT = 10.0


@dataclass(slots=True)
class _Zone:
    origin: dns.name.Name
    negative_ttl: int | None  # None: negative answers carry no SOA at all


@dataclass(slots=True)
class _Record:
    rdata: dns.rdata.Rdata
    ttl: int


@dataclass(slots=True)
class _State:
    """Everything the server thread reads and the test thread writes, under one lock."""

    zones: dict[dns.name.Name, _Zone] = field(default_factory=dict)
    records: dict[dns.name.Name, dict[dns.rdatatype.RdataType, list[_Record]]] = field(
        default_factory=dict)
    # (name, type or None for every type) -> failure behaviour
    failures: dict[tuple[dns.name.Name, dns.rdatatype.RdataType | None], str] = field(
        default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, transport)
    errors: list[str] = field(default_factory=list)


def _name(text: str | dns.name.Name) -> dns.name.Name:
    return text if isinstance(text, dns.name.Name) else dns.name.from_text(text)


def _show(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class TestDNSServer:
    """An authoritative DNS server on 127.0.0.1 (or ::1), UDP and TCP on one port."""

    __test__ = False  # a helper, not a test class, despite the name

    def __init__(self, zones: Iterable[str] = DEFAULT_ZONES, *, host: str = "127.0.0.1",
                 negative_ttl: int | None = 300) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._state = _State()
        self._negative_ttl = negative_ttl
        for zone in zones:
            self.add_zone(zone)
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    # --- the test-facing API -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self._port)

    @property
    def nameserver(self) -> str:
        """The address as a "host:port" string, the form the relay's configuration takes."""
        return f"[{self.host}]:{self._port}" if ":" in self.host else f"{self.host}:{self._port}"

    @property
    def queries(self) -> list[tuple[str, str]]:
        """Every question asked so far, as (name without final dot, type), in order."""
        with self._lock:
            return [(name, rdtype) for name, rdtype, _ in self._state.log]

    @property
    def tcp_queries(self) -> list[tuple[str, str]]:
        with self._lock:
            return [(name, rdtype) for name, rdtype, how in self._state.log if how == "tcp"]

    @property
    def errors(self) -> list[str]:
        """Exceptions raised while serving (should stay empty)."""
        with self._lock:
            return list(self._state.errors)

    def count(self, name: str, rdtype: str) -> int:
        """How many times (name, type) was asked."""
        key = (_show(_name(name)), rdtype.upper())
        return sum(1 for q in self.queries if q == key)

    def clear_log(self) -> None:
        with self._lock:
            self._state.log.clear()

    def add_zone(self, origin: str, *, negative_ttl: int | str | None = "default") -> None:
        """Serve ``origin``; ``negative_ttl=None`` makes its negative answers carry no SOA."""
        ttl = self._negative_ttl if negative_ttl == "default" else negative_ttl
        assert ttl is None or isinstance(ttl, int)
        zone = _Zone(_name(origin), ttl)
        with self._lock:
            self._state.zones[zone.origin] = zone

    def add(self, name: str, rdtype: str, value: str, *, ttl: int = 300) -> None:
        """Add one record, e.g. ``add("example.test", "MX", "10 mx1.example.test.")``.

        Relative names in ``value`` are taken relative to the root. The name must be
        under a served zone (``add_zone``), so that what is absent is NXDOMAIN.
        """
        owner = _name(name)
        kind = dns.rdatatype.from_text(rdtype)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, value, origin=dns.name.root,
                                    relativize=False)
        with self._lock:
            if self._zone_for(owner) is None:
                raise ValueError(f"{name} is under no served zone; add_zone() it first")
            self._state.records.setdefault(owner, {}).setdefault(kind, []).append(
                _Record(rdata, ttl))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove a name's records of one type, or all of them."""
        owner = _name(name)
        with self._lock:
            node = self._state.records.get(owner)
            if node is None:
                return
            if rdtype is None:
                del self._state.records[owner]
            else:
                node.pop(dns.rdatatype.from_text(rdtype), None)

    def fail(self, name: str, behaviour: str, rdtype: str | None = None) -> None:
        """Make questions for ``name`` (of one type, or any) fail: see ``FAILURES``."""
        behaviour = behaviour.upper()
        if behaviour not in FAILURES:
            raise ValueError(f"unknown failure {behaviour!r}; one of {sorted(FAILURES)}")
        kind = dns.rdatatype.from_text(rdtype) if rdtype else None
        with self._lock:
            self._state.failures[(_name(name), kind)] = behaviour

    def heal(self, name: str, rdtype: str | None = None) -> None:
        """Undo ``fail()`` for that name (and type)."""
        kind = dns.rdatatype.from_text(rdtype) if rdtype else None
        with self._lock:
            self._state.failures.pop((_name(name), kind), None)

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> TestDNSServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        # Bound here, in the caller's thread, so a failure to bind raises in the test.
        udp, tcp = self._bind()
        self._port = udp.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(udp, tcp),
                                        name=f"test-dns-{self._port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test DNS server did not start")
        if self._startup_error is not None:
            raise RuntimeError("test DNS server failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> TestDNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # UDP and TCP must share the port: a resolver retries a truncated answer over
        # TCP to the same address and port. Another process may hold the TCP side of a
        # free UDP port, so try a few.
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.host, 0))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, udp.getsockname()[1]))
            except OSError as e:
                udp.close()
                tcp.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            tcp.listen(64)
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        raise RuntimeError("no port free for both UDP and TCP")

    def _run(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.set_exception_handler(self._loop_error)
        try:
            loop.run_until_complete(self._serve(udp, tcp))
        except BaseException as e:  # a failure must reach start(), not kill the thread
            self._startup_error = e
            self._record_error(f"server loop: {e!r}")
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            udp.close()
            tcp.close()

    async def _serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        clients: set[asyncio.Task[None]] = set()

        def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = loop.create_task(self._tcp_client(reader, writer))
            clients.add(task)
            task.add_done_callback(clients.discard)

        transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=udp)
        server = await asyncio.start_server(on_client, sock=tcp)
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            transport.close()
            server.close()
            # Python 3.11's wait_closed() does not wait for (or close) open connections.
            for task in list(clients):
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)
            await server.wait_closed()

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(size), "tcp")
                if reply is not None:  # TIMEOUT or malformed: keep the connection, say nothing
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except Exception as e:
            self._record_error(f"tcp client: {e!r}")
        finally:
            writer.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self._record_error(f"event loop: {context.get('message')} {context.get('exception')!r}")

    def _record_error(self, text: str) -> None:
        with self._lock:
            self._state.errors.append(text)

    # --- answering -----------------------------------------------------------------------

    def answer(self, wire: bytes, transport: str = "udp") -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # malformed: ignored, as a real server would drop it
            return None
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: answering could start a loop
        try:
            reply = self._respond(query, transport)
            if reply is None or isinstance(reply, bytes):
                return reply
            if transport == "udp":
                # 512 bytes without EDNS (RFC 1035), else the client's advertised size.
                limit = max(512, query.payload) if query.edns >= 0 else 512
                return reply.to_wire(max_size=limit, prefer_truncation=True)
            return reply.to_wire(max_size=65535)
        except Exception as e:
            self._record_error(f"answering {query.question}: {e!r}")
            return None

    def _respond(self, query: dns.message.Message,
                 transport: str) -> dns.message.Message | bytes | None:
        reply = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            reply.set_rcode(dns.rcode.NOTIMP if query.question else dns.rcode.FORMERR)
            return reply
        question = query.question[0]
        qname, qtype = question.name, dns.rdatatype.RdataType.make(question.rdtype)
        with self._lock:
            self._state.log.append((_show(qname), dns.rdatatype.to_text(qtype), transport))
            failure = (self._state.failures.get((qname, qtype))
                       or self._state.failures.get((qname, None)))
            if failure == "TIMEOUT":
                return None
            if failure == "GARBAGE":
                return query.id.to_bytes(2, "big") + b"\x81\x80 not a DNS message"
            if failure is not None:
                reply.set_rcode(dns.rcode.from_text(failure))
                if failure == "NXDOMAIN":
                    self._add_soa(reply, self._zone_for(qname))
                return reply
            if question.rdclass != dns.rdataclass.IN:
                reply.set_rcode(dns.rcode.REFUSED)
                return reply
            self._resolve(reply, qname, qtype)
        return reply

    def _resolve(self, reply: dns.message.Message, qname: dns.name.Name,
                 qtype: dns.rdatatype.RdataType) -> None:
        """Fill ``reply`` for (qname, qtype), following CNAMEs inside our zones."""
        zone = self._zone_for(qname)
        if zone is None:
            reply.set_rcode(dns.rcode.REFUSED)
            return
        reply.flags |= dns.flags.AA
        name = qname
        for _ in range(_MAX_CNAME_CHAIN):
            zone = self._zone_for(name)
            if zone is None:
                return  # the chain leaves our zones: the client follows it elsewhere
            node = self._state.records.get(name, {})
            if (qtype == dns.rdatatype.SOA and name == zone.origin
                    and zone.negative_ttl is not None):
                reply.answer.append(self._soa(zone))
                return
            if qtype in node:
                reply.answer.append(self._rrset(name, qtype, node[qtype]))
                return
            cname = node.get(dns.rdatatype.CNAME)
            if cname and qtype != dns.rdatatype.CNAME:
                reply.answer.append(self._rrset(name, dns.rdatatype.CNAME, cname))
                target = cname[0].rdata.target  # type: ignore[attr-defined]
                assert isinstance(target, dns.name.Name)
                name = target
                continue
            if not self._exists(name, zone):
                reply.set_rcode(dns.rcode.NXDOMAIN)
            self._add_soa(reply, zone)
            return

    def _exists(self, name: dns.name.Name, zone: _Zone) -> bool:
        # A name exists if it has records, is the apex, or is an empty non-terminal
        # (RFC 8020: NXDOMAIN means nothing exists below either).
        if name == zone.origin or self._state.records.get(name):
            return True
        return any(other.is_subdomain(name) and nodes
                   for other, nodes in self._state.records.items())

    def _zone_for(self, name: dns.name.Name) -> _Zone | None:
        best: _Zone | None = None
        for origin, zone in self._state.zones.items():
            if name.is_subdomain(origin) and (best is None or origin.is_subdomain(best.origin)):
                best = zone
        return best

    @staticmethod
    def _rrset(name: dns.name.Name, rdtype: dns.rdatatype.RdataType,
               records: list[_Record]) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
        for record in records:
            rrset.add(record.rdata, record.ttl)  # the set's TTL becomes the smallest
        return rrset

    @staticmethod
    def _soa(zone: _Zone) -> dns.rrset.RRset:
        ttl = zone.negative_ttl or 0
        origin = zone.origin.to_text()
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, dns.rdatatype.SOA,
            f"ns.{origin} hostmaster.{origin} 1 3600 600 86400 {ttl}")
        rrset = dns.rrset.RRset(zone.origin, dns.rdataclass.IN, dns.rdatatype.SOA)
        rrset.add(rdata, ttl)
        return rrset

    def _add_soa(self, reply: dns.message.Message, zone: _Zone | None) -> None:
        # RFC 2308: the negative TTL is min(SOA TTL, SOA MINIMUM); both set to the same.
        if zone is not None and zone.negative_ttl is not None:
            reply.authority.append(self._soa(zone))


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: TestDNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.server.answer(data, "udp")  # never raises
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a client that went away: not our problem


@pytest.fixture
def dns_server() -> Iterator[TestDNSServer]:
    """A started TestDNSServer serving the RFC 2606 test zones; stopped after the test.

    The test then fails if the server itself raised while answering (a bug here, not
    in the code under test, but it would make that test's results meaningless).
    """
    server = TestDNSServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.errors == [], f"the test DNS server failed: {server.errors}"


__all__ = ["DEFAULT_ZONES", "FAILURES", "TestDNSServer", "dns_server"]
