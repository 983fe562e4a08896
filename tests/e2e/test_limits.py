"""Connection limits, timeouts and advertised sizes, measured over real sockets."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from tests.e2e.dialog import (
    Accepted,
    Closed,
    Dialog,
    Expect,
    Send,
    Step,
    ehlo_plain,
    fresh_good_session,
    good_body,
    good_message,
    tls_login,
)
from tests.support import running, spooled

BANNER = b"220 relay.test ESMTP smtprelay\r\n"
REFUSED = b"421 4.7.0 Too many concurrent SMTP connections\r\n"
TIMEOUT = Expect(451, "4.4.2 Timeout waiting for data from client")


def open_raw(port: int, source: str, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_close(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError(f"still open after {limit}s, got {data!r}")
    return data


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") and len(data) < 1000:
        chunk = sock.recv(1000)
        if not chunk:
            break
        data += chunk
    return data


def served_after_retry(port: int, source: str, seconds: float = 5.0) -> socket.socket:
    """A connection that gets the banner, retried while the server notices closed clients."""
    deadline = time.monotonic() + seconds
    while True:
        sock = open_raw(port, source)
        line = read_line(sock)
        if line == BANNER:
            return sock
        sock.close()
        assert line == REFUSED, line
        if time.monotonic() > deadline:
            raise AssertionError(f"still refused after {seconds}s")
        time.sleep(0.05)


def test_thousand_concurrent_connections(tmp_path: Path) -> None:
    """1,000 open sessions are served, the 1,001st gets 421, and a freed slot serves mail again."""
    limits = {"max_connections": 1000, "max_connections_per_ip": 10, "idle_timeout": "60s"}
    with running(tmp_path, limits=limits) as relay:
        cred = relay.credential()
        port = relay.submission_port
        started = time.monotonic()
        socks: list[socket.socket] = []
        try:
            for i in range(1000):
                socks.append(open_raw(port, f"127.0.0.{1 + i % 200}"))
            banners = [read_line(s) for s in socks]
            assert banners == [BANNER] * 1000
            opened = time.monotonic() - started
            # Every slot is taken: the next one is refused politely and closed, from
            # a fresh address too (the overall limit, not the per-IP one).
            for source in ("127.0.0.1", "127.0.1.1"):
                extra = open_raw(port, source)
                assert read_until_close(extra) == REFUSED
                extra.close()
            # On the implicit-TLS port the 421 comes inside TLS, where the client can
            # read it.
            with Dialog.connect(relay.submissions_port, implicit_tls=True,
                                source="127.0.1.1", banner=False) as refused:
                refused.run([Expect(421, "4.7.0 Too many concurrent SMTP connections"),
                             Closed(tls_alert=True)])
            # The refused ones cost the open sessions nothing.
            for sock in socks[::100]:
                sock.sendall(b"NOOP\r\n")
                assert read_line(sock) == b"250 2.0.0 Ok\r\n"
            for sock in socks[:5]:
                sock.close()
            new = served_after_retry(port, "127.0.0.1")
            with Dialog(new) as dialog:
                dialog.run([*tls_login(cred), *good_message(1), Send(b"QUIT\r\n"),
                            Expect(221, "2.0.0 Bye")])
            print(f"1000 connections opened and greeted in {opened:.2f}s")
        finally:
            for sock in socks:
                sock.close()
        (entry,) = spooled(relay.config)
        assert entry["id"] == dialog.accepted[0]


def test_per_ip_connection_limit(tmp_path: Path) -> None:
    """The 4th connection from one address gets 421 while other addresses are still served."""
    with running(tmp_path, limits={"max_connections_per_ip": 3}) as relay:
        cred = relay.credential()
        port = relay.submission_port
        socks = [open_raw(port, "127.0.0.5") for _ in range(3)]
        try:
            assert [read_line(s) for s in socks] == [BANNER] * 3
            extra = open_raw(port, "127.0.0.5")
            assert read_until_close(extra) == REFUSED
            extra.close()
            accepted = fresh_good_session(port, cred, source="127.0.0.6")
            # The limit counts both listeners together.
            with Dialog.connect(relay.submissions_port, implicit_tls=True,
                                source="127.0.0.5", banner=False) as dialog:
                dialog.run([Expect(421, "4.7.0 Too many concurrent SMTP connections"),
                            Closed(tls_alert=True)])
            with Dialog.connect(relay.submissions_port, implicit_tls=True,
                                source="127.0.0.6") as dialog:
                dialog.run([Send(b"QUIT\r\n"), Expect(221, "2.0.0 Bye")])
            socks.pop().close()
            served_after_retry(port, "127.0.0.5").close()
        finally:
            for sock in socks:
                sock.close()
        assert [e["id"] for e in spooled(relay.config)] == [accepted]


def test_idle_timeout(tmp_path: Path) -> None:
    """A session silent for idle_timeout gets 451 4.4.2 and is closed, before and after EHLO."""
    with running(tmp_path, limits={"idle_timeout": "1s"}) as relay:
        cred = relay.credential()
        silent_after: list[list[Step]] = [
            [],  # right after the banner
            ehlo_plain(),  # between commands
            [Send(b"EHLO client.test\r\nNOO"), *ehlo_plain()[1:]],  # mid-command
        ]
        # The three go silent together, so their timeouts run at the same time.
        with contextlib.ExitStack() as stack:
            silent: list[tuple[Dialog, float]] = []
            for steps in silent_after:
                dialog = stack.enter_context(Dialog.connect(relay.submission_port))
                dialog.run(steps)
                silent.append((dialog, time.monotonic()))
            for dialog, started in silent:
                dialog.run([TIMEOUT, Closed(within=5)])
                waited = time.monotonic() - started
                assert 0.5 < waited < 5, waited
        # A client that keeps talking is not cut off by the idle timeout.
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run(tls_login(cred))
            for _ in range(4):
                time.sleep(0.4)
                dialog.run([Send(b"NOOP\r\n"), Expect(250, "2.0.0 Ok")])
            dialog.run(good_message(1))
        assert [e["id"] for e in spooled(relay.config)] == dialog.accepted


def test_size_is_advertised_and_enforced(tmp_path: Path) -> None:
    """EHLO advertises SIZE <max_message_size>; SIZE= at the limit passes, one octet over is 552."""
    limit = 5 * 1024 * 1024
    with running(tmp_path, limits={"max_message_size": "5M"}) as relay:
        cred = relay.credential()
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run([*tls_login(cred, size=limit),
                        Send(f"MAIL FROM:<app@example.com> SIZE={limit + 1}\r\n".encode()),
                        Expect(552, "5.3.4 Message is too long."),
                        Send(f"MAIL FROM:<app@example.com> SIZE={limit}\r\n".encode()),
                        Expect(250, "2.1.0 Ok"), Send(b"RSET\r\n"), Expect(250, "2.0.0 Ok"),
                        *good_message(1)])
        assert [e["id"] for e in spooled(relay.config)] == dialog.accepted


def test_recipient_limit_is_configurable(tmp_path: Path) -> None:
    """limits.max_recipients 3: the 4th RCPT gets 452 4.5.3 and the message goes to the first 3."""
    with running(tmp_path, limits={"max_recipients": 3}) as relay:
        cred = relay.credential()
        with Dialog.connect(relay.submission_port) as dialog:
            steps = [*tls_login(cred), Send(b"MAIL FROM:<app@example.com>\r\n"),
                     Expect(250, "2.1.0 Ok")]
            for i in range(3):
                steps += [Send(f"RCPT TO:<r{i}@example.net>\r\n".encode()),
                          Expect(250, "2.1.5 Ok")]
            steps += [Send(b"RCPT TO:<r3@example.net>\r\n"),
                      Expect(452, "4.5.3 Too many recipients")]
            dialog.run(steps)
            dialog.run([Send(b"DATA\r\n"), Expect(354, "End data with <CR><LF>.<CR><LF>"),
                        Send(good_body(1) + b".\r\n"), Accepted()])
        (entry,) = spooled(relay.config)
        assert entry["recipients"] == ["r0@example.net", "r1@example.net", "r2@example.net"]
