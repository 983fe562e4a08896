"""Abuse dialogs over real sockets, chasquid style: exact bytes in, exact replies out.

Every script is followed by proof that nothing else was lost: where the session
survives, a good message in the same session; always a good message in a fresh
session; and then the spool holds exactly the acknowledged good messages.
"""

from __future__ import annotations

import socket
import ssl
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from smtprelay.auth.credentials import CredentialStore
from tests.e2e.dialog import (
    EVIL_MARKER,
    GOOD_MARKER,
    Accepted,
    Closed,
    Dialog,
    Expect,
    Send,
    Silent,
    StartTLS,
    Step,
    b64,
    ehlo_plain,
    ehlo_tls,
    fresh_good_session,
    good_body,
    good_message,
    login,
    padded,
    plain,
    starttls,
    tls_login,
)
from tests.support import Credential, RunningRelay, relay_fixture, running, spooled

# The table's smuggling cases check the refusal of limits.bare_line_endings: reject;
# test_bare_line_endings.py checks the default, normalize, with the same endings.
relay = relay_fixture(limits={"bare_line_endings": "reject"})

MAIL_OK = Expect(250, "2.1.0 Ok")
RCPT_OK = Expect(250, "2.1.5 Ok")
GO_AHEAD = Expect(354, "End data with <CR><LF>.<CR><LF>")
OK = Expect(250, "2.0.0 Ok")
BYE = Expect(221, "2.0.0 Bye")
AUTH_OK = Expect(235, "2.7.0 Authentication successful")
AUTH_INVALID = Expect(535, "5.7.8 Authentication Credentials Invalid")
BAD_BASE64 = Expect(501, "5.5.2 Cannot decode response")
TLS_REQUIRED = Expect(530, "5.7.0 Must issue a STARTTLS command first")
AUTH_REQUIRED = Expect(530, "5.7.0 Authentication required")
TOO_BIG = Expect(552, "5.3.4 Message is too long.")
BARE_EOL = Expect(554, "5.6.0 Message rejected: bare CR or LF in message data; "
                       "lines must end with CRLF")
LONG_LINE = Expect(554, "5.6.0 Message rejected: a line is longer than 998 octets "
                        "(RFC 5321 4.5.3.1.6)")
TIMEOUT = Expect(451, "4.4.2 Timeout waiting for data from client")
NOT_VERIFIED = "5.7.1 Message rejected: Email address is not verified. " \
               "The following identities failed the check: "
USER_PROMPT = Expect(334, "VXNlcm5hbWU6")
PASS_PROMPT = Expect(334, "UGFzc3dvcmQ6")


def not_verified(*addresses: str) -> Expect:
    return Expect(554, NOT_VERIFIED + ", ".join(addresses))


def evil_body(headers: str = "From: app@example.com\r\n", body: bytes = b"") -> bytes:
    return (headers + "To: someone@example.net\r\nSubject: EVIL\r\n\r\n").encode() \
        + EVIL_MARKER + b"\r\n" + body


def mail_rcpt_data(sender: str = "app@example.com") -> list[Step]:
    return [Send(f"MAIL FROM:<{sender}>\r\n".encode()), MAIL_OK,
            Send(b"RCPT TO:<someone@example.net>\r\n"), RCPT_OK, Send(b"DATA\r\n"), GO_AHEAD]


def check_spool(relay: RunningRelay, accepted: list[str],
                rcpts: list[int] | None = None) -> None:
    """The spool holds exactly the acknowledged good messages and nothing of the bad ones."""
    entries = spooled(relay.config)
    assert sorted(e["id"] for e in entries) == sorted(accepted)
    for entry in entries:
        assert GOOD_MARKER in entry["data"], entry
        assert EVIL_MARKER not in entry["data"], entry
        assert "evil" not in entry["mail_from"]
        assert not any("evil" in r or "victim" in r for r in entry["recipients"]), entry
    if rcpts is not None:
        assert sorted(len(e["recipients"]) for e in entries) == sorted(rcpts)
    else:
        assert all(e["recipients"] == ["someone@example.net"] for e in entries), entries


def finish(relay: RunningRelay, cred: Credential, dialog: Dialog,
           rcpts: list[int] | None = None) -> None:
    """A good message in a fresh session, then the spool must hold exactly the good ones."""
    dialog.close()
    accepted = [*dialog.accepted, fresh_good_session(
        relay.submission_port, cred, size=relay.config.limits.max_message_size)]
    check_spool(relay, accepted, rcpts)


# -- the table ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    script: Callable[[Credential], list[Step]]
    listener: str = "submission"
    # Recipient counts of every spooled message (the fresh session's 1 included) when
    # not all of them go to the one default recipient.
    rcpts: list[int] | None = None


def _auth_before_starttls(cred: Credential) -> list[Step]:
    return [*ehlo_plain(),
            Send(b"AUTH PLAIN " + plain(cred.username, cred.password) + b"\r\n"), TLS_REQUIRED,
            Send(b"AUTH LOGIN\r\n"), TLS_REQUIRED,
            *tls_login(cred), *good_message()]


def _auth_plain_bad_base64(cred: Credential) -> list[Step]:
    return [*starttls(), Send(b"AUTH PLAIN AGVY!!!Zm9v\r\n"), BAD_BASE64,
            Send(b"AUTH PLAIN \xff\xfe\r\n"), Expect(500, "5.5.2 Error: command not recognized"),
            *login(cred), *good_message()]


def _auth_plain_bad_base64_continuation(cred: Credential) -> list[Step]:
    return [*starttls(), Send(b"AUTH PLAIN\r\n"), Expect(334, ""), Send(b"%%%notbase64%%%\r\n"),
            BAD_BASE64,
            # Valid base64 that is not authzid NUL authcid NUL password.
            Send(b"AUTH PLAIN " + b64("no-nuls-here") + b"\r\n"), BAD_BASE64,
            Send(b"AUTH PLAIN\r\n"), Expect(334, ""), Send(b"*\r\n"),
            Expect(501, "5.0.0 Authentication cancelled"),
            *login(cred), *good_message()]


def _auth_login_bad_base64(cred: Credential) -> list[Step]:
    return [*starttls(),
            Send(b"AUTH LOGIN\r\n"), USER_PROMPT, Send(b"not base64!\r\n"), BAD_BASE64,
            Send(b"AUTH LOGIN\r\n"), USER_PROMPT, Send(b64(cred.username) + b"\r\n"),
            PASS_PROMPT, Send(b"c2VjcmV0!\r\n"), BAD_BASE64,
            Send(b"AUTH LOGIN " + b64(cred.username) + b"\r\n"), PASS_PROMPT,
            Send(b64(cred.password) + b"\r\n"), AUTH_OK, *good_message()]


def _wrong_password(cred: Credential) -> list[Step]:
    return [*starttls(), Send(b"AUTH PLAIN " + plain(cred.username, "wrong") + b"\r\n"),
            AUTH_INVALID,
            Send(b"AUTH LOGIN\r\n"), USER_PROMPT, Send(b64(cred.username) + b"\r\n"),
            PASS_PROMPT, Send(b64(cred.password + "x") + b"\r\n"), AUTH_INVALID,
            # Still unauthenticated: no mail.
            Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED,
            *login(cred), *good_message()]


def _unknown_user(cred: Credential) -> list[Step]:
    return [*starttls(),
            Send(b"AUTH PLAIN " + plain("SRNOSUCHUSER000000000", cred.password) + b"\r\n"),
            AUTH_INVALID,
            # Proxy authorisation (authzid differs from authcid) is refused too.
            Send(b"AUTH PLAIN " + b64(f"someoneelse\0{cred.username}\0{cred.password}")
                 + b"\r\n"), AUTH_INVALID,
            Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED,
            *login(cred), *good_message()]


def _mail_before_auth(cred: Credential) -> list[Step]:
    # Before STARTTLS the client is told what it must do first, as the docs say.
    return [*ehlo_plain(), Send(b"MAIL FROM:<app@example.com>\r\n"), TLS_REQUIRED,
            Send(b"RCPT TO:<someone@example.net>\r\n"),
            Expect(503, "5.5.1 Error: need MAIL command"),
            *starttls(), Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED,
            Send(b"DATA\r\n"), Expect(503, "5.5.1 Error: need MAIL command"),
            *login(cred), *good_message()]


def _implicit_mail_before_auth(cred: Credential) -> list[Step]:
    return [*ehlo_tls(), Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED,
            Send(b"RCPT TO:<someone@example.net>\r\n"),
            Expect(503, "5.5.1 Error: need MAIL command"),
            *login(cred), *good_message()]


def _too_many_recipients(cred: Credential) -> list[Step]:
    steps: list[Step] = [*tls_login(cred), Send(b"MAIL FROM:<app@example.com>\r\n"), MAIL_OK]
    for i in range(50):
        steps += [Send(f"RCPT TO:<r{i}@example.net>\r\n".encode()), RCPT_OK]
    steps += [Send(b"RCPT TO:<r50@example.net>\r\n"), Expect(452, "4.5.3 Too many recipients"),
              # A repeat of an accepted recipient is not a 51st one.
              Send(b"RCPT TO:<R7@EXAMPLE.NET>\r\n"), RCPT_OK,
              Send(b"DATA\r\n"), GO_AHEAD, Send(good_body(0) + b".\r\n"), Accepted()]
    return steps


def _malformed(command: bytes, reply: Expect) -> Callable[[Credential], list[Step]]:
    def script(cred: Credential) -> list[Step]:
        before: list[Step] = []
        if command.startswith(b"RCPT"):
            before = [Send(b"MAIL FROM:<app@example.com>\r\n"), MAIL_OK]
        after: list[Step] = [Send(b"RSET\r\n"), OK] if before else []
        return [*tls_login(cred), *before, Send(command + b"\r\n"), reply, *after,
                *good_message()]
    return script


LOCAL_300 = "l" * 300
SIZE_OVER = 10 * 1024 * 1024 + 1


def _starttls_twice(cred: Credential) -> list[Step]:
    return [*tls_login(cred), Send(b"STARTTLS\r\n"),
            Expect(503, "5.5.1 Error: TLS already active"), *good_message()]


def _implicit_starttls(cred: Credential) -> list[Step]:
    return [*ehlo_tls(), Send(b"STARTTLS\r\n"), Expect(503, "5.5.1 Error: TLS already active"),
            *login(cred), *good_message()]


def _starttls_injection(cred: Credential) -> list[Step]:
    # RFC 3207 6 / CVE-2011-0411: the RSET (and the MAIL) sent in clear together with
    # STARTTLS must be thrown away, never answered inside the TLS session.
    return [*ehlo_plain(),
            Send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.com>\r\n"),
            Expect(220, "2.0.0 Ready to start TLS"), StartTLS(), Silent(0.5),
            *ehlo_tls(), *login(cred), *good_message()]


def _smuggle(ending: bytes, padding: int = 0) -> Callable[[Credential], list[Step]]:
    """A body with a fake end of data `ending` and a smuggled second transaction
    (after `padding` lines of 78 octets: a message longer than a line takes another
    path through the checks)."""
    smuggled = (b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
                b"From: evil@example.com\r\n\r\n" + EVIL_MARKER + b" smuggled\r\n")
    lines = b"x" * 76 + b"\r\n"

    def script(cred: Credential) -> list[Step]:
        body = lines * padding + b"hi" + ending + smuggled
        return [*tls_login(cred), *mail_rcpt_data(),
                Send(evil_body(body=body) + b".\r\n"), BARE_EOL,
                # Exactly one reply: the next command's answer comes straight after.
                Send(b"NOOP\r\n"), OK, *good_message()]
    return script


def _identity_mail_from(cred: Credential) -> list[Step]:
    return [*tls_login(cred),
            Send(b"MAIL FROM:<evil@evil.test>\r\n"), not_verified("evil@evil.test"),
            Send(b"MAIL FROM:<other@example.org>\r\n"), not_verified("other@example.org"),
            Send(b"MAIL FROM:<news@evilexample.com>\r\n"), not_verified("news@evilexample.com"),
            Send(b"MAIL FROM:<news@example.org.evil.test>\r\n"),
            not_verified("news@example.org.evil.test"),
            Send(b"MAIL FROM:<newsletter@example.org>\r\n"), not_verified("newsletter@example.org"),
            Send(b"RCPT TO:<someone@example.net>\r\n"),
            Expect(503, "5.5.1 Error: need MAIL command"),
            *good_message()]


def _identity_plus_label(cred: Credential) -> list[Step]:
    return [*tls_login(cred),
            *good_message(0, sender="news+x@example.org"),
            *good_message(1, sender="News@Example.ORG"),
            *good_message(2, sender="app@mail.example.com"),
            Send(b"MAIL FROM:<news-x@example.org>\r\n"), not_verified("news-x@example.org"),
            Send(b"MAIL FROM:<x+news@example.org>\r\n"), not_verified("x+news@example.org")]


def _header_identity(headers: str, *failing: str) -> Callable[[Credential], list[Step]]:
    def script(cred: Credential) -> list[Step]:
        return [*tls_login(cred), *mail_rcpt_data(),
                Send(evil_body(headers) + b".\r\n"), not_verified(*failing), *good_message()]
    return script


def _dot_stuffing_and_split_terminator(cred: Credential) -> list[Step]:
    # A dot-stuffed line is unstuffed, a lone "." line inside the body cannot end it,
    # and the end of data arriving byte by byte is still found exactly once.
    return [*tls_login(cred), *mail_rcpt_data(),
            Send(good_body(0) + b"..leading dot\r\n...\r\n"), Silent(0.1),
            Send(b"\r"), Silent(0.1), Send(b"\n."), Silent(0.1), Send(b"\r"), Silent(0.1),
            Send(b"\n"), Accepted(), Send(b"NOOP\r\n"), OK]


def _no_from(cred: Credential) -> list[Step]:
    return [*tls_login(cred), *mail_rcpt_data(),
            Send(b"To: someone@example.net\r\nSubject: EVIL\r\n\r\n" + EVIL_MARKER + b"\r\n.\r\n"),
            Expect(554, "5.6.0 Message rejected: the message has no From header"),
            *mail_rcpt_data(),
            # A From that is only in the body is no From header either.
            Send(b"Subject: EVIL\r\n\r\nFrom: app@example.com\r\n" + EVIL_MARKER + b"\r\n.\r\n"),
            Expect(554, "5.6.0 Message rejected: the message has no From header"),
            *good_message()]


def _pipelining(cred: Credential) -> list[Step]:
    return [*tls_login(cred),
            Send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<someone@example.net>\r\n"
                 b"RCPT TO:<bad@@example.net>\r\nRCPT TO:<other@example.net>\r\nDATA\r\n"),
            MAIL_OK, RCPT_OK,
            Expect(501, "5.1.3 Bad recipient address syntax: invalid local part"),
            RCPT_OK, GO_AHEAD,
            Send(good_body(0) + b".\r\nMAIL FROM:<app@example.com>\r\n"
                 b"RCPT TO:<someone@example.net>\r\nDATA\r\n"),
            Accepted(), MAIL_OK, RCPT_OK, GO_AHEAD,
            Send(good_body(1) + b".\r\nNOOP\r\nQUIT\r\n"), Accepted(), OK, BYE, Closed()]


def _before_ehlo(cred: Credential) -> list[Step]:
    need_helo = Expect(503, "5.5.1 Error: send HELO/EHLO first")
    return [Send(b"MAIL FROM:<app@example.com>\r\n"), need_helo,
            Send(b"AUTH PLAIN " + plain(cred.username, cred.password) + b"\r\n"), need_helo,
            Send(b"RCPT TO:<someone@example.net>\r\n"),
            Expect(503, "5.5.1 Error: need MAIL command"),
            Send(b"DATA\r\n"), Expect(503, "5.5.1 Error: need MAIL command"),
            Send(b"EHLO\r\n"), Expect(501, "5.5.4 Syntax: EHLO hostname"),
            Send(b"NOOP\r\n"), OK,
            *tls_login(cred), Send(b"DATA\r\n"), Expect(503, "5.5.1 Error: need MAIL command"),
            Send(b"MAIL FROM:<app@example.com>\r\n"), MAIL_OK,
            Send(b"DATA\r\n"), Expect(503, "5.5.1 Error: need RCPT command"),
            Send(b"MAIL FROM:<app@example.com>\r\n"),
            Expect(503, "5.5.1 Error: nested MAIL command"),
            Send(b"AUTH PLAIN " + plain(cred.username, cred.password) + b"\r\n"),
            Expect(503, "5.5.1 Error: already authenticated"),
            Send(b"RSET\r\n"), OK, *good_message()]


def _unknown_commands(cred: Credential) -> list[Step]:
    unrecognized = Expect(500, "5.5.2 Error: command not recognized")
    return [*tls_login(cred),
            Send(b"XYZZY\r\n"), unrecognized,
            Send(b"\xff\xfe\xfd garbage\r\n"), unrecognized,
            Send(b"\r\n"), unrecognized,
            Send(b"EXPN staff\r\n"), Expect(502, "5.5.1 Error: command not implemented"),
            Send(b"VRFY someone\r\n"),
            Expect(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery"),
            Send(b"MAIL FROM:<app@example.com> FOO=BAR\r\n"),
            Expect(555, "5.5.4 Unsupported option"),
            Send(b"MAIL FROM:<app@example.com> SIZE=lots\r\n"),
            Expect(501, "5.5.4 Error: SIZE takes a number of octets"),
            Send(b"NOOP\r\n"), OK, *good_message()]


def _long_command(cred: Credential) -> list[Step]:
    return [*tls_login(cred), Send(b"NOOP " + b"x" * 20000 + b"\r\n"),
            Expect(500, "5.5.2 Error: line too long"), Send(b"NOOP\r\n"), OK, *good_message()]


def _data_line_too_long(cred: Credential) -> list[Step]:
    return [*tls_login(cred), *mail_rcpt_data(),
            Send(evil_body(body=b"x" * 999 + b"\r\n") + b".\r\n"), LONG_LINE,
            # 998 characters is the limit, not over it.
            *mail_rcpt_data(), Send(good_body(0) + b"z" * 998 + b"\r\n.\r\n"), Accepted()]


CASES = [
    Case("auth_before_starttls", _auth_before_starttls),
    Case("auth_plain_bad_base64", _auth_plain_bad_base64),
    Case("auth_plain_bad_base64_continuation", _auth_plain_bad_base64_continuation),
    Case("auth_login_bad_base64", _auth_login_bad_base64),
    Case("wrong_password", _wrong_password),
    Case("unknown_user", _unknown_user),
    Case("mail_before_auth", _mail_before_auth),
    Case("implicit_tls_mail_before_auth", _implicit_mail_before_auth, "submissions"),
    Case("rcpt_51_recipients", _too_many_recipients, rcpts=[50, 1]),
    Case("mail_unclosed_bracket",
         _malformed(b"MAIL FROM:<app@example.com",
                    Expect(501, "5.5.4 Syntax: MAIL FROM:<address>"))),
    Case("rcpt_unclosed_bracket",
         _malformed(b"RCPT TO:<a@b", Expect(501, "5.5.4 Syntax: RCPT TO:<address>"))),
    Case("rcpt_source_route",
         _malformed(b"RCPT TO:<@x:a@b>", Expect(
             501, "5.1.3 Bad recipient address syntax: source routes are not accepted"))),
    Case("mail_source_route",
         _malformed(b"MAIL FROM:<@relay.test:app@example.com>", Expect(
             501, "5.1.7 Bad sender address syntax: source routes are not accepted"))),
    Case("rcpt_local_part_300",
         _malformed(f"RCPT TO:<{LOCAL_300}@example.net>".encode(), Expect(
             501, "5.1.3 Bad recipient address syntax: the address is longer than 254 octets"))),
    Case("rcpt_local_part_65",
         _malformed(f"RCPT TO:<{'l' * 65}@example.net>".encode(), Expect(
             501, "5.1.3 Bad recipient address syntax: the local part is longer than 64 octets"
         ))),
    Case("mail_local_part_300",
         _malformed(f"MAIL FROM:<{LOCAL_300}@example.com>".encode(), Expect(
             501, "5.1.7 Bad sender address syntax: the address is longer than 254 octets"))),
    Case("mail_nul_byte",
         _malformed(b"MAIL FROM:<app\0@example.com>",
                    Expect(500, "5.5.2 Error: NUL character in command"))),
    Case("rcpt_nul_byte",
         _malformed(b"RCPT TO:<someone@example.net>\0EVIL",
                    Expect(500, "5.5.2 Error: NUL character in command"))),
    Case("rcpt_no_domain",
         _malformed(b"RCPT TO:<someone>", Expect(
             501, "5.1.3 Bad recipient address syntax: expected local-part@domain"))),
    Case("rcpt_non_ascii_without_smtputf8",
         _malformed("RCPT TO:<jösé@example.net>".encode(), Expect(
             553, "5.6.7 Error: a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM"
         ))),
    Case("mail_size_over_limit",
         _malformed(f"MAIL FROM:<app@example.com> SIZE={SIZE_OVER}".encode(), TOO_BIG)),
    Case("data_line_over_998", _data_line_too_long),
    Case("smuggle_lf_dot_lf", _smuggle(b"\n.\n")),
    Case("smuggle_lf_dot_crlf", _smuggle(b"\n.\r\n")),
    Case("smuggle_crlf_dot_lf", _smuggle(b"\r\n.\n")),
    Case("smuggle_cr_dot_cr", _smuggle(b"\r.\r")),
    Case("smuggle_crlf_dot_cr", _smuggle(b"\r\n.\r")),
    Case("smuggle_bare_lf_line", _smuggle(b"\n")),
    # As many bare CR as bare LF: counting each alone cannot tell them from CRLF pairs.
    Case("smuggle_lf_dot_cr", _smuggle(b"\n.\r")),
    Case("smuggle_lf_dot_cr_long_message", _smuggle(b"\n.\r", padding=40)),
    Case("smuggle_lf_dot_lf_long_message", _smuggle(b"\n.\n", padding=40)),
    Case("starttls_twice", _starttls_twice),
    Case("implicit_tls_starttls", _implicit_starttls, "submissions"),
    Case("starttls_command_injection", _starttls_injection),
    Case("identity_mail_from", _identity_mail_from),
    Case("identity_plus_label", _identity_plus_label),
    Case("identity_from_header",
         _header_identity("From: Boss <boss@evil.test>\r\n", "boss@evil.test")),
    Case("identity_second_from_address",
         _header_identity("From: app@example.com, other@example.org, x@evil.test\r\n",
                          "other@example.org", "x@evil.test")),
    Case("identity_sender_header",
         _header_identity("From: app@example.com\r\nSender: evil@evil.test\r\n",
                          "evil@evil.test")),
    Case("identity_return_path_header",
         _header_identity("Return-Path: <bounce@evil.test>\r\nFrom: app@example.com\r\n",
                          "bounce@evil.test")),
    Case("identity_folded_from_header",
         _header_identity("From: \"App\"\r\n <app@evil.test>\r\n", "app@evil.test")),
    Case("identity_two_from_headers",
         _header_identity("From: app@example.com\r\nFrom: boss@evil.test\r\n",
                          "boss@evil.test")),
    Case("identity_display_name_spoof",
         _header_identity('From: "app@example.com" <boss@evil.test>\r\n', "boss@evil.test")),
    Case("identity_lowercase_header_name",
         _header_identity("FROM: app@example.com\r\nsender: boss@evil.test\r\n",
                          "boss@evil.test")),
    # RFC 5322 4.5.6 obs-from: "From" *WSP ":" is a From header every conformant
    # receiver parses, so it must not slip past the identity check.
    Case("identity_obs_from_space_before_colon",
         _header_identity("From: app@example.com\r\nFrom : boss@evil.test\r\n",
                          "boss@evil.test")),
    Case("identity_obs_from_tab_before_colon",
         _header_identity("From: app@example.com\r\nFrom\t: boss@evil.test\r\n",
                          "boss@evil.test")),
    Case("no_from_header", _no_from),
    Case("dot_stuffing_and_split_terminator", _dot_stuffing_and_split_terminator),
    Case("pipelining", _pipelining, rcpts=[2, 1, 1]),
    Case("commands_before_ehlo", _before_ehlo),
    Case("unknown_commands", _unknown_commands),
    Case("command_line_too_long", _long_command),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dialog(relay: RunningRelay, cred: Credential, case: Case) -> None:
    """One abuse from the table gets its exact reply and costs no good message."""
    port = relay.port(case.listener)
    with Dialog.connect(port, implicit_tls=case.listener == "submissions") as dialog:
        dialog.run(case.script(cred))
        finish(relay, cred, dialog, case.rcpts)


# -- dialogs that need their own relay or more than one socket ----------------------------

@pytest.mark.parametrize("size", [200 * 1024, 64 * 1024 + 1])
def test_data_over_limit_without_size(tmp_path: Path, size: int) -> None:
    """DATA over max_message_size without SIZE= gets 552 after the dot; the session goes on."""
    limit = 64 * 1024
    with running(tmp_path, limits={"max_message_size": "64k"}) as relay:
        cred = relay.credential()
        header = evil_body()
        line = b"x" * 78 + b"\r\n"
        body = header + line * ((size - len(header)) // len(line) + 1)
        assert len(body) > limit
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run([*tls_login(cred, size=limit), *mail_rcpt_data(),
                        Send(body + b".\r\n"), TOO_BIG,
                        Send(b"NOOP\r\n"), OK, *good_message(),
                        # Exactly at the limit is still fine.
                        *mail_rcpt_data(),
                        Send(padded(good_body(1), limit) + b".\r\n"), Accepted()])
            finish(relay, cred, dialog)
            # The limit is on what the client sends; the relay's own Received (and a
            # Message-ID or Date when missing) come on top.
            assert limit < max(len(e["data"]) for e in spooled(relay.config)) <= limit + 1024


def test_client_disconnects_mid_data(relay: RunningRelay, cred: Credential) -> None:
    """A client that hangs up in the middle of DATA leaves nothing in the spool."""
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([*tls_login(cred), *mail_rcpt_data(), Send(evil_body() + b"\r\n.")])
    time.sleep(0.2)
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([*tls_login(cred), *mail_rcpt_data(), Send(evil_body())])
        dialog.sock.shutdown(socket.SHUT_WR)  # half-close: EOF before the end of data
        dialog.run([Closed()])
    finish(relay, cred, dialog)


def test_client_stops_mid_data(tmp_path: Path) -> None:
    """A client that goes silent in the middle of DATA gets 451 4.4.2 and is disconnected."""
    with running(tmp_path, limits={"data_timeout": "1s", "idle_timeout": "30s"}) as relay:
        cred = relay.credential()
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run([*tls_login(cred), *mail_rcpt_data(), Send(evil_body() + b"half a line")])
            started = time.monotonic()
            dialog.run([TIMEOUT, Closed(within=5)])
            assert 0.5 < time.monotonic() - started < 5
            finish(relay, cred, dialog)


@pytest.mark.parametrize("stage", ["command", "data"])
def test_a_client_trickling_bytes_is_cut_off_at_the_whole_deadline(
        tmp_path: Path, stage: str) -> None:
    """Issue 16: the timeouts restarted with every chunk, so one byte every few seconds
    held a session for ever. Now a whole command line must arrive within idle_timeout
    and the whole of DATA within data_timeout (+ its size at min_data_rate)."""
    limits = {"idle_timeout": "2s", "data_timeout": "2s", "min_data_rate": "1k"}
    with running(tmp_path, limits=limits) as relay:
        cred = relay.credential()
        with Dialog.connect(relay.submission_port) as dialog:
            steps = [*tls_login(cred)] if stage == "command" else \
                [*tls_login(cred), *mail_rcpt_data()]
            dialog.run(steps)
            trickle = b"NOOP and then some more words\r\n" if stage == "command" \
                else evil_body()
            started = time.monotonic()
            answer = b""
            for byte in trickle:  # one byte every 0.2 s: each well inside the timeout
                try:
                    dialog.sock.sendall(bytes([byte]))
                    dialog.sock.settimeout(0.2)
                    answer += dialog.sock.recv(1024)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if answer:
                    break
            elapsed = time.monotonic() - started
            assert answer.startswith(b"451 4.4.2 Timeout waiting for data from client"), answer
            assert 1.5 < elapsed < 4.5  # the whole deadline, not a per-byte one
        finish(relay, cred, dialog)


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x00\x05hello", b"EHLO x\r\n" * 3,
                                     b"\x00" * 64 + b"\xff" * 64])
def test_tls_handshake_garbage(relay: RunningRelay, cred: Credential, garbage: bytes) -> None:
    """Garbage instead of a ClientHello (implicit TLS, after STARTTLS) drops only that client."""
    with socket.create_connection(("127.0.0.1", relay.submissions_port), timeout=10) as raw:
        dialog = Dialog(raw)
        dialog.run([Send(garbage), Closed(tls_alert=True)])
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([*ehlo_plain(), Send(b"STARTTLS\r\n"), Expect(220, "2.0.0 Ready to start TLS"),
                    Send(garbage), Closed(tls_alert=True)])
    # Both listeners still serve: a good message over each.
    with Dialog.connect(relay.submissions_port, implicit_tls=True) as dialog:
        dialog.run([*ehlo_tls(), *login(cred), *good_message(1)])
        finish(relay, cred, dialog)


def test_tls_handshake_stall(tmp_path: Path) -> None:
    """A client that never sends its ClientHello is dropped after tls_handshake_timeout."""
    with running(tmp_path, limits={"tls_handshake_timeout": "1s"}) as relay:
        cred = relay.credential()
        # Both stall at once (implicit TLS, and after STARTTLS), so their timeouts overlap.
        with socket.create_connection(("127.0.0.1", relay.submissions_port), timeout=10) as raw:
            started = time.monotonic()
            with Dialog.connect(relay.submission_port) as dialog:
                dialog.run([*ehlo_plain(), Send(b"STARTTLS\r\n"),
                            Expect(220, "2.0.0 Ready to start TLS")])
                Dialog(raw).run([Closed(within=8)])
                assert time.monotonic() - started < 8
                dialog.run([Closed(within=8)])
        with Dialog.connect(relay.submissions_port, implicit_tls=True) as dialog:
            dialog.run([*ehlo_tls(), *login(cred), *good_message(1)])
            finish(relay, cred, dialog)


def test_auth_lockout_per_ip(tmp_path: Path) -> None:
    """After max_failures_per_ip wrong passwords even the right one gets 454 from that IP."""
    with running(tmp_path, auth={"max_failures_per_ip": 3}) as relay:
        cred = relay.credential()
        locked = Expect(454, "4.7.0 Too many failed authentication attempts, try again later")
        wrong = Send(b"AUTH PLAIN " + plain(cred.username, "wrong") + b"\r\n")
        with Dialog.connect(relay.submission_port, source="127.0.0.9") as dialog:
            dialog.run([*starttls(), wrong, AUTH_INVALID, wrong, AUTH_INVALID, wrong, AUTH_INVALID,
                        *login(cred)[:1], locked,
                        Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED])
        with Dialog.connect(relay.submission_port, source="127.0.0.9") as dialog:
            dialog.run([*starttls(), *login(cred)[:1], locked])
        # Another address is not locked out, and the user itself is not either.
        accepted = fresh_good_session(relay.submission_port, cred, source="127.0.0.10")
        check_spool(relay, [accepted])


def test_auth_lockout_per_user(tmp_path: Path) -> None:
    """Failures for one user name from several addresses lock that user, not the others."""
    with running(tmp_path, auth={"max_failures_per_user_everywhere": 3,
                                 "user_lockout_min_addresses": 3,
                                 "max_failures_per_ip": 100}) as relay:
        cred, other = relay.credential(), relay.credential()
        for source in ("127.0.0.11", "127.0.0.12", "127.0.0.13"):
            with Dialog.connect(relay.submission_port, source=source) as dialog:
                dialog.run([*starttls(), Send(b"AUTH PLAIN " + plain(cred.username, "nope")
                                              + b"\r\n"), AUTH_INVALID])
        with Dialog.connect(relay.submission_port, source="127.0.0.14") as dialog:
            dialog.run([*starttls(), *login(cred)[:1],
                        Expect(454, "4.7.0 Too many failed authentication attempts, "
                                    "try again later"),
                        *login(other), *good_message()])
            finish(relay, other, dialog)


def test_a_stranger_locks_a_user_out_only_at_the_strangers_own_address(
        tmp_path: Path) -> None:
    """Before: 10 wrong passwords from anywhere locked a known user out for 15 minutes."""
    with running(tmp_path, auth={"max_failures_per_user": 3,
                                 "max_failures_per_ip": 100}) as relay:
        cred = relay.credential()
        wrong = Send(b"AUTH PLAIN " + plain(cred.username, "guess") + b"\r\n")
        locked = Expect(454, "4.7.0 Too many failed authentication attempts, try again later")
        with Dialog.connect(relay.submission_port, source="127.0.0.21") as dialog:
            dialog.run([*starttls(), wrong, AUTH_INVALID, wrong, AUTH_INVALID, wrong,
                        AUTH_INVALID, *login(cred)[:1], locked])
        # The real user, at its own address, is not locked out.
        accepted = fresh_good_session(relay.submission_port, cred, source="127.0.0.22")
        check_spool(relay, [accepted])


def test_own_logins_between_guesses_do_not_reset_the_addresses_count(
        tmp_path: Path) -> None:
    """Before: a tenant's successful AUTH cleared its IP's failures, so 4 x (9 guesses
    + 1 own login) made 36 guesses without a lockout. Now the IP locks at its limit."""
    with running(tmp_path, auth={"max_failures_per_ip": 5}) as relay:
        tenant, victim = relay.credential(), relay.credential()
        wrong = Send(b"AUTH PLAIN " + plain(victim.username, "guess") + b"\r\n")
        locked = Expect(454, "4.7.0 Too many failed authentication attempts, try again later")
        with Dialog.connect(relay.submission_port, source="127.0.0.23") as dialog:
            dialog.run([*starttls(), wrong, AUTH_INVALID, wrong, AUTH_INVALID, wrong,
                        AUTH_INVALID, wrong, AUTH_INVALID, *login(tenant)])
        with Dialog.connect(relay.submission_port, source="127.0.0.23") as dialog:
            dialog.run([*starttls(), wrong, AUTH_INVALID,  # the fifth: the IP is locked
                        *login(tenant)[:1], locked])


@pytest.mark.parametrize("action", ["disable", "delete"])
def test_revoked_credential(relay: RunningRelay, cred: Credential, action: str) -> None:
    """A credential disabled or deleted after a (cached) successful login is refused next time."""
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([*tls_login(cred), *good_message(0)])
    accepted = list(dialog.accepted)
    store = CredentialStore(relay.config.state_path)
    try:
        changed = (store.set_disabled(cred.username, True) if action == "disable"
                   else store.delete(cred.username))
        assert changed
    finally:
        store.close()
    for _ in range(2):
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run([*starttls(), *login(cred)[:1], AUTH_INVALID,
                        Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED])
    fresh = relay.credential()
    accepted.append(fresh_good_session(relay.submission_port, fresh))
    check_spool(relay, accepted)


def test_trusted_network_sends_without_auth(tmp_path: Path) -> None:
    """trusted_networks may send after STARTTLS without AUTH, still only as their identities."""
    accounts = {"acme": {"identities": ["example.com", "news@example.org"],
                         "default_configuration_set": "transactional",
                         "trusted_networks": ["127.0.0.0/8"]}}
    with running(tmp_path, accounts=accounts) as relay:
        cred = relay.credential()
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run([*starttls(), *good_message(0),
                        Send(b"MAIL FROM:<evil@evil.test>\r\n"), not_verified("evil@evil.test"),
                        *mail_rcpt_data(),
                        Send(evil_body("From: boss@evil.test\r\n") + b".\r\n"),
                        not_verified("boss@evil.test")])
            finish(relay, cred, dialog)
        (entry, _) = spooled(relay.config)
        assert entry["account"] == "acme"


def test_a_trusted_network_sends_nothing_in_clear_on_a_starttls_listener(
        tmp_path: Path) -> None:
    """Before: a trusted client's MAIL before STARTTLS was taken, in clear."""
    accounts = {"acme": {"identities": ["example.com"], "trusted_networks": ["127.0.0.0/8"]}}
    with running(tmp_path, accounts=accounts, configuration_sets={}) as relay:
        with Dialog.connect(relay.submission_port) as dialog:
            dialog.run([*ehlo_plain(), Send(b"MAIL FROM:<app@example.com>\r\n"),
                        TLS_REQUIRED, *starttls(), *good_message(0)])
        assert len(spooled(relay.config)) == 1


def test_untrusted_network_needs_auth(relay: RunningRelay, cred: Credential) -> None:
    """Without trusted_networks, MAIL after STARTTLS but before AUTH is 530 5.7.0."""
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([*starttls(), Send(b"MAIL FROM:<app@example.com>\r\n"), AUTH_REQUIRED,
                    Send(b"MAIL FROM:<>\r\n"), AUTH_REQUIRED])
        finish(relay, cred, dialog)


def test_too_many_errors(tmp_path: Path) -> None:
    """limits.max_errors client errors end the session with 421 4.7.0; other sessions go on."""
    with running(tmp_path, limits={"max_errors": 3}) as relay:
        cred = relay.credential()
        unrecognized = Expect(500, "5.5.2 Error: command not recognized")
        with Dialog.connect(relay.submission_port) as other:
            other.run(tls_login(cred))
            with Dialog.connect(relay.submission_port) as dialog:
                dialog.run([Send(b"FOO\r\n"), unrecognized,
                            Send(b"MAIL FROM:<a@example.com>\r\n"),
                            Expect(503, "5.5.1 Error: send HELO/EHLO first"),
                            Send(b"BAR\r\nNOOP\r\n"), unrecognized,
                            Expect(421, "4.7.0 Too many errors, closing connection"), Closed()])
            other.run(good_message())
            finish(relay, cred, other)


def test_http_request_on_smtp_port(relay: RunningRelay, cred: Credential) -> None:
    """A web request on the SMTP port is dropped without a reply (cross-protocol abuse)."""
    with Dialog.connect(relay.submission_port) as dialog:
        dialog.run([Send(b"POST / HTTP/1.1\r\nHost: x\r\n\r\nMAIL FROM:<evil@example.com>\r\n"),
                    Closed()])
        finish(relay, cred, dialog)


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_tls_version_is_at_least_1_2(relay: RunningRelay, listener: str) -> None:
    """A TLS 1.1 client is refused by the server; TLS 1.2 and 1.3 clients get through."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        versions = [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]
    for version in versions:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")  # so that this client can offer TLS 1.1 at all
        with socket.create_connection(("127.0.0.1", relay.port(listener)), timeout=10) as raw:
            dialog = Dialog(raw)
            if listener == "submission":
                dialog.run([Expect(220, "relay.test ESMTP smtprelay"), *ehlo_plain(),
                            Send(b"STARTTLS\r\n"), Expect(220, "2.0.0 Ready to start TLS")])
            if version is not ssl.TLSVersion.TLSv1_1:
                tls = ctx.wrap_socket(raw)
                assert tls.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(version,
                                                                               "TLSv1.3")
                continue
            with pytest.raises(ssl.SSLError) as refused:
                ctx.wrap_socket(raw).recv(100)
            # Refused by the server (an alert or a hang-up), not unable to offer 1.1.
            assert refused.value.reason != "NO_PROTOCOLS_AVAILABLE", refused.value
