"""Fuzz target: the SMTP session's command parsing, AUTH and DATA framing
(smtprelay/smtp/session.py, with mail.address.parse_path for MAIL and RCPT).

Run in memory (tests/fuzz/session_harness.py). For any input the session ends without
raising, says nothing but well-formed replies, hands on only messages whose lines end
in CRLF, and writes only one-line log records. For a client that follows RFC 5321
with any body at all (bare CR and LF, NUL, smuggling endings), there is exactly one
reply per command and exactly one message per DATA, holding what was sent.
"""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtprelay.config import LimitsConfig
from smtprelay.mail import replies as R
from tests.fuzz import corpus
from tests.fuzz.session_harness import (
    PASSWORD,
    Conversation,
    converse,
    has_bare_line_end,
    stored_form,
    stuffed,
)

LOGIN = b"EHLO client.test\r\nAUTH PLAIN " + corpus.auth_plain("user", PASSWORD) + b"\r\n"
TRANSACTION = b"MAIL FROM:<app@example.com>\r\nRCPT TO:<someone@example.net>\r\nDATA\r\n"
_DATA_LINE = re.compile(rb"^data[ \t]*$", re.IGNORECASE | re.MULTILINE)
_LINE_LIMIT = LimitsConfig().max_line_length


def check_always(conversation: Conversation, wire: bytes) -> None:
    """What holds for any input at all."""
    assert conversation.codes[:1] == [220]
    for submission in conversation.submissions:
        assert not has_bare_line_end(submission.data)
        for address in (submission.envelope.mail_from, *submission.envelope.recipients):
            assert not set(address) & set("\r\n\0"), address
    # Never more messages than DATA commands the client could have meant (smuggling).
    assert len(conversation.submissions) <= len(_DATA_LINE.findall(wire.replace(b"\r", b"\n")))
    for line in conversation.log_lines:
        assert "\n" not in line and "\r" not in line, line


# --- any bytes, shaped like commands ------------------------------------------------------

_ADDRESS = st.one_of(
    st.sampled_from(["a@example.com", "<>", "<a@example.com>", '<"a b"@example.com>',
                     "<@relay:a@example.com>", "<a@[192.0.2.1]>", "<a@[IPv6:::1]>",
                     "<ü@exämple.com>", "<a@example.com> SIZE=10", "<a@example.com> BODY=8BITMIME",
                     "<a@example.com> SMTPUTF8", "<a@example.com> X=Y", "<a@b", "a@b>",
                     "<" + "a" * 300 + "@example.com>"]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40),
)
_COMMAND = st.one_of(
    st.builds(lambda verb, arg: f"{verb} {arg}".encode(),
              st.sampled_from(["MAIL FROM:", "RCPT TO:", "mail from:", "MAIL FROM: ",
                               "RCPT TO:"]), _ADDRESS),
    st.sampled_from([b"EHLO x", b"HELO x", b"EHLO", b"DATA", b"data", b"DATA x", b"RSET",
                     b"NOOP", b"VRFY a", b"HELP", b"EXPN a", b"STARTTLS", b"AUTH",
                     b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5", b"AUTH PLAIN =",
                     b"AUTH PLAIN *", b"*", b"=", b".", b"..", b"GET / HTTP/1.1",
                     b"MAIL FROM:<a@example.com> SIZE=99999999999", b"", b" ", b"\x00"]),
    st.builds(lambda user, password: b"AUTH PLAIN " + corpus.auth_plain(user, password),
              st.text(max_size=20), st.sampled_from([PASSWORD, "no"])),
    st.binary(max_size=40).map(base64.b64encode),
    st.binary(max_size=60),
    st.just(b"x" * 17000),  # past the command line limit
)
_ENDING = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n", b""])
_SOUP = st.lists(st.tuples(_COMMAND, _ENDING), max_size=25).map(
    lambda lines: b"".join(command + ending for command, ending in lines))


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.booleans(), _SOUP, st.sampled_from(["normalize", "reject"]))
@example(True, corpus.NUL_COMMANDS[0] + TRANSACTION + b"a\n.\nMAIL FROM:<e@x>\r\n.\r\n",
         "normalize")
@example(False, b"".join(corpus.NUL_COMMANDS), "normalize")
@example(True, b"DATA\r\n" * 3 + b"\r\n.\r\n" * 3, "reject")
def test_any_command_soup(login: bool, soup: bytes, bare: str) -> None:
    wire = (LOGIN if login else b"") + soup
    conversation = converse(wire, bare_line_endings=bare, max_errors=1000)  # type: ignore[arg-type]
    check_always(conversation, wire)


# --- a client that follows RFC 5321, any body --------------------------------------------

_PIECES = st.sampled_from([
    b"a", b"text", b" ", b".", b"..", b"\r\n", b"\r\n.", b"\r\n..", b"\n", b"\r", b"\x00",
    b"\xff", b"\xc3\xa9", b"\t", b".\r\n", b"\r\n.\r\n", b"From: a@example.com\r\n",
    b"\r\n\r\n", b"x" * 999, *corpus.SMUGGLING_ENDINGS, corpus.SMUGGLED,
])
_BODY = st.one_of(st.lists(_PIECES, max_size=30).map(b"".join), st.binary(max_size=300))


def expected_reply(body: bytes, bare: str, nul: str = "accept") -> int:
    if bare == "reject" and has_bare_line_end(stuffed(body)[:-3]):
        return R.BARE_LINE_ENDING.code
    stored = stored_form(body)
    if nul == "reject" and b"\x00" in stored:
        return R.NUL_IN_DATA.code
    if any(len(line) > _LINE_LIMIT for line in stored.split(b"\r\n")):
        return 554
    return 250


_SMUGGLING = [b"hi" + ending + corpus.SMUGGLED for ending in corpus.SMUGGLING_ENDINGS]


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(_BODY, min_size=1, max_size=3), st.sampled_from(["normalize", "reject"]),
       st.sampled_from(["reject", "accept"]))
@example(_SMUGGLING, "normalize", "accept")
@example(_SMUGGLING, "reject", "accept")
@example(_SMUGGLING, "normalize", "reject")
@example(list(corpus.BARE_LF_BODIES), "normalize", "reject")
@example(list(corpus.BARE_LF_BODIES), "reject", "reject")
@example(list(corpus.NUL_BODIES), "normalize", "reject")
@example(list(corpus.NUL_BODIES), "normalize", "accept")
def test_one_message_per_data_whatever_the_body(bodies: list[bytes], bare: str,
                                                nul: str) -> None:
    wire = LOGIN + b"".join(TRANSACTION + stuffed(body) + b"NOOP\r\n" for body in bodies) \
        + b"QUIT\r\n"
    conversation = converse(wire, bare_line_endings=bare,  # type: ignore[arg-type]
                            nul_bytes=nul)  # type: ignore[arg-type]
    check_always(conversation, wire)
    expected = [expected_reply(body, bare, nul) for body in bodies]
    # In step: one reply per command, so nothing in a body was ever read as a command.
    assert conversation.codes == [220, 250, 235, *[
        code for reply in expected for code in (250, 250, 354, reply, 250)], 221]
    accepted = [stored_form(body) for body, reply in zip(bodies, expected, strict=True)
                if reply == 250]
    assert [s.data for s in conversation.submissions] == accepted


# --- AUTH ---------------------------------------------------------------------------------

_USER = st.one_of(st.text(max_size=30), st.sampled_from(corpus.CRLF_USER_NAMES))


@st.composite
def _auth_exchange(draw: st.DrawFn) -> tuple[bytes, bool]:
    """An AUTH command (and its answers to 334), and whether it should succeed."""
    user = draw(_USER)
    password = draw(st.sampled_from([PASSWORD, "wrong", ""]))
    mechanism = draw(st.sampled_from(["PLAIN", "LOGIN", "plain"]))
    initial = draw(st.booleans())
    if mechanism.upper() == "PLAIN":
        response = corpus.auth_plain(user, password)
        lines = [b"AUTH PLAIN " + response] if initial else [b"AUTH PLAIN", response]
    else:
        # RFC 4954 4: an empty initial response is sent as "=".
        encoded = base64.b64encode(user.encode()) or (b"=" if initial else b"")
        lines = [b"AUTH LOGIN " + encoded] if initial else [b"AUTH LOGIN", encoded]
        lines.append(base64.b64encode(password.encode()))
    if draw(st.booleans()):  # a broken answer: garbage, a cancel, a NUL, a bare LF
        at = draw(st.integers(0, len(lines) - 1))
        lines[at] = lines[at][:-1] + draw(st.sampled_from([b"!", b"*", b"\x00", b"\n", b"=="]))
        return b"\r\n".join(lines) + b"\r\n", False
    # Only the NUL that separates PLAIN's fields may not be in a name.
    valid = "\0" not in user or mechanism.upper() == "LOGIN"
    return b"\r\n".join(lines) + b"\r\n", password == PASSWORD and valid


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(_auth_exchange())
def test_auth_answers_once_and_logs_one_line_per_record(exchange: tuple[bytes, bool]) -> None:
    command, succeeds = exchange
    wire = b"EHLO client.test\r\n" + command + b"NOOP\r\nQUIT\r\n"
    conversation = converse(wire)
    check_always(conversation, wire)
    assert conversation.codes[:2] == [220, 250] and conversation.codes[-2:] == [250, 221]
    if succeeds:
        assert 235 in conversation.codes


@pytest.mark.parametrize("line", corpus.AUTH_LINES, ids=repr)
def test_replay_crlf_in_auth_user_names(line: bytes) -> None:
    conversation = converse(b"EHLO client.test\r\n" + line + b"NOOP\r\nQUIT\r\n")
    assert conversation.codes[-2:] == [250, 221]
    assert not any(line.endswith(corpus.FORGED_LOG_LINE) and "\\n" not in line
                   for line in conversation.log_lines)
    assert all("\n" not in line for line in conversation.log_lines)


@pytest.mark.parametrize("nul", ["reject", "accept"])
@pytest.mark.parametrize("bare", ["normalize", "reject"])
@pytest.mark.parametrize("ending", corpus.SMUGGLING_ENDINGS, ids=repr)
def test_replay_smuggling_endings(ending: bytes, bare: str, nul: str) -> None:
    body = b"From: app@example.com\r\n\r\nhi" + ending + corpus.SMUGGLED
    conversation = converse(LOGIN + TRANSACTION + body + b".\r\nNOOP\r\nQUIT\r\n",
                            bare_line_endings=bare,  # type: ignore[arg-type]
                            nul_bytes=nul)  # type: ignore[arg-type]
    if (bare == "reject" and has_bare_line_end(ending)) or (nul == "reject"
                                                              and b"\x00" in ending):
        assert conversation.codes == [220, 250, 235, 250, 250, 354, 554, 250, 221]
        assert conversation.submissions == []
        return
    assert conversation.codes == [220, 250, 235, 250, 250, 354, 250, 250, 221]
    [submission] = conversation.submissions
    assert b"EVIL smuggled" in submission.data
    assert submission.envelope.recipients == ("someone@example.net",)
