"""RFC 2047 encoded words in header values ("=?utf-8?q?Caf=C3=A9?=") as text."""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import re

from smtprelay.mail.mime import decode_text

# RFC 2047 encoded-word (RFC 2231 section 5 allows a language after the charset).
_ENCODED_WORD = re.compile(r"=\?([^?*]*)(?:\*[^?]*)?\?([bBqQ])\?([^?]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)\s+(=\?)")


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


def decode_anywhere(text: str) -> str:
    """Every encoded word in `text` decoded, also where RFC 2047 section 5 forbids one
    (Outlook puts them in quoted file names); a word that does not decode stays.

    For reading what a mail client would show, where `decode` keeps a whole value
    as written when anything in it is wrong.
    """
    def word(match: re.Match[str]) -> str:
        charset, encoding, payload = match.groups()
        try:
            if encoding in "bB":
                raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
            else:
                raw = binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)
        except (binascii.Error, ValueError):
            return match.group(0)
        return decode_text(raw, charset or "utf-8")

    # White space between adjacent encoded-words is not part of the text (RFC 2047 6.2).
    return _ENCODED_WORD.sub(word, _BETWEEN_WORDS.sub(r"\1\2", text))
