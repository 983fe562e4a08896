"""The outbound SMTP client: one connection to one remote host, several transactions on it.

The scheduler resolves a destination domain to `Destination`s (MX host + one address),
opens a `Connection` to one of them, sends `Transaction`s over it and gets back one
`RecipientResult` per recipient, in order. A host that cannot be used at all (refused,
timeout, 421 greeting, TLS required but unavailable, AUTH failure) raises `ConnectError`
from `Connection.open`; everything that happens inside a transaction is a result,
never an exception.

Built on asyncio streams rather than aiosmtplib. aiosmtplib's protocol pairs exactly
one reply with each command written under a lock and drops bytes that arrive while no
command is pending, so RFC 2920 PIPELINING (MAIL and every RCPT in one write, replies
read afterwards) cannot be done on top of it without reaching into its private state;
it also rewrites lone CR/LF in the message, and a relay must send the spooled bytes
exactly. The client side of SMTP is small enough to own.

Timeouts follow RFC 5321 4.5.3.2 with one knob: every reply waits `command_timeout`
(5 minutes by default, the RFC's MAIL/RCPT value), the reply to the final "." waits
twice that (the RFC's 10 minutes), and writing the message body is bounded by
`command_timeout` per flush (the RFC's 3-minute data block timeout, rounded up).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from smtprelay.delivery import dane
from smtprelay.delivery.dane import TLSARecord
from smtprelay.delivery.model import Destination, RecipientResult, Transaction, Verdict
from smtprelay.infra.logs import escape_controls

log = logging.getLogger("smtprelay.delivery.client")

# Reply lines longer than this are a broken or hostile server (RFC 5321 4.5.3.1.5 says
# 512 octets; real servers exceed it, so be generous).
_LINE_LIMIT = 64 * 1024
_MAX_REPLY_LINES = 1000
_QUIT_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 1.0
# A retry hint is advice; one day is already longer than any sane greylisting window
# and keeps a broken server from parking mail for months.
_MAX_RETRY_HINT = 86400.0

# RFC 3463 enhanced status code at the start of the reply text (RFC 2034).
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
# "try again in 5 minutes", "retry in 300 seconds", "greylisted for 60s", "wait 2 min".
_RETRY_HINT = re.compile(
    r"(?:try|retry|again|wait|later|greylist\w*|graylist\w*|resend)\D{0,30}?"
    r"(\d{1,6}(?:\.\d+)?)\s*(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class TLSPolicy(StrEnum):
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, unverified; clear otherwise
    # Never send in clear, defer instead; the certificate is not checked.
    REQUIRE_ENCRYPTED = "require_encrypted"
    # As REQUIRE_ENCRYPTED, and the certificate must chain to a trusted CA and name the
    # host connected to (the MX host name, also sent as SNI): RFC 8461's rule.
    REQUIRE_VERIFIED = "require_verified"
    NONE = "none"  # never STARTTLS (tests, capture, broken peers)
    REQUIRE = "require_encrypted"  # the configuration's older name: an alias

    @classmethod
    def _missing_(cls, value: object) -> TLSPolicy | None:
        # "require" in a configuration meant, and means, require_encrypted.
        return cls.REQUIRE_ENCRYPTED if value == "require" else None

    @property
    def requires_tls(self) -> bool:
        return self in (TLSPolicy.REQUIRE_ENCRYPTED, TLSPolicy.REQUIRE_VERIFIED)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    helo: str  # our server.hostname, sent in EHLO
    port: int = 25
    tls: TLSPolicy = TLSPolicy.OPPORTUNISTIC
    implicit_tls: bool = False  # smarthost on 465
    # Opportunistic STARTTLS does not verify (RFC 7435): an unverified channel still
    # beats clear text, and MX certificates are too often self-signed or mismatched.
    verify_certificates: bool = False
    username: str | None = None  # smarthost AUTH (PLAIN/LOGIN), only over TLS
    password: str | None = None
    connect_timeout: float = 30.0
    command_timeout: float = 300.0  # RFC 5321 4.5.3.2 timeouts, one value for tests to shrink
    # Added: a CA bundle (PEM) for verify_certificates, for a smarthost with a private CA.
    ca_file: str | None = None
    # True: ca_file adds to the system's CAs (delivery.tls_ca_file for MX hosts) rather
    # than replacing them (smarthost.ca_file).
    ca_file_adds: bool = False
    # DANE (RFC 7672): the MX host's usable TLSA records, DNSSEC-validated. Non-empty:
    # TLS is mandatory and the certificate must match one of them (not a CA's word).
    tlsa: tuple[TLSARecord, ...] = ()

    @property
    def verifies(self) -> bool:
        """Whether the handshake itself checks the certificate (CA chain and name)."""
        if self.tlsa:
            return False  # the TLSA records decide, after the handshake
        return self.verify_certificates or self.tls is TLSPolicy.REQUIRE_VERIFIED

    @property
    def requires_tls(self) -> bool:
        return self.tls.requires_tls or bool(self.tlsa)
    # The local address connections leave from (an IP pool's, delivery.ip_pools); None:
    # the host's routing picks it. Part of the connection-cache key with the rest.
    source_address: str | None = None


# A diagnostic that already names its RFC 3464 type ("smtp; 550 ...", "x-dns; ...").
_TYPED = re.compile(r"^[A-Za-z][A-Za-z0-9-]*; ")


def without_reply(status: str, text: str) -> str:
    """The RFC 3464 Diagnostic-Code of a failure no server reply told us of: a
    connection refused or timed out, a TLS handshake that failed, a lost connection.

    Written as SES writes them, as an SMTP reply with the "smtp" type: the guide's
    DeliveryDelay example says "smtp; 421 4.4.1 Unable to connect to remote host" for a
    host it could not connect to. 421 (service not available, RFC 5321 4.2.3) for a
    temporary failure, 554 for a final one; the status is ours, the text our reason.
    The result's ``code`` stays None: nothing was heard (retry.delay_type reads that).
    Already typed text is kept.
    """
    if _TYPED.match(text):
        return text
    return f"smtp; {554 if status.startswith('5') else 421} {status} {text}"


class ConnectError(Exception):
    """Why a host could not be used at all; nothing was sent through it.

    A BOUNCED verdict (5xx greeting or EHLO+HELO refused) is final for this host only:
    like Postfix, the scheduler should still try the remaining MX hosts and apply the
    verdict only when this was the last one.
    """

    def __init__(self, verdict: Verdict, status: str, diagnostic: str, *,
                 code: int | None = None, remote_mta: str | None = None,
                 retry_after: float | None = None) -> None:
        if code is None:
            diagnostic = without_reply(status, diagnostic)
        super().__init__(diagnostic)
        self.verdict = verdict
        self.status = status
        self.diagnostic = diagnostic
        self.code = code
        self.remote_mta = remote_mta
        self.retry_after = retry_after
        # What went wrong with TLS, as an RFC 8460 result type ("certificate-expired",
        # "starttls-not-supported", "tlsa-invalid"...); None when TLS was not the reason.
        self.tls_failure: str | None = None
        self.sending_ip: str | None = None  # our address, when the connection got that far

    def with_tls_failure(self, failure: str) -> ConnectError:
        self.tls_failure = failure
        return self


@dataclass(frozen=True, slots=True)
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(line.strip() for line in self.lines).strip()

    @property
    def status(self) -> str:
        """The enhanced status code, or one derived from the reply code's class."""
        klass = self.code // 100
        match = _ENHANCED.match(self.text)
        if match is None or klass not in (2, 4, 5):
            return f"{klass if klass in (2, 4, 5) else 4}.0.0"
        # A class digit disagreeing with the reply code ("451 5.7.1") follows the reply
        # code, which is what every client acts on (RFC 3463 section 2: they MUST agree).
        return f"{klass}.{match.group(2)}.{match.group(3)}"

    @property
    def diagnostic(self) -> str:
        return f"smtp; {self.code} {self.text}".rstrip()

    @property
    def retry_after(self) -> float | None:
        if self.code // 100 != 4:
            return None
        return parse_retry_hint(self.text)


def parse_retry_hint(text: str) -> float | None:
    """Seconds to wait when a reply says so ("try again in 5 minutes"), else None."""
    match = _RETRY_HINT.search(text)
    if match is None:
        return None
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)[0].lower()]
    if seconds <= 0:
        return None
    return min(seconds, _MAX_RETRY_HINT)


def _verdict(reply: Reply) -> Verdict:
    klass = reply.code // 100
    if klass == 2:
        return Verdict.DELIVERED
    if klass == 5:
        return Verdict.BOUNCED
    return Verdict.DEFERRED  # 4xx, and anything nonsensical (1xx, 3xx) is not final


class _Broken(Exception):
    """The conversation cannot go on: lost connection, timeout, garbage or a 421."""

    def __init__(self, diagnostic: str, *, status: str = "4.4.2",
                 reply: Reply | None = None) -> None:
        super().__init__(diagnostic)
        self.diagnostic = diagnostic
        self.status = status
        self.reply = reply


class _HandshakeFailed(Exception):
    """STARTTLS was accepted but the TLS handshake did not complete, or its certificate
    is not the one the policy asks for."""

    def __init__(self, diagnostic: str, failure: str = "validation-failure") -> None:
        super().__init__(diagnostic)
        self.failure = failure  # RFC 8460 result type


def _certificate_failure(exc: ssl.SSLCertVerificationError) -> str:
    """RFC 8460's result type for OpenSSL's verification error."""
    code = exc.verify_code
    if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return "certificate-host-mismatch"
    if code in (9, 10):  # X509_V_ERR_CERT_NOT_YET_VALID, _CERT_HAS_EXPIRED
        return "certificate-expired"
    if code in (2, 18, 19, 20, 21):  # issuer unknown, self-signed, untrusted root...
        return "certificate-not-trusted"
    return "validation-failure"


@functools.lru_cache(maxsize=8)
def _client_context(verify: bool, ca_file: str | None,
                    ca_file_adds: bool = False) -> ssl.SSLContext:
    # Cached: loading the system CA store costs milliseconds per connection otherwise.
    if verify:
        if ca_file is not None and ca_file_adds:
            ctx = ssl.create_default_context()
            ctx.load_verify_locations(cafile=ca_file)
            return ctx
        return ssl.create_default_context(cafile=ca_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _has_line_break(value: str) -> bool:
    # An address with CR/LF would inject commands into the session.
    return "\r" in value or "\n" in value or "\0" in value


class Connection:
    """An open SMTP session to one host, greeted, EHLO'd and secured as the policy says."""

    def __init__(self, destination: Destination, settings: ClientSettings) -> None:
        self.destination = destination
        self.settings = settings
        self.remote_mta = f"{destination.host} [{destination.address}]"
        self.extensions: dict[str, str] = {}  # EHLO keyword (upper case) -> parameters
        self.esmtp = False
        # True when STARTTLS failed and we reconnected in clear (opportunistic policy).
        self.tls_fallback = False
        self.transactions = 0
        self.opened_at = time.monotonic()
        # Set once the message body started going out in the last send(): a session
        # that broke before that can be retried elsewhere without sending twice.
        self.body_started = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._broken = False
        self._closed = False
        self._busy = False
        self._local_ip: str | None = None

    # ----------------------------------------------------------------- opening

    @classmethod
    async def open(cls, destination: Destination, settings: ClientSettings) -> Connection:
        """Connect, read the greeting, EHLO (HELO fallback), STARTTLS per policy, AUTH.

        Raises ConnectError when the host cannot be used; the caller moves on to the
        next address or MX, or applies the error's verdict to the whole transaction.
        """
        conn = cls(destination, settings)
        try:
            await conn._establish(starttls=settings.tls is not TLSPolicy.NONE)
            return conn
        except _HandshakeFailed as exc:
            conn._abort()
            if settings.requires_tls:
                error = ConnectError(Verdict.DEFERRED, "4.7.5", str(exc),
                                     remote_mta=conn.remote_mta)
                error.sending_ip = conn.local_ip
                raise error.with_tls_failure(exc.failure) from None
            # Opportunistic: a server that offers STARTTLS and then botches it would
            # otherwise never get mail; Postfix retries such a host in clear as well.
            # The failed attempt consumed the session, so start a new one.
            log.warning("%s; retrying in clear", exc)
        except ConnectError as exc:
            conn._abort()
            exc.sending_ip = exc.sending_ip or conn.local_ip
            raise
        except BaseException:
            conn._abort()
            raise
        conn = cls(destination, settings)
        conn.tls_fallback = True
        try:
            await conn._establish(starttls=False)
        except BaseException:
            conn._abort()
            raise
        return conn

    async def _establish(self, *, starttls: bool) -> None:
        settings = self.settings
        implicit = settings.implicit_tls
        ctx = _client_context(settings.verifies, settings.ca_file, settings.ca_file_adds)
        try:
            async with asyncio.timeout(settings.connect_timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.destination.address, settings.port, limit=_LINE_LIMIT,
                    ssl=ctx if implicit else None,
                    server_hostname=self._sni if implicit else None,
                    local_addr=(settings.source_address, 0)
                    if settings.source_address is not None else None)
        # TimeoutError and SSLError are OSErrors too: the order matters.
        except TimeoutError:
            raise self._connect_error("4.4.1", "timed out") from None
        except ssl.SSLError as exc:
            failure = (_certificate_failure(exc)
                       if isinstance(exc, ssl.SSLCertVerificationError)
                       else "validation-failure")
            raise ConnectError(Verdict.DEFERRED, "4.7.5",
                               f"TLS handshake with {self.remote_mta} failed: {exc}",
                               remote_mta=self.remote_mta).with_tls_failure(failure) from None
        except OSError as exc:
            # asyncio's "Connect call failed (...)" hides the reason in errno.
            why = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
            raise self._connect_error("4.4.1", why) from None
        _ = self.local_ip  # known from here on, whatever happens to the session

        try:
            greeting = await self._read_reply("receiving the initial server greeting")
            if greeting.code // 100 != 2:
                raise self._refused(greeting)
            await self._hello()
            if starttls and not implicit:
                await self._starttls()
            if settings.username is not None:
                await self._authenticate(settings.username, settings.password or "")
        except _Broken as exc:
            if exc.reply is not None:
                raise self._refused(exc.reply) from None
            raise ConnectError(Verdict.DEFERRED, exc.status, exc.diagnostic,
                               remote_mta=self.remote_mta) from None

    @property
    def _sni(self) -> str:
        # With verification this is also the name checked against the certificate; an
        # IP literal is checked against IP SANs and sends no SNI (RFC 6066 section 3).
        return self.destination.host or self.destination.address

    def _connect_error(self, status: str, why: str) -> ConnectError:
        return ConnectError(
            Verdict.DEFERRED, status,
            f"connect to {self.remote_mta}:{self.settings.port}: {why}",
            remote_mta=self.remote_mta)

    def _refused(self, reply: Reply) -> ConnectError:
        verdict = _verdict(reply)
        if verdict is Verdict.DELIVERED:  # e.g. a 2xx where a 334 was due
            verdict = Verdict.DEFERRED
        status = reply.status
        if verdict is Verdict.DEFERRED and not status.startswith("4"):
            status = "4" + status[1:]
        return ConnectError(verdict, status, reply.diagnostic, code=reply.code,
                            remote_mta=self.remote_mta, retry_after=reply.retry_after)

    async def _hello(self) -> None:
        reply = await self._command(f"EHLO {self.settings.helo}", "sending EHLO")
        if reply.code // 100 == 2:
            self.esmtp = True
            self.extensions = self._parse_extensions(reply.lines[1:])
            return
        if reply.code // 100 != 5:
            raise self._refused(reply)
        # RFC 5321 3.2: a server that does not know EHLO answers 5xx; fall back to HELO.
        reply = await self._command(f"HELO {self.settings.helo}", "sending HELO")
        if reply.code // 100 != 2:
            raise self._refused(reply)
        self.esmtp = False
        self.extensions = {}

    @staticmethod
    def _parse_extensions(lines: Sequence[str]) -> dict[str, str]:
        extensions: dict[str, str] = {}
        for line in lines:
            keyword, _, params = line.strip().partition(" ")
            # Old servers also say "AUTH=LOGIN PLAIN" (pre-RFC 2554 syntax).
            if keyword.upper().startswith("AUTH="):
                keyword, params = "AUTH", keyword[5:] + " " + params
            keyword = keyword.upper()
            if keyword:
                extensions[keyword] = (extensions.get(keyword, "") + " " + params).strip()
        return extensions

    async def _starttls(self) -> None:
        require = self.settings.requires_tls
        if "STARTTLS" not in self.extensions:
            if require:
                # 4.7.4 "security features not supported" (RFC 3463), as Postfix says it.
                raise ConnectError(Verdict.DEFERRED, "4.7.4",
                                   f"TLS is required, but was not offered by {self.remote_mta}",
                                   remote_mta=self.remote_mta
                                   ).with_tls_failure("starttls-not-supported")
            return
        reply = await self._command("STARTTLS", "sending STARTTLS")
        if reply.code != 220:
            if require:
                raise ConnectError(Verdict.DEFERRED, "4.7.5", reply.diagnostic,
                                   code=reply.code, remote_mta=self.remote_mta,
                                   retry_after=reply.retry_after
                                   ).with_tls_failure("starttls-not-supported")
            # RFC 3207 4: after a refused STARTTLS the session goes on as before.
            log.info("%s refused STARTTLS (%s); continuing in clear", self.remote_mta,
                     reply.diagnostic)
            return
        assert self._reader is not None and self._writer is not None
        # Anything the server sent after its 220 arrived in clear text and must not be
        # read as part of the TLS session (RFC 3207 section 4.2; the "STARTTLS command
        # injection" class of bugs, CVE-2011-0411). asyncio has no public way to ask.
        if getattr(self._reader, "_buffer", b""):
            raise _HandshakeFailed(
                f"{self.remote_mta} sent data after its STARTTLS reply; not using TLS")
        settings = self.settings
        ctx = _client_context(settings.verifies, settings.ca_file, settings.ca_file_adds)
        try:
            async with asyncio.timeout(settings.command_timeout):
                await self._writer.start_tls(ctx, server_hostname=self._sni)
        except TimeoutError:
            raise _HandshakeFailed(f"TLS handshake with {self.remote_mta} timed out") from None
        except ssl.SSLCertVerificationError as exc:
            raise _HandshakeFailed(
                f"TLS handshake with {self.remote_mta} failed: certificate verify failed "
                f"for {self._sni}: {exc.verify_message or exc}",
                _certificate_failure(exc)) from None
        except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
            raise _HandshakeFailed(
                f"TLS handshake with {self.remote_mta} failed: {str(exc) or type(exc).__name__}"
            ) from None
        if settings.tlsa:
            ssl_object = self._writer.get_extra_info("ssl_object")
            problem = dane.check(dane.peer_chain(ssl_object), settings.tlsa,
                                 self.destination.host)
            if problem is not None:
                raise _HandshakeFailed(f"DANE: certificate of {self.remote_mta} does not "
                                       f"match its TLSA records: {problem}", "tlsa-invalid")
        # RFC 3207 4.2: forget what was learnt in clear and ask again.
        await self._hello()

    async def _authenticate(self, username: str, password: str) -> None:
        if self.tls_version is None:
            # Credentials in clear are never acceptable, whatever the TLS policy says.
            raise ConnectError(Verdict.DEFERRED, "4.7.0",
                               f"not sending AUTH credentials to {self.remote_mta} "
                               "without TLS", remote_mta=self.remote_mta)
        offered = self.extensions.get("AUTH", "").upper().split()
        user = username.encode()
        secret = password.encode()
        if "PLAIN" in offered:
            # RFC 4616 with the initial response (RFC 4954 4): one round trip.
            token = base64.b64encode(b"\0" + user + b"\0" + secret).decode()
            reply = await self._command(f"AUTH PLAIN {token}", "sending AUTH", secret=True)
        elif "LOGIN" in offered:
            reply = await self._command("AUTH LOGIN", "sending AUTH")
            if reply.code == 334:
                reply = await self._command(base64.b64encode(user).decode(),
                                            "sending AUTH", secret=True)
            if reply.code == 334:
                reply = await self._command(base64.b64encode(secret).decode(),
                                            "sending AUTH", secret=True)
        else:
            raise ConnectError(Verdict.DEFERRED, "4.7.0",
                               f"{self.remote_mta} offers no AUTH mechanism we support "
                               f"(PLAIN, LOGIN); it offers: {' '.join(offered) or 'none'}",
                               remote_mta=self.remote_mta)
        if reply.code == 334:  # still asking: give up on this exchange (RFC 4954 4)
            reply = await self._command("*", "cancelling AUTH")
        if reply.code // 100 != 2:
            # A wrong smarthost password is the operator's to fix, not the recipients'
            # fault: always DEFERRED so mail waits in the queue meanwhile.
            error = self._refused(reply)
            error.verdict = Verdict.DEFERRED
            error.status = "4" + error.status[1:]
            raise error

    # ------------------------------------------------------------------- state

    @property
    def reusable(self) -> bool:
        """Connected, idle and in a clean state (after RSET when a transaction failed)."""
        return (not self._broken and not self._closed and not self._busy
                and self._writer is not None and not self._writer.is_closing()
                and self._reader is not None and not self._reader.at_eof())

    @property
    def local_ip(self) -> str | None:
        """Our address on this connection (getsockname), for ses:outgoing-ip; kept
        once known, so a result made after the connection broke still has it."""
        if self._local_ip is None and self._writer is not None:
            sockname = self._writer.get_extra_info("sockname")
            if isinstance(sockname, tuple) and sockname and isinstance(sockname[0], str):
                self._local_ip = sockname[0]
        return self._local_ip

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version ("TLSv1.3"...), None in clear."""
        if self._writer is None:
            return None
        ssl_object = self._writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return None
        version: str | None = ssl_object.version()
        return version

    # ---------------------------------------------------------------- sending

    async def send(self, txn: Transaction) -> list[RecipientResult]:
        """One transaction; one result per recipient, in order. Never raises for SMTP.

        After it, `reusable` says whether the next transaction may use this session.
        """
        results: list[RecipientResult | None] = [None] * len(txn.recipients)
        if not txn.recipients:
            return []
        if self._busy:
            raise RuntimeError("Connection.send is not reentrant")
        if not self.reusable:
            return self._fill(results, txn.recipients, Verdict.DEFERRED, None, "4.4.2",
                              f"connection to {self.remote_mta} is no longer usable")
        refused = self._precheck(txn, results)
        if refused is not None:
            return refused
        self._busy = True
        self.body_started = False
        try:
            clean = await self._transaction(txn, results)
            if not clean:
                await self._rset()
            self.transactions += 1
        except _Broken as exc:
            self._broken = True
            self._abort()
            if exc.reply is not None:  # a 421: the server told us why it is leaving
                r = exc.reply
                self._fill(results, txn.recipients, Verdict.DEFERRED, r.code,
                           "4" + r.status[1:], r.diagnostic, r.retry_after)
            else:
                self._fill(results, txn.recipients, Verdict.DEFERRED, None, exc.status,
                           exc.diagnostic)
        except BaseException:  # cancelled: the session is in an unknown state
            self._broken = True
            self._abort()
            raise
        finally:
            self._busy = False
        return [r for r in results if r is not None]

    def _precheck(self, txn: Transaction,
                  results: list[RecipientResult | None]) -> list[RecipientResult] | None:
        """Refusals decided from the EHLO reply alone; nothing is sent for them."""
        if txn.smtputf8 and "SMTPUTF8" not in self.extensions:
            # RFC 6531 3.4: no downgrade is defined; the message cannot go to this host.
            return self._fill(results, txn.recipients, Verdict.BOUNCED, None, "5.6.7",
                              f"{self.remote_mta} does not support SMTPUTF8, which the "
                              "message needs (RFC 6531)")
        if txn.body_8bitmime and "8BITMIME" not in self.extensions:
            # RFC 6152 3: convert to 7 bit or bounce. We do not convert (yet).
            return self._fill(results, txn.recipients, Verdict.BOUNCED, None, "5.6.3",
                              f"{self.remote_mta} does not support 8BITMIME, and the "
                              "message has 8-bit content; conversion is not implemented")
        size_param = self.extensions.get("SIZE", "")
        if size_param.isdigit() and int(size_param) > 0 and txn.size > int(size_param):
            # RFC 1870 6: a message over the declared limit must not be sent.
            return self._fill(results, txn.recipients, Verdict.BOUNCED, None, "5.3.4",
                              f"message size {txn.size} exceeds the fixed maximum "
                              f"message size of {size_param} of {self.remote_mta}")
        if _has_line_break(txn.mail_from):
            return self._fill(results, txn.recipients, Verdict.BOUNCED, None, "5.1.7",
                              "sender address contains a line break")
        for i, rcpt in enumerate(txn.recipients):
            if _has_line_break(rcpt):
                results[i] = self._result(rcpt, Verdict.BOUNCED, None, "5.1.3",
                                          "recipient address contains a line break")
        if all(r is not None for r in results):
            return [r for r in results if r is not None]
        return None

    async def _transaction(self, txn: Transaction,
                           results: list[RecipientResult | None]) -> bool:
        """One MAIL/RCPT/DATA exchange. Returns True when it ended cleanly (no RSET due)."""
        pending = [i for i, r in enumerate(results) if r is None]
        params = ""
        if "SIZE" in self.extensions:
            params += f" SIZE={txn.size}"
        if txn.body_8bitmime and "8BITMIME" in self.extensions:
            params += " BODY=8BITMIME"
        if txn.smtputf8 and "SMTPUTF8" in self.extensions:
            params += " SMTPUTF8"
        mail = f"MAIL FROM:<{txn.mail_from}>{params}"
        rcpts = [f"RCPT TO:<{txn.recipients[i]}>" for i in pending]

        # Each refusal is recorded as soon as it is read, so that a connection lost
        # later only turns the recipients still without an answer into DEFERRED.
        pipelining = "PIPELINING" in self.extensions
        if pipelining:
            # RFC 2920: MAIL, every RCPT and DATA (allowed as the last command of a
            # group) in one write, then every reply in order: one round trip before
            # the body instead of two. With no recipient accepted the server refuses
            # DATA (503/554, RFC 2920 3.1); one that says 354 anyway gets an empty
            # message ended at once, and the transaction is reset.
            await self._write("\r\n".join([mail, *rcpts, "DATA"]) + "\r\n",
                              "sending MAIL FROM")
            mail_reply = await self._read_reply("sending MAIL FROM")
        else:
            mail_reply = await self._command(mail, "sending MAIL FROM")
        self._check_closing(mail_reply)
        mail_ok = mail_reply.code // 100 == 2
        if not mail_ok:
            self._apply(results, pending, txn, mail_reply)
            if not pipelining:
                return False

        accepted: list[int] = []
        for i, line in zip(pending, rcpts, strict=True):
            if pipelining:
                reply = await self._read_reply("sending RCPT TO")
            else:
                reply = await self._command(line, "sending RCPT TO")
            self._check_closing(reply)
            if not mail_ok:
                continue  # the sender was refused: these are 503s, and moot
            if reply.code // 100 == 2:
                accepted.append(i)
            else:
                self._apply(results, [i], txn, reply)

        if pipelining:
            data_reply = await self._read_reply("sending DATA")
            self._check_closing(data_reply)
            if not accepted:
                if data_reply.code == 354:
                    await self._write_bytes(b".\r\n", "ending an empty message")
                    self._check_closing(await self._read_reply("ending an empty message"))
                return False
        else:
            if not accepted:
                return False
            data_reply = await self._command("DATA", "sending DATA")
            self._check_closing(data_reply)
        # The transaction is now under way: if the connection dies from here on, the
        # accepted recipients are DEFERRED with the error (the caller's _Broken path).
        if data_reply.code != 354:
            self._apply(results, accepted, txn, data_reply)
            return False
        self.body_started = True
        await self._write_bytes(txn.wire_pieces(), "sending message body")
        # RFC 5321 4.5.3.2.6: the server may work long on the message before the reply.
        final = await self._read_reply(
            "sending end of data -- message may be sent more than once",
            patience=self.settings.command_timeout * 2)
        self._check_closing(final)
        self._apply(results, accepted, txn, final)
        return final.code // 100 == 2

    async def _rset(self) -> None:
        # Leave the session clean for the next transaction (RFC 5321 4.1.1.5); a server
        # that cannot even RSET is not worth reusing.
        try:
            reply = await self._command("RSET", "sending RSET")
        except _Broken:
            self._broken = True
            self._abort()
            return
        if reply.code // 100 != 2:
            self._broken = True
            self._abort()

    @staticmethod
    def _check_closing(reply: Reply) -> None:
        # 421 may come at any time (RFC 5321 3.8): the server is going away.
        if reply.code == 421:
            raise _Broken(reply.diagnostic, reply=reply)

    def _apply(self, results: list[RecipientResult | None], indices: Sequence[int],
               txn: Transaction, reply: Reply) -> None:
        verdict = _verdict(reply)
        status = reply.status
        retry_after = reply.retry_after if verdict is Verdict.DEFERRED else None
        for i in indices:
            results[i] = self._result(txn.recipients[i], verdict, reply.code, status,
                                      reply.diagnostic, retry_after)

    def _result(self, rcpt: str, verdict: Verdict, code: int | None, status: str,
                diagnostic: str, retry_after: float | None = None) -> RecipientResult:
        if code is None:
            diagnostic = without_reply(status, diagnostic)
        return RecipientResult(recipient=rcpt, verdict=verdict, code=code, status=status,
                               diagnostic=diagnostic, remote_mta=self.remote_mta,
                               retry_after=retry_after, outgoing_ip=self.local_ip)

    def _fill(self, results: list[RecipientResult | None], names: Sequence[str],
              verdict: Verdict, code: int | None, status: str, diagnostic: str,
              retry_after: float | None = None) -> list[RecipientResult]:
        """Give every recipient without a result this one; returns the full list."""
        for i, r in enumerate(results):
            if r is None:
                results[i] = self._result(names[i], verdict, code, status, diagnostic,
                                          retry_after)
        return [r for r in results if r is not None]

    # -------------------------------------------------------------------- wire

    async def _command(self, line: str, phase: str, *, secret: bool = False) -> Reply:
        await self._write(line + "\r\n", phase)
        if not secret:
            log.debug("%s << %s", self.remote_mta, line)
        return await self._read_reply(phase)

    async def _write(self, text: str, phase: str) -> None:
        # UTF-8 is only legal in addresses with SMTPUTF8; the pre-checks see to that.
        await self._write_bytes(text.encode("utf-8"), phase)

    async def _write_bytes(self, data: bytes | tuple[bytes, ...], phase: str) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise _Broken(f"lost connection with {self.remote_mta} while {phase}")
        try:
            if isinstance(data, tuple):
                writer.writelines(data)
            else:
                writer.write(data)
            async with asyncio.timeout(self.settings.command_timeout):
                await writer.drain()
        except TimeoutError:
            raise _Broken(
                f"conversation with {self.remote_mta} timed out while {phase}") from None
        except OSError as exc:
            raise _Broken(
                f"lost connection with {self.remote_mta} while {phase}: {exc}") from None

    async def _read_reply(self, phase: str, *, patience: float | None = None) -> Reply:
        reader = self._reader
        if reader is None:
            raise _Broken(f"lost connection with {self.remote_mta} while {phase}")
        code: int | None = None
        lines: list[str] = []
        try:
            async with asyncio.timeout(patience or self.settings.command_timeout):
                while True:
                    raw = await reader.readline()
                    if not raw.endswith(b"\n"):  # EOF, possibly mid-line
                        raise _Broken(
                            f"lost connection with {self.remote_mta} while {phase}")
                    line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                    head = line[:3]
                    sep = line[3:4]
                    if (not head.isdigit() or len(head) != 3 or sep not in ("", " ", "-")
                            or (code is not None and int(head) != code)
                            or len(lines) >= _MAX_REPLY_LINES):
                        raise _Broken(f"malformed reply from {self.remote_mta} while "
                                      f"{phase}: {line[:100]!r}", status="4.5.0")
                    code = int(head)
                    # The remote's words reach logs, DSNs, the queue's listing on a
                    # terminal: control characters go in as visible escapes.
                    lines.append(escape_controls(line[4:]))
                    if sep != "-":
                        break
        except TimeoutError:
            raise _Broken(
                f"conversation with {self.remote_mta} timed out while {phase}") from None
        except ValueError:  # StreamReader: a line over the limit
            raise _Broken(f"over-long reply line from {self.remote_mta} while {phase}",
                          status="4.5.0") from None
        except OSError as exc:
            raise _Broken(
                f"lost connection with {self.remote_mta} while {phase}: {exc}") from None
        reply = Reply(code, tuple(lines))
        log.debug("%s >> %d %s", self.remote_mta, reply.code, reply.text)
        return reply

    # ---------------------------------------------------------------- closing

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()

    async def close(self) -> None:
        """QUIT politely (briefly), then close. Never raises, except for cancellation."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is None:
            return
        try:
            if not self._broken and not writer.is_closing():
                async with asyncio.timeout(min(_QUIT_TIMEOUT, self.settings.command_timeout)):
                    writer.write(b"QUIT\r\n")
                    await writer.drain()
                    with contextlib.suppress(_Broken):
                        await self._read_reply("sending QUIT")
        except (OSError, _Broken):  # TimeoutError is an OSError
            pass
        except BaseException:
            writer.transport.abort()
            raise
        try:
            writer.close()
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await writer.wait_closed()
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()
        except BaseException:
            writer.transport.abort()
            raise
