"""Address syntax, identities, password hashing and lockout: pure functions, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.auth.lockout import Lockout
from smtprelay.infra.passwords import hash_password, is_supported_hash, verify_password
from smtprelay.mail.address import AddressError, parse_path
from smtprelay.policy.identities import covers, failing
from tests.support import examples


@pytest.mark.parametrize(("argument", "address"), [
    ("FROM:<a@Example.COM>", "a@example.com"),
    ("from: <a.b+c@example.com>", "a.b+c@example.com"),
    ("FROM:<>", ""),
    ('FROM:<"odd local"@example.com>', '"odd local"@example.com'),
    ("FROM:<a@[127.0.0.1]>", "a@[127.0.0.1]"),
    ("FROM:<a@[IPv6:::1]>", "a@[ipv6:::1]"),
])
def test_valid_senders(argument: str, address: str) -> None:
    assert parse_path(argument, keyword="FROM", sender=True).address == address


@pytest.mark.parametrize(("argument", "reply"), [
    ("FROM:<a@b", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("FROM:a@b", "501 5.5.4 Syntax: MAIL FROM:<address>"),
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


def test_identity_coverage() -> None:
    assert covers("example.com", "a@example.com")
    assert covers("example.com", "a@mail.EXAMPLE.com")
    assert not covers("example.com", "a@badexample.com")
    assert not covers("example.com", "a@example.com.evil.net")
    assert covers("news@example.org", "news@example.org")
    assert covers("news@example.org", "News+May@Example.org")
    assert not covers("news@example.org", "newsletter@example.org")
    assert not covers("news@example.org", "other@example.org")
    assert failing(["example.com"], ["a@example.com", "b@x.net", "b@x.net", "c@y.net"]) == [
        "b@x.net", "c@y.net"]


def test_password_hash_round_trip() -> None:
    stored = hash_password("correct horse", log_n=10)
    assert is_supported_hash(stored)
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("x", "scrypt$ln=10,r=8,p=1$@@@$@@@")
    assert not is_supported_hash("$2b$12$bcrypt")
    assert hash_password("same", log_n=10) != hash_password("same", log_n=10)


def test_lockout_per_ip_and_per_user_expires() -> None:
    now = [0.0]
    lockout = Lockout(per_ip=3, per_user=2, window=60, lockout=100, clock=lambda: now[0])
    lockout.failure("10.0.0.1", "alice")
    assert lockout.locked_for("10.0.0.1", "alice") == 0
    lockout.failure("10.0.0.2", "alice")
    assert lockout.locked_for("10.0.0.9", "alice") == 100  # the user, from anywhere
    assert lockout.locked_for("10.0.0.1", "bob") == 0
    for _ in range(3):
        lockout.failure("10.0.0.3", None)
    assert lockout.locked_for("10.0.0.3", "carol") == 100  # the address, for anyone
    now[0] = 101
    assert lockout.locked_for("10.0.0.3", "alice") == 0
    lockout.failure("10.0.0.4", "dave")
    now[0] = 200  # outside the window: the first failure no longer counts
    lockout.failure("10.0.0.4", "dave")
    assert lockout.locked_for("10.0.0.4", "dave") == 0


@settings(max_examples=examples(400), deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from([b"From: a@example.com", b"From : b@evil.test", b" folded", b"\tfolded",
                     b"Subject: x", b"not a header", b"", b"X-\xff: y", b":", b"A:"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    max_size=12))
def test_header_reader_sees_every_field_or_refuses(lines: list[bytes]) -> None:
    from smtprelay.mail.headers import MalformedHeader, parse_header_section

    data = b"\r\n".join(lines) + b"\r\n\r\nbody\r\n"
    try:
        fields = parse_header_section(data)
    except MalformedHeader as exc:
        assert exc.line >= 1
        return
    header_lines = data[: data.find(b"\r\n\r\n")].split(b"\r\n") if not data.startswith(
        b"\r\n") else []
    starts = [line for line in header_lines if line and line[:1] not in (b" ", b"\t")]
    # One field per line that starts a field: nothing is skipped or merged away.
    assert len(fields) == len(starts)
    assert all(f.start < f.end for f in fields)


def test_generated_credentials_are_safe_to_paste() -> None:
    from smtprelay.auth.credentials import generate_password, generate_username

    passwords = {generate_password() for _ in range(2000)}
    assert len(passwords) == 2000
    assert all(len(p) == 44 and p.isalnum() and p.isascii() for p in passwords)
    assert all(generate_username().isalnum() for _ in range(100))


@settings(max_examples=examples(1000), deadline=None)
@given(st.one_of(
    st.from_regex(r"[A-Za-z0-9 ._'-]{0,20}<[a-z0-9.+_-]{1,10}@[a-z0-9.-]{1,12}>", fullmatch=True),
    st.from_regex(r"[a-z0-9.+_'-]{1,10}@[a-z0-9.-]{1,12}", fullmatch=True),
    st.text(alphabet="ab@<>\\\" ,.;:()'", max_size=25)))
def test_simple_address_fast_path_agrees_with_the_full_parser(value: str) -> None:
    import email.utils

    from smtprelay.mail.headers import _SIMPLE_ADDRESS, addresses

    if _SIMPLE_ADDRESS.fullmatch(value) is None:
        return
    assert addresses(value) == [a for _, a in email.utils.getaddresses([value])]
