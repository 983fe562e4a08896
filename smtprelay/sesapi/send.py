"""Sending, for both SES APIs: a request's parts, once each protocol has read them from
its own encoding (v2's JSON, v1's form fields), become what an SMTP session hands on,
a `Submission`, and go through the same handler (smtprelay.submission.pipeline): the
same identities, quotas, suppression list, configuration sets, tags, transforms,
spool and events. Nothing here decides what the pipeline decides.

What a request says in fields, the message says in the header fields SES reads on
SMTP, in front of the message: the configuration set as X-SES-CONFIGURATION-SET, the
tags as X-SES-MESSAGE-TAGS, the list options as X-SES-LIST-MANAGEMENT-OPTIONS, v1's
SourceArn, FromArn and ReturnPathArn as X-SES-SOURCE-ARN, X-SES-FROM-ARN and
X-SES-RETURN-PATH-ARN. The pipeline takes them out before the message is signed and
sent, as it does for SMTP. A Raw message's own set, tags and list options give way to
the request's; for the ARNs the first field counts (smtprelay.policy.authorization),
and the request's come first.

Content: Simple is composed (smtprelay.mail.compose); a template (smtprelay.sesapi.render)
is rendered, then composed as Simple content, or, when its data does not fit, answered
with a message id, not sent and recorded as a Rendering Failure event, as SES does;
Raw is taken as written, its line ends made CRLF (an API body has no SMTP framing to
smuggle through, and Python's email package writes LF), its recipients from the
request or else from its To, Cc and Bcc fields, and its Bcc field removed, as SES
does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pybase64

from smtprelay.auth.aws_errors import Protocol
from smtprelay.config import Config, ConfigSource
from smtprelay.mail import compose
from smtprelay.mail.headers import HeaderField, MalformedHeader, header_end, parse_header_section
from smtprelay.mail.headers import addresses as header_addresses
from smtprelay.mail.replies import Reply
from smtprelay.policy.quota import Quotas, effective_quota
from smtprelay.policy.templates import Content, TemplateStore
from smtprelay.sesapi import render
from smtprelay.sesapi.errors import V2, ApiError, bad_request, refusal
from smtprelay.spool.model import Envelope, new_message_id
from smtprelay.submission.seam import (
    ApiSubmissionHandler,
    Client,
    Submission,
    SubmissionHandler,
)

MAX_RECIPIENTS = 50  # SES: "50 recipients per message" (To, Cc and Bcc together)
LISTENER = "api"  # the Client.listener of API submissions (logs, metrics, events)
_SES_FIELDS = re.compile(
    rb"^(x-ses-configuration-set|x-ses-message-tags|x-ses-list-management-options)"
    rb"[ \t]*:.*(?:\r\n[ \t].*)*\r\n", re.IGNORECASE | re.MULTILINE)
_BCC = re.compile(rb"^bcc[ \t]*:.*(?:\r\n[ \t].*)*\r\n", re.IGNORECASE | re.MULTILINE)
_TAG_PART = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
# A line feed without a carriage return before it. The LF comes first so that the
# search skips from LF to LF and tries the look-behind only there.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_SEARCH_MIN_LINE = 16  # average bytes per line from which _crlf searches


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request: the API key's account, from where."""

    account: str
    access_key_id: str
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Control:
    """What a request says about its message besides the content."""

    configuration_set: str | None = None
    tags: Sequence[tuple[str, str]] = ()  # checked by `tag`
    contact_list: str | None = None  # ListManagementOptions (v2)
    topic: str | None = None
    source_arn: str | None = None  # sending authorization (v1)
    from_arn: str | None = None
    return_path_arn: str | None = None

    def fields(self, protocol: Protocol) -> list[tuple[str, str]]:
        """As the header fields the pipeline reads."""
        fields: list[tuple[str, str]] = []
        if self.configuration_set is not None:
            fields.append(("X-SES-CONFIGURATION-SET", self.configuration_set))
        if self.tags:
            fields.append(("X-SES-MESSAGE-TAGS", ", ".join(f"{k}={v}" for k, v in self.tags)))
        if self.contact_list is not None:
            fields.append(("X-SES-LIST-MANAGEMENT-OPTIONS", self.contact_list + (
                f"; topic={self.topic}" if self.topic else "")))
        for name, arn in (("X-SES-SOURCE-ARN", self.source_arn),
                          ("X-SES-FROM-ARN", self.from_arn),
                          ("X-SES-RETURN-PATH-ARN", self.return_path_arn)):
            if arn is not None:
                fields.append((name, arn))
        for key, value in fields:
            if not compose.LINE_BREAKS.isdisjoint(value):
                raise bad_request(f"{key} must not contain a line break", protocol)
        return fields

    @property
    def replaces_own(self) -> bool:
        """Whether a Raw message's own set, tags and list options give way."""
        return bool(self.configuration_set is not None or self.tags
                    or self.contact_list is not None)


def tag(name: str, value: str, where: str, protocol: Protocol) -> tuple[str, str]:
    for part, what in ((name, "Name"), (value, "Value")):
        # SES's own rule for tag names and values: nothing the header could misread.
        if not _TAG_PART.match(part):
            raise bad_request(f"{where}.{what} may contain only ASCII letters, digits, "
                              "underscores and dashes, at most 256", protocol)
    return name, value


@dataclass(frozen=True, slots=True)
class Simple:
    """Content the relay composes."""

    sender: str  # the From field, and the envelope sender unless `return_path`
    sender_field: str  # "FromEmailAddress", "Source"
    subject: compose.Text
    text: compose.Text | None = None
    html: compose.Text | None = None
    to: Sequence[str] = ()
    cc: Sequence[str] = ()
    bcc: Sequence[str] = ()
    reply_to: Sequence[str] = ()
    headers: Sequence[tuple[str, str]] = ()
    attachments: Sequence[compose.Attachment] = ()
    # v1's ReturnPath, v2's FeedbackForwardingEmailAddress: where bounces go. The
    # relay's bounce messages (DSNs) go to the envelope sender, so that is what it
    # becomes, checked as any envelope sender.
    return_path: str | None = None
    return_path_field: str = "ReturnPath"


@dataclass(frozen=True, slots=True)
class Raw:
    """Content taken as written; the names are the request's, for its errors."""

    data: bytes
    field: str  # "Content.Raw.Data", "RawMessage.Data"
    sender: str | None  # the envelope sender; None: the message's one From address
    sender_field: str  # "FromEmailAddress", "Source"
    recipients: Sequence[str] = ()  # none: the message's To, Cc and Bcc
    # v2's FeedbackForwardingEmailAddress: the envelope sender instead (see Simple's).
    return_path: str | None = None
    return_path_field: str = "FeedbackForwardingEmailAddress"


def base64_data(text: str, field: str, protocol: Protocol) -> bytes:
    """`text` decoded as base64.b64decode(text, validate=True) does. pybase64 (SIMD)
    first: the standard library's decoder took 155 µs of a 50 KB message's ~1.5 ms
    (bench/run_ses_api.py), pybase64 3 µs. What pybase64 decodes the standard library
    decodes the same (tests/unit/test_sesapi_base64.py); it is stricter about data after
    the padding ("AAAA=", "AAAA===="), which the standard library's decoder ignores, so
    what it refuses gets the standard library's answer."""
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{field} must be base64", protocol) from None


def _crlf(data: bytes) -> bytes:
    """Every line end CRLF. Most clients send CRLF already, so first whether any LF is
    bare. For 50 KB of 78-byte lines (bench/run_ses_api.py) counting the LFs and then
    _BARE_LF's search take 35 µs, counting LFs and CRLFs 60 µs; the search costs ~10 ns
    per LF, so for short lines (a message of empty lines) the CRLFs are counted instead.
    (A regular expression that tried every byte was once a fifth of the API's CPU.)"""
    lines = data.count(b"\n")
    if lines * _SEARCH_MIN_LINE < len(data):
        bare = _BARE_LF.search(data) is not None
    else:
        bare = lines != data.count(b"\r\n")
    if not bare:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _addr_spec(field: str, address: str, protocol: Protocol) -> str:
    try:
        return compose.addresses(field, [address])[0].addr_spec
    except compose.ComposeError as exc:
        raise bad_request(str(exc), protocol) from None


class Sender:
    """Sends what a request asks, on the handler SMTP sessions use."""

    def __init__(self, live: ConfigSource, handler: SubmissionHandler,
                 clock: Callable[[], float] = time.time) -> None:
        self._live = live
        self._handler = handler
        self._clock = clock

    async def simple(self, caller: Caller, simple: Simple, control: Control,
                     protocol: Protocol) -> str:
        """The message id of the message composed and accepted, or an ApiError."""
        received_at = self._clock()
        fields = control.fields(protocol)
        data, recipients, mail_from = self._compose(simple, received_at, protocol)
        return await self._send(caller, mail_from, recipients, _prefix(fields) + data,
                                received_at, control, protocol)

    async def templated(self, caller: Caller, simple: Simple, template: Content,
                        name: str, data: Mapping[str, Any], control: Control,
                        protocol: Protocol) -> str:
        """`template` rendered with `data` into `simple` (its subject and bodies
        replaced), then sent as Simple content. A message whose data does not fit the
        template is answered with a message id and not sent, as SES does: the
        pipeline records a Rendering Failure event for its configuration set."""
        try:
            rendered = render.render(template, data)
        except render.RenderingFailure as exc:
            return await self._rendering_failed(caller, simple, name, str(exc), control,
                                                protocol)
        # A template of a subject alone is a message with an empty text body.
        text = "" if rendered.text is None and rendered.html is None else rendered.text
        return await self.simple(caller, dataclasses.replace(
            simple, subject=compose.Text(rendered.subject),
            text=None if text is None else compose.Text(text),
            html=None if rendered.html is None else compose.Text(rendered.html)),
            control, protocol)

    async def _rendering_failed(self, caller: Caller, simple: Simple, name: str, error: str,
                                control: Control, protocol: Protocol) -> str:
        # The sender and recipients are checked as for a message that renders: SES
        # refuses those before it renders anything.
        received_at = self._clock()
        fields = control.fields(protocol)
        data, recipients, mail_from = self._compose(dataclasses.replace(
            simple, subject=compose.Text(""), text=compose.Text(""), html=None, headers=(),
            attachments=()), received_at, protocol)
        _count(recipients, protocol)
        self._check(caller, mail_from, recipients, control.configuration_set, protocol)
        if not isinstance(self._handler, ApiSubmissionHandler):
            raise ApiError("MessageRejected", error)
        reply = await self._handler.rendering_failed(self._submission(
            caller, mail_from, recipients, _prefix(fields) + data[:header_end(data)],
            received_at), name, error)
        if not reply.is_success:
            raise refusal(reply, protocol, configuration_set=control.configuration_set)
        return reply.text.rsplit(" ", 1)[-1]

    def _compose(self, simple: Simple, received_at: float, protocol: Protocol
                 ) -> tuple[bytes, list[str], str]:
        """Simple content as a MIME message: (data, recipients, envelope sender)."""
        message_id = new_message_id(received_at)
        try:
            data = compose.compose(compose.Parts(
                from_address=simple.sender, subject=simple.subject, text=simple.text,
                html=simple.html, to=simple.to, cc=simple.cc, reply_to=simple.reply_to,
                headers=simple.headers, attachments=simple.attachments),
                message_id=f"{message_id}@{self._live.config.server.hostname}",
                date=received_at)
            recipients = [a.addr_spec for a in compose.addresses(
                "Destination", [*simple.to, *simple.cc, *simple.bcc])]
        except compose.ComposeError as exc:
            raise bad_request(str(exc), protocol) from None
        mail_from = (_addr_spec(simple.return_path_field, simple.return_path, protocol)
                     if simple.return_path is not None
                     else _addr_spec(simple.sender_field, simple.sender, protocol))
        return data, recipients, mail_from

    async def raw(self, caller: Caller, raw: Raw, control: Control, protocol: Protocol
                  ) -> str:
        received_at = self._clock()
        fields = control.fields(protocol)
        data = _crlf(raw.data)
        header = _header_fields(data, raw.field)
        recipients = list(raw.recipients)
        if not recipients:
            recipients = [a for f in header if f.key in ("to", "cc", "bcc")
                          for a in header_addresses(f.value)]
            if "(unparseable)" in recipients:
                raise bad_request(f"{raw.field}: its To, Cc or Bcc field cannot be read as "
                                  "addresses", protocol)
        # Bcc never travels in the message; the request's SES fields replace the
        # message's own.
        end = header_end(data)
        head = _BCC.sub(b"", data[:end])
        if control.replaces_own:
            head = _SES_FIELDS.sub(b"", head)
        data = head + data[end:]
        if raw.return_path is not None:
            mail_from = _addr_spec(raw.return_path_field, raw.return_path, protocol)
        elif raw.sender is None:
            froms = [a for f in header if f.key == "from" for a in header_addresses(f.value)]
            if len(froms) != 1 or froms[0] == "(unparseable)":
                raise bad_request(f"{raw.field}: {raw.sender_field} is not given and the "
                                  "message has no single From address", protocol)
            mail_from = froms[0]
        else:
            mail_from = _addr_spec(raw.sender_field, raw.sender, protocol)
        return await self._send(caller, mail_from, recipients, _prefix(fields) + data,
                                received_at, control, protocol)

    async def _send(self, caller: Caller, mail_from: str, recipients: list[str],
                    data: bytes, received_at: float, control: Control,
                    protocol: Protocol) -> str:
        _count(recipients, protocol)
        reply = await self._submit(caller, mail_from, recipients, data, received_at,
                                   control.configuration_set, protocol)
        return reply.text.rsplit(" ", 1)[-1]

    async def _submit(self, caller: Caller, mail_from: str, recipients: list[str],
                      data: bytes, received_at: float, configuration_set: str | None,
                      protocol: Protocol) -> Reply:
        """As an SMTP session does: MAIL FROM, each RCPT TO, then the message."""
        self._check(caller, mail_from, recipients, configuration_set, protocol)
        reply = await self._handler.submit(
            self._submission(caller, mail_from, recipients, data, received_at))
        if not reply.is_success:
            raise refusal(reply, protocol, configuration_set=configuration_set)
        return reply

    def _check(self, caller: Caller, mail_from: str, recipients: list[str],
               configuration_set: str | None, protocol: Protocol) -> None:
        for check in (self._handler.check_sender(caller.account, mail_from),
                      *(self._handler.check_recipient(caller.account, r) for r in recipients)):
            if check is not None:
                raise refusal(check, protocol, configuration_set=configuration_set)

    @staticmethod
    def _submission(caller: Caller, mail_from: str, recipients: list[str], data: bytes,
                    received_at: float) -> Submission:
        smtputf8 = not all(a.isascii() for a in (mail_from, *recipients))
        return Submission(
            client=Client(ip=caller.ip, port=caller.port, helo="", listener=LISTENER,
                          account=caller.account, auth_user=caller.access_key_id,
                          tls_version=None, tls_cipher=None),
            envelope=Envelope(mail_from=mail_from, recipients=tuple(recipients),
                              smtputf8=smtputf8, body_8bitmime=not data.isascii()),
            data=data, received_at=received_at)


async def stored_template(store: TemplateStore | None, account: str, name: str,
                          protocol: Protocol) -> Content:
    """`account`'s template `name`; another account's does not exist for it."""
    if store is None:
        raise ApiError("InternalFailure", "This relay keeps no templates.", 500, "Receiver")
    found = await asyncio.to_thread(store.get, account, name)
    if found is None:
        message = f"Template {name} does not exist."
        raise ApiError("NotFoundException", message, 404) if protocol == V2 \
            else ApiError("TemplateDoesNotExist", message)
    return found.content


def template_data(text: str | None, field: str, protocol: Protocol) -> dict[str, Any]:
    """TemplateData: a JSON object ({} for none)."""
    try:
        return render.parse_data("{}" if text is None else text, field)
    except ValueError as exc:
        raise bad_request(str(exc), protocol) from None


def _count(recipients: list[str], protocol: Protocol) -> None:
    if not recipients:
        raise ApiError("MessageRejected", "There are no recipients specified.")
    if len(recipients) > MAX_RECIPIENTS:
        raise bad_request(f"Recipient count exceeds {MAX_RECIPIENTS}.", protocol)


def _prefix(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in fields)


def _header_fields(data: bytes, field: str) -> list[HeaderField]:
    if header_end(data) <= 2:
        raise ApiError("MessageRejected", f"{field} is not a MIME message: it has no "
                                          "header section")
    try:
        return parse_header_section(data)
    except MalformedHeader as exc:
        raise ApiError("MessageRejected", f"{field}: {exc}") from None


async def send_quota(config: Config, quotas: Quotas, account: str) -> dict[str, float]:
    """SES's SendQuota (v2's GetAccount, v1's GetSendQuota); -1 for no limit."""
    quota = effective_quota(config, account)
    return {
        "Max24HourSend": float(quota.max_24h_send) if quota else -1.0,
        "MaxSendRate": float(quota.max_send_rate) if quota else -1.0,
        "SentLast24Hours": float(await quotas.sent_last_24h(account)),
    }
