"""One SMTP submission session: the command state machine, AUTH, STARTTLS and DATA framing.

A listener with ``role: feedback`` runs the same machine for inbound reports (DSNs,
complaints) to the relay's MAIL FROM domains: no AUTH (refused with 503), any sender
including ``<>``, and its handler decides which recipients exist.

DATA is read in large chunks and framed only on <CRLF>.<CRLF>; a bare CR or LF anywhere
in the message refuses it whole, so a body can never be split into two messages (SMTP
smuggling). Replies are buffered while pipelined commands are waiting and flushed
before the session blocks on the client.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from smtprelay.auth.authenticator import Authenticator, Outcome
from smtprelay.config import LimitsConfig, ListenerConfig
from smtprelay.infra import metrics
from smtprelay.mail import replies as R
from smtprelay.mail.address import AddressError, parse_path
from smtprelay.mail.replies import Reply
from smtprelay.spool.model import Envelope
from smtprelay.submission.seam import Client, Submission, SubmissionHandler

log = logging.getLogger("smtprelay.smtp")

_READ_SIZE = 65536
# RFC 4954 4: a server should accept AUTH lines of at least 12288 octets.
_MAX_COMMAND_LINE = 16384
_DOT_LINE = b"\r\n."  # a line that starts with "." (after the CRLF before it)


# Any line end: a CRLF pair, or a CR or LF alone.
_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")


def _unstuffed(wire: bytes) -> bytes:
    """RFC 5321 4.5.2: one leading "." taken off every line that has one."""
    return (b"\r\n" + wire).replace(b"\r\n.", b"\r\n")[2:]


def lines_within(body: bytes, limit: int) -> bool:
    """Whether no line of `body` (CRLF line ends only) is longer than `limit` octets,
    line end excluded. Jumps from the last line end within reach to the next, so a
    50 KB message takes ~50 steps, not one per line."""
    position, size = 0, len(body)
    while size - position > limit:
        # A line that fits ends (with its CRLF) within limit + 2 octets of its start.
        newline = body.rfind(b"\n", position, position + limit + 2)
        if newline < 0:
            return False
        position = newline + 1
    return True


class ClientGone(Exception):
    """The client closed the connection or went silent past the timeout."""


class _Timeout(Exception):
    pass


class _LineTooLong(Exception):
    pass


class PeerGate(Protocol):
    """Per-client limits of a listener (the feedback listener's: smtprelay.feedback.peers):
    asked at connect (by the server) and at each MAIL; a Reply refuses."""

    def connect(self, ip: str) -> Reply | None:
        """A session starts; None counts it (``disconnect`` at its end)."""

    def disconnect(self, ip: str) -> None: ...

    def mail(self, ip: str, size: int | None) -> Reply | None:
        """A MAIL command, with its SIZE= when given."""


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    listener: ListenerConfig
    hostname: str
    limits: LimitsConfig
    tls_context: Callable[[], ssl.SSLContext | None]
    gate: PeerGate | None = None


class _Input:
    """A buffer over the stream reader, so DATA and pipelined commands share one read-ahead."""

    __slots__ = ("_buf", "_reader")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buf = bytearray()

    def has_line(self) -> bool:
        return b"\n" in self._buf

    def take_all(self) -> bytes:
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def push_front(self, data: bytes | bytearray) -> None:
        self._buf[:0] = data

    def discard(self) -> int:
        """Drop everything read ahead (after STARTTLS: plaintext injected before TLS)."""
        dropped = len(self._buf)
        self._buf.clear()
        internal = getattr(self._reader, "_buffer", None)
        if isinstance(internal, bytearray) and internal:
            dropped += len(internal)
            internal.clear()
        return dropped

    async def read_chunk(self, seconds: float) -> bytes:
        try:
            async with asyncio.timeout(seconds):
                chunk = await self._reader.read(_READ_SIZE)
        except TimeoutError:
            raise _Timeout from None
        except (ConnectionError, ssl.SSLError, OSError):
            raise ClientGone from None
        if not chunk:
            raise ClientGone
        return chunk

    async def readline(self, seconds: float, limit: int) -> bytes:
        """One line without its line ending; _LineTooLong after discarding the rest of it.

        `seconds` bounds the whole line, not each chunk of it: a client trickling a
        byte every few seconds cannot hold the session past it."""
        try:
            async with asyncio.timeout(seconds):
                return await self._readline(seconds, limit)
        except TimeoutError:
            raise _Timeout from None

    async def _readline(self, seconds: float, limit: int) -> bytes:
        scanned = 0
        while True:
            newline = self._buf.find(b"\n", scanned)
            if newline >= 0:
                line = bytes(self._buf[:newline])
                del self._buf[: newline + 1]
                if len(line) > limit:
                    raise _LineTooLong
                return line[:-1] if line.endswith(b"\r") else line
            scanned = len(self._buf)
            if scanned > limit:
                # Keep reading until the end of the over-long line, holding none of it.
                self._buf.clear()
                while True:
                    chunk = await self.read_chunk(seconds)
                    newline = chunk.find(b"\n")
                    if newline >= 0:
                        self._buf += chunk[newline + 1 :]
                        raise _LineTooLong
            self._buf += await self.read_chunk(seconds)


class Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: ListenerSettings,
        authenticator: Authenticator,
        handler: SubmissionHandler,
        trusted_account: str | None,
        peer: tuple[str, int],
    ) -> None:
        self._writer = writer
        self._input = _Input(reader)
        self._settings = settings
        self._limits = settings.limits
        self._auth = authenticator
        self._handler = handler
        self._peer_ip, self._peer_port = peer
        # A feedback session receives reports from any MTA: nobody authenticates, and
        # the handler (smtprelay.feedback.listener) judges the recipients instead.
        self._feedback = settings.listener.role == "feedback"
        self.id = os.urandom(5).hex()
        self._out: list[bytes] = []
        self._errors = 0
        self._last_code = 0
        self._tls = writer.get_extra_info("ssl_object") is not None
        self._helo: str | None = None
        self._esmtp = False
        # Trusted networks speak for their account without AUTH; AUTH may still switch.
        # Feedback sessions speak for no account: "" (the handler ignores it).
        self._account: str | None = "" if self._feedback else trusted_account
        self._auth_user: str | None = None
        self._reset_transaction()
        self.idle = False
        self.closing = False

    # -- plumbing --------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._smtputf8 = False
        self._body_8bit = False
        self._rcpts: list[str] = []
        self._rcpt_keys: set[str] = set()

    def _reply(self, reply: Reply) -> None:
        self._last_code = reply.code
        self._out.append(reply.render())

    async def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._writer.write(data)
            try:
                await self._writer.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                raise ClientGone from None

    async def _read_command(self) -> bytes:
        if not self._input.has_line():
            await self._flush()
        self.idle = True
        try:
            return await self._input.readline(self._limits.idle_timeout, _MAX_COMMAND_LINE)
        finally:
            self.idle = False

    def _client(self) -> Client:
        ssl_object = self._writer.get_extra_info("ssl_object")
        cipher = ssl_object.cipher() if ssl_object is not None else None
        assert self._account is not None
        return Client(
            ip=self._peer_ip, port=self._peer_port, helo=self._helo or "",
            listener=self._settings.listener.name, account=self._account,
            auth_user=self._auth_user,
            tls_version=ssl_object.version() if ssl_object is not None else None,
            tls_cipher=cipher[0] if cipher else None,
        )

    # -- main loop -------------------------------------------------------------

    async def run(self) -> None:
        self._reply(R.greeting(self._settings.hostname))
        try:
            while not self.closing:
                try:
                    line = await self._read_command()
                except _LineTooLong:
                    self._reply(R.LINE_TOO_LONG)
                    if self._count_error():
                        break
                    continue
                if not await self._dispatch(line):
                    break
            if self.closing:
                self._reply(R.SHUTTING_DOWN)
            await self._flush()
        except _Timeout:
            self._reply(R.TIMEOUT)
            log.info("session=%s client=%s timeout", self.id, self._peer_ip)
            await self._flush_quietly()
        except asyncio.CancelledError:
            # Shutdown while idle: say so, then let the cancellation go on.
            self._reply(R.SHUTTING_DOWN)
            await self._flush_quietly()
            raise
        except ClientGone:
            pass
        finally:
            self._reset_transaction()

    async def _flush_quietly(self) -> None:
        try:
            async with asyncio.timeout(5):
                await self._flush()
        except (ClientGone, TimeoutError):
            pass

    def _count_error(self) -> bool:
        """Count a client error; True when the session must end."""
        self._errors += 1
        if self._errors >= self._limits.max_errors:
            self._reply(R.TOO_MANY_ERRORS)
            log.info("session=%s client=%s too many errors", self.id, self._peer_ip)
            return True
        return False

    async def _dispatch(self, raw: bytes) -> bool:
        """Handle one command line; False ends the session."""
        if b"\0" in raw:
            self._reply(R.NUL_IN_COMMAND)
            return not self._count_error()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(R.UNRECOGNIZED)
            return not self._count_error()
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None:
            if verb in ("GET", "POST", "HEAD", "PUT", "CONNECT") and self._helo is None:
                # A web client on the SMTP port: Postfix hangs up too.
                log.info("session=%s client=%s http request on smtp port", self.id,
                         self._peer_ip)
                return False
            self._reply(R.UNRECOGNIZED)
            return not self._count_error()
        self._last_code = 0
        if not await handler(self, arg.strip()):
            return False
        # Like Postfix's smtpd_hard_error_limit: a client that keeps making protocol
        # or AUTH errors is probing or broken. Policy refusals (554, 552) do not
        # count: an application sending a batch must not be cut off for them.
        return not (self._last_code in _PROTOCOL_ERRORS and self._count_error())

    # -- commands --------------------------------------------------------------

    def _ehlo_lines(self) -> list[str]:
        lines = [self._settings.hostname, "PIPELINING",
                 f"SIZE {self._limits.max_message_size}", "8BITMIME", "SMTPUTF8",
                 "ENHANCEDSTATUSCODES"]
        if self._settings.listener.tls == "starttls" and not self._tls:
            lines.append("STARTTLS")
        if self._tls and not self._feedback:
            lines.append("AUTH PLAIN LOGIN")
        return lines

    async def _cmd_ehlo(self, arg: str) -> bool:
        if not arg:
            self._reply(R.EHLO_SYNTAX)
            return True
        self._helo = arg.split()[0][:255]
        self._esmtp = True
        self._reset_transaction()
        self._reply(Reply(250, "\n".join(self._ehlo_lines())))
        return True

    async def _cmd_helo(self, arg: str) -> bool:
        if not arg:
            self._reply(R.HELO_SYNTAX)
            return True
        self._helo = arg.split()[0][:255]
        self._esmtp = False
        self._reset_transaction()
        self._reply(Reply(250, self._settings.hostname))
        return True

    async def _cmd_starttls(self, arg: str) -> bool:
        if arg:
            self._reply(R.SYNTAX_PARAMS)
            return True
        if self._tls:
            self._reply(R.TLS_ALREADY_ACTIVE)
            return True
        if self._settings.listener.tls != "starttls":
            self._reply(R.STARTTLS_NOT_OFFERED)
            return True
        context = self._settings.tls_context()
        if context is None:
            self._reply(R.TLS_NOT_AVAILABLE)
            return True
        injected = self._input.discard()
        if injected:
            # RFC 3207 6: anything sent after STARTTLS in clear must not be acted on.
            log.warning("session=%s client=%s discarded %d bytes pipelined after STARTTLS",
                        self.id, self._peer_ip, injected)
        self._reply(R.READY_TLS)
        await self._flush()
        try:
            await self._writer.start_tls(
                context, ssl_handshake_timeout=self._limits.tls_handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            metrics.TLS_HANDSHAKE_FAILURES.labels(listener=self._settings.listener.name).inc()
            log.info("session=%s client=%s STARTTLS handshake failed: %s", self.id,
                     self._peer_ip, exc)
            return False
        self._tls = True
        # RFC 3207 4.2: forget everything learnt before TLS, the client starts over.
        self._helo = None
        self._esmtp = False
        self._reset_transaction()
        return True

    async def _cmd_auth(self, arg: str) -> bool:
        if self._feedback:
            self._reply(R.AUTH_NOT_OFFERED)
            return True
        if self._helo is None:
            self._reply(R.NEED_HELO)
            return True
        if not self._tls:
            self._reply(R.TLS_REQUIRED if self._settings.listener.tls == "starttls"
                        else R.AUTH_NOT_OFFERED)
            return True
        if self._auth_user is not None:
            self._reply(R.ALREADY_AUTHENTICATED)
            return True
        if self._mail_from is not None:
            self._reply(R.AUTH_IN_TRANSACTION)
            return True
        parts = arg.split()
        if not parts or len(parts) > 2:
            self._reply(R.AUTH_SYNTAX)
            return True
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(initial)
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(initial)
        else:
            self._reply(R.AUTH_UNKNOWN_MECHANISM)
            return True
        if credentials is None:
            return True
        username, password = credentials
        result = await self._auth.authenticate(username, password, self._peer_ip, mechanism)
        if result.outcome is Outcome.OK:
            self._account = result.account
            self._auth_user = result.username
            log.info("session=%s client=%s auth ok user=%s account=%s", self.id,
                     self._peer_ip, result.username, result.account)
            self._reply(R.AUTH_OK)
        elif result.outcome is Outcome.LOCKED:
            self._reply(R.AUTH_LOCKED)
        elif result.outcome is Outcome.UNAVAILABLE:
            self._reply(R.AUTH_TEMP_FAILURE)
        else:
            self._reply(R.AUTH_INVALID)
        return True

    async def _sasl_response(self, challenge: str, initial: str | None) -> bytes | None:
        """Decode the initial response or the answer to a 334; None after replying an error."""
        if initial is None:
            self._reply(Reply(334, challenge))
            try:
                line = await self._read_command()
            except _LineTooLong:
                self._reply(R.LINE_TOO_LONG)
                return None
            text = line.decode("ascii", "replace").strip()
        else:
            text = initial
        if text == "*":
            self._reply(R.AUTH_CANCELLED)
            return None
        if text == "=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            metrics.AUTH_ATTEMPTS.labels(mechanism="-", result="malformed").inc()
            self._reply(R.AUTH_BAD_BASE64)
            return None

    async def _auth_plain(self, initial: str | None) -> tuple[str, str] | None:
        decoded = await self._sasl_response("", initial)
        if decoded is None:
            return None
        fields = decoded.split(b"\0")
        if len(fields) != 3:
            self._reply(R.AUTH_BAD_BASE64)
            return None
        try:
            authzid, authcid, password = (f.decode("utf-8") for f in fields)
        except UnicodeDecodeError:
            self._reply(R.AUTH_BAD_BASE64)
            return None
        if authzid and authzid != authcid:
            # No proxy authorisation: acting as another user is not offered.
            self._reply(R.AUTH_INVALID)
            return None
        return authcid, password

    async def _auth_login(self, initial: str | None) -> tuple[str, str] | None:
        user = await self._sasl_response("VXNlcm5hbWU6", initial)
        if user is None:
            return None
        password = await self._sasl_response("UGFzc3dvcmQ6", None)
        if password is None:
            return None
        try:
            return user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(R.AUTH_BAD_BASE64)
            return None

    async def _cmd_mail(self, arg: str) -> bool:
        if self._helo is None:
            self._reply(R.NEED_HELO)
            return True
        if not self._tls and not self._feedback and self._settings.listener.tls == "starttls":
            # Nothing is sent in clear on a STARTTLS listener, trusted networks included
            # (a host that cannot do TLS belongs on a `tls: none` listener).
            self._reply(R.TLS_REQUIRED)
            metrics.MESSAGES_REJECTED.labels(reason="tls_required").inc()
            return True
        if self._account is None:
            self._reply(R.AUTH_REQUIRED)
            metrics.MESSAGES_REJECTED.labels(reason="auth_required").inc()
            return True
        if self._mail_from is not None:
            self._reply(R.NESTED_MAIL)
            return True
        try:
            path = parse_path(arg, keyword="FROM", sender=True)
        except AddressError as exc:
            self._reply(exc.reply)
            return True
        params = path.params
        smtputf8 = False
        body_8bit = False
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit():
                    self._reply(R.SIZE_SYNTAX)
                    return True
                if int(value) > self._limits.max_message_size:
                    metrics.MESSAGES_REJECTED.labels(reason="too_big").inc()
                    self._reply(R.TOO_BIG)
                    return True
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self._reply(R.BODY_UNKNOWN)
                    return True
                body_8bit = value.upper() == "8BITMIME"
            elif key == "SMTPUTF8" and value is None:
                smtputf8 = True
            elif key == "AUTH":
                pass  # RFC 4954 5: accepted and ignored from an untrusted submitter
            else:
                self._reply(R.PARAM_UNKNOWN)
                return True
        gate = self._settings.gate
        if gate is not None:
            size = params.get("SIZE")
            refusal = gate.mail(self._peer_ip, int(size) if size else None)
            if refusal is not None:
                metrics.MESSAGES_REJECTED.labels(reason="rate_limit").inc()
                self._reply(refusal)
                return True
        if path.address:
            refusal = self._handler.check_sender(self._account, path.address)
            if refusal is not None:
                metrics.MESSAGES_REJECTED.labels(reason="identity").inc()
                log.info("session=%s client=%s account=%s refused sender=%s", self.id,
                         self._peer_ip, self._account, path.address)
                self._reply(refusal)
                return True
        self._mail_from = path.address
        self._smtputf8 = smtputf8
        self._body_8bit = body_8bit
        self._reply(R.MAIL_OK)
        return True

    async def _cmd_rcpt(self, arg: str) -> bool:
        if self._mail_from is None:
            self._reply(R.NEED_MAIL)
            return True
        try:
            path = parse_path(arg, keyword="TO", sender=False, smtputf8=self._smtputf8)
        except AddressError as exc:
            self._reply(exc.reply)
            return True
        if path.params:
            self._reply(R.PARAM_UNKNOWN)
            return True
        key = path.address.lower()
        if key in self._rcpt_keys:
            self._reply(R.RCPT_OK)  # the same recipient twice gets one copy
            return True
        if len(self._rcpts) >= self._limits.max_recipients:
            metrics.MESSAGES_REJECTED.labels(reason="too_many_recipients").inc()
            self._reply(R.TOO_MANY_RECIPIENTS)
            return True
        assert self._account is not None
        refusal = self._handler.check_recipient(self._account, path.address)
        if refusal is not None:
            log.info("session=%s client=%s account=%s refused rcpt=%s: %s", self.id,
                     self._peer_ip, self._account, path.address, refusal.text)
            self._reply(refusal)
            return True
        self._rcpts.append(path.address)
        self._rcpt_keys.add(key)
        self._reply(R.RCPT_OK)
        return True

    async def _cmd_data(self, arg: str) -> bool:
        if arg:
            self._reply(R.SYNTAX_PARAMS)
            return True
        if self._mail_from is None:
            self._reply(R.NEED_MAIL)
            return True
        if not self._rcpts:
            self._reply(R.NEED_RCPT)
            return True
        self._reply(R.START_DATA)
        await self._flush()
        data, refusal = await self._read_data()
        received_at = time.time()
        if refusal is not None:
            reason = "too_big" if refusal is R.TOO_BIG else "bad_data"
            metrics.MESSAGES_REJECTED.labels(reason=reason).inc()
            log.info("session=%s client=%s refused message: %s", self.id, self._peer_ip,
                     refusal.text)
            self._reply(refusal)
            self._reset_transaction()
            return True
        assert data is not None and self._account is not None
        submission = Submission(
            client=self._client(),
            envelope=Envelope(mail_from=self._mail_from, recipients=tuple(self._rcpts),
                              smtputf8=self._smtputf8, body_8bitmime=self._body_8bit),
            data=data, received_at=received_at,
        )
        self._reset_transaction()
        started = time.perf_counter()
        reply = await self._handler.submit(submission)
        metrics.ACCEPT_SECONDS.observe(time.perf_counter() - started)
        self._reply(reply)
        return True

    async def _read_data(self) -> tuple[bytes | None, Reply | None]:
        """Read up to <CRLF>.<CRLF>; the unstuffed message, or the reply refusing it."""
        limits = self._limits
        # The leading CRLF lets a message that is only "." end at once, and makes
        # "<CRLF>." the one pattern for both terminator and dot-stuffing.
        raw = bytearray(b"\r\n")
        raw += self._input.take_all()
        # Dot-stuffing makes the wire form a little longer than the message; the
        # exact size is checked after unstuffing, this bound only caps memory.
        cap = limits.max_message_size + 65536
        too_big = stuffed = False
        scan_from = 0
        # A deadline for the whole of DATA, not per chunk: data_timeout, plus the time
        # what has arrived needed at limits.min_data_rate. A client trickling bytes is
        # cut off, one sending a big message at a fair rate is not.
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = len(raw)
        # One scan, in C, for every "<CRLF>.": the first followed by CRLF ends the
        # message, any other starts a dot-stuffed line. Most messages have none.
        while True:
            hit = raw.find(_DOT_LINE, scan_from)
            if hit >= 0 and len(raw) >= hit + 5:
                if raw.startswith(b"\r\n", hit + 3):
                    end = hit
                    break
                stuffed = True
                scan_from = hit + 3
                continue
            # A "<CRLF>." whose next two bytes are still to come, or the end of what
            # came: the last two bytes may begin the pattern.
            scan_from = hit if hit >= 0 else max(0, len(raw) - 2)
            if len(raw) > cap:
                too_big = True
                del raw[:-4]
                scan_from = 0
            left = started + limits.data_timeout + received / limits.min_data_rate \
                - loop.time()
            if left <= 0:
                raise _Timeout
            chunk = await self._input.read_chunk(min(left, limits.data_timeout))
            received += len(chunk)
            raw += chunk
        self._input.push_front(raw[end + 5 :])
        if too_big:
            return None, R.TOO_BIG
        # One pass per check, each in C: these scans are most of what DATA costs the
        # loop for a big message, so none is repeated and the body is copied once.
        wire = bytes(memoryview(raw)[2 : end + 2])
        del raw
        body = _unstuffed(wire) if stuffed else wire
        if len(body) > limits.max_message_size:
            return None, R.TOO_BIG
        line_feeds = body.count(b"\n")
        if body.count(b"\r") != line_feeds or body.count(b"\r\n") != line_feeds:
            if limits.bare_line_endings == "reject":
                return None, R.BARE_LINE_ENDING
            # Every bare CR or LF ends a line, so a line after one may be dot-stuffed
            # too: end the lines first, then unstuff (the end of DATA was found on the
            # bytes as sent, and only <CRLF>.<CRLF> is one).
            body = _unstuffed(_BARE_LINE_END.sub(b"\r\n", wire))
            log.info("session=%s bare CR or LF in message data: taken for line ends",
                     self.id)
            if len(body) > limits.max_message_size:
                return None, R.TOO_BIG
        if limits.nul_bytes == "reject" and b"\x00" in body:
            return None, R.NUL_IN_DATA
        if len(body) > limits.max_line_length and not lines_within(body,
                                                                   limits.max_line_length):
            return None, R.data_line_too_long(limits.max_line_length)
        return body, None

    async def _cmd_rset(self, arg: str) -> bool:
        self._reset_transaction()
        self._reply(R.OK)
        return True

    async def _cmd_noop(self, arg: str) -> bool:
        self._reply(R.OK)
        return True

    async def _cmd_quit(self, arg: str) -> bool:
        self._reply(R.BYE)
        await self._flush()
        return False

    async def _cmd_vrfy(self, arg: str) -> bool:
        self._reply(R.VRFY)
        return True

    async def _cmd_help(self, arg: str) -> bool:
        self._reply(R.HELP)
        return True

    async def _cmd_not_implemented(self, arg: str) -> bool:
        self._reply(R.NOT_IMPLEMENTED)
        return True


_PROTOCOL_ERRORS = frozenset({500, 501, 502, 503, 504, 530, 535, 553, 555})

_COMMANDS = {
    "EHLO": Session._cmd_ehlo,
    "HELO": Session._cmd_helo,
    "STARTTLS": Session._cmd_starttls,
    "AUTH": Session._cmd_auth,
    "MAIL": Session._cmd_mail,
    "RCPT": Session._cmd_rcpt,
    "DATA": Session._cmd_data,
    "RSET": Session._cmd_rset,
    "NOOP": Session._cmd_noop,
    "QUIT": Session._cmd_quit,
    "VRFY": Session._cmd_vrfy,
    "HELP": Session._cmd_help,
    "EXPN": Session._cmd_not_implemented,
    "TURN": Session._cmd_not_implemented,
    "ETRN": Session._cmd_not_implemented,
}
