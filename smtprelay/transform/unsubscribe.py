"""One-click unsubscribe headers (RFC 2369 List-Unsubscribe, RFC 8058 List-Unsubscribe-Post).

Mailbox providers show an "Unsubscribe" button for a message that carries both:

    List-Unsubscribe: <https://links.example.com/u/TOKEN>, <mailto:...?subject=...>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

and, when it is pressed, POST ``List-Unsubscribe=One-Click`` to the https URL (RFC
8058 3.1). RFC 8058 also requires both fields to be covered by the DKIM signature,
which holds because the pipeline signs after this change (dkim.SIGNED_FIELDS lists
both). A sender's own List-Unsubscribe is kept unless the configuration set says
override; then theirs (and their List-Unsubscribe-Post) is replaced, as SES does
with ListManagementOptions.
"""

from __future__ import annotations

import urllib.parse

from smtprelay.mail.headers import HeaderField

# SES's footer placeholder and ours; both become the recipient's unsubscribe URL.
PLACEHOLDERS = ("{{unsubscribe_url}}", "{{amazonSESUnsubscribeUrl}}")
_FIELDS = ("list-unsubscribe", "list-unsubscribe-post")


def header_fields(url: str, mailto: str | None = None, token: str = "") -> bytes:
    """The two header fields, folded between the URIs so no line passes 78 characters
    where it can be helped (RFC 5322 2.1.1)."""
    uris = [f"<{url}>"]
    if mailto is not None:
        subject = urllib.parse.quote(f"unsubscribe-{token}" if token else "unsubscribe")
        uris.append(f"<mailto:{mailto}?subject={subject}>")
    return (b"List-Unsubscribe: " + ",\r\n ".join(uris).encode("ascii") + b"\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")


def add(data: bytes, fields: list[HeaderField], new_fields: bytes, *,
        override: bool) -> bytes:
    """`data` with `new_fields` after its last header field; unchanged when the sender
    wrote a List-Unsubscribe and `override` is false."""
    ours = [field for field in fields if field.key in _FIELDS]
    if any(field.key == "list-unsubscribe" for field in ours) and not override:
        return data
    insert_at = fields[-1].end if fields else 0
    pieces: list[bytes] = []
    position = 0
    for field in ours:
        pieces.append(data[position:field.start])
        position = field.end
    pieces.append(data[position:insert_at])
    if insert_at > 0 and not data[:insert_at].endswith(b"\r\n"):
        pieces.append(b"\r\n")  # a body-less message whose last line has no CRLF
    pieces.append(new_fields)
    pieces.append(data[insert_at:])
    return b"".join(pieces)
