"""SES v2 operations (REST-JSON): each request becomes what an SMTP session hands on, a
`Submission`, and goes through the same handler (smtprelay.submission.pipeline): the
same identities, quotas, suppression list, configuration sets, tags, transforms,
spool and events. Nothing here decides what the pipeline decides.

What the API says in fields, the message says in the header fields SES reads on SMTP,
in front of the message: `ConfigurationSetName` as X-SES-CONFIGURATION-SET,
`EmailTags` as X-SES-MESSAGE-TAGS, `ListManagementOptions` as
X-SES-LIST-MANAGEMENT-OPTIONS. The pipeline takes them out before the message is
signed and sent, as it does for SMTP. A Raw message's own X-SES-* fields of the same
names give way to the request's fields.

Content: `Simple` is composed (smtprelay.mail.compose); `Raw` is taken as written,
its line ends made CRLF (an API body has no SMTP framing to smuggle through, and
Python's email package writes LF), its recipients from `Destination` or else from its
To, Cc and Bcc fields, and its Bcc field removed, as SES does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from typing import Any

from smtprelay.config import ConfigSource
from smtprelay.mail import compose
from smtprelay.mail.headers import MalformedHeader, header_end, parse_header_section
from smtprelay.mail.headers import addresses as header_addresses
from smtprelay.mail.replies import Reply
from smtprelay.policy.quota import Quotas, effective_quota
from smtprelay.policy.templates import Content, TemplateStore
from smtprelay.sesapi import render
from smtprelay.sesapi.errors import V2, ApiError, bad_request, not_found, refusal
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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request: the API key's account, from where."""

    account: str
    access_key_id: str
    ip: str
    port: int


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"{field} must be an object")
    return value


def _string(value: Any, field: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise bad_request(f"{field} is required")
        return None
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    return value


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{field} must be a list of strings")
    return value


def _text(value: Any, field: str) -> compose.Text | None:
    if value is None:
        return None
    content = _object(value, field)
    data = _string(content.get("Data"), f"{field}.Data", required=True)
    assert data is not None
    return compose.Text(data, _string(content.get("Charset"), f"{field}.Charset"))


def _blob(value: Any, field: str) -> bytes:
    text = _string(value, field, required=True)
    assert text is not None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"{field} must be base64") from None


def _attachments(value: Any) -> list[compose.Attachment]:
    found: list[compose.Attachment] = []
    for i, item in enumerate(value or []):
        where = f"Attachments[{i}]"
        a = _object(item, where)
        filename = _string(a.get("FileName"), f"{where}.FileName", required=True)
        assert filename is not None
        found.append(compose.Attachment(
            content=_blob(a.get("RawContent"), f"{where}.RawContent"), filename=filename,
            content_type=_string(a.get("ContentType"), f"{where}.ContentType"),
            disposition=_string(a.get("ContentDisposition"), f"{where}.ContentDisposition")
            or "ATTACHMENT",
            content_id=_string(a.get("ContentId"), f"{where}.ContentId"),
            description=_string(a.get("ContentDescription"), f"{where}.ContentDescription"),
            transfer_encoding=_string(a.get("ContentTransferEncoding"),
                                      f"{where}.ContentTransferEncoding")))
    return found


def _headers(value: Any, field: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for i, item in enumerate(value or []):
        h = _object(item, f"{field}[{i}]")
        name = _string(h.get("Name"), f"{field}[{i}].Name", required=True)
        text = _string(h.get("Value"), f"{field}[{i}].Value", required=True)
        assert name is not None and text is not None
        found.append((name, text))
    return found


def _control_fields(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The request's fields as the header fields the pipeline reads."""
    fields: list[tuple[str, str]] = []
    name = _string(body.get("ConfigurationSetName"), "ConfigurationSetName")
    if name is not None:
        fields.append(("X-SES-CONFIGURATION-SET", name))
    tags = []
    for i, item in enumerate(body.get("EmailTags") or []):
        tag = _object(item, f"EmailTags[{i}]")
        key = _string(tag.get("Name"), f"EmailTags[{i}].Name", required=True)
        value = _string(tag.get("Value"), f"EmailTags[{i}].Value", required=True)
        assert key is not None and value is not None
        for part, what in ((key, "Name"), (value, "Value")):
            # SES's own rule for tag names and values: nothing the header could misread.
            if not _TAG_PART.match(part):
                raise bad_request(f"EmailTags[{i}].{what} may contain only ASCII letters, "
                                  "digits, underscores and dashes, at most 256")
        tags.append(f"{key}={value}")
    if tags:
        fields.append(("X-SES-MESSAGE-TAGS", ", ".join(tags)))
    options = body.get("ListManagementOptions")
    if options is not None:
        o = _object(options, "ListManagementOptions")
        contact_list = _string(o.get("ContactListName"),
                               "ListManagementOptions.ContactListName", required=True)
        topic = _string(o.get("TopicName"), "ListManagementOptions.TopicName")
        assert contact_list is not None
        fields.append(("X-SES-LIST-MANAGEMENT-OPTIONS",
                       contact_list + (f"; topic={topic}" if topic else "")))
    for key, value in fields:
        if not compose.LINE_BREAKS.isdisjoint(value):
            raise bad_request(f"{key} must not contain a line break")
    return fields


def template_name(template: Mapping[str, Any], field: str) -> str | None:
    """TemplateName, or the name at the end of TemplateArn (``...:template/<name>``)."""
    name = _string(template.get("TemplateName"), f"{field}.TemplateName")
    arn = _string(template.get("TemplateArn"), f"{field}.TemplateArn")
    if name is None and arn is not None:
        name = arn.rpartition(":template/")[2] or None
        if name is None:
            raise bad_request(f"{field}.TemplateArn must end with :template/<name>")
    return name


def template_content(value: Any, field: str) -> Content:
    """EmailTemplateContent (Subject, Text, Html), checked to compile."""
    parts = _object(value, field)
    content = Content(_string(parts.get("Subject"), f"{field}.Subject"),
                      _string(parts.get("Text"), f"{field}.Text"),
                      _string(parts.get("Html"), f"{field}.Html"))
    try:
        render.check(content)
    except render.TemplateSyntaxError as exc:
        raise bad_request(f"{field}: {exc}") from None
    return content


def template_data(value: Any, field: str) -> dict[str, Any]:
    text = _string(value, field)
    try:
        return render.parse_data("{}" if text is None else text, field)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Message:
    """What a SendEmail or one SendBulkEmail entry sends, before its content."""

    sender: str | None
    to: list[str]
    cc: list[str]
    bcc: list[str]
    reply_to: list[str]
    control: list[tuple[str, str]]  # the X-SES-* fields (_control_fields)
    configuration_set: str | None


def _count(recipients: list[str]) -> None:
    if not recipients:
        raise ApiError("MessageRejected", "There are no recipients specified.")
    if len(recipients) > MAX_RECIPIENTS:
        raise bad_request(f"Recipient count exceeds {MAX_RECIPIENTS}.")


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r?\n", b"\r\n", data)


class SesV2:
    """The operations, on the handler SMTP sessions use."""

    def __init__(self, live: ConfigSource, handler: SubmissionHandler, quotas: Quotas,
                 paused_accounts: Callable[[], Container[str]],
                 clock: Callable[[], float] = time.time,
                 templates: TemplateStore | None = None) -> None:
        self._live = live
        self._handler = handler
        # SES API templates (policy.templates); None: Template content is refused.
        self.templates = templates
        self._quotas = quotas
        self._paused_accounts = paused_accounts
        self._clock = clock

    # -- SendEmail --------------------------------------------------------------------------

    async def send_email(self, caller: Caller, raw_body: bytes) -> dict[str, Any]:
        try:
            body = _object(json.loads(raw_body or b"{}"), "the request body")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad_request(f"the request body is not JSON: {exc}") from None
        content = _object(body.get("Content"), "Content") if "Content" in body else None
        if content is None:
            raise bad_request("Content is required")
        kinds = [k for k in ("Simple", "Raw", "Template") if content.get(k) is not None]
        if len(kinds) != 1:
            raise bad_request("Content must have exactly one of Simple, Raw and Template")
        destination = _object(body.get("Destination") or {}, "Destination")
        to = _strings(destination.get("ToAddresses"), "Destination.ToAddresses")
        cc = _strings(destination.get("CcAddresses"), "Destination.CcAddresses")
        bcc = _strings(destination.get("BccAddresses"), "Destination.BccAddresses")
        sender = _string(body.get("FromEmailAddress"), "FromEmailAddress")
        received_at = self._clock()
        message_id = new_message_id(received_at)
        control = _control_fields(body)
        reply_to = _strings(body.get("ReplyToAddresses"), "ReplyToAddresses")
        message = Message(sender, to, cc, bcc, reply_to, control,
                          _string(body.get("ConfigurationSetName"), "ConfigurationSetName"))
        if kinds[0] == "Template":
            template = _object(content["Template"], "Content.Template")
            stored, name = await self.template_of(caller, template, "Content.Template")
            return {"MessageId": await self.send_templated(
                caller, message, stored, name or "", template_data(
                    template.get("TemplateData"), "Content.Template.TemplateData"),
                _headers(template.get("Headers"), "Content.Template.Headers"),
                _attachments(template.get("Attachments")))}
        if kinds[0] == "Simple":
            if sender is None:
                raise bad_request("FromEmailAddress is required with Simple content")
            simple = _object(content["Simple"], "Content.Simple")
            subject = _text(simple.get("Subject"), "Content.Simple.Subject")
            if subject is None:
                raise bad_request("Content.Simple.Subject is required")
            parts_body = _object(simple.get("Body") or {}, "Content.Simple.Body")
            data, recipients, mail_from = self._composed(
                message, subject, _text(parts_body.get("Text"), "Content.Simple.Body.Text"),
                _text(parts_body.get("Html"), "Content.Simple.Body.Html"),
                _headers(simple.get("Headers"), "Content.Simple.Headers"),
                _attachments(simple.get("Attachments")), message_id, received_at)
        else:
            raw = _object(content["Raw"], "Content.Raw")
            data = _crlf(_blob(raw.get("Data"), "Content.Raw.Data"))
            fields = self._header_fields(data)
            if not (to or cc or bcc):
                listed = [a for f in fields if f.key in ("to", "cc", "bcc")
                          for a in header_addresses(f.value)]
                if "(unparseable)" in listed:
                    raise bad_request("Content.Raw.Data: its To, Cc or Bcc field cannot be "
                                      "read as addresses")
                to = listed
            # Bcc never travels in the message; the request's SES fields replace the
            # message's own.
            end = header_end(data)
            head = _BCC.sub(b"", data[:end])
            if control:
                head = _SES_FIELDS.sub(b"", head)
            data = head + data[end:]
            if sender is None:
                froms = [a for f in fields if f.key == "from" for a in header_addresses(f.value)]
                if len(froms) != 1 or froms[0] == "(unparseable)":
                    raise bad_request("Content.Raw.Data: FromEmailAddress is not given and "
                                      "the message has no single From address")
                mail_from = froms[0]
            else:
                mail_from = compose.addresses("FromEmailAddress", [sender])[0].addr_spec
            recipients = [*to, *cc, *bcc]
        return {"MessageId": await self._send(caller, message, mail_from, recipients, data,
                                              received_at)}

    async def _send(self, caller: Caller, message: Message, mail_from: str,
                    recipients: list[str], data: bytes, received_at: float) -> str:
        """The message through the pipeline; its message id."""
        _count(recipients)
        prefix = b"".join(f"{k}: {v}\r\n".encode() for k, v in message.control)
        reply = await self._submit(caller, mail_from, recipients, prefix + data, received_at,
                                   message.configuration_set)
        return reply.text.rsplit(" ", 1)[-1]

    def _composed(self, message: Message, subject: compose.Text, text: compose.Text | None,
                  html: compose.Text | None, headers: list[tuple[str, str]],
                  attachments: list[compose.Attachment], message_id: str,
                  received_at: float) -> tuple[bytes, list[str], str]:
        """Simple (or rendered) content as a MIME message; (data, recipients, sender)."""
        if message.sender is None:
            raise bad_request("FromEmailAddress is required with Simple or Template content")
        try:
            data = compose.compose(compose.Parts(
                from_address=message.sender, subject=subject, text=text, html=html,
                to=message.to, cc=message.cc, reply_to=message.reply_to, headers=headers,
                attachments=attachments),
                message_id=f"{message_id}@{self._live.config.server.hostname}",
                date=received_at)
        except compose.ComposeError as exc:
            raise bad_request(str(exc)) from None
        recipients = [a.addr_spec for a in compose.addresses(
            "Destination", [*message.to, *message.cc, *message.bcc])]
        return data, recipients, compose.addresses("FromEmailAddress",
                                                   [message.sender])[0].addr_spec

    # -- templates ----------------------------------------------------------------------

    def template_store(self) -> TemplateStore:
        if self.templates is None:
            raise ApiError("InternalFailure", "This relay keeps no templates.", 500, "Receiver")
        return self.templates

    async def stored_template(self, caller: Caller, name: str) -> Content:
        """The caller's account's template `name`; NotFoundException for any other."""
        store = self.template_store()
        found = await asyncio.to_thread(store.get, caller.account, name)
        if found is None:
            raise not_found(f"Template {name} does not exist.")
        return found.content

    async def template_of(self, caller: Caller, template: Mapping[str, Any], field: str
                          ) -> tuple[Content, str | None]:
        """A Template object's content: the stored one it names, or its inline
        TemplateContent; and the name (None inline)."""
        name = template_name(template, field)
        inline = template.get("TemplateContent")
        if (name is None) == (inline is None):
            raise bad_request(f"{field} needs one of TemplateName, TemplateArn and "
                              "TemplateContent")
        if name is None:
            return template_content(inline, f"{field}.TemplateContent"), None
        return await self.stored_template(caller, name), name

    async def send_templated(self, caller: Caller, message: Message, template: Content,
                             name: str, data: Mapping[str, Any],
                             headers: list[tuple[str, str]],
                             attachments: list[compose.Attachment]) -> str:
        """Render, compose and send; a message whose data does not fit its template is
        answered with a message id and not sent, as SES does (a Rendering Failure event
        tells the set's destinations)."""
        received_at = self._clock()
        message_id = new_message_id(received_at)
        try:
            rendered = render.render(template, data)
        except render.RenderingFailure as exc:
            return await self._rendering_failed(caller, message, name, str(exc),
                                                received_at, message_id)
        return await self._send(caller, message, *self._mail(
            message, compose.Text(rendered.subject), rendered, headers, attachments,
            message_id, received_at), received_at)

    def _mail(self, message: Message, subject: compose.Text, rendered: render.Rendered,
              headers: list[tuple[str, str]], attachments: list[compose.Attachment],
              message_id: str, received_at: float) -> tuple[str, list[str], bytes]:
        # A template of a subject alone is a message with an empty text body.
        text = "" if rendered.text is None and rendered.html is None else rendered.text
        data, recipients, mail_from = self._composed(
            message, subject, None if text is None else compose.Text(text),
            None if rendered.html is None else compose.Text(rendered.html), headers,
            attachments, message_id, received_at)
        return mail_from, recipients, data

    async def _rendering_failed(self, caller: Caller, message: Message, name: str,
                                error: str, received_at: float, message_id: str) -> str:
        # The sender and recipients are checked as for a message that renders: SES
        # refuses those before it renders anything.
        mail_from, recipients, data = self._mail(
            message, compose.Text(""), render.Rendered("", None, None), [], [], message_id,
            received_at)
        _count(recipients)
        self._check(caller, mail_from, recipients, message.configuration_set)
        handler = self._handler
        if not isinstance(handler, ApiSubmissionHandler):
            raise ApiError("MessageRejected", error)
        head = data[:header_end(data)]
        prefix = b"".join(f"{k}: {v}\r\n".encode() for k, v in message.control)
        reply = await handler.rendering_failed(self._submission(
            caller, mail_from, recipients, prefix + head, received_at), name, error)
        if not reply.is_success:
            raise refusal(reply, V2, configuration_set=message.configuration_set)
        return reply.text.rsplit(" ", 1)[-1]

    @staticmethod
    def _header_fields(data: bytes) -> list[Any]:
        if header_end(data) <= 2:
            raise ApiError("MessageRejected", "Content.Raw.Data is not a MIME message: it "
                                              "has no header section")
        try:
            return parse_header_section(data)
        except MalformedHeader as exc:
            raise ApiError("MessageRejected", f"Content.Raw.Data: {exc}") from None

    async def _submit(self, caller: Caller, mail_from: str, recipients: list[str],
                      data: bytes, received_at: float, configuration_set: str | None
                      ) -> Reply:
        """As an SMTP session does: MAIL FROM, each RCPT TO, then the message."""
        self._check(caller, mail_from, recipients, configuration_set)
        reply = await self._handler.submit(
            self._submission(caller, mail_from, recipients, data, received_at))
        if not reply.is_success:
            raise refusal(reply, V2, configuration_set=configuration_set)
        return reply

    def _check(self, caller: Caller, mail_from: str, recipients: list[str],
               configuration_set: str | None) -> None:
        for check in (self._handler.check_sender(caller.account, mail_from),
                      *(self._handler.check_recipient(caller.account, r) for r in recipients)):
            if check is not None:
                raise refusal(check, V2, configuration_set=configuration_set)

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

    # -- GetAccount -------------------------------------------------------------------------

    async def get_account(self, caller: Caller) -> dict[str, Any]:
        config = self._live.config
        quota = effective_quota(config, caller.account)
        settings = config.accounts[caller.account]
        sent = await self._quotas.sent_last_24h(caller.account)
        return {
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": "HEALTHY",
            "ProductionAccessEnabled": not settings.sandbox,
            "SendingEnabled": caller.account not in self._paused_accounts(),
            "SendQuota": {
                "Max24HourSend": float(quota.max_24h_send) if quota else -1.0,
                "MaxSendRate": float(quota.max_send_rate) if quota else -1.0,
                "SentLast24Hours": float(sent),
            },
        }
