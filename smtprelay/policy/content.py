"""Content SES refuses: a once-only header field given twice, a MIME structure that
cannot be walked, an attachment of a blocked type."""

# Pure, and reads the bytes by the offsets the header reader found: nothing is parsed
# twice and nothing is re-serialised.

from __future__ import annotations

from smtprelay.mail import mime
from smtprelay.mail import replies as R
from smtprelay.mail.headers import HeaderField
from smtprelay.mail.replies import Reply
from smtprelay.policy import attachments

# SES Developer Guide, "Amazon SES header fields": these "can't appear more than once in
# the header section of a message" (seed 004, line ~4730). To, Cc, Received and
# Resent-* are deliberately absent from SES's list and may repeat.
_SES_LIST = """
    Accept-Language acceptLanguage Archived-At Auto-Submitted Bounces-to Comments
    Content-Alternative Content-Base Content-Class Content-Description Content-Disposition
    Content-Duration Content-ID Content-Language Content-Length Content-Location
    Content-MD5 Content-Transfer-Encoding Content-Type Date Delivered-To
    Disposition-Notification-Options Disposition-Notification-To DKIM-Signature
    DomainKey-Signature Errors-To From Importance In-Reply-To Keywords List-Archive
    List-Help List-Id List-Owner List-Post List-Subscribe List-Unsubscribe Message-Context
    Message-ID MIME-Version Organization Original-From Original-Message-ID
    Original-Recipient Original-Subject Precedence Priority References Reply-To
    Return-Path Return-Receipt-To Sender Solicitation Sensitivity Subject Thread-Index
    Thread-Topic User-Agent VBR-Info
"""
SINGLE_FIELDS = frozenset(name.lower() for name in _SES_LIST.split())

def refusal(data: bytes, fields: list[HeaderField]) -> Reply | None:
    """Why the message must be refused, or None.

    Checked in this order: a field from SES's single-occurrence list given twice, a
    MIME structure that cannot be walked, an attachment with a blocked extension.
    """
    seen: set[str] = set()
    for field in fields:
        if field.key in SINGLE_FIELDS:
            if field.key in seen:
                return R.duplicate_header(field.name)
            seen.add(field.key)
    try:
        blocked = attachments.first_blocked(data, mime.fields_of(data, fields))
    except attachments.MimeError:
        return R.BAD_MIME
    if blocked is not None:
        return R.blocked_attachment(_shorten(blocked.filename), blocked.extension)
    return None


def _shorten(filename: str, limit: int = 100) -> str:
    # SMTP reply lines are limited to 512 octets (RFC 5321 4.5.3.1.5); keep the end,
    # which holds the extension the reply is about.
    return filename if len(filename) <= limit else "..." + filename[-limit:]
