"""DANE certificate matching (RFC 7672, RFC 6698 parameters) on generated certificates."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from smtprelay.delivery.dane import TLSARecord, check, matches, peer_chain
from tests.tlspeers import Issued, Issuer


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("dane-ca"))


def spki(der_or_issued: Issued | bytes) -> bytes:
    from cryptography import x509
    cert = (der_or_issued.cert if isinstance(der_or_issued, Issued)
            else x509.load_der_x509_certificate(der_or_issued))
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(("selector", "mtype"), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1),
                                                 (1, 2)])
def test_dane_ee_every_selector_and_matching_type(issuer: Issuer, selector: int,
                                                  mtype: int) -> None:
    leaf = issuer.issue("mx.a.test", self_signed=True)
    data = leaf.der if selector == 0 else spki(leaf)
    data = {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}[mtype]
    record = TLSARecord(3, selector, mtype, data)
    assert matches(leaf.der, record)
    # DANE-EE: the name and the dates do not matter.
    assert check([leaf.der], [record], "some.other.name") is None
    assert check([issuer.issue("mx.a.test").der], [record], "mx.a.test") is not None


def test_dane_ee_ignores_expiry(issuer: Issuer) -> None:
    leaf = issuer.issue("mx.a.test", expired=True)
    assert check([leaf.der], [TLSARecord(3, 1, 1, hashlib.sha256(spki(leaf)).digest())],
                 "mx.a.test") is None


def test_dane_ta_needs_the_anchor_in_the_chain_a_valid_path_and_the_name(
        issuer: Issuer, tmp_path: Path) -> None:
    leaf = issuer.issue("mx.a.test")
    anchor = TLSARecord(2, 1, 1, hashlib.sha256(spki(issuer.ca_der)).digest())
    assert check([leaf.der, issuer.ca_der], [anchor], "mx.a.test") is None
    problem = check([leaf.der, issuer.ca_der], [anchor], "mx.b.test")
    assert problem is not None and "DANE-TA" in problem
    assert check([leaf.der], [anchor], "mx.a.test") is not None  # anchor not sent
    expired = issuer.issue("mx.a.test", expired=True)
    assert check([expired.der, issuer.ca_der], [anchor], "mx.a.test") is not None
    other = Issuer(tmp_path / "other").issue("mx.a.test")
    assert check([other.der, issuer.ca_der], [anchor], "mx.a.test") is not None
    # 2 0 0: the whole anchor is in the record, so the server need not send it.
    assert check([leaf.der], [TLSARecord(2, 0, 0, issuer.ca_der)], "mx.a.test") is None


def test_unusable_records_authenticate_nothing(issuer: Issuer) -> None:
    leaf = issuer.issue("mx.a.test")
    digest = hashlib.sha256(spki(leaf)).digest()
    for record in (TLSARecord(0, 1, 1, digest), TLSARecord(1, 1, 1, digest),
                   TLSARecord(3, 2, 1, digest), TLSARecord(3, 1, 3, digest)):
        assert not record.usable
        assert check([leaf.der], [record], "mx.a.test") is not None


def test_no_certificate_is_no_match(issuer: Issuer) -> None:
    record = TLSARecord(3, 1, 1, b"\0" * 32)
    assert check([], [record], "mx.a.test") == "the server sent no certificate"
    assert peer_chain(None) == []
    assert check([b"not a certificate"], [record], "mx.a.test") is not None


def test_a_fixed_time_is_honoured(issuer: Issuer) -> None:
    leaf = issuer.issue("mx.a.test")
    anchor = TLSARecord(2, 0, 0, issuer.ca_der)
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365)
    assert check([leaf.der], [anchor], "mx.a.test", now=later) is not None
