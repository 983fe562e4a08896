"""smtprelay.app.preflight: which file is at fault and what to do, without false alarms;
smtprelay.app.datadir: one relay per data_dir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from smtprelay.app import datadir, preflight
from smtprelay.config import Config
from smtprelay.transform.tokens import KeyRing
from tests.support import base_config, pem_pair, tls


def config(tmp_path: Path, **overrides: Any) -> Config:
    return Config.model_validate(base_config(tmp_path / "var", **overrides))


def test_a_usable_configuration_has_no_problem(tmp_path: Path) -> None:
    cert, key = pem_pair(tmp_path / "tls")
    links_cert, links_key = pem_pair(tmp_path / "links")
    aasa = tmp_path / "aasa.json"
    aasa.write_text('{"applinks": {}}')
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    cfg = config(
        tmp_path, tls=tls(cert, key), http={"tls_listen": ["127.0.0.1:0"]},
        tracking_domains={"links.example.com": {
            "cert_file": str(links_cert), "key_file": str(links_key),
            "apple_app_site_association": str(aasa)}},
        delivery={"mode": "smarthost", "smarthost": {
            "host": "smtp.upstream.test", "username": "relay", "password_file": str(password),
            "ca_file": str(links_cert)}})
    cfg.server.data_dir.mkdir()
    KeyRing.generate().save(cfg.tracking_keys_path)
    assert preflight.problems(cfg) == []


def test_a_pair_made_at_start_is_no_problem(tmp_path: Path) -> None:
    assert preflight.problems(config(tmp_path)) == []  # generate_self_signed, no files yet


def test_listeners_without_tls_need_no_certificate(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    assert preflight.problems(config(
        tmp_path, tls=tls(missing, missing),
        listeners=[{"name": "s", "port": 0, "tls": "none"}])) == []


def test_missing_files_are_named(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert preflight.problems(config(tmp_path, tls=tls(cert, key))) == [
        f"tls.cert_file: {cert} does not exist; point it at a PEM file, or set "
        "tls.generate_self_signed: true for a development certificate",
        f"tls.key_file: {key} does not exist; point it at a PEM file, or set "
        "tls.generate_self_signed: true for a development certificate"]


def test_a_key_of_another_certificate(tmp_path: Path) -> None:
    cert, _ = pem_pair(tmp_path / "one")
    _, other = pem_pair(tmp_path / "two")
    assert preflight.problems(config(tmp_path, tls=tls(cert, other))) == [
        f"tls.key_file: {other} is not the key of the certificate in tls.cert_file ({cert}); "
        "install the key the certificate was issued for, or a new pair"]


def test_an_encrypted_key_is_named_without_asking_for_a_pass_phrase(tmp_path: Path) -> None:
    cert, key = pem_pair(tmp_path / "tls")
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(loaded.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    assert preflight.problems(config(tmp_path, tls=tls(cert, key))) == [
        f"tls.key_file: {key} is encrypted; smtprelay needs the key without a pass phrase "
        f"(`openssl pkey -in {key} -out key.pem` asks for it once and writes the key "
        "decrypted)"]


def test_pem_that_openssl_takes_is_not_refused(tmp_path: Path) -> None:
    cert, key = pem_pair(tmp_path / "tls")
    # Explanatory text around the blocks, CRLF, and OpenSSL's TRUSTED CERTIFICATE label.
    text = cert.read_text()
    cert.write_text("subject=CN = relay.test\r\n" + text.replace("\n", "\r\n")
                    .replace("BEGIN CERTIFICATE", "BEGIN TRUSTED CERTIFICATE")
                    .replace("END CERTIFICATE", "END TRUSTED CERTIFICATE"))
    assert preflight.problems(config(tmp_path, tls=tls(cert, key))) == []


def test_a_cipher_list_that_selects_nothing(tmp_path: Path) -> None:
    cert, key = pem_pair(tmp_path / "tls")
    assert preflight.problems(config(tmp_path, tls=tls(cert, key, ciphers="NO-SUCH"))) == [
        "tls.ciphers: 'NO-SUCH' selects no cipher; give an OpenSSL cipher list (such as "
        "ECDHE+AESGCM:ECDHE+CHACHA20), or remove the key for Mozilla's intermediate list"]


def test_tracking_domain_files(tmp_path: Path) -> None:
    _, key = pem_pair(tmp_path / "tls")
    broken = tmp_path / "assetlinks.json"
    broken.write_text("{not json")
    missing = tmp_path / "aasa.json"
    found = preflight.problems(config(tmp_path, tracking_domains={"links.example.com": {
        "cert_file": str(key), "key_file": str(key), "assetlinks": str(broken),
        "apple_app_site_association": str(missing)}}))
    assert [p.split(" ", 2)[:2] for p in found] == [
        ["tracking_domains.links.example.com.cert_file:", str(key)],
        ["tracking_domains.links.example.com.apple_app_site_association:", str(missing)],
        ["tracking_domains.links.example.com.assetlinks:", str(broken)]]
    assert "is not a PEM certificate" in found[0]
    assert "does not exist; fix the path" in found[1]
    assert "is not JSON" in found[2]


def test_smarthost_ca_file_and_password(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    password = tmp_path / "password"
    password.write_text("\n")
    assert preflight.problems(config(tmp_path, delivery={"mode": "smarthost", "smarthost": {
        "host": "smtp.upstream.test", "username": "relay", "password_file": str(password),
        "ca_file": str(ca)}})) == [
        f"delivery.smarthost.password_file: {password} is empty",
        f"delivery.smarthost.ca_file: {ca} holds no PEM certificate; give the CA "
        "certificate(s) that signed the smarthost's, as PEM"]


def test_tracking_keys_readable_by_others(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.server.data_dir.mkdir()
    KeyRing.generate().save(cfg.tracking_keys_path)
    assert preflight.problems(cfg) == []
    cfg.tracking_keys_path.chmod(0o644)
    assert preflight.problems(cfg) == [
        f"server.data_dir: {cfg.tracking_keys_path}: readable by group or others; chmod 600 it"]


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.server.data_dir.write_text("")
    assert preflight.problems(cfg) == [
        f"server.data_dir: {cfg.server.data_dir} exists and is not a directory; point "
        "server.data_dir at a directory (it is created if missing)"]


def test_data_dir_is_held_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with datadir.hold(data_dir):
        assert (data_dir / "serve.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(datadir.DataDirError) as refused, datadir.hold(data_dir):
            pass
        assert str(refused.value) == (
            f"server.data_dir: {data_dir} is in use by another smtprelay serve "
            f"(pid {os.getpid()}); stop that one first, or give this one a data_dir of its "
            "own. Nothing was changed.")
    with datadir.hold(data_dir):  # released on the way out
        pass


def test_data_dir_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(datadir.DataDirError, match=rf"server.data_dir: cannot create "
                                                   rf"{blocker}/var: Not a directory; "), \
            datadir.hold(blocker / "var"):
        pass


def test_delivery_tls_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    found = preflight.problems(config(tmp_path, delivery={"mode": "mx",
                                                          "tls_ca_file": str(ca)}))
    assert found == [
        f"delivery.tls_ca_file: {ca} holds no PEM certificate; give the extra CA "
        "certificate(s) to trust for MX hosts, as PEM"]
    missing = tmp_path / "missing.pem"
    [problem] = preflight.problems(config(tmp_path, delivery={"mode": "mx",
                                                              "tls_ca_file": str(missing)}))
    assert problem.startswith(f"delivery.tls_ca_file: {missing}")
