"""DKIM: signing-domain choice, the h= list, key and config errors, keygen, verification."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dkim as dkimpy
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.app.preflight import load_checked
from smtprelay.config import ConfigError, load_config
from smtprelay.transform import dkim
from tests.support import base_config, examples, write_config

MESSAGE = (b"Received: from app ([127.0.0.1]) by relay.test; Sun, 22 Nov 2026 17:47:42 +0000\r\n"
           b"From: App <app@example.com>\r\nTo: someone@example.net,\r\n  other@example.net\r\n"
           b"Subject: Hello   there\r\nDate: Sun, 22 Nov 2026 17:47:41 +0000\r\n"
           b"Message-ID: <1@example.com>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nX-Mailer: test\r\n\r\n"
           b"Hello.  \r\nA second line\t with tabs.\r\n\r\n\r\n")


def key(tmp_path: Path, kind: str = "rsa", domain: str = "example.com",
        selector: str = "r2026") -> dkim.SigningKey:
    path = tmp_path / f"{domain}.{selector}.pem"
    if not path.exists():
        dkim.write_key(path, dkim.generate_key("rsa" if kind == "rsa" else "ed25519"))
    algorithm, private = dkim.read_key(path)
    return dkim.SigningKey(domain, selector, algorithm, private, path)


def dkimpy_verifies(message: bytes, keys: list[dkim.SigningKey], index: int = 0) -> bool:
    """dkimpy's verifier on signature `index` (RSA only: its Ed25519 needs PyNaCl)."""
    records = {f"{k.selector}._domainkey.{k.domain}.".encode(): k.public_record().encode()
               for k in keys}
    try:
        return bool(dkimpy.DKIM(message).verify(
            idx=index, dnsfunc=lambda name, timeout=5: records.get(name)))
    except dkimpy.ValidationError:  # a body hash mismatch is raised, not returned
        return False


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> dkim.SigningKey:
    return key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def ed_key(tmp_path_factory: pytest.TempPathFactory) -> dkim.SigningKey:
    return key(tmp_path_factory.mktemp("keys"), "ed25519", selector="e2026")


# -- which domain signs -------------------------------------------------------------


def test_the_most_specific_identity_with_keys_signs(rsa_key: dkim.SigningKey) -> None:
    parent = rsa_key
    sub = dkim.SigningKey("news.example.com", "s1", parent.algorithm, parent.private_key,
                          parent.path)
    signer = dkim.Signer({"example.com": [parent], "news.example.com": [sub],
                          "empty.example.com": []})
    assert signer.keys_for("example.com") == (parent,)
    assert signer.keys_for("Mail.Example.COM.") == (parent,)
    assert signer.keys_for("news.example.com") == (sub,)
    assert signer.keys_for("eu.news.example.com") == (sub,)
    # An identity without keys does not hide its parent's.
    assert signer.keys_for("empty.example.com") == (parent,)
    assert signer.keys_for("notexample.com") == ()
    assert signer.keys_for("example.org") == ()
    assert dkim.Signer().keys_for("example.com") == ()


# -- what is signed -------------------------------------------------------------------


def h_tag(field: bytes) -> list[str]:
    value = re.search(rb"[; ]h=([^;]+);", field)
    assert value is not None, field
    return re.sub(rb"\s+", b"", value.group(1)).decode().split(":")


def test_h_lists_each_present_field_and_from_once_more(rsa_key: dkim.SigningKey) -> None:
    [field] = dkim.signatures(MESSAGE, [rsa_key])
    assert h_tag(field) == ["from", "to", "subject", "date", "message-id", "mime-version",
                            "content-type", "from"]
    many = (b"From: a@example.com\r\nTo: b@example.net\r\nTo: c@example.net\r\n"
            b"Cc: d@example.net\r\nReply-To: r@example.com\r\nList-Unsubscribe: <https://u>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nFeedback-ID: 1:2:3\r\n"
            b"\r\nbody\r\n")
    [field] = dkim.signatures(many, [rsa_key])
    assert h_tag(field) == ["from", "to", "to", "cc", "reply-to", "list-unsubscribe",
                            "list-unsubscribe-post", "feedback-id", "from"]


def test_obsolete_space_before_colon_is_signed(rsa_key: dkim.SigningKey) -> None:
    # RFC 5322 4.5.3 allows it and the relay accepts it; dkimpy's own parser does not.
    message = b"From: a@example.com\r\nSubject : spaced\r\nTo:b@example.net\r\n\r\nbody\r\n"
    [field] = dkim.signatures(message, [rsa_key])
    assert h_tag(field) == ["from", "to", "subject", "from"]
    assert dkim.header_fields(b"A: 1\r\n\tgoes on\r\nB : 2\r\n") == [
        (b"A", b" 1\r\n\tgoes on\r\n"), (b"B ", b" 2\r\n")]


def test_signature_field_shape(rsa_key: dkim.SigningKey, ed_key: dkim.SigningKey) -> None:
    signed = dkim.Signer().sign(MESSAGE, [rsa_key, ed_key], now=1795370000)
    assert signed.endswith(MESSAGE)
    fields = signed[:-len(MESSAGE)].decode()
    assert fields.count("DKIM-Signature:") == 2
    first, second = fields.split("DKIM-Signature:")[1:]
    for text, algorithm, selector in ((first, "rsa-sha256", "r2026"),
                                      (second, "ed25519-sha256", "e2026")):
        flat = re.sub(r"\r\n\s+", " ", text)
        assert f"a={algorithm};" in flat and f"s={selector};" in flat
        assert "c=relaxed/relaxed;" in flat and "d=example.com;" in flat
        assert "t=1795370000;" in flat
    for line in fields.split("\r\n"):
        assert len(line) <= 78, line


# -- verification ----------------------------------------------------------------------


def test_signed_message_verifies_and_one_changed_body_byte_fails(
        rsa_key: dkim.SigningKey) -> None:
    signed = dkim.Signer().sign(MESSAGE, [rsa_key])
    assert dkimpy_verifies(signed, [rsa_key])
    # Relaxed canonicalisation: whitespace changes inside lines do not matter...
    assert dkimpy_verifies(signed.replace(b"Hello.  \r\n", b"Hello. \r\n"), [rsa_key])
    # ...one changed letter does.
    tampered = signed.replace(b"A second line", b"A second linE")
    assert tampered != signed
    assert not dkimpy_verifies(tampered, [rsa_key])


def test_a_second_from_added_later_breaks_the_signature(rsa_key: dkim.SigningKey) -> None:
    signed = dkim.Signer().sign(MESSAGE, [rsa_key])
    end = signed.index(b"\r\n\r\n") + 2
    added = signed[:end] + b"From: ceo@example.com\r\n" + signed[end:]
    assert not dkimpy_verifies(added, [rsa_key])


def test_existing_signature_is_kept_and_ours_goes_first(rsa_key: dkim.SigningKey,
                                                        tmp_path: Path) -> None:
    client = key(tmp_path, domain="example.org", selector="client")
    client_signed = dkim.Signer().sign(MESSAGE, [client])
    signed = dkim.Signer().sign(client_signed, [rsa_key])
    assert signed.endswith(client_signed)
    assert dkimpy_verifies(signed, [rsa_key, client], index=0)
    assert dkimpy_verifies(signed, [rsa_key, client], index=1)


@pytest.mark.parametrize("body", [b"", b"\r\n", b"\r\n\r\n", b"no final line end",
                                  b" \t \r\n\t\r\n", b"x" * 200_000 + b"  \r\n" * 5])
def test_relaxed_body_matches_dkimpy(body: bytes) -> None:
    from dkim.canonicalization import Relaxed

    assert dkim.canonical_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=examples(1000), deadline=None)
@given(st.binary(max_size=300).map(lambda raw: raw.translate(
    bytes.maketrans(b"abcdefgh", b"  \t\t\r\n\r\n"))))
def test_relaxed_body_matches_dkimpy_on_any_blanks_and_line_ends(body: bytes) -> None:
    from dkim.canonicalization import Relaxed

    assert dkim.canonical_body(body) == Relaxed.canonicalize_body(body)


def test_big_message_with_pieces_of_whitespace_verifies(rsa_key: dkim.SigningKey) -> None:
    lines = [(f"line {i}" + " " * (i % 4) + "\t" * (i % 3 == 0) + "word  word").encode()
             for i in range(40_000)]
    message = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    assert len(message) > 500_000
    assert dkimpy_verifies(dkim.Signer().sign(message, [rsa_key]), [rsa_key])


# -- keys and configuration ------------------------------------------------------------


def config_with(tmp_path: Path, identities: object) -> Path:
    cfg = base_config(tmp_path / "var", identities=identities)
    return write_config(tmp_path / "smtprelay.yaml", cfg)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_checked(path)
    return info.value.problems


def test_key_files_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "dkim").mkdir()
    dkim.write_key(tmp_path / "dkim" / "r.pem", dkim.generate_key("rsa"))
    dkim.write_key(tmp_path / "dkim" / "e.pem", dkim.generate_key("ed25519"))
    path = config_with(tmp_path, {"Example.COM.": {
        "dkim": [{"selector": "r2026", "key_file": "dkim/r.pem"},
                 {"selector": "e2026", "key_file": "./dkim/e.pem"}],
        "mail_from_domain": "Bounce.Example.com"}})
    config = load_config(path).config
    identity = config.identities["example.com"]
    assert [k.key_file for k in identity.dkim] == [tmp_path / "dkim" / "r.pem",
                                                   tmp_path / "dkim" / "e.pem"]
    assert identity.mail_from_domain == "bounce.example.com"
    signer = dkim.Signer.from_config(config)
    assert [(k.selector, k.algorithm) for k in signer.keys_for("a.example.com")] == [
        ("r2026", "rsa-sha256"), ("e2026", "ed25519-sha256")]


def test_unusable_key_files_are_named_by_key_path(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "garbage.pem").write_text("not a key\n")
    (keys / "ec.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (keys / "locked.pem").write_bytes(dkim.generate_key("ed25519").private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    path = config_with(tmp_path, {"example.com": {"dkim": [
        {"selector": "a", "key_file": "keys/missing.pem"},
        {"selector": "b", "key_file": "keys/garbage.pem"},
        {"selector": "c", "key_file": "keys/ec.pem"},
        {"selector": "d", "key_file": "keys/locked.pem"},
        {"selector": "e", "key_file": "keys"}]}})
    found = problems(path)
    assert len(found) == 5, found
    assert found[0] == (
        f"identities.example.com.dkim[0].key_file: {keys}/missing.pem does not exist; create "
        f"it with `smtprelay dkim keygen example.com --selector a --out {keys}/missing.pem`, "
        "or fix the path")
    assert found[1].startswith("identities.example.com.dkim[1].key_file: ")
    assert "is not a PEM private key (RSA or Ed25519)" in found[1]
    assert found[2].startswith("identities.example.com.dkim[2].key_file: ")
    assert "holds an EC (ECDSA) key; DKIM signs with RSA" in found[2]
    assert "is encrypted" in found[3]
    assert "is a directory" in found[4]
    # keygen may run before the key exists: it loads the file without the keys.
    assert load_config(path).config.identities["example.com"].dkim


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_file_says_what_to_do(tmp_path: Path) -> None:
    dkim.write_key(tmp_path / "k.pem", dkim.generate_key("ed25519"))
    (tmp_path / "k.pem").chmod(0)
    found = problems(config_with(tmp_path, {"example.com": {"dkim": [
        {"selector": "a", "key_file": "k.pem"}]}}))
    assert found == [f"identities.example.com.dkim[0].key_file: {tmp_path}/k.pem cannot be "
                     "read (permission denied); make it readable by the user smtprelay runs "
                     "as (owned by it, mode 0600)"]


def test_identity_settings_are_checked(tmp_path: Path) -> None:
    found = problems(config_with(tmp_path, {
        "example.com": {"dkim": [{"selector": "bad selector!", "key_file": "k.pem"},
                                 {"selector": "r1", "key_file": "a.pem"},
                                 {"selector": "R1", "key_file": "b.pem"}],
                        "mail_from_domain": "bounce.example.org", "spf": True}}))
    text = "\n".join(found)
    assert "identities.example.com.dkim[0].selector: 'bad selector!' is not a DKIM selector" \
        in text
    assert "identities.example.com.spf: unknown key" in text
    found = problems(config_with(tmp_path, {
        "example.com": {"dkim": [{"selector": "r1", "key_file": "a.pem"},
                                 {"selector": "R1", "key_file": "b.pem"}],
                        "mail_from_domain": "bounce.example.org"}}))
    assert found == ["identities.example.com.dkim: selector 'r1' is listed twice"]
    found = problems(config_with(tmp_path, {"example.com": {
        "mail_from_domain": "bounce.example.org"}}))
    assert found == ["identities.example.com.mail_from_domain: bounce.example.org must be a "
                     "subdomain of example.com (such as bounce.example.com), as SES requires"]
    found = problems(config_with(tmp_path, {"news@example.com": {}}))
    assert found == ["identities: 'news@example.com' is not a domain name; the keys here are "
                     "domains (mail from an address is signed with its domain's keys)"]


def test_check_config_reports_a_missing_key_without_traceback(tmp_path: Path) -> None:
    path = config_with(tmp_path, {"example.com": {"dkim": [
        {"selector": "r2026", "key_file": "nope.pem"}]}})
    run = subprocess.run([sys.executable, "-m", "smtprelay", "check-config", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"identities.example.com.dkim[0].key_file: {tmp_path}/nope.pem does not exist" \
        in run.stderr


# -- smtprelay dkim keygen -------------------------------------------------------------


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtprelay", "dkim", "keygen", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_keygen_writes_the_key_and_prints_record_and_config(tmp_path: Path, kind: str) -> None:
    # The configuration may name the key before it exists.
    path = config_with(tmp_path, {"example.com": {"dkim": [
        {"selector": "s1", "key_file": "var/dkim/example.com.s1.pem"}]}})
    run = keygen("Example.com", "--selector", "s1", "--type", kind, "-c", str(path))
    assert run.returncode == 0, run.stderr
    key_path = tmp_path / "var" / "dkim" / "example.com.s1.pem"
    assert key_path.stat().st_mode & 0o777 == 0o600
    algorithm, private = dkim.read_key(key_path)
    assert algorithm == ("rsa-sha256" if kind == "rsa" else "ed25519-sha256")
    if kind == "rsa":
        assert private.key_size == 2048  # type: ignore[union-attr]
    [line] = [x for x in run.stdout.splitlines() if "._domainkey." in x and " IN " in x]
    name, ttl, klass, rdtype, value = line.split(None, 4)
    assert (name, ttl, klass, rdtype) == ("s1._domainkey.example.com.", "3600", "IN", "TXT")
    strings = re.findall(r'"([^"]*)"', value)
    assert all(len(s) <= 255 for s in strings)
    assert len(strings) == (2 if kind == "rsa" else 1)
    assert "".join(strings) == dkim.public_record(private)
    assert f"v=DKIM1; k={kind}; p=" in value
    snippet = run.stdout.split("identities:", 1)[1].split("\n\n", 1)[0]
    assert yaml.safe_load("identities:" + snippet) == {"identities": {"example.com": {
        "dkim": [{"selector": "s1", "key_file": str(key_path)}]}}}
    assert load_config(path).config.identities["example.com"].dkim
    # A second run never replaces the key.
    before = key_path.read_bytes()
    again = keygen("example.com", "--selector", "s1", "--type", kind, "-c", str(path))
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    assert key_path.read_bytes() == before


def test_keygen_with_out_and_bad_arguments(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    run = keygen("example.com", "--selector", "e1", "--type", "ed25519", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert dkim.read_key(out)[0] == "ed25519-sha256"
    bad = keygen("example.com", "--selector", "no good", "--out", str(tmp_path / "x.pem"))
    assert bad.returncode == 1 and "is not a DKIM selector" in bad.stderr
    bad = keygen("not a domain", "--selector", "s", "--out", str(tmp_path / "x.pem"))
    assert bad.returncode == 1 and "is not a domain name" in bad.stderr
    env = {k: v for k, v in os.environ.items() if k != "SMTPRELAY_CONFIG"}
    bad = subprocess.run([sys.executable, "-m", "smtprelay", "dkim", "keygen", "example.com",
                          "--selector", "s"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert bad.returncode == 1 and "pass -c FILE" in bad.stderr
    assert not (tmp_path / "x.pem").exists()


def test_signing_with_the_fields_already_read_gives_the_same_signatures(tmp_path: Path) -> None:
    from smtprelay.mail.headers import parse_header_section
    data = (b"From: App <app@example.com>\r\nTo: a@example.net,\r\n\tb@example.net\r\n"
            b"Subject : folded\r\n  twice\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\r\nhi\r\n")
    keys = [key(tmp_path, "ed25519", selector="e"), key(tmp_path, "rsa", selector="r")]
    assert dkim.signatures(data, keys, now=1700000000,
                           fields=parse_header_section(data)) \
        == dkim.signatures(data, keys, now=1700000000)
