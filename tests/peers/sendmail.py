"""A private Sendmail 8.17 relaying through smtprelay: the recipe of docs/smarthost.md,
run from the unpacked Debian package (tests/peers/unpacked.py).

sendmail.cf is built with m4 from the recipe's sendmail.mc lines (SMART_HOST,
RELAY/ESMTP_MAILER_ARGS with the relay's port, AUTH options, the CA, the authinfo and
access maps) plus paths of the instance's own. The relay is `[relay.test]`, found
through the private hosts file. The access map's `TLS_Srv:relay.test VERIFY:128+CN:...`
makes Sendmail refuse to send unless the relay's certificate verifies against the CA
file and names relay.test. Sendmail 8.17 has no implicit-TLS (port 465) client, so only
587 with STARTTLS is covered.

What Sendmail needs beyond the recipe to run here:
- Its files on a path with no group- or world-writable directory in it. Sendmail
  checks every directory up to / and, finding /tmp, ignores the authinfo map as
  "World writable directory" (it then connects, does STARTTLS, and never tries AUTH,
  which the relay answers with 530 5.7.0 Authentication required; it also logs the CA
  file as unsafe, though it still used it in that test). So
  the instance's directory is mounted at ETC (an empty directory of the unpacked
  package under PEERS_DIR, root-owned all the way up) in Sendmail's namespace, and
  the configuration names files there.
- A service.switch with `hosts files` (no DNS in tests), `WorkAroundBrokenAAAA`
  (Sendmail asks for relay.test's IPv6 address first; the resolver, with nothing
  listening, fails temporarily instead of saying "no such record"), and a qualified
  name for this machine in the hosts file (else Sendmail sleeps 60 s on "My
  unqualified host name (...) unknown; sleeping for retry").
- A syslog: Sendmail logs only there, so /dev/log in its namespace is a socket of the
  instance that a thread reads into `log()` (tests/peers/unpacked.py).

Mail is submitted as the recipe's check does, `sendmail -v -odi -f FROM RCPT`: the
delivery is attempted before the command returns, and `-v` prints the SMTP dialogue,
kept in `transcript`.

    with smarthost_client(relay.submission_port, user, password, ca_file) as sendmail:
        sendmail.send("app@example.com", ["a@example.net"], data)
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.peers.unpacked import PEERS_DIR, RELAY_NAME, Namespace, PeerError, need_unpacked

SENDMAIL = "usr/libexec/sendmail/sendmail"
MAKEMAP = "usr/libexec/sendmail/makemap"
CF_DIR = PEERS_DIR / "usr/share/sendmail/cf"
# Where the instance's directory is mounted in Sendmail's namespace (see above).
ETC = PEERS_DIR / "etc/mail"
M4 = shutil.which("m4") or "/usr/bin/m4"
CLIENT_NAME = "sendmail-client.test"
# What authinfo can carry without quoting (see docs/smarthost.md).
_SAFE = re.compile(r"[A-Za-z0-9_.@+-]+")

_MC = """\
divert(-1)
divert(0)dnl
include(`{cf_dir}/m4/cf.m4')dnl
VERSIONID(`smtprelay test peer')dnl
OSTYPE(`linux')dnl
dnl The instance's paths (all under {etc}) and what running here needs:
define(`confDOMAIN_NAME', `{client_name}')dnl
define(`QUEUE_DIR', `{etc}/queue')dnl
define(`STATUS_FILE', `{etc}/statistics')dnl
define(`ALIAS_FILE', `{etc}/aliases')dnl
define(`confPID_FILE', `{etc}/sendmail.pid')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confSERVICE_SWITCH_FILE', `{etc}/service.switch')dnl
define(`confBIND_OPTS', `WorkAroundBrokenAAAA')dnl
define(`confTO_CONNECT', `20s')dnl
define(`confTO_INITIAL', `20s')dnl
dnl 10 and up logs the AUTH mechanism used; 14 the certificate's subject and issuer.
define(`confLOG_LEVEL', `14')dnl
dnl The recipe (docs/smarthost.md), with the relay's port and the test CA:
define(`SMART_HOST', `[{relay_name}]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {port}')dnl
define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl
define(`confAUTH_OPTIONS', `A p')dnl
define(`confCACERT_PATH', `{etc}/certs')dnl
define(`confCACERT', `{etc}/ca.pem')dnl
FEATURE(`authinfo', `hash -o {etc}/authinfo.db')dnl
FEATURE(`access_db', `hash -T<TMPF> -o {etc}/access.db')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""


class _Syslog:
    """A datagram socket Sendmail's syslog(3) writes to; a thread keeps the lines."""

    def __init__(self, path: Path) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        path.chmod(0o666)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="sendmail-syslog",
                                        daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            # "<22>Dec  5 20:37:36 sendmail[30823]: text": keep the text after the tag.
            line = data.rstrip(b"\0\n").decode(errors="replace")
            with self._changed:
                self.lines.append(re.sub(r"^<\d+>", "", line))
                self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> str | None:
        """The first line matching `pattern`, waiting up to `timeout` s; None if none."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if pattern.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


class SmarthostClient:
    """One private Sendmail: `start()` builds sendmail.cf and its maps, `stop()` removes
    it all."""

    def __init__(self, relay_port: int, username: str, password: str, ca_file: Path, *,
                 mechanism: Literal["PLAIN", "LOGIN"] = "PLAIN") -> None:
        self.sendmail = str(need_unpacked(SENDMAIL))
        self.makemap = str(need_unpacked(MAKEMAP))
        if not ETC.is_dir():
            raise PeerError(f"{ETC} is missing: the unpacked sendmail-bin has it")
        for what, value in (("username", username), ("password", password)):
            if not _SAFE.fullmatch(value):
                raise ValueError(f"{what} {value!r} would need quoting in authinfo")
        self.mechanism = mechanism
        self.root = Path(tempfile.mkdtemp(prefix="smtprelay-sendmail-", dir="/tmp"))
        self.root.chmod(0o755)
        self.files = self.root / "etc"   # ETC inside the namespace
        self.namespace = Namespace(
            self.root / "ns", ["smmta", "smmsp"],
            {RELAY_NAME: "127.0.0.1",
             f"{CLIENT_NAME} {socket.gethostname()}": "127.0.0.1"},
            binds={ETC: self.files}, dev_log=self.root / "log.sock")
        self.config_file = ETC / "sendmail.cf"
        self.transcript = ""
        self._syslog: _Syslog | None = None
        self._ca_file = ca_file
        self._mc = _MC.format(cf_dir=CF_DIR, etc=ETC, client_name=CLIENT_NAME,
                              relay_name=RELAY_NAME, port=relay_port)
        # The recipe lists "M:PLAIN LOGIN"; one mechanism here, so each is really used.
        self._maps = {
            "authinfo": (f'AuthInfo:{RELAY_NAME} "U:{username}" "I:{username}" '
                         f'"P:{password}" "M:{mechanism}"\n'),
            "access": f"TLS_Srv:{RELAY_NAME}    VERIFY:128+CN:{RELAY_NAME}\n",
        }

    def start(self) -> SmarthostClient:
        try:
            self.files.mkdir(mode=0o755)
            for sub, mode in (("queue", 0o700), ("certs", 0o755)):
                (self.files / sub).mkdir(mode=mode)
            shutil.copyfile(self._ca_file, self.files / "ca.pem")
            (self.files / "ca.pem").chmod(0o644)
            for name, text in (("aliases", ""), ("statistics", ""),
                               ("service.switch", "hosts files\naliases files\n"),
                               ("sendmail.mc", self._mc)):
                (self.files / name).write_text(text)
                (self.files / name).chmod(0o644)
            self._syslog = _Syslog(self.root / "log.sock")
            result = self.namespace.run(M4, str(ETC / "sendmail.mc"), timeout=30)
            (self.files / "sendmail.cf").write_bytes(result.stdout)
            (self.files / "sendmail.cf").chmod(0o644)
            for name, text in self._maps.items():
                (self.files / name).write_text(text)
                (self.files / name).chmod(0o600)
                self.namespace.run(self.makemap, "-C", str(self.config_file), "hash",
                                   str(ETC / name), input_bytes=text.encode(), timeout=30)
                (self.files / f"{name}.db").chmod(0o600)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SmarthostClient:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _sendmail(self, *args: str, input_bytes: bytes | None = None,
                  timeout: float = 60) -> tuple[int, str]:
        result = self.namespace.run(self.sendmail, "-C", str(self.config_file), *args,
                                    input_bytes=input_bytes, timeout=timeout, check=False)
        return result.returncode, (result.stdout + result.stderr).decode(errors="replace")

    def send(self, mail_from: str, recipients: list[str], data: bytes,
             timeout: float = 60) -> int:
        """Submit a message and attempt its delivery before returning (`-v -odi`); a
        deferred delivery leaves it queued (see `queue()`). Returns sendmail's exit
        status (0 also when the message was queued); the dialogue is in `transcript`."""
        code, output = self._sendmail("-v", "-odi", "-oi", "-f", mail_from, "--",
                                      *recipients, input_bytes=data.replace(b"\r\n", b"\n"),
                                      timeout=timeout)
        self.transcript += output
        return code

    def queue(self) -> list[Path]:
        """The queued messages' control files (qf*): empty when nothing is queued."""
        return sorted((self.files / "queue").glob("qf*"))

    def log(self) -> str:
        """What Sendmail logged to syslog, one line per entry, without the priority."""
        return "\n".join(self._syslog.lines) if self._syslog is not None else ""

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        """The first syslog line matching the regex `pattern`: Sendmail has sent it
        before `send()` returned, but the reading thread may not have read it yet."""
        line = (self._syslog.wait_for(re.compile(pattern), timeout)
                if self._syslog is not None else None)
        if line is None:
            raise PeerError(f"no syslog line matched {pattern!r} in {timeout:.0f}s\n"
                            f"{self.diagnostics()}")
        return line

    def diagnostics(self) -> str:
        mailq = ""
        with contextlib.suppress(PeerError):
            _code, mailq = self._sendmail("-bp", timeout=30)
        return (f"sendmail -bp:\n{mailq}\n--- transcript ---\n{self.transcript}"
                f"\n--- syslog ---\n{self.log() or '(empty)'}")


def smarthost_client(relay_port: int, username: str, password: str, ca_file: Path, *,
                     mechanism: Literal["PLAIN", "LOGIN"] = "PLAIN") -> SmarthostClient:
    """A Sendmail that relays all mail to [relay.test]:relay_port (not started yet)."""
    return SmarthostClient(relay_port, username, password, ca_file, mechanism=mechanism)
