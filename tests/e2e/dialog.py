"""A tiny SMTP dialog runner over real sockets, for exact-byte abuse scripts.

A script is a list of steps: Send raw bytes, Expect one exact reply (code and text,
multi-line replies joined with "\\n" as in smtprelay.mail.replies), Accepted (a
`250 2.0.0 Ok <id>`, the id recorded), StartTLS (wrap the socket after the 220),
Closed (the server hangs up). Nothing in it is lenient: a reply that differs in any
byte fails the step with the whole transcript so far.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.support import Credential, client_context

HOST = "127.0.0.1"
ID_RE = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")
ACCEPTED_RE = re.compile(rf"2\.0\.0 Ok ({ID_RE.pattern})")
GOOD_MARKER = b"good-message-marker"
EVIL_MARKER = b"EVIL"


class DialogError(AssertionError):
    pass


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Expect:
    code: int
    text: str


@dataclass(frozen=True)
class Accepted:
    """A `250 2.0.0 Ok <message-id>` reply; the id is recorded on the dialog."""


@dataclass(frozen=True)
class StartTLS:
    """Wrap the socket in TLS now (after the server's 220 was read)."""


@dataclass(frozen=True)
class Closed:
    """The server closes the connection without sending anything more.

    With `tls_alert`, TLS alert records (content type 21) may come first: a server
    refusing a broken handshake says why before it hangs up.
    """

    within: float = 10.0
    tls_alert: bool = False


@dataclass(frozen=True)
class Silent:
    """The server sends nothing for `seconds` (e.g. it must not answer injected commands)."""

    seconds: float = 0.5


Step = Send | Expect | Accepted | StartTLS | Closed | Silent


@dataclass
class Dialog:
    sock: socket.socket
    timeout: float = 10.0
    buf: bytearray = field(default_factory=bytearray)
    transcript: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)

    @classmethod
    def connect(cls, port: int, *, implicit_tls: bool = False, source: str | None = None,
                timeout: float = 10.0, banner: bool = True) -> Dialog:
        sock = socket.create_connection(
            (HOST, port), timeout=timeout,
            source_address=(source, 0) if source is not None else None)
        if implicit_tls:
            sock = client_context().wrap_socket(sock)
        dialog = cls(sock, timeout)
        if banner:
            dialog.expect(220, "relay.test ESMTP smtprelay")
        return dialog

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Dialog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail(self, message: str) -> DialogError:
        return DialogError(message + "\n--- transcript ---\n" + "\n".join(self.transcript))

    def send(self, data: bytes) -> None:
        self.transcript.append(f"C: {data[:200]!r}" + (" ..." if len(data) > 200 else ""))
        self.sock.sendall(data)

    def _fill(self) -> bool:
        """Read more into the buffer; False at end of stream."""
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def reply(self) -> tuple[int, str]:
        """One complete reply: its code and its text lines joined with newlines."""
        lines: list[str] = []
        code: int | None = None
        deadline = time.monotonic() + self.timeout
        while True:
            end = self.buf.find(b"\r\n")
            if end < 0:
                if time.monotonic() > deadline:
                    raise self.fail("timed out waiting for a reply")
                try:
                    more = self._fill()
                except TimeoutError:
                    raise self.fail("timed out waiting for a reply") from None
                if not more:
                    raise self.fail(f"connection closed mid-reply (partial {bytes(self.buf)!r})")
                continue
            raw = bytes(self.buf[:end])
            del self.buf[: end + 2]
            line = raw.decode("utf-8")
            self.transcript.append(f"S: {line}")
            if not re.fullmatch(r"[2-5]\d\d[ -].*", line):
                raise self.fail(f"malformed reply line {line!r}")
            if code is not None and int(line[:3]) != code:
                raise self.fail(f"reply code changed mid-reply at {line!r}")
            code = int(line[:3])
            lines.append(line[4:])
            if line[3] == " ":
                return code, "\n".join(lines)

    def expect(self, code: int, text: str) -> None:
        got = self.reply()
        if got != (code, text):
            raise self.fail(f"expected {code} {text!r}, got {got[0]} {got[1]!r}")

    def expect_accepted(self) -> str:
        code, text = self.reply()
        match = ACCEPTED_RE.fullmatch(text)
        if code != 250 or match is None:
            raise self.fail(f"expected 250 2.0.0 Ok <id>, got {code} {text!r}")
        self.accepted.append(match.group(1))
        return match.group(1)

    def starttls(self) -> None:
        if self.buf:
            raise self.fail(f"server sent {bytes(self.buf)!r} before the TLS handshake")
        self.sock = client_context().wrap_socket(self.sock)
        self.transcript.append(f"-- TLS {self.sock.version()}")

    def expect_closed(self, within: float = 10.0, tls_alert: bool = False) -> None:
        """The peer ends the connection (EOF or reset) without another byte."""
        deadline = time.monotonic() + within
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
                if not self._fill():
                    break
                if not (tls_alert and _only_alerts(self.buf)):
                    break
        except TimeoutError:
            raise self.fail(f"connection still open after {within}s "
                            f"(received {bytes(self.buf)!r})") from None
        except (ssl.SSLError, OSError):
            pass
        finally:
            self.sock.settimeout(self.timeout)
        if self.buf and not (tls_alert and _only_alerts(self.buf)):
            raise self.fail(f"expected the connection to close, got {bytes(self.buf)!r}")
        self.transcript.append(f"-- closed (after {bytes(self.buf)!r})")
        self.buf.clear()

    def expect_silent(self, seconds: float) -> None:
        self.sock.settimeout(seconds)
        try:
            more = self._fill()
        except TimeoutError:
            more = None
        finally:
            self.sock.settimeout(self.timeout)
        if more is not None or self.buf:
            raise self.fail(f"expected silence, got {bytes(self.buf)!r} (eof={more is False})")

    def run(self, steps: Iterable[Step]) -> Dialog:
        for step in steps:
            if isinstance(step, Send):
                self.send(step.data)
            elif isinstance(step, Expect):
                self.expect(step.code, step.text)
            elif isinstance(step, Accepted):
                self.expect_accepted()
            elif isinstance(step, StartTLS):
                self.starttls()
            elif isinstance(step, Closed):
                self.expect_closed(step.within, step.tls_alert)
            else:
                self.expect_silent(step.seconds)
        return self


def _only_alerts(data: bytearray) -> bool:
    """True when `data` is a sequence of (possibly truncated) TLS alert records."""
    i = 0
    while i < len(data):
        if data[i] != 21 or (i + 1 < len(data) and data[i + 1] != 3):
            return False
        if i + 5 > len(data):
            return True
        i += 5 + int.from_bytes(data[i + 3 : i + 5], "big")
    return True


# -- building blocks -------------------------------------------------------------------

def ehlo_text(*, starttls: bool, auth: bool, size: int = 10 * 1024 * 1024) -> str:
    lines = ["relay.test", "PIPELINING", f"SIZE {size}", "8BITMIME", "SMTPUTF8",
             "ENHANCEDSTATUSCODES"]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH PLAIN LOGIN")
    return "\n".join(lines)


def b64(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw)


def plain(username: str, password: str) -> bytes:
    return b64(f"\0{username}\0{password}")


def ehlo_plain(size: int = 10 * 1024 * 1024) -> list[Step]:
    """EHLO on the STARTTLS listener before TLS."""
    return [Send(b"EHLO client.test\r\n"), Expect(250, ehlo_text(starttls=True, auth=False,
                                                                 size=size))]


def ehlo_tls(size: int = 10 * 1024 * 1024) -> list[Step]:
    return [Send(b"EHLO client.test\r\n"), Expect(250, ehlo_text(starttls=False, auth=True,
                                                                 size=size))]


def starttls(size: int = 10 * 1024 * 1024) -> list[Step]:
    """EHLO, STARTTLS, handshake and EHLO again on the STARTTLS listener."""
    return [*ehlo_plain(size), Send(b"STARTTLS\r\n"), Expect(220, "2.0.0 Ready to start TLS"),
            StartTLS(), *ehlo_tls(size)]


def login(cred: Credential) -> list[Step]:
    return [Send(b"AUTH PLAIN " + plain(cred.username, cred.password) + b"\r\n"),
            Expect(235, "2.7.0 Authentication successful")]


def tls_login(cred: Credential, size: int = 10 * 1024 * 1024) -> list[Step]:
    return [*starttls(size), *login(cred)]


def good_body(n: int = 0, sender: str = "app@example.com") -> bytes:
    return (f"From: App <{sender}>\r\nTo: someone@example.net\r\nSubject: good {n}\r\n\r\n"
            ).encode() + GOOD_MARKER + f" {n}\r\n".encode()


def padded(prefix: bytes, total: int) -> bytes:
    """`prefix` followed by short lines so the whole message is exactly `total` octets."""
    line = b"y" * 76 + b"\r\n"
    missing = total - len(prefix)
    assert missing >= 2
    full, rest = divmod(missing, len(line))
    tail = b"z" * (rest - 2) + b"\r\n" if rest >= 2 else b""
    if rest == 1:  # one octet too many for a line of its own: lengthen one line
        full -= 1
        tail = b"y" * 77 + b"\r\n"
    return prefix + line * full + tail


def good_message(n: int = 0, sender: str = "app@example.com",
                 rcpt: str = "someone@example.net") -> list[Step]:
    """One complete, valid transaction ending in `250 2.0.0 Ok <id>`."""
    return [Send(f"MAIL FROM:<{sender}>\r\n".encode()), Expect(250, "2.1.0 Ok"),
            Send(f"RCPT TO:<{rcpt}>\r\n".encode()), Expect(250, "2.1.5 Ok"),
            Send(b"DATA\r\n"), Expect(354, "End data with <CR><LF>.<CR><LF>"),
            Send(good_body(n, sender) + b".\r\n"), Accepted()]


def fresh_good_session(port: int, cred: Credential, n: int = 99, source: str | None = None,
                       size: int = 10 * 1024 * 1024) -> str:
    """A new STARTTLS session that sends one good message; its message id."""
    with Dialog.connect(port, source=source) as dialog:
        dialog.run([*tls_login(cred, size), *good_message(n), Send(b"QUIT\r\n"),
                    Expect(221, "2.0.0 Bye")])
        return dialog.accepted[0]
