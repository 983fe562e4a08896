"""An oversized DATA is refused without being held in memory, and IPv6 listeners work."""

from __future__ import annotations

import json
import signal
import smtplib
import socket
from pathlib import Path

import pytest

from tests.support import DaemonProcess, client_context, message, running, spooled


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_200_mib_data_over_a_1_mib_limit_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, limits={"max_message_size": "1M"}).start()
    try:
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        smtp = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=60)
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        baseline = peak_rss_kib(daemon.proc.pid)
        smtp.mail("app@example.com")
        smtp.rcpt("a@example.net")
        smtp.putcmd("data")
        assert smtp.getreply()[0] == 354
        chunk = (b"x" * 998 + b"\r\n") * 1024  # 1 MiB of valid lines
        sock = smtp.sock
        assert sock is not None
        for _ in range(200):
            sock.sendall(chunk)
        sock.sendall(b".\r\n")
        assert smtp.getreply() == (552, b"5.3.4 Message is too long.")
        grown = peak_rss_kib(daemon.proc.pid) - baseline
        # 200 MiB went through; the relay held at most about the limit plus buffers.
        assert grown < 16 * 1024, f"peak RSS grew by {grown} KiB"
        # The session goes on and the next message is accepted.
        assert smtp.sendmail("app@example.com", ["b@example.net"], message()) == {}
        smtp.quit()
        listed = json.loads(daemon.cli("queue", "list", "--json").stdout)
        assert [m["recipients"][0]["address"] for m in listed] == ["b@example.net"]
    finally:
        daemon.stop(signal.SIGKILL)


def test_ipv6_listener(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    listeners = [{"name": "v6", "address": "::1", "port": 0, "tls": "starttls"}]
    with running(tmp_path, listeners=listeners) as relay:
        cred = relay.credential()
        with smtplib.SMTP("::1", relay.port("v6"), timeout=10) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(cred.username, cred.password)
            smtp.sendmail("app@example.com", ["v6@example.net"], message())
        (entry,) = spooled(relay.config)
        assert entry["recipients"] == ["v6@example.net"]
