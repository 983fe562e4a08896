"""smtprelay.mail.address: the one way addresses are split and compared, and SMTP path
syntax (MAIL FROM and RCPT TO arguments), fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.bounces.return_path import mail_from_domain_for
from smtprelay.config.sets import is_simulator_address
from smtprelay.delivery.scheduler import recipient_domain
from smtprelay.mail.address import Address, AddressError, domain_of, local_of, parse_path
from smtprelay.policy.identities import covers
from smtprelay.policy.suppression import normalise
from tests.support import examples


@pytest.mark.parametrize(("argument", "address"), [
    ("FROM:<a@Example.COM>", "a@example.com"),
    ("from: <a.b+c@example.com>", "a.b+c@example.com"),
    ("FROM:<>", ""),
    ('FROM:<"odd local"@example.com>', '"odd local"@example.com'),
    ("FROM:<a@[127.0.0.1]>", "a@[127.0.0.1]"),
    ("FROM:<a@[IPv6:::1]>", "a@[ipv6:::1]"),
    # Without brackets, as the SES guide's command-line session and Postfix take it.
    ("FROM:a@b", "a@b"),
    ("FROM: sender@Example.com", "sender@example.com"),
    ("from:  a@b SIZE=10", "a@b"),
])
def test_valid_senders(argument: str, address: str) -> None:
    assert parse_path(argument, keyword="FROM", sender=True).address == address


@pytest.mark.parametrize(("argument", "reply"), [
    ("FROM:<a@b", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("FROM:a@b>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("FROM: a<@b", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("FROM:", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("FROM: a..b@example.com", "501 5.1.7 Bad sender address syntax: invalid local part"),
    ("TO:<a@b>", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("FROM:<@x:a@b>", "501 5.1.7 Bad sender address syntax: source routes are not accepted"),
    ("FROM:<" + "a" * 65 + "@example.com>",
     "501 5.1.7 Bad sender address syntax: the local part is longer than 64 octets"),
    ("FROM:<" + "a" * 300 + "@example.com>",
     "501 5.1.7 Bad sender address syntax: the address is longer than 254 octets"),
    ("FROM:<a..b@example.com>", "501 5.1.7 Bad sender address syntax: invalid local part"),
    ("FROM:<a@-x.com>", "501 5.1.7 Bad sender address syntax: invalid domain"),
    ("FROM:<a@[1.2.3]>", "501 5.1.7 Bad sender address syntax: invalid address literal"),
    ("FROM:<jösé@example.com>",
     "553 5.6.7 Error: a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"),
])
def test_invalid_senders(argument: str, reply: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_path(argument, keyword="FROM", sender=True)
    assert f"{info.value.reply.code} {info.value.reply.text}" == reply


def test_utf8_address_with_smtputf8_and_params() -> None:
    path = parse_path("FROM:<jösé@exämple.com> SMTPUTF8 SIZE=100 BODY=8BITMIME",
                      keyword="FROM", sender=True)
    assert path.address == "jösé@exämple.com"
    assert path.params == {"SMTPUTF8": None, "SIZE": "100", "BODY": "8BITMIME"}
    with pytest.raises(AddressError):
        parse_path("TO:<>", keyword="TO", sender=False)


@settings(max_examples=examples(400), deadline=None)
@given(st.text(max_size=300))
def test_parser_only_ever_raises_address_error(argument: str) -> None:
    try:
        result = parse_path(argument, keyword="FROM", sender=True)
    except AddressError as exc:
        assert 500 <= exc.reply.code < 600
    else:
        assert result.address == "" or "@" in result.address


@pytest.mark.parametrize(("text", "local", "domain"), [
    ("App@Example.COM.", "App", "example.com"),
    ('"a@b"@Example.org', '"a@b"', "example.org"),
    ("no-at-sign", "", "no-at-sign"),
    ("x@", "x", ""),
])
def test_address_splits_at_the_last_at_and_normalises_only_the_domain(
        text: str, local: str, domain: str) -> None:
    address = Address.parse(text)
    assert (address.local, address.domain) == (local, domain)
    assert domain_of(text) == domain
    assert local_of(text) == (local if "@" in text else "")


def test_every_stage_reads_a_trailing_dot_domain_alike() -> None:
    assert recipient_domain("a@Dest.Example.") == "dest.example"
    assert is_simulator_address("bounce@Simulator.Test.", "simulator.test")
    assert covers("example.com", "app@News.Example.com.")
    assert normalise("Gone@Example.NET.") == "Gone@example.net"
    assert mail_from_domain_for("app@Example.com.", {"example.com": "bounce.example.com"}) \
        == "bounce.example.com"
