"""RFC 3464 delivery status notifications: the bounce message sent back to the sender.

One DSN per message lists every recipient that failed (or, for a delay warning, every
recipient still waiting). It is a multipart/report (RFC 6522) with three parts: a
human explanation (text/plain, UTF-8, quoted-printable when needed), the
machine-readable message/delivery-status, and the original header section
(text/rfc822-headers, the default, as Postfix does) or the whole original
(message/rfc822).

The message is written byte by byte rather than through the email package, so that
what goes out is exactly what is tested: CRLF everywhere, no line over 998 octets, and
nothing a remote server or the sender chose (recipient addresses, reply text) can
start a new header line or break out of its part. Non-ASCII in the 7-bit parts is
written as RFC 6533 ``\\x{HEX}`` escapes.

``should_send_dsn`` keeps DSNs from causing DSNs: none for the null sender, for
MAILER-DAEMON, for a message that is itself a DSN, or for any auto-submitted mail.
"""

from __future__ import annotations

import base64
import email.message
import email.quoprimime
import email.utils
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from smtprelay.mail.address import local_of
from smtprelay.mail.headers import HeaderField, header_end

MAX_LINE = 998  # RFC 5322 2.1.1, octets without the CRLF
_FOLD_AT = 78  # the recommended width; folding happens at white space before it
# A remote reply is bounded in practice (512-octet lines), but a hostile server could
# send a huge multi-line one; every DSN would carry it. Capped, with a marker.
MAX_DIAGNOSTIC = 16384

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
# RFC 3464 diagnostic types in use: smtp, x400 and the X- ones ("X-Postfix; ...").
# Anything else ending in ";" is plain text ("expired; last error ...").
_DIAGNOSTIC_TYPE = re.compile(r"^(smtp|x400|x-[a-z0-9-]+)\s*;\s*", re.IGNORECASE)
_REPLY = re.compile(r"^[245]\d\d(?:[ -]|$)")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_NOT_HOST = re.compile(r"[^A-Za-z0-9._-]")
_NOT_ID = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    recipient: str
    action: Literal["failed", "delayed"]
    status: str  # enhanced status code, "5.1.1"
    diagnostic: str  # "smtp; 550 5.1.1 user unknown", a bare reply, or our own reason
    remote_mta: str | None  # "mx1.example.net [192.0.2.1]"
    last_attempt: float
    original_recipient: str | None = None
    # For "delayed": when the relay gives up (the message's max lifetime).
    will_retry_until: float | None = None


def _one_line(text: str) -> str:
    """CR, LF and other controls become spaces, runs of white space one space.

    Folding may only happen at white space and a line of white space alone reads as
    the end of a header section to some parsers, so runs are collapsed too.
    """
    return " ".join(_CONTROLS.sub(" ", text).split())


def _xtext(text: str) -> str:
    """Non-ASCII as RFC 6533 \\x{HEX} (backslash too, so the escape is unambiguous)."""
    return "".join(
        c if " " <= c <= "~" and c != "\\" else f"\\x{{{ord(c):X}}}" for c in text
    )


def _ascii_field(text: str) -> str:
    return _xtext(_one_line(text))


def _address_field(address: str) -> str:
    """A Final-/Original-Recipient value: ``rfc822; addr`` or, for an internationalised
    address, RFC 6533's ``utf-8; addr-xtext`` (which also escapes "+" and "=")."""
    address = _one_line(address)
    if address.isascii():
        return f"rfc822; {_xtext(address)}"
    return "utf-8; " + "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def _fold(name: str, value: str) -> list[str]:
    """``name: value`` as header lines: at white space before column 78 when possible,
    never past MAX_LINE. A word too long for any line is split, which adds one space
    when unfolded: the price of a valid message (only opaque diagnostics are that long).

    ``value`` must be one line with single spaces (``_one_line``), so no folded line is
    white space alone.
    """
    lines: list[str] = []
    rest = f"{name}: {value}"
    while len(rest) > _FOLD_AT:
        # Not at index 0 of a continuation (its own leading space) nor right after
        # "Name:" (a first line with no value).
        low = len(name) + 2 if not lines else 1
        cut = rest.rfind(" ", low, _FOLD_AT + 1)
        if cut < 0:
            # A long word: keep it whole on a longer line while that stays legal.
            cut = rest.find(" ", max(low, _FOLD_AT + 1), MAX_LINE + 1)
        if cut > 0:
            lines.append(rest[:cut])
            rest = rest[cut:]
            continue
        if len(rest) <= MAX_LINE:
            break
        cut = MAX_LINE
        escape = rest.rfind("\\x{", low, cut)
        if escape > 0 and rest.find("}", escape, cut) < 0:
            cut = escape  # not inside a \x{..} escape
        lines.append(rest[:cut])
        rest = " " + rest[cut:]
    lines.append(rest)
    return lines


def _field(name: str, value: str) -> bytes:
    return b"".join(line.encode("ascii") + b"\r\n" for line in _fold(name, value))


def _date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, localtime=False, usegmt=True)


def _diagnostic_code(diagnostic: str) -> str:
    """A Diagnostic-Code value with its type: "smtp; ..." for a remote reply, else ours."""
    text = _one_line(diagnostic)
    if len(text) > MAX_DIAGNOSTIC:
        text = text[:MAX_DIAGNOSTIC] + " [truncated]"
    if _DIAGNOSTIC_TYPE.match(text):
        kind, _, rest = text.partition(";")
        return f"{kind.strip()}; {rest.strip()}"
    if _REPLY.match(text):
        return f"smtp; {text}"
    return f"X-SMTPRelay; {text}"


def _host_name(name: str) -> str:
    """Our own name for From, Message-ID and Reporting-MTA: a plain ASCII host name."""
    try:
        name = name.strip().encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return _NOT_HOST.sub("", name) or "localhost"


def _remote_host(remote_mta: str) -> str:
    """"mx1.example.net [192.0.2.1]" -> "mx1.example.net" (Remote-MTA is a DNS name)."""
    words = _one_line(remote_mta).split(" ")
    return words[0] if words and words[0] else "unknown"


def _status(recipient: FailedRecipient) -> str:
    status = recipient.status.strip()
    if _STATUS.match(status):
        return status
    return "4.0.0" if recipient.action == "delayed" else "5.0.0"


def _lines_fit(data: bytes) -> bool:
    return all(len(line) <= MAX_LINE for line in data.split(b"\r\n"))


def _human_text(*, reporting_mta: str, recipients: Sequence[FailedRecipient],
                delayed: bool, postmaster: str, headers_only: bool) -> str:
    host = _one_line(reporting_mta)
    lines = [f"This is the mail system at host {host}.", ""]
    if delayed:
        lines += [
            "Your message could not be delivered yet to the recipients below.",
            "The mail system will keep trying; you do not need to send it again.",
        ]
    else:
        lines += [
            "Your message could not be delivered to the recipients below.",
            "These failures are final: the mail system will not try again.",
        ]
    lines += [
        "",
        f"For assistance, write to {_one_line(postmaster)} and include this report.",
        "The original message's header section is attached." if headers_only
        else "The original message is attached.",
        "",
    ]
    for r in recipients:
        lines.append(f"<{_one_line(r.recipient)}>:")
        # The "smtp; " type prefix is for machines.
        reply = _DIAGNOSTIC_TYPE.sub("", _one_line(r.diagnostic), count=1)
        if r.remote_mta:
            lines.append(f"    host {_one_line(r.remote_mta)} said: {reply}")
        else:
            lines.append(f"    {reply}")
        if r.action == "delayed" and r.will_retry_until is not None:
            lines.append(f"    Will retry until {_date(r.will_retry_until)}.")
        lines.append("")
    return "\r\n".join(lines)


def _text_part(text: str) -> bytes:
    raw = text.encode("utf-8")
    if raw.isascii() and _lines_fit(raw):
        return (b"Content-Type: text/plain; charset=us-ascii\r\n"
                b"Content-Transfer-Encoding: 7bit\r\n\r\n" + raw)
    # body_encode works on code points < 256: feed it the UTF-8 octets as latin-1.
    encoded = email.quoprimime.body_encode(raw.decode("latin-1"), maxlinelen=76, eol="\r\n")
    return (b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded.encode("ascii"))


def _status_part(*, reporting_mta: str, message_id: str, arrival: float,
                 recipients: Sequence[FailedRecipient]) -> bytes:
    out = [b"Content-Type: message/delivery-status\r\n\r\n"]
    out.append(_field("Reporting-MTA", f"dns; {_ascii_field(reporting_mta)}"))
    out.append(_field("X-SMTPRelay-Message-ID", _ascii_field(message_id)))
    out.append(_field("Arrival-Date", _date(arrival)))
    for r in recipients:
        out.append(b"\r\n")  # a blank line starts each per-recipient group
        if r.original_recipient:
            out.append(_field("Original-Recipient", _address_field(r.original_recipient)))
        out.append(_field("Final-Recipient", _address_field(r.recipient)))
        out.append(_field("Action", r.action))
        out.append(_field("Status", _status(r)))
        if r.remote_mta:
            out.append(_field("Remote-MTA", f"dns; {_xtext(_remote_host(r.remote_mta))}"))
        out.append(_field("Diagnostic-Code", _xtext(_diagnostic_code(r.diagnostic))))
        out.append(_field("Last-Attempt-Date", _date(r.last_attempt)))
        if r.action == "delayed" and r.will_retry_until is not None:
            out.append(_field("Will-Retry-Until", _date(r.will_retry_until)))
    return b"".join(out)


def _original_part(original: bytes, full: bool) -> tuple[bytes, bool]:
    """The third part and whether it holds the full message (else the headers only)."""
    if full and _lines_fit(original):
        cte = b"7bit" if original.isascii() else b"8bit"
        return (b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: " + cte
                + b"\r\n\r\n" + original), True
    # Without the empty line that ends it: the part's own end supplies the line break.
    headers = original[:header_end(original)]
    if headers.endswith(b"\r\n\r\n"):
        headers = headers[:-2]
    elif headers == b"\r\n":
        headers = b""
    if not _lines_fit(headers):
        # Not sendable as is; base64 keeps the octets exact and the lines short.
        body = base64.encodebytes(headers).replace(b"\n", b"\r\n")
        return (b"Content-Type: text/rfc822-headers\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + body), False
    cte = b"7bit" if headers.isascii() else b"8bit"
    return (b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: " + cte
            + b"\r\n\r\n" + headers), False


def build_dsn(*, original: bytes, envelope_sender: str, reporting_mta: str, message_id: str,
              arrival: float, recipients: Sequence[FailedRecipient], now: float,
              postmaster: str | None = None, return_full_message: bool = False) -> bytes:
    """The complete DSN (CRLF line endings), to be sent from the null sender ``<>``."""
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    delayed = all(r.action == "delayed" for r in recipients)
    host = _host_name(reporting_mta)
    third, full = _original_part(original, return_full_message)
    human = _text_part(_human_text(
        reporting_mta=host, recipients=recipients, delayed=delayed,
        postmaster=postmaster or f"postmaster@{host}", headers_only=not full))
    status = _status_part(reporting_mta=host, message_id=message_id, arrival=arrival,
                          recipients=recipients)
    parts = (human, status, third)
    # Random, and checked against the content: the original message is arbitrary bytes.
    while True:
        boundary = f"=_dsn_{os.urandom(12).hex()}"
        if not any(boundary.encode("ascii") in part for part in parts):
            break

    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    sender = _one_line(envelope_sender).strip("<>") or "postmaster@" + host
    head = b"".join([
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        _field("To", f"<{_xtext(sender)}>"),
        _field("Subject", subject),
        _field("Date", _date(now)),
        _field("Message-ID", f"<{_NOT_ID.sub('_', message_id)}.dsn@{host}>"),
        # RFC 3834: autoresponders (and our own should_send_dsn) never answer this.
        _field("Auto-Submitted", "auto-replied"),
        _field("MIME-Version", "1.0"),
        _field("Content-Type", "multipart/report; report-type=delivery-status;"
                               f' boundary="{boundary}"'),
        _field("Content-Transfer-Encoding", "8bit" if not third.isascii() else "7bit"),
    ])
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = b"This is a MIME-encapsulated message." + b"".join(
        delimiter + b"\r\n" + part for part in parts) + delimiter + b"--\r\n"
    return head + b"\r\n" + body


def should_send_dsn(envelope_sender: str, original_headers: list[HeaderField]) -> bool:
    """Whether a failure of this message may be reported to its sender (no loops)."""
    sender = envelope_sender.strip().strip("<>").strip()
    if not sender:
        return False  # the null reverse-path: RFC 5321 4.5.5 forbids answering it
    if (local_of(sender) or sender).lower() == "mailer-daemon":
        return False
    for header in original_headers:
        if header.key == "auto-submitted":
            value = re.sub(r"\([^()]*\)", " ", header.value).split(";")[0].strip().lower()
            if value != "no":
                return False  # RFC 3834 5.2: auto-generated, auto-replied, anything but "no"
        elif header.key == "content-type":
            parsed = email.message.Message()
            parsed["Content-Type"] = header.value
            report_type = str(parsed.get_param("report-type", "") or "").lower()
            if parsed.get_content_type() == "multipart/report" and report_type in (
                    "delivery-status", "global-delivery-status"):
                return False
    return True
