"""RFC 2047 encoded words in header values ("=?utf-8?q?Caf=C3=A9?=") as text."""

from __future__ import annotations

import email.errors
import email.header


def decode(value: str) -> str:
    """The value with its encoded words decoded; as written if they do not decode.

    Header values come from anyone: an unknown or garbled charset name, bad base64 or
    a stray byte must leave the text as it was, never raise.
    """
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.MessageError, LookupError, ValueError, UnicodeError):
        return value
