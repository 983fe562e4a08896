"""`check-config` and `serve` check the same files before anything starts, and report
every unusable one at once, naming its key: through the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support import base_config, pem_pair, tls, write_config

COMMANDS = ("check-config", "serve")
NO_SECRET = "SMTPRELAY_TEST_PREFLIGHT_UNSET_SECRET"


def run(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    """The command's outcome; `serve` must stop by itself, not start serving."""
    proc = subprocess.Popen([sys.executable, "-m", "smtprelay", command, "-c", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"smtprelay {command} did not stop on its own: {err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def der_certificate(pem: Path) -> Path:
    """The same certificate in DER, as some CAs hand it out (cert.crt, cert.cer)."""
    der = pem.with_suffix(".der")
    der.write_bytes(x509.load_pem_x509_certificate(pem.read_bytes()).public_bytes(
        serialization.Encoding.DER))
    return der


def der_key(pem: Path) -> Path:
    der = pem.with_suffix(".der")
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    der.write_bytes(key.private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return der


def config_file(tmp_path: Path, **overrides: Any) -> Path:
    return write_config(tmp_path / "smtprelay.yaml", base_config(tmp_path / "var", **overrides))


def assert_refused(run: subprocess.CompletedProcess[str], config: Path,
                   problems: list[str]) -> None:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert f"configuration {config} has {len(problems)} problem(s)" in run.stderr, run.stderr
    for problem in problems:
        assert f"\n  {problem}" in run.stderr, run.stderr
    assert "spool opened" not in run.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_certificate_that_is_not_pem_is_refused(tmp_path: Path, command: str) -> None:
    cert, key = pem_pair(tmp_path / "tls")
    der = der_certificate(cert)
    config = config_file(tmp_path, tls=tls(der, key))
    assert_refused(run(command, config), config, [
        f"tls.cert_file: {der} is not a PEM certificate; give the certificate chain as PEM "
        "(-----BEGIN CERTIFICATE-----, leaf first); a DER file converts with "
        f"`openssl x509 -inform der -in {der} -out cert.pem`"])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_key_that_is_not_pem_is_refused(tmp_path: Path, command: str) -> None:
    cert, key = pem_pair(tmp_path / "tls")
    der = der_key(key)
    config = config_file(tmp_path, tls=tls(cert, der))
    assert_refused(run(command, config), config, [
        f"tls.key_file: {der} is not a PEM private key; give the certificate's key as PEM "
        "(-----BEGIN PRIVATE KEY-----); a DER key converts with "
        f"`openssl pkey -inform der -in {der} -out key.pem`"])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_dkim_key_is_refused(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "dkim" / "example.com.r1.pem"
    config = config_file(tmp_path, identities={"example.com": {"dkim": [
        {"selector": "r1", "key_file": str(missing)}]}})
    assert_refused(run(command, config), config, [
        f"identities.example.com.dkim[0].key_file: {missing} does not exist; create it with "
        f"`smtprelay dkim keygen example.com --selector r1 --out {missing}`, or fix the path"])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_problem_is_reported_in_one_run(tmp_path: Path, command: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NO_SECRET, raising=False)
    cert, key = pem_pair(tmp_path / "tls")
    bad_cert = der_certificate(cert)
    links_key = der_key(key)
    missing_dkim = tmp_path / "dkim" / "example.com.r1.pem"
    missing_password = tmp_path / "smarthost.password"
    keyring = tmp_path / "var" / "tracking-keys.json"
    keyring.parent.mkdir()
    keyring.write_text("{not json")
    keyring.chmod(0o600)
    config = config_file(
        tmp_path, tls=tls(bad_cert, key),
        tracking_domains={"links.example.com": {"cert_file": str(cert),
                                                "key_file": str(links_key)}},
        identities={"example.com": {"dkim": [{"selector": "r1",
                                              "key_file": str(missing_dkim)}]}},
        configuration_sets={"transactional": {"event_destinations": [
            {"name": "app", "type": "webhook", "url": "https://hooks.example/ses",
             "secret_env": NO_SECRET}]}},
        delivery={"mode": "smarthost", "smarthost": {
            "host": "smtp.upstream.test", "username": "relay",
            "password_file": str(missing_password)}})
    outcome = run(command, config)
    assert_refused(outcome, config, [
        f"tls.cert_file: {bad_cert} is not a PEM certificate",
        f"tracking_domains.links.example.com.key_file: {links_key} is not a PEM private key",
        f"identities.example.com.dkim[0].key_file: {missing_dkim} does not exist",
        f"delivery.smarthost.password_file: cannot read {missing_password}: "
        "No such file or directory",
        "configuration_sets.transactional.event_destinations[app].secret_env: the "
        f"environment variable {NO_SECRET} is not set or empty",
        f"server.data_dir: {keyring}: malformed key file",
    ])
