"""Bounces without RFC 3464 fields: recipients and reasons read from wording for people.

Some MTAs still send plain-text bounces: qmail's (and Yahoo's, which derives from
it), Exim's when DSN support is off, old Exchange's "could not be reached" NDRs, and
anything whose delivery-status part got lost on the way. ``read`` recognises those
forms and returns a ``DeliveryReport`` whose ``heuristic`` names the form, so the
caller knows the recipients and codes were guessed from prose. It reads only the
first text part (``mime.MAX_TEXT`` octets) and stops at the returned copy of the
original, so the original's own addresses are never taken for failed recipients.

The caller should trust a heuristic report only for the recipient its VERP address
names; the parser cannot know which addresses the message was sent to.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from smtprelay.bounces.classification import DEFAULT_RULES, Rule
from smtprelay.feedback import mime
from smtprelay.feedback.dsn_parse import DeliveryReport, Notes, RecipientStatus, make_recipient
from smtprelay.feedback.fields import (
    collapse,
    lines_of,
    normalise_address,
    parse_address_field,
    read_header_section,
)
from smtprelay.mail.address import local_of

_ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_ADDRESS_RE = re.compile(_ADDRESS)
_DAEMON_LOCAL = re.compile(r"^(mailer-?daemon|mail-?daemon|postmaster|mdaemon|bounces?)$",
                           re.IGNORECASE)
_BOUNCE_FROM_NAME = re.compile(r"mail delivery (system|subsystem|service)|mailer.?daemon"
                               r"|postmaster|microsoft outlook", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|returned mail|returned to sender|delivery status notification"
    r"|delivery (failure|failed|has failed|problem|report|notification)|failure notice"
    r"|mail delivery failed|non.?deliver|could not (be )?deliver|not delivered"
    r"|delayed mail|delivery delayed|warning: could not send|mail system error",
    re.IGNORECASE)
# Where the returned copy of the original starts: nothing after it is about delivery.
_COPY_MARKER = re.compile(
    r"^\s*-*\s*(below this line is a copy of the message|this is a copy of the message"
    r"|original message follows|the original message was|original message headers"
    r"|-----original message-----|forwarded message|a copy of the original message)",
    re.IGNORECASE | re.MULTILINE)
_DELAY_WORDING = re.compile(
    r"not yet been delivered|will (continue to|keep) (try|trying|attempt)"
    r"|still (trying|being retried)|delivery (has been |is )?delayed|delayed mail"
    r"|this is a warning message only|delivery attempts will continue"
    r"|no action is required on your part", re.IGNORECASE)
_PERMANENT_WORDING = re.compile(r"permanent (error|failure)|i've given up|fatal error"
                                r"|could not be delivered|couldn't be delivered",
                                re.IGNORECASE)
# qmail: "Hi. This is the qmail-send program at host.example.com."
_QMAIL = re.compile(r"qmail-send program|i'm afraid i wasn't able to deliver"
                    r"|unable to deliver your message to the following address", re.IGNORECASE)
_QMAIL_HOST = re.compile(r"qmail-send program at ([A-Za-z0-9.-]+[A-Za-z0-9])", re.IGNORECASE)
_QMAIL_RECIPIENT = re.compile(rf"^<({_ADDRESS})>:\s*(.*)$")
# Exim: "This message was created automatically by mail delivery software."
_EXIM = re.compile(r"created automatically by mail delivery software", re.IGNORECASE)
_EXIM_LIST = re.compile(r"following address(\(es\)|es)? (failed|ha(ve|s) not yet been delivered)"
                        r"|address(\(es\)|es)? failed:"
                        r"|address(es)? to which the message has not yet been delivered (is|are)",
                        re.IGNORECASE)
_EXIM_HOST = re.compile(r"\bhost\s+([A-Za-z0-9.-]+)\s+\[([0-9A-Fa-f:.]+)\]")
# Exchange, old and new: "The following recipient(s) cannot be reached:",
# "Delivery has failed to these recipients or groups:".
_EXCHANGE = re.compile(r"following recipient\(s\) (cannot|could not) be reached"
                       r"|delivery has failed to these recipients"
                       r"|did not reach (some or all of )?the intended recipient"
                       r"|your message (to \S+ )?couldn't be delivered"
                       r"|remote server returned '", re.IGNORECASE)
_EXCHANGE_CODE = re.compile(r"<([^<>\n]*#\s*([245]\.\d{1,3}\.\d{1,3})[^<>\n]*)>")
_EXCHANGE_REMOTE = re.compile(r"remote server returned '([^'\n]{1,1000})'", re.IGNORECASE)
# A line that is a listed recipient: "user@example.com on 1/1/2024 10:00 AM",
# "user@example.com (user@example.com)", "<mailto:user@example.com>"; never a sentence
# with an address in it.
_EXCHANGE_RECIPIENT = re.compile(rf"<?(?:mailto:)?({_ADDRESS})>?(?:\s+on\s|\s*\(|\s*$)")
_EXCHANGE_SMTP_PART = re.compile(r"smtp;\s*(.*)$", re.IGNORECASE)
_BARE_REPLY_CODE = re.compile(r"\b[245]\d\d[ -]")
# An SMTP reply inside prose: "Remote host said: 550 5.1.1 ...", "554: delivery error"
# (qmail and Yahoo put a colon after the code). Not part of a word, an address or an
# IP ("mta1042", "192.0.2.1").
_REPLY_IN_TEXT = re.compile(r"(?<![\w.\[:-])([245]\d\d)(?::?[ -](?=\S)|:$)", re.MULTILINE)
_SMTP_REPLY = re.compile(r"\b[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\b)?[^\n]{0,400}")
_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


@dataclass(frozen=True, slots=True)
class _Found:
    address: str
    diagnostic: str | None
    remote_mta: str | None = None


def from_mail_daemon(message: mime.ParsedMessage) -> bool:
    """From MAILER-DAEMON, postmaster or a "Mail Delivery System"."""
    sender = message.header("from") or ""
    local = local_of(parse_address_field(sender)[1])
    return bool(_DAEMON_LOCAL.match(local) or _BOUNCE_FROM_NAME.search(sender))


def looks_like_bounce(message: mime.ParsedMessage) -> bool:
    """From a mail daemon, with a bounce's subject, or Exim's X-Failed-Recipients."""
    if message.header("x-failed-recipients") or from_mail_daemon(message):
        return True
    return bool(_BOUNCE_SUBJECT.search(message.subject or ""))


def read(message: mime.ParsedMessage, rules: Sequence[Rule] = DEFAULT_RULES,
         notes: Notes | None = None) -> DeliveryReport | None:
    """The recipients a text bounce names, or None when no known form is found."""
    notes = Notes() if notes is None else notes
    full_text = mime.human_text(message)
    marker = _COPY_MARKER.search(full_text)
    text = full_text[:marker.start()] if marker else full_text
    form: str | None = None
    found: list[_Found] = []
    reporting_mta = None
    if _QMAIL.search(text):
        form, found = "qmail", _qmail(text)
        host = _QMAIL_HOST.search(text)
        reporting_mta = f"dns; {host.group(1)}" if host else None
    elif _EXIM.search(text) and _EXIM_LIST.search(text):
        form, found = "exim", _exim(text)
    elif _EXCHANGE.search(text):
        form, found = "exchange", _exchange(text)
    if not found and looks_like_bounce(message):
        form, found = "generic", _generic(message, text)
    if not found or form is None:
        return None
    delayed = bool(_DELAY_WORDING.search(text)) and not _PERMANENT_WORDING.search(text)
    if message.truncated:
        notes.add(f"input longer than {mime.MAX_INPUT} octets was cut")
    notes.add(f"no delivery-status part; recipients read from {form} wording")
    recipients: list[RecipientStatus] = []
    seen: set[str] = set()
    for item in found:
        key = normalise_address(item.address)
        if key in seen:
            continue
        seen.add(key)
        recipients.append(make_recipient(
            address=item.address, action="delayed" if delayed else "failed", status=None,
            diagnostic=item.diagnostic, remote_mta=item.remote_mta, rules=rules,
            notes=notes))
    original = mime.find_original(message)
    if original is None and marker is not None:
        original = _inline_original(full_text[marker.end():])
    return DeliveryReport(
        reporting_mta=reporting_mta, received_from_mta=None, arrival_date=None,
        original_envelope_id=None, recipients=tuple(recipients), original=original,
        date=message.date, subject=message.subject, report_from=message.header("from"),
        heuristic=form, notes=notes.result(), truncated=message.truncated)


def _qmail(text: str) -> list[_Found]:
    """qmail and Yahoo: "<addr>:" on a line of its own, the reason in the lines below."""
    found: list[_Found] = []
    address: str | None = None
    reason: list[str] = []
    for line in [*lines_of(text), ""]:
        match = _QMAIL_RECIPIENT.match(line.strip())
        if match or not line.strip():
            if address is not None:
                found.append(_Found(address, smtp_diagnostic(" ".join(reason))))
                address = None
            if match:
                address = match.group(1)
                reason = [match.group(2)]
            continue
        if address is not None:
            reason.append(line)
    return found


def _exim(text: str) -> list[_Found]:
    """Exim: after "The following address(es) failed:", each address indented by two
    spaces, the reason indented further below it ("host h [ip]: 550 ..." or "SMTP
    error from remote mail server after RCPT TO:...")."""
    heading = _EXIM_LIST.search(text)
    if heading is None:
        return []
    found: list[_Found] = []
    address: str | None = None
    reason: list[str] = []

    def flush() -> None:
        if address is not None:
            text = collapse(" ".join(reason))
            diagnostic = smtp_diagnostic(text)
            host = _EXIM_HOST.search(text)
            found.append(_Found(address, diagnostic,
                                f"{host.group(1)} [{host.group(2)}]" if host else None))

    for line in lines_of(text[heading.end():]):
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" \t"))
        if indent == 0:
            if found or address is not None:
                break  # the prose after the list
            continue
        match = _ADDRESS_RE.fullmatch(line.strip().strip("<>"))
        if indent < 4 and match:
            flush()
            address, reason = match.group(0), []
        elif address is not None:
            reason.append(line.strip())
    flush()
    return found


def _exchange(text: str) -> list[_Found]:
    """Exchange's NDR text: the recipients listed under the heading, the reason in a
    "<host #5.1.1 smtp;550 ...>" bracket (old) or "Remote Server returned '...'" (new)."""
    diagnostics = [match.group(1).strip() for match in _EXCHANGE_CODE.finditer(text)]
    diagnostics += [match.group(1).strip() for match in _EXCHANGE_REMOTE.finditer(text)]
    addresses: list[str] = []
    for line in lines_of(text):
        match = _EXCHANGE_RECIPIENT.match(line.strip())
        if match:
            addresses.append(match.group(1))
    addresses = list(dict.fromkeys(addresses))
    if not addresses:
        return []
    found = []
    for index, address in enumerate(addresses):
        # One reason per recipient in order when they line up, else the first for all.
        if len(diagnostics) == len(addresses):
            diagnostic: str | None = diagnostics[index]
        else:
            diagnostic = diagnostics[0] if diagnostics else None
        found.append(_Found(address, _exchange_diagnostic(diagnostic)))
    return found


def _exchange_diagnostic(text: str | None) -> str | None:
    """"mail.example.com #5.1.1 smtp;550 5.1.1 User unknown" -> the SMTP part when there
    is one (what the rules read), else the text with its "#5.1.1" code."""
    if not text:
        return None
    smtp = _EXCHANGE_SMTP_PART.search(text)
    if smtp:
        return f"smtp; {smtp.group(1).strip()}"
    code = _ENHANCED.search(text)
    if code and not _BARE_REPLY_CODE.search(text):
        return f"{text} ({code.group(1)})"
    return text


def _generic(message: mime.ParsedMessage, text: str) -> list[_Found]:
    """Any other bounce: Exim's X-Failed-Recipients, or the addresses the text names on
    lines that carry an SMTP reply, or the only address it names at all."""
    reply = _SMTP_REPLY.search(text)
    diagnostic = smtp_diagnostic(reply.group(0)) if reply else None
    listed = message.header("x-failed-recipients")
    if listed:
        return [_Found(address, diagnostic) for address in _ADDRESS_RE.findall(listed)]
    ours = {normalise_address(parse_address_field(message.header(name) or "")[1])
            for name in ("from", "to", "reply-to", "sender")}
    candidates: list[str] = []
    on_reply_lines: list[str] = []
    for line in lines_of(text):
        for address in _ADDRESS_RE.findall(line):
            local = local_of(address)
            if normalise_address(address) in ours or _DAEMON_LOCAL.match(local):
                continue
            candidates.append(address)
            if _SMTP_REPLY.search(line):
                on_reply_lines.append(address)
    distinct = list(dict.fromkeys(candidates))
    chosen = list(dict.fromkeys(on_reply_lines)) or (distinct if len(distinct) == 1 else [])
    return [_Found(address, diagnostic) for address in chosen]


def smtp_diagnostic(reason: str) -> str | None:
    """A Diagnostic-Code from prose: "smtp; <the reply>" from the reply code on when the
    text quotes one (the reply code then reads as such for the rules: "554:" becomes
    "554"), else the text itself."""
    text = collapse(reason)
    if not text:
        return None
    reply = _REPLY_IN_TEXT.search(text)
    if reply is None:
        return text
    rest = text[reply.end():].strip()
    return f"smtp; {reply.group(1)} {rest}".rstrip()


def _inline_original(text: str) -> mime.OriginalMessage | None:
    """The header section of a copy pasted into the text after the marker line."""
    body = text.split("\n", 1)[1] if "\n" in text else ""
    headers = read_header_section(body.lstrip("\r\n"))
    if not headers:
        return None
    return mime.OriginalMessage(tuple(headers), "text/plain", complete=False)
