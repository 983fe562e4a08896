"""Real clients against the relay: swaks, openssl s_client and aiosmtplib."""

from __future__ import annotations

import re
import subprocess

import aiosmtplib
import pytest

from tests.support import (
    Credential,
    RunningRelay,
    client_context,
    message,
    need_program,
    spooled,
)

pytestmark = pytest.mark.peer

ACCEPTED = re.compile(r"^<~  250 2\.0\.0 Ok ([0-9a-f]{12}-[0-9a-f]{16})$", re.MULTILINE)


def swaks(relay: RunningRelay, cred: Credential, *extra: str, password: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    program = need_program("swaks")
    return subprocess.run(
        [program, "--server", "127.0.0.1", "--from", "app@example.com",
         "--to", "someone@example.net", "--auth-user", cred.username,
         "--auth-password", cred.password if password is None else password,
         "--header", "Subject: from swaks", "--body", "Sent by swaks.",
         "--timeout", "20", *extra],
        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("mechanism", "mode"), [("PLAIN", "--tls"), ("LOGIN", "--tls"),
                                                 ("PLAIN", "--tlsc"), ("LOGIN", "--tlsc")])
def test_swaks_submits(relay: RunningRelay, cred: Credential, mechanism: str, mode: str) -> None:
    """swaks sends over STARTTLS (--tls) and implicit TLS (--tlsc) with AUTH PLAIN and LOGIN."""
    port = relay.submission_port if mode == "--tls" else relay.submissions_port
    result = swaks(relay, cred, mode, "--port", str(port), "--auth", mechanism)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    ids = ACCEPTED.findall(result.stdout)
    assert len(ids) == 1, result.stdout
    (entry,) = spooled(relay.config)
    assert entry["id"] == ids[0]
    assert entry["recipients"] == ["someone@example.net"]
    assert b"Sent by swaks." in entry["data"]
    assert b"Subject: from swaks" in entry["data"]


@pytest.mark.parametrize("mode", ["--tls", "--tlsc"])
def test_swaks_wrong_password(relay: RunningRelay, cred: Credential, mode: str) -> None:
    """swaks with a wrong password fails with 535 and nothing is queued."""
    port = relay.submission_port if mode == "--tls" else relay.submissions_port
    result = swaks(relay, cred, mode, "--port", str(port), "--auth", "PLAIN",
                   password="not-the-password")
    assert result.returncode != 0
    assert "<~* 535 5.7.8 Authentication Credentials Invalid" in result.stdout, result.stdout
    assert "MAIL FROM" not in result.stdout
    assert spooled(relay.config) == []


def test_swaks_without_tls_is_refused(relay: RunningRelay, cred: Credential) -> None:
    """swaks trying AUTH in clear text is told to STARTTLS first; nothing is queued."""
    result = swaks(relay, cred, "--port", str(relay.submission_port), "--auth", "PLAIN")
    # AUTH is not advertised before TLS, so swaks gives up before sending a password.
    transcript = result.stdout + result.stderr
    assert result.returncode != 0, transcript
    assert "<-  250 STARTTLS" in result.stdout, transcript
    assert "AUTH" not in result.stdout, transcript
    assert "Host did not advertise authentication" in result.stderr, transcript
    assert spooled(relay.config) == []


def s_client(port: int, *options: str, starttls: bool = True
             ) -> subprocess.CompletedProcess[str]:
    program = need_program("openssl")
    args = [program, "s_client", "-connect", f"127.0.0.1:{port}", "-crlf", "-ign_eof",
            # Lower the client's own security level so that it can offer TLS 1.1 at all:
            # the refusal must come from the server.
            "-cipher", "DEFAULT:@SECLEVEL=0", *options]
    if starttls:
        args[2:2] = ["-starttls", "smtp"]
    return subprocess.run(args, input="EHLO client.test\nquit\n", capture_output=True,
                          text=True, timeout=30, check=False)


@pytest.mark.parametrize("listener", ["submission", "submissions"])
@pytest.mark.parametrize(("option", "protocol"), [("-tls1_2", "TLSv1.2"),
                                                  ("-tls1_3", "TLSv1.3")])
def test_openssl_handshake(relay: RunningRelay, listener: str, option: str,
                           protocol: str) -> None:
    """openssl s_client negotiates TLS 1.2 and 1.3 and then speaks SMTP over it."""
    result = s_client(relay.port(listener), option, starttls=listener == "submission")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Protocol  : {protocol}" in result.stdout, result.stdout
    assert f"New, {protocol}, Cipher is " in result.stdout
    # The EHLO inside TLS offers AUTH and no second STARTTLS, and QUIT ends it.
    assert "250 AUTH PLAIN LOGIN" in result.stdout, result.stdout
    assert "221 2.0.0 Bye" in result.stdout


@pytest.mark.parametrize("listener", ["submission", "submissions"])
@pytest.mark.parametrize("option", ["-tls1_1", "-tls1"])
def test_openssl_old_tls_refused(relay: RunningRelay, listener: str, option: str) -> None:
    """TLS 1.0 and 1.1 are refused by the server (tls.min_version defaults to 1.2)."""
    result = s_client(relay.port(listener), option, starttls=listener == "submission")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "no protocols available" not in output, "the client could not even offer it"
    assert "Cipher is (NONE)" in output, output
    assert "250 AUTH PLAIN LOGIN" not in output


async def test_aiosmtplib_starttls(relay: RunningRelay, cred: Credential) -> None:
    """aiosmtplib over STARTTLS with AUTH gets 250 2.0.0 Ok <id> and the message is spooled."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.submission_port, timeout=20,
                             start_tls=True, tls_context=client_context())
    async with client:
        await client.login(cred.username, cred.password)
        errors, reply = await client.sendmail("app@example.com",
                                              ["someone@example.net", "other@example.net"],
                                              message(subject="aiosmtplib"))
        assert errors == {}
        match = re.fullmatch(r"2\.0\.0 Ok ([0-9a-f]{12}-[0-9a-f]{16})", reply)
        assert match, reply
    (entry,) = spooled(relay.config)
    assert entry["id"] == match.group(1)
    assert entry["recipients"] == ["someone@example.net", "other@example.net"]


async def test_aiosmtplib_implicit_tls(relay: RunningRelay, cred: Credential) -> None:
    """aiosmtplib over implicit TLS sees AUTH offered, sends, and a refused sender raises 554."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=relay.submissions_port, timeout=20,
                             use_tls=True, tls_context=client_context())
    async with client:
        await client.ehlo()
        assert client.supports_extension("auth")
        assert not client.supports_extension("starttls")
        await client.login(cred.username, cred.password)
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await client.sendmail("boss@evil.test", ["someone@example.net"],
                                  message(sender="boss@evil.test"))
        assert refused.value.code == 554
        assert refused.value.message == (
            "5.7.1 Message rejected: Email address is not verified. "
            "The following identities failed the check: boss@evil.test")
        errors, reply = await client.sendmail("app@example.com", ["someone@example.net"],
                                              message(subject="implicit"))
        assert errors == {}
    (entry,) = spooled(relay.config)
    assert reply == f"2.0.0 Ok {entry['id']}"
    assert b"Subject: implicit" in entry["data"]


@pytest.mark.parametrize("listener", ["submission", "submissions"])
def test_the_ses_guides_command_line_session_sends_one_message(
        relay: RunningRelay, cred: Credential, listener: str) -> None:
    """The SES Developer Guide's "Using the command line to send email" input file,
    piped into `openssl s_client -crlf -quiet` as the guide says: AUTH LOGIN, then
    MAIL FROM and RCPT TO with a space and no angle brackets."""
    import base64
    program = need_program("openssl")

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    input_txt = (
        "EHLO example.com\nAUTH LOGIN\n"
        f"{b64(cred.username)}\n{b64(cred.password)}\n"
        "MAIL FROM: app@example.com\nRCPT TO: recipient@example.net\nDATA\n"
        "X-SES-CONFIGURATION-SET: transactional\n"
        "From: Sender Name <app@example.com>\nTo: recipient@example.net\n"
        "Subject: Amazon SES SMTP Test\n\n"
        "This message was sent using the Amazon SES SMTP interface.\n.\nQUIT\n")
    args = [program, "s_client", "-crlf", "-quiet",
            "-connect", f"127.0.0.1:{relay.port(listener)}"]
    if listener == "submission":
        args[2:2] = ["-starttls", "smtp"]
    result = subprocess.run(args, input=input_txt, capture_output=True, text=True,
                            timeout=30, check=False)
    replies = [line for line in result.stdout.splitlines() if line[:3].isdigit()]
    assert "235 2.7.0 Authentication successful" in replies, result.stdout
    assert [r for r in replies if r.startswith(("501", "421", "5"))] == [], result.stdout
    assert any(r.startswith("250 2.0.0 Ok ") for r in replies), result.stdout
    assert replies[-1].startswith("221"), result.stdout
    [entry] = spooled(relay.config)
    assert entry["mail_from"] == "app@example.com"
    assert entry["recipients"] == ["recipient@example.net"]
    assert b"This message was sent using the Amazon SES SMTP interface." in entry["data"]
    assert b"X-SES-CONFIGURATION-SET" not in entry["data"]
