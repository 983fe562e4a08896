"""The daemon as a process: signals, reload, start-up errors and the operator CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.infra.tls import ensure_self_signed
from tests.support import DaemonProcess, client_context, message


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path).start()
    yield d
    d.stop(signal.SIGKILL)


def login(daemon: DaemonProcess, cred: dict[str, str]) -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10)
    smtp.starttls(context=client_context())
    smtp.login(cred["username"], cred["password"])
    return smtp


def served_cert(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), 5) as raw, \
            client_context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_sigterm_drains_idle_sessions_with_421_and_keeps_mail(daemon: DaemonProcess) -> None:
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    smtp = login(daemon, cred)
    smtp.sendmail("app@example.com", ["a@example.net"], message())
    smtp.mail("app@example.com")
    assert daemon.stop(signal.SIGTERM) == 0
    code, text = smtp.getreply()
    assert (code, text) == (421, b"4.3.2 Service shutting down, try again later")
    listed = json.loads(daemon.cli("queue", "list", "--json").stdout)
    assert [m["recipients"][0]["address"] for m in listed] == ["a@example.net"]
    assert "stopped" in daemon.log()


def test_sighup_reloads_certificate_without_dropping_sessions(daemon: DaemonProcess,
                                                              tmp_path: Path) -> None:
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    before = {port: served_cert(daemon.ports[port]) for port in ("submissions",)}
    smtp = login(daemon, cred)
    fresh = tmp_path / "fresh"
    ensure_self_signed(fresh / "cert.pem", fresh / "key.pem", "relay.test")
    shutil.copy(fresh / "key.pem", daemon.config.key_path)
    shutil.copy(fresh / "cert.pem", daemon.config.cert_path)
    daemon.proc.send_signal(signal.SIGHUP)
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(
        (fresh / "cert.pem").read_text())).hexdigest()
    for _ in range(100):
        if served_cert(daemon.ports["submissions"]) == expected:
            break
        import time
        time.sleep(0.05)
    assert served_cert(daemon.ports["submissions"]) == expected != before["submissions"]
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10) as fresh_session:
        fresh_session.starttls(context=client_context())
        der = fresh_session.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert hashlib.sha256(der).hexdigest() == expected
    # The session opened before the reload goes on.
    assert smtp.sendmail("app@example.com", ["b@example.net"], message()) == {}
    smtp.quit()
    assert "tls certificate reloaded" in daemon.log()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    d = DaemonProcess(tmp_path)
    d.config_path.write_text(d.config_path.read_text().replace(
        f"port: {d.ports['submissions']}", f"port: {blocker.getsockname()[1]}"))
    d.start(wait=False)
    assert d.proc.wait(20) == 1
    log = d.log()
    assert "Traceback" not in log
    assert f"listeners.submissions: cannot listen on 127.0.0.1 port " \
           f"{blocker.getsockname()[1]}: Address already in use" in log
    blocker.close()


def test_unusable_certificate_is_a_clear_error(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    d = DaemonProcess(tmp_path, tls={"cert_file": str(cert), "key_file": str(key)})
    d.start(wait=False)
    assert d.proc.wait(20) == 2
    assert "Traceback" not in d.log()
    assert f"tls.cert_file: {cert} is not a PEM certificate" in d.log()
    assert f"tls.key_file: {key} is not a PEM private key" in d.log()


def test_credentials_lifecycle_through_the_cli(daemon: DaemonProcess) -> None:
    created = json.loads(daemon.cli("credentials", "create", "acme", "--name", "crm",
                                    "--json").stdout)
    assert set(created) == {"username", "password", "account", "name"}
    listed = json.loads(daemon.cli("credentials", "list", "--json").stdout)
    assert [(c["username"], c["name"], c["disabled"]) for c in listed] == [
        (created["username"], "crm", False)]
    assert created["password"] not in daemon.cli("credentials", "list").stdout
    login(daemon, created).quit()
    daemon.cli("credentials", "disable", created["username"])
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        login(daemon, created)
    assert info.value.smtp_code == 535
    daemon.cli("credentials", "enable", created["username"])
    login(daemon, created).quit()
    daemon.cli("credentials", "delete", created["username"])
    with pytest.raises(smtplib.SMTPAuthenticationError):
        login(daemon, created)
    missing = daemon.cli("credentials", "delete", created["username"], check=False)
    assert missing.returncode == 1
    assert missing.stderr == f"smtprelay: no stored credential with username " \
                             f"{created['username']}\n"
    unknown = daemon.cli("credentials", "create", "nobody", check=False)
    assert unknown.returncode == 1
    assert "accounts.nobody: no such account" in unknown.stderr
    assert daemon.log().count(created["password"]) == 0


def test_queue_commands_while_the_daemon_runs(daemon: DaemonProcess) -> None:
    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    smtp = login(daemon, cred)
    ids = []
    for n in range(3):
        smtp.mail("app@example.com")
        smtp.rcpt(f"r{n}@example.net")
        code, text = smtp.data(message(subject=f"n{n}"))
        assert code == 250
        ids.append(text.decode().split()[-1])
    smtp.quit()
    listed = json.loads(daemon.cli("queue", "list", "--json").stdout)
    assert [m["id"] for m in listed] == ids
    assert listed[0]["recipients"][0]["state"] == "queued"
    body = daemon.cli("queue", "show", ids[1], "--body").stdout
    assert "Subject: n1" in body
    assert "r1@example.net" in daemon.cli("queue", "show", ids[1]).stdout
    assert daemon.cli("queue", "delete", ids[0]).stdout == f"{ids[0]}: deleted\n"
    assert [m["id"] for m in json.loads(daemon.cli("queue", "list", "--json").stdout)] == ids[1:]
    gone = daemon.cli("queue", "show", ids[0], check=False)
    assert (gone.returncode, gone.stderr) == (1, f"smtprelay: no message {ids[0]} in the queue\n")


def test_sighup_reloads_identities_and_refuses_a_broken_config(daemon: DaemonProcess) -> None:
    import yaml

    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    smtp = login(daemon, cred)
    with pytest.raises(smtplib.SMTPSenderRefused):
        smtp.sendmail("app@newbrand.test", ["a@example.net"], message(sender="app@newbrand.test"))
    original = daemon.config_path.read_text()
    config = yaml.safe_load(original)
    config["accounts"]["acme"]["identities"].append("newbrand.test")
    config["limits"]["max_recipients"] = 7
    daemon.config_path.write_text(yaml.safe_dump(config))
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("configuration reloaded")
    assert "reload: changes to limits take effect at the next restart" in daemon.log()
    # The session opened before the reload sees the new identity.
    assert smtp.sendmail("app@newbrand.test", ["a@example.net"],
                         message(sender="app@newbrand.test")) == {}
    daemon.config_path.write_text(original + "\nbogus_key: 1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_log("reload refused")
    assert "reload refused, keeping the running config: bogus_key: unknown key" in daemon.log()
    assert smtp.sendmail("app@newbrand.test", ["b@example.net"],
                         message(sender="app@newbrand.test")) == {}
    smtp.quit()
    assert daemon.proc.poll() is None


def test_a_second_serve_on_the_same_data_dir_is_refused(daemon: DaemonProcess) -> None:
    import subprocess
    import sys

    cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
    with login(daemon, cred) as smtp:
        smtp.sendmail("app@example.com", ["first@example.net"], message())
    data_dir = daemon.config.server.data_dir
    second = subprocess.run([sys.executable, "-m", "smtprelay", "serve", "-c",
                             str(daemon.config_path)], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 1, second.stderr
    assert "Traceback" not in second.stderr
    assert (f"server.data_dir: {data_dir} is in use by another smtprelay serve "
            f"(pid {daemon.proc.pid})") in second.stderr
    # Refused before the spool: the running relay's deliveries under way are not
    # handed back behind its back.
    assert "spool opened" not in second.stderr
    # The first one goes on serving.
    assert daemon.proc.poll() is None
    with login(daemon, cred) as smtp:
        assert smtp.sendmail("app@example.com", ["second@example.net"], message()) == {}
    # Killed without a chance to clean up, it leaves its pid in the lock file, and the
    # next start takes over all the same.
    lock = data_dir / "serve.lock"
    killed = daemon.proc.pid
    assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert lock.read_text().strip() == str(killed)
    daemon.start()
    assert daemon.proc.pid != killed
    assert lock.read_text().strip() == str(daemon.proc.pid)
    listed = json.loads(daemon.cli("queue", "list", "--json").stdout)
    assert sorted(m["recipients"][0]["address"] for m in listed) == [
        "first@example.net", "second@example.net"]
