"""The seam between the SMTP session and everything after it: what a session hands on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from smtprelay.mail.replies import Reply
from smtprelay.spool.model import Envelope


@dataclass(frozen=True, slots=True)
class Client:
    """Who submitted: the connection and the account it speaks for."""

    ip: str
    port: int
    helo: str
    listener: str
    account: str
    auth_user: str | None  # None when the account comes from trusted_networks
    tls_version: str | None
    tls_cipher: str | None


@dataclass(frozen=True, slots=True)
class Submission:
    client: Client
    envelope: Envelope
    data: bytes  # dot-unstuffed, CRLF line endings, as received
    received_at: float


@runtime_checkable
class ApiSubmissionHandler(Protocol):
    """What the SES API needs of the pipeline beyond an SMTP session's needs."""

    async def rendering_failed(self, submission: Submission, template_name: str,
                               error: str) -> Reply:
        """Record a templated message that could not be rendered, as SES does: not
        sent, a Rendering Failure event when its configuration set publishes events.
        `submission.data` is its header section. The reply names its message id, or
        refuses it (an unknown or paused set) as `submit` would."""


class SubmissionHandler(Protocol):
    """Policy and acceptance, as seen from an SMTP session."""

    def check_sender(self, account: str, address: str) -> Reply | None:
        """A reply refusing MAIL FROM, or None to go on."""

    def check_recipient(self, account: str, address: str) -> Reply | None:
        """A reply refusing RCPT TO (the sandbox, an address not served), or None."""

    async def submit(self, submission: Submission) -> Reply:
        """Check, transform and spool the message; the reply to send after DATA.

        The sending quotas are taken here, for the whole message: one over the rate or
        the 24-hour quota is refused whole (SES's 454), so no recipient is dropped
        from a message its sender thinks was sent.
        """
