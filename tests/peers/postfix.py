"""A private Postfix instance on loopback, built in a temp dir, for tests and benchmarks.

Two roles:

* `smarthost_client()`: Postfix as an application's or company's MTA relaying through
  smtprelay (`relayhost`, SASL client, TLS required); mail is injected over plain SMTP
  on a loopback port of its own.
* `benchmark_peer()`: Postfix as a submission server (STARTTLS, SASL PLAIN/LOGIN from a
  Cyrus sasldb) that accepts mail from authenticated clients and puts it on hold, so a
  benchmark measures acceptance only, like smtprelay which only spools for now.

Everything (config, queue, data, logs, sasldb, certificate) lives under one temp dir
that `stop()` removes; the instance never touches /etc/postfix or the system queue.
Postfix prints start-up errors only to a terminal, so failures are reported with the
output of `postfix check` and the instance's own log file (`maillog_file`).

    with smarthost_client(relay_port, user, password) as postfix:
        postfix.send("app@example.com", ["a@example.net"], data)
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTQUEUE = shutil.which("postqueue") or "/usr/sbin/postqueue"
POSTSUPER = shutil.which("postsuper") or "/usr/sbin/postsuper"
SASLPASSWD2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"

# The daemons a relaying Postfix needs, none chrooted (the temp dir is not a chroot
# tree). "postlog" is required since Postfix 3.7 for maillog_file.
_MASTER_CF_BASE = """\
pickup     unix  n  -  n  60     1  pickup
cleanup    unix  n  -  n  -      0  cleanup
qmgr       unix  n  -  n  300    1  qmgr
tlsmgr     unix  -  -  n  1000?  1  tlsmgr
rewrite    unix  -  -  n  -      -  trivial-rewrite
bounce     unix  -  -  n  -      0  bounce
defer      unix  -  -  n  -      0  bounce
trace      unix  -  -  n  -      0  bounce
verify     unix  -  -  n  -      1  verify
flush      unix  n  -  n  1000?  0  flush
proxymap   unix  -  -  n  -      -  proxymap
proxywrite unix  -  -  n  -      1  proxymap
smtp       unix  -  -  n  -      -  smtp
relay      unix  -  -  n  -      -  smtp
showq      unix  n  -  n  -      -  showq
error      unix  -  -  n  -      -  error
retry      unix  -  -  n  -      -  error
discard    unix  -  -  n  -      -  discard
anvil      unix  -  -  n  -      1  anvil
scache     unix  -  -  n  -      1  scache
postlog    unix-dgram n  -  n  -  1  postlogd
"""

# Characters that main.cf would expand ($), split (space, comma) or that static:
# maps cannot carry; a credential with them is refused rather than silently mangled.
_UNSAFE_IN_MAIN_CF = set("$ \t,{}\n\r#")


class PostfixError(RuntimeError):
    """The private Postfix instance failed; the message carries its check output and log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*args: str, check: bool = True, input_text: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, input=input_text,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise PostfixError(f"{' '.join(args)} exited {result.returncode}:\n"
                           f"{result.stdout}{result.stderr}")
    return result


def _run_tty(*args: str, timeout: float = 60) -> tuple[int, str]:
    """Run a postfix(1) command on a pseudo-terminal: it reports errors only to a tty."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=slave, close_fds=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    data = b""
                if data:
                    chunks.append(data)
                    continue
            # The master daemon started by `postfix start` may keep the terminal open,
            # so the command's exit, not end-of-file, ends the wait.
            if proc.poll() is not None and not ready:
                break
            if ready:
                proc.wait(max(0.0, deadline - time.monotonic()))
                break
        else:
            proc.kill()
        code = proc.wait(5)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n").strip()


def _safe(value: str, what: str) -> str:
    if not value or _UNSAFE_IN_MAIN_CF & set(value):
        raise ValueError(f"{what} {value!r} cannot be written into main.cf safely")
    return value


class Postfix:
    """One private Postfix instance: `start()` builds and starts it, `stop()` removes it."""

    def __init__(self, main_cf: dict[str, str], services: list[str], ports: list[int],
                 hostname: str) -> None:
        # mkdtemp gives 0700; the postfix user must traverse the root to reach the
        # sasldb, the queue and the data directory by absolute path.
        self.root = Path(tempfile.mkdtemp(prefix="smtprelay-postfix-", dir="/tmp"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "queue"
        self.data_dir = self.root / "data"
        self.maillog = self.root / "maillog"
        self.hostname = hostname
        self.ports = ports
        self._services = services
        self._main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"postfix-{self.root.name}",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "myhostname": hostname,
            "myorigin": "$myhostname",
            # Nothing is local: every recipient is relayed (or held), nothing delivered here.
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            # Otherwise every connection waits seconds on a reverse lookup through a
            # resolver this machine cannot reach.
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "smtputf8_enable": "no",
            **main_cf,
        }
        self._check_output = ""
        self._started = False

    # -- lifecycle ---------------------------------------------------------------

    def _write_config(self) -> None:
        self.config_dir.mkdir(exist_ok=True)
        self.queue_dir.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        # data_directory must belong to mail_owner; `postfix check` fixes the queue.
        shutil.chown(self.data_dir, "postfix", "postfix")
        main = "".join(f"{key} = {value}\n" for key, value in self._main_cf.items())
        (self.config_dir / "main.cf").write_text(main)
        master = _MASTER_CF_BASE + "".join(line + "\n" for line in self._services)
        (self.config_dir / "master.cf").write_text(master)
        # Postfix re-reads a configuration file modified within the last second every
        # 0.3 s until it has settled (util/dict.c, "the file is hot"): dated a minute
        # back, the files just written are read once instead of for two seconds.
        settled = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (settled, settled))

    def start(self, timeout: float = 30) -> Postfix:
        """Write the config, start Postfix and wait until every port answers with 220."""
        try:
            self._write_config()
            code, self._check_output = _run_tty(POSTFIX, "-c", str(self.config_dir), "check")
            if code != 0:
                raise PostfixError(self._describe(f"postfix check failed ({code})"))
            self._started = True
            code, output = _run_tty(POSTFIX, "-c", str(self.config_dir), "start")
            if code != 0:
                raise PostfixError(self._describe(f"postfix start failed ({code}): {output}"))
            deadline = time.monotonic() + timeout
            for port in self.ports:
                self._wait_for_banner(port, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_banner(self, port: int, deadline: float) -> None:
        last_error = "no attempt"
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    banner = sock.recv(512)
                    if banner.startswith(b"220"):
                        return
                    last_error = f"banner {banner!r}"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise PostfixError(self._describe(f"port {port} not ready: {last_error}"))

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop Postfix (gracefully, then by force) and remove the temp dir. Idempotent."""
        if self._started:
            pid = self._master_pid()
            with contextlib.suppress(Exception):
                _run(POSTFIX, "-c", str(self.config_dir), "stop", check=False, timeout=30)
            if pid is not None and not _wait_gone(pid, 10):
                with contextlib.suppress(Exception):
                    _run(POSTFIX, "-c", str(self.config_dir), "abort", check=False, timeout=30)
                if not _wait_gone(pid, 5):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postfix:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- inspection ----------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def _describe(self, headline: str, lines: int = 40) -> str:
        tail = "\n".join(self.log().splitlines()[-lines:])
        return (f"{headline}\n--- postfix check ---\n{self._check_output or '(clean)'}\n"
                f"--- {self.maillog} (last {lines} lines) ---\n{tail or '(empty)'}")

    def queue(self) -> list[dict[str, Any]]:
        """The queue as `postqueue -j` reports it: one dict per message."""
        out = _run(POSTQUEUE, "-c", str(self.config_dir), "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Attempt delivery of every deferred message now (`postqueue -f`)."""
        _run(POSTQUEUE, "-c", str(self.config_dir), "-f")

    def delete_all(self, queue_name: str = "ALL") -> None:
        """Empty a queue (`postsuper -d ALL hold`), e.g. between benchmark runs."""
        args = [POSTSUPER, "-c", str(self.config_dir), "-d", "ALL"]
        if queue_name != "ALL":
            args.append(queue_name)
        _run(*args)

    def diagnostics(self) -> str:
        """A report to attach to an assertion: the queue and the end of the log."""
        try:
            queue = json.dumps(self.queue(), indent=1)
        except PostfixError as exc:
            queue = str(exc)
        return self._describe(f"postfix queue: {queue}")


def _exited(pid: int) -> bool:
    """True once `pid` has exited. The master daemon is not our child: when it exits it
    stays a zombie until whoever adopted it (init, or a container's PID 1) reaps it,
    which some take a second or two to do; a zombie has exited all the same."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _exited(pid):
            return True
        time.sleep(0.05)
    return False


# -- role a: smarthost client -------------------------------------------------------


class SmarthostClient(Postfix):
    """Postfix relaying everything to smtprelay with SASL over mandatory TLS."""

    inject_port: int

    def send(self, mail_from: str, recipients: list[str], data: bytes) -> None:
        """Inject one message into this Postfix over plain SMTP on loopback."""
        with smtplib.SMTP("127.0.0.1", self.inject_port, timeout=30) as smtp:
            refused = smtp.sendmail(mail_from, recipients, data)
        if refused:
            raise PostfixError(f"postfix refused recipients: {refused}")


def smarthost_client(relay_port: int, username: str, password: str, *,
                     wrappermode: bool = False,
                     hostname: str = "postfix-client.test") -> SmarthostClient:
    """A Postfix that relays all mail to [127.0.0.1]:relay_port (not started yet).

    `wrappermode=True` speaks implicit TLS (port 465 style) instead of STARTTLS.
    """
    inject_port = free_port()
    main_cf = {
        "relayhost": f"[127.0.0.1]:{relay_port}",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"static:{_safe(username, 'username')}:"
                                   f"{_safe(password, 'password')}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_tls_security_level": "encrypt",
        "smtp_tls_wrappermode": "yes" if wrappermode else "no",
        "smtp_tls_loglevel": "1",
        # Injection comes from loopback only.
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "smtpd_recipient_restrictions": "permit_mynetworks, reject",
        # A failed attempt must stay in the queue for inspection, retried much later.
        "minimal_backoff_time": "300s",
        "maximal_backoff_time": "600s",
    }
    services = [f"127.0.0.1:{inject_port} inet n - n - - smtpd"]
    instance = SmarthostClient(main_cf, services, [inject_port], hostname)
    instance.inject_port = inject_port
    return instance


# -- role b: benchmark peer -----------------------------------------------------------


class BenchmarkPeer(Postfix):
    """Postfix as an authenticated submission server that holds what it accepts."""

    port: int
    username: str
    password: str


def benchmark_peer(username: str, password: str, *, hostname: str = "postfix-peer.test",
                   process_limit: int = 200) -> BenchmarkPeer:
    """A submission Postfix on a free loopback port with STARTTLS + AUTH (not started yet).

    Accepted mail goes to the hold queue: cleanup writes and fsyncs the queue file as
    shipped, and nothing is delivered, so only acceptance is measured.
    """
    from smtprelay.infra.tls import ensure_self_signed

    port = free_port()
    _safe(username, "username")
    main_cf = {
        "smtpd_tls_security_level": "may",
        "smtpd_tls_auth_only": "yes",
        "smtpd_tls_loglevel": "0",
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "smtpd_sasl_security_options": "noanonymous",
        # The Cyrus realm; saslpasswd2 -u must use the same one.
        "smtpd_sasl_local_domain": hostname,
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_recipient_restrictions": "permit_sasl_authenticated, reject",
        # HOLD: accept, write and fsync the queue file, then leave it alone.
        "smtpd_data_restrictions": "check_client_access static:HOLD",
        "default_process_limit": str(process_limit),
        # Loopback clients are the load generator: no per-client connection caps.
        "smtpd_client_event_limit_exceptions": "127.0.0.0/8",
        "smtpd_client_connection_count_limit": "0",
        "message_size_limit": "10485760",
    }
    services = [f"127.0.0.1:{port} inet n - n - - smtpd"]
    instance = BenchmarkPeer(main_cf, services, [port], hostname)
    instance.port = port
    instance.username = username
    instance.password = password
    root = instance.root
    cert, key = root / "tls" / "cert.pem", root / "tls" / "key.pem"
    ensure_self_signed(cert, key, hostname)
    # Debian's smtpd looks for smtpd.conf in $config_directory/sasl whatever
    # cyrus_sasl_config_path says; the setting is kept for other builds.
    sasl_dir = instance.config_dir / "sasl"
    sasl_dir.mkdir(parents=True)
    sasldb = sasl_dir / "sasldb2"
    (sasl_dir / "smtpd.conf").write_text(
        "pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\n"
        f"sasldb_path: {sasldb}\n")
    try:
        _run(SASLPASSWD2, "-f", str(sasldb), "-c", "-p", "-u", hostname, username,
             input_text=password)
    except BaseException:
        instance.stop()
        raise
    # smtpd reads the sasldb as the postfix user, after dropping root.
    shutil.chown(sasldb, "root", "postfix")
    sasldb.chmod(0o640)
    instance._main_cf.update({
        "smtpd_tls_cert_file": str(cert),
        "smtpd_tls_key_file": str(key),
        "cyrus_sasl_config_path": str(sasl_dir),
    })
    return instance
