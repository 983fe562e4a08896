"""A private Exim 4.96 relaying through smtprelay: the "Plain Exim configuration" recipe
of docs/smarthost.md, run from the unpacked Debian package (tests/peers/unpacked.py).

The configuration is the recipe's router, transport and authenticators around a
minimal main section (spool, log and exim_path under the instance's temp dir). The
relay is `relay.test` (the name on its certificate), found through the private hosts
file; the transport requires TLS and AUTH and verifies the certificate against
`ca_file`. Only one authenticator is configured, so the mechanism is the one asked
for. Mail is submitted on the command line, as the recipe's check does, with `-odi`:
Exim tries the delivery before the command returns.

    with smarthost_client(relay.submission_port, user, password, ca_file) as exim:
        exim.send("app@example.com", ["a@example.net"], data)
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Literal

from tests.peers.unpacked import RELAY_NAME, Namespace, PeerError, need_unpacked

EXIM = "usr/sbin/exim4"
EXIM_USER = "Debian-exim"
# What the recipe's authenticators can carry without escaping (see docs/smarthost.md).
_SAFE = re.compile(r"[A-Za-z0-9_.@+-]+")

_CONFIG = """\
exim_path = {exim}
spool_directory = {root}/spool
log_file_path = {root}/log/%slog
primary_hostname = exim-client.test
qualify_domain = exim-client.test
domainlist local_domains = @ : localhost
keep_environment =
host_lookup =
rfc1413_hosts =
disable_ipv6 = true
tls_advertise_hosts =
log_selector = +smtp_protocol_error +tls_certificate_verified +tls_peerdn \\
               +outgoing_port +received_recipients +deliver_time
# A failed attempt stays queued for inspection; nothing retries it during a test.
delay_warning =

begin routers

smtprelay:
  driver = manualroute
  domains = ! +local_domains
  transport = smtprelay_smtp
  route_list = * {relay_name} byname
  # Not in the recipe: the relay listens on this machine's loopback address, which
  # Exim otherwise refuses as a mail loop ("remote host address is the local host").
  self = send
  no_more

begin transports

smtprelay_smtp:
  driver = smtp
  port = {port}
{protocol}\
  # Refuse to send unless TLS and AUTH both succeed.
  hosts_require_tls = *
  hosts_require_auth = *
  # Verify the relay's certificate.
  tls_verify_certificates = {ca_file}
  tls_verify_hosts = *

begin retry

*  *  F,1h,1h

begin authenticators

{authenticator}
"""

_AUTHENTICATORS = {
    "PLAIN": """\
smtprelay_plain:
  driver = plaintext
  public_name = PLAIN
  client_send = ^{username}^{password}
""",
    "LOGIN": """\
smtprelay_login:
  driver = plaintext
  public_name = LOGIN
  client_send = : {username} : {password}
""",
}


class SmarthostClient:
    """One private Exim: `start()` writes its configuration, `stop()` removes it all."""

    def __init__(self, relay_port: int, username: str, password: str, ca_file: Path, *,
                 implicit_tls: bool = False,
                 mechanism: Literal["PLAIN", "LOGIN"] = "PLAIN") -> None:
        self.exim = str(need_unpacked(EXIM))
        for what, value in (("username", username), ("password", password)):
            if not _SAFE.fullmatch(value):
                raise ValueError(f"{what} {value!r} would need escaping in the recipe")
        self.mechanism = mechanism
        self.root = Path(tempfile.mkdtemp(prefix="smtprelay-exim-", dir="/tmp"))
        self.root.chmod(0o755)
        # A copy the peer's unprivileged processes can read (pytest's tmp dirs are 0700).
        shutil.copyfile(ca_file, self.root / "ca.pem")
        (self.root / "ca.pem").chmod(0o644)
        self.namespace = Namespace(self.root / "ns", [EXIM_USER],
                                   {RELAY_NAME: "127.0.0.1", "exim-client.test": "127.0.0.1"})
        self.config_file = self.root / "exim.conf"
        self.mainlog = self.root / "log" / "mainlog"
        self._text = _CONFIG.format(
            exim=self.exim, root=self.root, relay_name=RELAY_NAME, port=relay_port,
            # TLS on connect (port 465): the recipe's `protocol = smtps`.
            protocol="  protocol = smtps\n" if implicit_tls else "",
            ca_file=self.root / "ca.pem",
            authenticator=_AUTHENTICATORS[mechanism].format(username=username,
                                                            password=password))

    def start(self) -> SmarthostClient:
        try:
            uid = self.namespace.uid(EXIM_USER)
            for sub in ("spool", "log"):
                path = self.root / sub
                path.mkdir(mode=0o750)
                shutil.chown(path, uid, uid)
            # Exim wants its configuration owned by root and not writable by others;
            # the delivery processes, running as the Exim user, read it via the group.
            self.config_file.write_text(self._text)
            shutil.chown(self.config_file, 0, uid)
            self.config_file.chmod(0o640)
            self._exim("-bV")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SmarthostClient:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _exim(self, *args: str, input_bytes: bytes | None = None, timeout: float = 60,
              check: bool = True) -> str:
        result = self.namespace.run(self.exim, "-C", str(self.config_file), *args,
                                    input_bytes=input_bytes, timeout=timeout, check=False)
        output = (result.stdout + result.stderr).decode(errors="replace")
        if check and result.returncode != 0:
            raise PeerError(f"exim {' '.join(args)} exited {result.returncode}:\n{output}"
                            f"\n{self.diagnostics()}")
        return output

    def send(self, mail_from: str, recipients: list[str], data: bytes,
             timeout: float = 60) -> None:
        """Submit a message (`exim -f FROM RCPT... < data`) and attempt delivery before
        returning (`-odi`); a failed delivery leaves it queued (see `queue()`)."""
        self._exim("-odi", "-oi", "-f", mail_from, "--", *recipients,
                   input_bytes=data.replace(b"\r\n", b"\n"), timeout=timeout)

    def queue(self) -> str:
        """`exim -bp`: the messages still queued, empty when there are none."""
        return self._exim("-bp").strip()

    def log(self) -> str:
        try:
            return self.mainlog.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self) -> str:
        queue = self._exim("-bp", check=False).strip() if self.config_file.exists() else ""
        return (f"exim queue: {queue or '(empty)'}\n--- {self.mainlog} ---\n"
                f"{self.log() or '(empty)'}")


def smarthost_client(relay_port: int, username: str, password: str, ca_file: Path, *,
                     implicit_tls: bool = False,
                     mechanism: Literal["PLAIN", "LOGIN"] = "PLAIN") -> SmarthostClient:
    """An Exim that relays all mail to relay.test:relay_port (not started yet)."""
    return SmarthostClient(relay_port, username, password, ca_file,
                           implicit_tls=implicit_tls, mechanism=mechanism)
