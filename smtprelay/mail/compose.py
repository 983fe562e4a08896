"""A message built from parts, as the SES API's Simple content asks for one: subject,
text and HTML bodies, extra header fields and attachments, made into RFC 5322 bytes.

Python's email package writes it (EmailMessage with the SMTP policy: CRLF line ends,
RFC 2047 encoded words for non-ASCII header text, MIME encodings chosen per part), so
the structure is the standard one: text/plain, text/html, multipart/alternative for
both, multipart/mixed (or multipart/related for inline parts) around attachments.

Every value a caller passes is checked first: a CR or LF in a header value, a header
field the message makes itself, an address that does not parse. ComposeError names the
field, so the API can answer BadRequest with it; nothing with a line break reaches the
message (header injection).
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage

# Header fields the message writes itself; a caller's extra fields may not set them.
RESERVED_FIELDS = frozenset({
    "from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "return-path", "received", "dkim-signature",
})
_POLICY = email.policy.SMTP.clone(max_line_length=78)
_DISPOSITIONS = {"ATTACHMENT": "attachment", "INLINE": "inline"}
_ENCODINGS = {"BASE64": "base64", "QUOTED_PRINTABLE": "quoted-printable", "SEVEN_BIT": "7bit"}


class ComposeError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Text:
    data: str
    charset: str | None = None  # None: UTF-8 (plain ASCII is written as such)


@dataclass(frozen=True, slots=True)
class Attachment:
    content: bytes
    filename: str
    content_type: str | None = None  # None: guessed from nothing, so octet-stream
    disposition: str = "ATTACHMENT"  # SES's ATTACHMENT | INLINE
    content_id: str | None = None
    description: str | None = None
    transfer_encoding: str | None = None  # SES's BASE64 | QUOTED_PRINTABLE | SEVEN_BIT


@dataclass(frozen=True, slots=True)
class Parts:
    from_address: str  # may carry a display name: "Name <a@example.com>"
    subject: Text
    text: Text | None = None
    html: Text | None = None
    to: Sequence[str] = ()
    cc: Sequence[str] = ()
    reply_to: Sequence[str] = ()
    headers: Sequence[tuple[str, str]] = ()
    attachments: Sequence[Attachment] = ()


# What str.splitlines() (so the email package) takes for the end of a line.
LINE_BREAKS = frozenset("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def _no_line_break(field: str, value: str) -> str:
    if not LINE_BREAKS.isdisjoint(value):
        raise ComposeError(field, "must not contain a line break (CR, LF or another "
                                  "line separator)")
    return value


# A bare addr-spec of the common kind, which needs none of the email package's parser
# (a tenth of the API's CPU per message when every address went through it).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PLAIN_ADDRESS = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@({_LABEL}(?:\.{_LABEL})+)")


def addresses(field: str, values: Sequence[str]) -> list[HeaderAddress]:
    """Each value as one address (a display name allowed), or ComposeError."""
    found: list[HeaderAddress] = []
    for value in values:
        plain = _PLAIN_ADDRESS.fullmatch(value)
        if plain is not None:
            found.append(HeaderAddress(username=plain.group(1), domain=plain.group(2)))
            continue
        _no_line_break(field, value)
        # The email package's own parser (the one writing the field), strictly: one
        # address, no defects, an ASCII addr-spec.
        try:
            header = _POLICY.header_factory("to", value)
            parsed = list(getattr(header, "addresses", ()))
        except Exception:  # the parser raises several kinds on what it cannot read
            raise ComposeError(field, f"{value!r} is not an email address") from None
        if (header.defects or len(parsed) != 1 or not parsed[0].username
                or not parsed[0].domain or not parsed[0].addr_spec.isascii()):
            raise ComposeError(field, f"{value!r} is not an email address (a Unicode "
                                      "domain must be written in Punycode)")
        found.append(parsed[0])
    return found


def _set_text(part: EmailMessage, text: Text, subtype: str) -> None:
    charset = text.charset or "utf-8"
    try:
        text.data.encode(charset)
    except LookupError:
        raise ComposeError(f"{subtype}.Charset", f"unknown character set {charset!r}") \
            from None
    except UnicodeEncodeError:
        raise ComposeError(f"{subtype}.Data",
                           f"has characters the character set {charset} cannot hold") from None
    # 7-bit on the wire whatever the text: quoted-printable for anything else, so no
    # hop needs 8BITMIME.
    part.set_content(text.data, subtype=subtype, charset=charset,
                     cte="7bit" if text.data.isascii() else "quoted-printable")


def _attach(message: EmailMessage, attachment: Attachment, index: int) -> None:
    where = f"Attachments[{index}]"
    _no_line_break(f"{where}.FileName", attachment.filename)
    maintype, _, subtype = (attachment.content_type or "application/octet-stream") \
        .partition("/")
    if not subtype or "\r" in maintype + subtype or "\n" in maintype + subtype:
        raise ComposeError(f"{where}.ContentType",
                           f"{attachment.content_type!r} is not a MIME type")
    disposition = _DISPOSITIONS.get(attachment.disposition.upper())
    if disposition is None:
        raise ComposeError(f"{where}.ContentDisposition", "must be ATTACHMENT or INLINE")
    encoding = None
    if attachment.transfer_encoding is not None:
        encoding = _ENCODINGS.get(attachment.transfer_encoding.upper())
        if encoding is None:
            raise ComposeError(f"{where}.ContentTransferEncoding",
                               "must be BASE64, QUOTED_PRINTABLE or SEVEN_BIT")
    extra: dict[str, str] = {}
    if attachment.content_id is not None:
        content_id = _no_line_break(f"{where}.ContentId", attachment.content_id)
        extra["Content-ID"] = f"<{content_id.strip('<>')}>"
    if attachment.description is not None:
        extra["Content-Description"] = _no_line_break(f"{where}.ContentDescription",
                                                      attachment.description)
    if encoding == "7bit" and not all(b < 0x80 for b in attachment.content):
        raise ComposeError(f"{where}.ContentTransferEncoding",
                           "SEVEN_BIT content must be 7-bit")
    message.add_attachment(attachment.content, maintype=maintype, subtype=subtype,
                           disposition=disposition, filename=attachment.filename,
                           cte=encoding or "base64", headers=[f"{k}: {v}" for k, v in
                                                            extra.items()])


def compose(parts: Parts, *, message_id: str, date: float) -> bytes:
    """The message, CRLF line ends; ComposeError for anything that cannot go in it.

    `message_id` without angle brackets (the caller's domain in it)."""
    if parts.text is None and parts.html is None:
        raise ComposeError("Body", "needs Text, Html or both")
    message = EmailMessage(policy=_POLICY)
    [sender] = addresses("FromEmailAddress", [parts.from_address]) \
        if parts.from_address else [None]
    if sender is None:
        raise ComposeError("FromEmailAddress", "is required")
    message["From"] = sender
    for field, values in (("To", parts.to), ("Cc", parts.cc), ("Reply-To", parts.reply_to)):
        if values:
            message[field] = addresses(field, values)
    message["Subject"] = _no_line_break("Subject.Data", parts.subject.data)
    message["Date"] = email.utils.formatdate(date, usegmt=True)
    message["Message-ID"] = f"<{message_id}>"
    for name, value in parts.headers:
        field = f"Headers[{name!r}]"
        _no_line_break(field, name)
        _no_line_break(field, value)
        if not name or not all(33 <= ord(c) <= 126 and c != ":" for c in name):
            raise ComposeError(field, "is not a header field name")
        if name.lower() in RESERVED_FIELDS:
            raise ComposeError(field, "is written by the relay from the request's fields")
        message[name] = value
    message["MIME-Version"] = "1.0"
    if parts.text is not None:
        _set_text(message, parts.text, "plain")
    if parts.html is not None:
        if parts.text is None:
            _set_text(message, parts.html, "html")
        else:
            html = EmailMessage(policy=_POLICY)
            _set_text(html, parts.html, "html")
            message.add_alternative(html.get_content(), subtype="html",
                                    charset=parts.html.charset or "utf-8")
    for index, attachment in enumerate(parts.attachments):
        _attach(message, attachment, index)
    try:
        return message.as_bytes(policy=_POLICY)
    except (ValueError, TypeError) as exc:  # the email package's own refusals
        raise ComposeError("Content", str(exc)) from None
