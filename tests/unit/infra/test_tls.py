"""The server profile's contexts (infra.tls): Mozilla's intermediate settings, and the
groups set through OpenSSL where Python's ssl has no call for them."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest

from smtprelay.infra import metrics, tls
from tests.certificates import certificate


def test_the_default_profile_is_mozillas_intermediate() -> None:
    ctx = tls.protocol_context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.options & ssl.OP_NO_COMPRESSION
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == tls.MOZILLA_INTERMEDIATE_CIPHERS.split(":")
    assert not any("CBC" in c["description"] for c in ctx.get_ciphers())
    assert tls.protocol_context(tls.Profile(min_version="1.3")).minimum_version \
        == ssl.TLSVersion.TLSv1_3


def test_groups_are_checked_by_openssl() -> None:
    assert tls.groups_problem(tls.MOZILLA_INTERMEDIATE_GROUPS) is None
    assert tls.groups_problem("X448:secp521r1:ffdhe2048") is None
    problem = tls.groups_problem("X25519:curve25519x:P-384")
    assert problem is not None and problem.startswith("tls.groups: OpenSSL")
    assert "knows no group 'curve25519x'" in problem, problem
    with pytest.raises(tls.TLSSetupError, match="knows no group 'nope'"):
        tls.set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "nope")


def test_a_python_that_cannot_set_groups_says_what_to_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not CPython, or no libssl in reach: an error naming tls.groups and the way out,
    not a silent fall back to OpenSSL's list."""
    monkeypatch.setattr(tls, "_libssl", tls.GroupsUnsupported("pypy is not CPython"))
    with pytest.raises(tls.TLSSetupError) as info:
        tls.protocol_context()
    assert str(info.value) == (
        "tls.groups: this Python cannot restrict the key-exchange groups (pypy is not "
        "CPython); set tls.groups: null to keep OpenSSL's own list, or run smtprelay on "
        "CPython with its ssl module")
    assert tls.protocol_context(tls.Profile(groups=None)) is not None


def test_the_pointer_is_checked_before_use() -> None:
    """The SSL_CTX read out of the SSLContext answers with the context's own options."""
    lib = tls._load_libssl()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_TICKET
    assert lib.get_options(tls._ssl_ctx(ctx, lib)) == ctx.options


def test_the_expiry_is_the_leafs_the_first_certificate_of_a_full_chain(
        tmp_path: Path) -> None:
    """A fullchain.pem has the leaf first, then intermediates that usually outlive it:
    the date clients refuse the certificate at is the leaf's."""
    leaf, _ = certificate(tmp_path / "leaf", "relay.test",
                          datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
    ca, _ = certificate(tmp_path / "ca", "ca.test",
                        datetime.datetime(2035, 1, 1, tzinfo=datetime.UTC))
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(leaf.read_bytes() + ca.read_bytes())
    assert tls.certificate_expiry(chain) == datetime.datetime(
        2030, 1, 1, tzinfo=datetime.UTC).timestamp()
    with pytest.raises(ValueError):
        tls.certificate_expiry(tmp_path / "leaf" / "key.pem")


def test_an_unreadable_certificate_leaves_the_expiry_it_had(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """record_expiry runs after the file was loaded into a context; if it was replaced
    by something unreadable meanwhile, the context in use keeps its certificate, so the
    metric keeps its date, and says why it was not updated."""
    from prometheus_client import REGISTRY

    name = "smtprelay_tls_certificate_expiry_timestamp_seconds"
    key = {"certificate": "tracking_domains.unit.test.cert_file"}
    cert, _ = certificate(tmp_path, "unit.test",
                          datetime.datetime(2032, 2, 2, tzinfo=datetime.UTC))
    tls.record_expiry(key["certificate"], cert)
    assert REGISTRY.get_sample_value(name, key) == datetime.datetime(
        2032, 2, 2, tzinfo=datetime.UTC).timestamp()
    try:
        cert.write_text("garbage\n")
        tls.record_expiry(key["certificate"], cert)
        assert REGISTRY.get_sample_value(name, key) == datetime.datetime(
            2032, 2, 2, tzinfo=datetime.UTC).timestamp()
        assert "tracking_domains.unit.test.cert_file: cannot read the expiry" in caplog.text
    finally:  # the registry is the process's: no series of this test for the next
        metrics.TLS_CERTIFICATE_EXPIRY.remove(key["certificate"])
