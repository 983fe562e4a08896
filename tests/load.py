"""SMTP load that keeps count: sessions sending messages back to back, each message with
a token of its own, recording which ones the relay acknowledged and with what id.

Used by tests/e2e/test_crash.py (one kill -9 under load) and by the reliability scripts
under bench/reliability/ (many kills; a full disk), which reconcile what was
acknowledged against what a sink received. A token is in the Subject and on the
body's only line, so a copy found anywhere can be traced back to its attempt.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import threading
import time
from dataclasses import dataclass, field

from tests.support import client_context, message

# The relay's 250 names the id it queued the message under.
ACCEPTED = re.compile(rb"2\.0\.0 Ok ([0-9a-f]{12}-[0-9a-f]{16})")
# Any session stops after this many messages: every load loop has a bound.
MAX_MESSAGES_PER_SESSION = 100_000


@dataclass(frozen=True, slots=True)
class Refusal:
    token: str
    code: int
    reply: bytes


@dataclass
class Load:
    """`sessions` threads, each one connection (STARTTLS, AUTH) sending messages back to
    back until `stop` is set, the relay goes away, or the bound is reached.

    A reply other than a 250 naming a queue id is a `refusal`: it ends the session
    unless `keep_going` (a full disk answers 452 and the load must go on through it).
    Every token whose final dot was sent is in `attempted`; the ones neither
    acknowledged nor refused are in doubt: the relay died before answering.
    """

    port: int
    username: str
    password: str
    sessions: int = 20
    prefix: str = "crash-token"
    recipient: str = "someone@example.net"
    keep_going: bool = False
    # A pause after a refusal when keep_going, so a full disk is not hammered in a loop.
    refusal_pause: float = 0.05
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    acked: dict[str, str] = field(default_factory=dict)  # message id -> token
    attempted: list[str] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(self.sessions)]

    def start(self, login_timeout: float = 60) -> None:
        """Start every session and wait until each has logged in (or failed to)."""
        for thread in self.threads:
            thread.start()
        for _ in range(self.sessions):
            if not self.ready.acquire(timeout=login_timeout):
                raise TimeoutError(f"sessions not logged in after {login_timeout}s")

    def finish(self, timeout: float = 20) -> None:
        """Stop the sessions and wait for them; AssertionError if one is stuck."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            assert not thread.is_alive(), "a load thread is stuck"

    @property
    def in_doubt(self) -> set[str]:
        with self._lock:
            answered = set(self.acked.values()) | {r.token for r in self.refusals}
            return set(self.attempted) - answered

    def _run(self, n: int) -> None:
        try:
            smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
            smtp.starttls(context=client_context())
            smtp.login(self.username, self.password)
        except Exception as exc:
            self.errors.append(f"session {n} setup: {exc!r}")
            self.ready.release()
            return
        self.ready.release()
        try:
            for i in range(MAX_MESSAGES_PER_SESSION):
                if self.stop.is_set():
                    break
                token = f"{self.prefix}-{n}-{i}"
                with self._lock:
                    self.attempts += 1
                code, reply = self._send(smtp, token)
                match = ACCEPTED.fullmatch(reply)
                if code == 250 and match is not None:
                    with self._lock:
                        self.acked[match.group(1).decode()] = token
                    continue
                with self._lock:
                    self.refusals.append(Refusal(token, code, reply))
                if not self.keep_going:
                    self.errors.append(f"session {n}: {code} {reply!r}")
                    break
                smtp.rset()
                # Interruptible, unlike a sleep: a stop ends the pause at once.
                self.stop.wait(self.refusal_pause)
        except (smtplib.SMTPException, OSError):
            pass  # the relay died under us: a crash run's point
        finally:
            with contextlib.suppress(Exception):
                smtp.close()

    def _send(self, smtp: smtplib.SMTP, token: str) -> tuple[int, bytes]:
        """One transaction: the first reply that is not a success, or the final one."""
        code, reply = smtp.mail("app@example.com")
        if code != 250:
            return code, reply
        code, reply = smtp.rcpt(self.recipient)
        if code != 250:
            return code, reply
        with self._lock:
            # Counted before the dot is sent: from here the relay may have it.
            self.attempted.append(token)
        try:
            return smtp.data(message(subject=token, body=f"{token}\r\n"))
        except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
            error = exc.smtp_error
            return exc.smtp_code, error if isinstance(error, bytes) else error.encode()
