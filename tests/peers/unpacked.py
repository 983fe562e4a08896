"""MTAs that cannot be installed beside Postfix, run from an unpacked package tree.

Exim and Sendmail conflict with postfix as the system's mail-transport-agent, so
scripts/install-test-deps does not install them: it unpacks their Debian packages
(`apt-get download` + `dpkg-deb -x`) into PEERS_DIR. They expect their system users
(Debian-exim, smmta, smmsp) in /etc/passwd, look the relay's name up in /etc/hosts and
must never ask this machine's resolver about `.test` names, so each one runs under
`unshare -m` with private copies of /etc/passwd, /etc/group, /etc/hosts and
/etc/resolv.conf bind-mounted over the real ones. Nothing outside the instance's temp
dir is written, and the bind mounts end with the process tree.

Two more things a peer can ask for (Sendmail does): a directory of its temp dir mounted
at another path (Sendmail refuses files whose path has a world-writable directory, such
as /tmp, in it), and a syslog socket: /dev/log, in a private /dev, pointing to a socket
of the instance (the machine runs no syslog daemon, and Sendmail logs nowhere else).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import IN_CI

PEERS_DIR = Path(os.environ.get("SMTPRELAY_PEERS_DIR", "/opt/smtprelay-peers"))
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"

# The name the peers know the relay by: the name on its test certificate.
RELAY_NAME = "relay.test"


class PeerError(RuntimeError):
    """An unpacked peer failed; the message carries its output and log."""


def need_unpacked(relative: str) -> Path:
    """The path of a program in PEERS_DIR; a failure in CI, else a skip, when missing."""
    path = PEERS_DIR / relative
    if not os.access(path, os.X_OK):
        message = (f"{path} is missing: scripts/install-test-deps unpacks Exim and "
                   f"Sendmail into {PEERS_DIR} (as root, from the Debian archive)")
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    if os.geteuid() != 0 or not os.access(UNSHARE, os.X_OK):
        message = "the unpacked MTAs run as root under unshare -m"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_ids(taken: set[int], count: int, start: int = 60100) -> list[int]:
    found: list[int] = []
    candidate = start
    while len(found) < count:
        if candidate not in taken:
            found.append(candidate)
        candidate += 1
    return found


class Namespace:
    """Private passwd/group/hosts/resolv.conf under `directory` for `run()`.

    `users` are the system users the MTA expects (each with a group of the same name);
    they get ids unused on this machine. `hosts` maps names to addresses (a key may be
a canonical name followed by aliases, as in a hosts file line).
    """

    def __init__(self, directory: Path, users: list[str], hosts: dict[str, str], *,
                 binds: dict[Path, Path] | None = None, dev_log: Path | None = None) -> None:
        self.directory = directory
        # target (an existing directory) -> source: mounted after the files.
        self.binds = dict(binds or {})
        self.dev_log = dev_log
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        taken = {int(line.split(":")[2]) for text in (passwd, group)
                 for line in text.splitlines() if line.count(":") >= 3}
        self.ids: dict[str, int] = {}
        for name, uid in zip(users, _free_ids(taken, len(users)), strict=True):
            self.ids[name] = uid
            passwd += f"{name}:x:{uid}:{uid}:{name}:/nonexistent:/usr/sbin/nologin\n"
            group += f"{name}:x:{uid}:\n"
        self.files = {
            "/etc/passwd": passwd,
            "/etc/group": group,
            "/etc/hosts": "127.0.0.1\tlocalhost\n" + "".join(
                f"{address}\t{name}\n" for name, address in hosts.items()),
            # Nothing listens here: a lookup the hosts file does not answer fails at
            # once instead of going to this machine's outside resolver.
            "/etc/resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        }
        for target, text in self.files.items():
            path = self.directory / Path(target).name
            path.write_text(text)
            path.chmod(0o644)

    def uid(self, user: str) -> int:
        return self.ids[user] if user in self.ids else pwd.getpwnam(user).pw_uid

    def command(self, *args: str) -> list[str]:
        mounts = " && ".join(
            [f'mount --bind "$0/{Path(target).name}" {target}' for target in self.files]
            + [f"mount --bind {shlex.quote(str(source))} {shlex.quote(str(target))}"
               for target, source in self.binds.items()])
        if self.dev_log is not None:
            # A private /dev with what the MTAs open (null, the random devices, /dev/fd)
            # and log -> the instance's socket; the real /dev stays reachable via "$0/dev".
            (self.directory / "dev").mkdir(exist_ok=True)
            mounts += (' && mount --bind /dev "$0/dev" && mount -t tmpfs -o mode=755 tmpfs /dev'
                       ' && for n in null zero full random urandom tty; do'
                       ' touch /dev/$n && mount --bind "$0/dev/$n" /dev/$n || exit 1; done'
                       ' && ln -s /proc/self/fd /dev/fd && ln -s /proc/self/fd/0 /dev/stdin'
                       ' && ln -s /proc/self/fd/1 /dev/stdout && ln -s /proc/self/fd/2 /dev/stderr'
                       f" && ln -s {shlex.quote(str(self.dev_log))} /dev/log")
        return [UNSHARE, "--mount", "--propagation", "private", "sh", "-c",
                f'{mounts} && shift && exec "$@"', str(self.directory), "--", *args]

    def run(self, *args: str, input_bytes: bytes | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(self.command(*args), input=input_bytes,
                                    capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise PeerError(f"{' '.join(args)} did not finish in {timeout:.0f}s:\n"
                            f"{exc.stdout!r} {exc.stderr!r}") from None
        if check and result.returncode != 0:
            raise PeerError(f"{' '.join(args)} exited {result.returncode}:\n"
                            f"{result.stdout.decode(errors='replace')}"
                            f"{result.stderr.decode(errors='replace')}")
        return result
