"""`smtprelay api-keys ...` as an operator runs it: subprocesses on the state database (or
a real Redis), and the secrets read back by a store as a running node would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from smtprelay.auth.api_keys import KeyEncryptionKey, companion, read_key_file, replace_key_file
from smtprelay.auth.stores import api_key_store
from smtprelay.config import Config
from tests.support import DaemonProcess


def created(d: DaemonProcess, account: str = "acme", *more: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(d.cli("api-keys", "create", account, "--json",
                                              *more).stdout)
    return result


def secrets_as_a_node_reads_them(config: Config) -> dict[str, str]:
    store = api_key_store(config)
    try:
        found = {k.access_key_id: store.lookup(k.access_key_id) for k in store.list()}
        return {key_id: pair[1] for key_id, pair in found.items() if pair is not None}
    finally:
        store.close()


def test_create_prints_the_secret_once_and_list_never(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    run = d.cli("api-keys", "create", "acme", "--description", "web shop")
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines()[:3])
    key_id, secret = lines["access key id"].strip(), lines["secret access key"].strip()
    assert key_id.startswith("SRAK") and len(key_id) == 20 and len(secret) == 40
    assert "aws configure" in run.stdout and "aws_secret_access_key" in run.stdout
    assert "api.sesv2 and api.sesv1 are both off" in run.stdout
    key_file = d.config.api_key_path
    assert key_file == tmp_path / "var" / "api-keys.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    other = created(d, "other")
    assert set(other) == {"access_key_id", "secret_access_key", "account", "description",
                          "created_at"}
    assert secrets_as_a_node_reads_them(d.config) == {
        key_id: secret, other["access_key_id"]: other["secret_access_key"]}

    listing = d.cli("api-keys", "list")
    as_json = d.cli("api-keys", "list", "--json")
    for text in (listing.stdout, as_json.stdout):
        assert key_id in text and other["access_key_id"] in text
        assert secret not in text and other["secret_access_key"] not in text
    rows = json.loads(as_json.stdout)
    assert [(r["access_key_id"], r["account"], r["description"], r["disabled"])
            for r in rows if r["access_key_id"] == key_id] == [
        (key_id, "acme", "web shop", False)]
    assert all(set(r) == {"access_key_id", "account", "description", "created_at",
                          "disabled"} for r in rows)
    assert [r["access_key_id"] for r in json.loads(
        d.cli("api-keys", "list", "--json", "--account", "other").stdout)] == [
        other["access_key_id"]]
    assert listing.stdout.splitlines()[0].split()[:3] == ["ACCESS", "KEY", "ID"]

    assert d.cli("api-keys", "disable", key_id).stdout == f"{key_id}: disabled\n"
    assert json.loads(d.cli("api-keys", "list", "--json", "--account", "acme").stdout
                      )[0]["disabled"] is True
    assert d.cli("api-keys", "enable", key_id).stdout == f"{key_id}: enabled\n"
    assert d.cli("api-keys", "delete", key_id).stdout == f"{key_id}: deleted\n"
    gone = d.cli("api-keys", "delete", key_id, check=False)
    assert (gone.returncode, gone.stderr) == (
        1, f"smtprelay: no API key with access key id {key_id}\n")
    assert list(secrets_as_a_node_reads_them(d.config)) == [other["access_key_id"]]


def test_unknown_account_refused(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    run = d.cli("api-keys", "create", "nope", check=False)
    assert run.returncode == 1
    assert run.stderr == ("smtprelay: accounts.nope: no such account in the configuration "
                          "(accounts: acme, other)\n")
    assert run.stdout == ""
    assert not d.config.api_key_path.exists()


def test_rotate_key_keeps_every_key_usable(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    keys = {k["access_key_id"]: k["secret_access_key"] for k in
            (created(d), created(d, "other"), created(d))}
    key_file = d.config.api_key_path
    first = read_key_file(key_file)
    run = d.cli("api-keys", "rotate-key")
    second = read_key_file(key_file)
    assert second.id != first.id
    assert f"now holds key {second.id}; 3 secret(s) re-encrypted" in run.stdout
    assert read_key_file(companion(key_file, ".old")).id == first.id
    assert not companion(key_file, ".new").exists()
    assert secrets_as_a_node_reads_them(d.config) == keys
    # The old key alone opens none of them any more.
    replace_key_file(companion(key_file, ".old"), KeyEncryptionKey.generate())
    replace_key_file(key_file, first)
    run = d.cli("api-keys", "rotate-key", check=False)
    assert run.returncode == 1
    assert "3 API key(s) are sealed with a key that is in none of" in run.stderr
    assert "Traceback" not in run.stderr
    replace_key_file(key_file, second)

    # A new key of the operator's making, and a rotation stopped after the swap.
    mine = tmp_path / "next.key"
    replace_key_file(mine, KeyEncryptionKey.generate())
    staged = companion(key_file, ".new")
    shutil.copy2(mine, staged)
    replace_key_file(companion(key_file, ".old"), second)
    replace_key_file(key_file, read_key_file(mine))
    run = d.cli("api-keys", "rotate-key")
    assert "3 secret(s) re-encrypted from" in run.stdout
    assert not staged.exists()
    assert secrets_as_a_node_reads_them(d.config) == keys
    run = d.cli("api-keys", "rotate-key", "--new-key-file", str(mine), check=False)
    assert (run.returncode, "nothing to rotate" in run.stderr) == (1, True)
    assert mine.exists()

    # A read-only secrets mount: the new key put in place and the previous one beside
    # it as .old by the secrets manager; the command only re-encrypts.
    third = KeyEncryptionKey.generate()
    replace_key_file(companion(key_file, ".old"), read_key_file(key_file))
    replace_key_file(key_file, third)
    files = {p.name: p.read_bytes() for p in key_file.parent.glob("api-keys.key*")}
    run = d.cli("api-keys", "rotate-key", "--new-key-file", str(key_file))
    assert f"3 secret(s) re-encrypted from {companion(key_file, '.old')}" in run.stdout
    assert {p.name: p.read_bytes() for p in key_file.parent.glob("api-keys.key*")} == files
    assert secrets_as_a_node_reads_them(d.config) == keys
    assert d.cli("api-keys", "rotate-key", "--new-key-file", str(key_file)).returncode == 0


def test_cluster_rotation_with_the_key_staged_on_every_node(tmp_path: Path,
                                                             redis_url: str) -> None:
    store = {"backend": "redis", "url": redis_url}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    a = DaemonProcess(tmp_path / "a", store={**store, "node": "a"})
    b = DaemonProcess(tmp_path / "b", store={**store, "node": "b"})
    keys = {k["access_key_id"]: k["secret_access_key"] for k in (created(a), created(a))}
    b.config.api_key_path.parent.mkdir(mode=0o700, parents=True)
    shutil.copy2(a.config.api_key_path, b.config.api_key_path)
    assert secrets_as_a_node_reads_them(b.config) == keys  # b sees a's keys, in Redis
    new = KeyEncryptionKey.generate()
    for node in (a, b):
        replace_key_file(companion(node.config.api_key_path, ".new"), new)
    assert "2 secret(s) re-encrypted" in a.cli("api-keys", "rotate-key").stdout
    # b still has the old key in api.key_file, and reads the new one staged beside it.
    assert read_key_file(b.config.api_key_path).id != new.id
    assert secrets_as_a_node_reads_them(b.config) == keys
    assert "0 secret(s) re-encrypted" in b.cli("api-keys", "rotate-key").stdout
    for node in (a, b):
        assert read_key_file(node.config.api_key_path).id == new.id
        assert not companion(node.config.api_key_path, ".new").exists()
        assert secrets_as_a_node_reads_them(node.config) == keys
