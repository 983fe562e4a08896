"""Messages for the unit tests of what the relay checks and changes in a message
(policy/content, policy/attachments, transform/hygiene): header sections, multipart/mixed
bodies with attachments, their refusal, and how such a message was received."""

from __future__ import annotations

from smtprelay.mail import replies as R
from smtprelay.mail.headers import parse_header_section
from smtprelay.policy.content import refusal
from smtprelay.transform.hygiene import ReceivedInfo

INFO = ReceivedInfo(
    hostname="relay.test", client_helo="client.example", client_ip="192.0.2.7",
    tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384", authenticated=True,
    message_id="018bd0e1a2b3-0123456789abcdef", recipient="someone@example.net",
    received_at=1700000000.0,
)


def msg(head: str, body: str = "Hello.\n") -> bytes:
    return (head.replace("\n", "\r\n") + "\r\n" + body.replace("\n", "\r\n")).encode()


def check(data: bytes) -> R.Reply | None:
    return refusal(data, parse_header_section(data))


def mixed(*parts: str, boundary: str = "b1", close: bool = True) -> bytes:
    """A multipart/mixed message with the given parts (each: header lines, blank, body)."""
    body = "preamble\n" + "".join(f"--{boundary}\n{part}\n" for part in parts)
    if close:
        body += f"--{boundary}--\n"
    return msg("From: a@example.com\nTo: b@example.net\nSubject: s\nMIME-Version: 1.0\n"
               f'Content-Type: multipart/mixed; boundary="{boundary}"\n', body)


def attachment(disposition: str, ctype: str = "application/octet-stream") -> str:
    return (f"Content-Type: {ctype}\nContent-Transfer-Encoding: base64\n"
            f"Content-Disposition: {disposition}\n\nAAAA")


TEXT_PART = "Content-Type: text/plain\n\nhello"
