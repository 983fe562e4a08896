"""An SMTP session (smtprelay.smtp.session) driven in memory: the client's bytes in, the
replies, the handed-on messages and the formatted log lines out.

No socket, no TLS handshake (the writer says the connection is TLS, as on an
implicit-TLS listener, so AUTH is offered), no spool: a recording handler accepts
every message and an authenticator takes any user name with the password "pw". The
input ends with EOF, so every run ends; a run still going after TIMEOUT is a hang.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from smtprelay.auth.authenticator import AuthResult, Outcome
from smtprelay.config import LimitsConfig, ListenerConfig
from smtprelay.infra.logs import _TextFormatter
from smtprelay.mail import replies as R
from smtprelay.mail.replies import Reply
from smtprelay.smtp.session import ListenerSettings, Session
from smtprelay.submission.seam import Submission

TIMEOUT = 10.0
MAX_MESSAGE_SIZE = 64 * 1024
PASSWORD = "pw"
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])([^\r\n]*)\r\n")
# As the daemon's text log writes a record (infra.logs.setup).
_FORMATTER = _TextFormatter("%(levelname)s %(name)s %(message)s")


class _TLSObject:
    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_128_GCM_SHA256", "TLSv1.3", 128)


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        return None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return _TLSObject() if name == "ssl_object" else default

    async def start_tls(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("no TLS in memory")


class _Authenticator:
    async def authenticate(self, username: str, password: str, client_ip: str,
                           mechanism: str) -> AuthResult:
        if password == PASSWORD:
            return AuthResult(Outcome.OK, account="acme", username=username)
        return AuthResult(Outcome.INVALID)


class _Handler:
    def __init__(self) -> None:
        self.submissions: list[Submission] = []

    def check_sender(self, account: str, address: str) -> Reply | None:
        return None

    def check_recipient(self, account: str, address: str) -> Reply | None:
        return None

    async def submit(self, submission: Submission) -> Reply:
        self.submissions.append(submission)
        return R.accepted(f"{len(self.submissions):012x}-0123456789abcdef")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Conversation:
    replies: list[tuple[int, bytes]]  # code and the last line's text, one per reply
    submissions: list[Submission]
    log_lines: list[str] = field(default_factory=list)

    @property
    def codes(self) -> list[int]:
        return [code for code, _ in self.replies]


def parse_replies(out: bytes) -> list[tuple[int, bytes]]:
    """The replies in `out`; AssertionError on anything that is not a reply line."""
    found: list[tuple[int, bytes]] = []
    position = 0
    code: bytes | None = None
    while position < len(out):
        line = _REPLY_LINE.match(out, position)
        assert line is not None, f"not a reply line: {bytes(out[position:position + 120])!r}"
        assert code is None or code == line.group(1), "a multi-line reply changed its code"
        code = line.group(1)
        if line.group(2) == b" ":
            found.append((int(code), line.group(3)))
            code = None
        position = line.end()
    assert code is None, "a multi-line reply never ended"
    return found


def converse(wire: bytes, *, bare_line_endings: Literal["normalize", "reject"] = "normalize",
             nul_bytes: Literal["reject", "accept"] = "reject",
             max_errors: int = 10) -> Conversation:
    """Run one session on `wire` (then EOF) and return what it said and handed on."""
    limits = LimitsConfig(max_message_size=MAX_MESSAGE_SIZE, idle_timeout=TIMEOUT,
                          data_timeout=TIMEOUT, bare_line_endings=bare_line_endings,
                          nul_bytes=nul_bytes, max_errors=max_errors)
    settings = ListenerSettings(
        listener=ListenerConfig(name="submissions", port=465, tls="implicit"),
        hostname="relay.test", limits=limits, tls_context=lambda: None)
    handler = _Handler()
    writer = _Writer()
    records = _Records()
    logger = logging.getLogger("smtprelay")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)

    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(wire)
        reader.feed_eof()
        session = Session(reader, writer, settings, _Authenticator(),  # type: ignore[arg-type]
                          handler, None, ("192.0.2.1", 40000))
        await asyncio.wait_for(session.run(), TIMEOUT)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
        logger.removeHandler(records)
        logger.setLevel(level)
    return Conversation(parse_replies(bytes(writer.out)), handler.submissions,
                        [_FORMATTER.format(record) for record in records.records])


def stuffed(body: bytes) -> bytes:
    """`body` as an RFC 5321 client sends it after DATA: a CRLF added at the end if it
    has none, a "." doubled at the start of every line (after CRLF), the final dot."""
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:] + b".\r\n"


_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


def stored_form(body: bytes) -> bytes:
    """What the relay must hand on for `body` sent with stuffed(): the body (CRLF added
    at its end) when its lines end in CRLF; otherwise every bare CR or LF taken for a
    line end, and then a leading "." taken off every line (RFC 5321 4.5.2)."""
    wire = stuffed(body)[:-3]
    if wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n"):
        return (b"\r\n" + wire).replace(b"\r\n.", b"\r\n")[2:]
    return (b"\r\n" + _ANY_LINE_END.sub(b"\r\n", wire)).replace(b"\r\n.", b"\r\n")[2:]


def has_bare_line_end(data: bytes) -> bool:
    return not data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
