"""SES v2 operations (REST-JSON): the JSON of a request read into the parts
smtprelay.sesapi.send sends, as v1's form fields are (smtprelay.sesapi.v1), so both
APIs send through the same code and the same pipeline as SMTP.

`ConfigurationSetName`, `EmailTags` and `ListManagementOptions` become the X-SES-*
fields SES reads on SMTP (send.Control); `Simple` content is composed, `Raw` taken as
written (send.Simple, send.Raw); `Template` content (a stored template by name or ARN,
or inline) is rendered with its TemplateData, then composed as Simple content
(send.Sender.templated). The template operations and SendBulkEmail are
smtprelay.sesapi.v2_templates, on this class's store and send path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Container, Mapping
from typing import Any

from smtprelay.config import ConfigSource
from smtprelay.mail import compose
from smtprelay.policy.quota import Quotas
from smtprelay.policy.templates import Content, TemplateStore
from smtprelay.sesapi import render, send
from smtprelay.sesapi.errors import V2, ApiError, bad_request
from smtprelay.sesapi.send import Caller, Control
from smtprelay.submission.seam import SubmissionHandler

__all__ = ["Caller", "SesV2"]

# Where SES sends the message's bounces and complaints: here its envelope sender, where
# the relay's DSNs go (send.Simple.return_path).
_FEEDBACK = "FeedbackForwardingEmailAddress"


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
    return send.base64_data(text, field, V2)


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


def _control(body: Mapping[str, Any]) -> Control:
    """The request's fields the pipeline reads as X-SES-* header fields."""
    tags = []
    for i, item in enumerate(body.get("EmailTags") or []):
        t = _object(item, f"EmailTags[{i}]")
        key = _string(t.get("Name"), f"EmailTags[{i}].Name", required=True)
        value = _string(t.get("Value"), f"EmailTags[{i}].Value", required=True)
        assert key is not None and value is not None
        tags.append(send.tag(key, value, f"EmailTags[{i}]", V2))
    contact_list = topic = None
    options = body.get("ListManagementOptions")
    if options is not None:
        o = _object(options, "ListManagementOptions")
        contact_list = _string(o.get("ContactListName"),
                               "ListManagementOptions.ContactListName", required=True)
        topic = _string(o.get("TopicName"), "ListManagementOptions.TopicName")
    return Control(
        configuration_set=_string(body.get("ConfigurationSetName"), "ConfigurationSetName"),
        tags=tags, contact_list=contact_list, topic=topic)


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
    return send.template_data(_string(value, field), field, V2)


def destination(value: Any, field: str) -> tuple[list[str], list[str], list[str]]:
    """A Destination's To, Cc and Bcc addresses."""
    found = _object(value or {}, field)
    return (_strings(found.get("ToAddresses"), f"{field}.ToAddresses"),
            _strings(found.get("CcAddresses"), f"{field}.CcAddresses"),
            _strings(found.get("BccAddresses"), f"{field}.BccAddresses"))


class SesV2:
    """The operations, on the handler SMTP sessions use."""

    def __init__(self, live: ConfigSource, handler: SubmissionHandler, quotas: Quotas,
                 paused_accounts: Callable[[], Container[str]],
                 clock: Callable[[], float] = time.time,
                 templates: TemplateStore | None = None) -> None:
        self._live = live
        self._send = send.Sender(live, handler, clock)
        # SES API templates (policy.templates); None: Template content is refused.
        self.templates = templates
        self._quotas = quotas
        self._paused_accounts = paused_accounts

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
        to, cc, bcc = destination(body.get("Destination"), "Destination")
        sender = _string(body.get("FromEmailAddress"), "FromEmailAddress")
        feedback = _string(body.get("FeedbackForwardingEmailAddress"),
                           "FeedbackForwardingEmailAddress")
        control = _control(body)
        if kinds[0] == "Template":
            if sender is None:
                raise bad_request("FromEmailAddress is required with Template content")
            template = _object(content["Template"], "Content.Template")
            stored, name = await self.template_of(caller, template, "Content.Template")
            message_id = await self.send_templated(caller, send.Simple(
                sender=sender, sender_field="FromEmailAddress", subject=compose.Text(""),
                to=to, cc=cc, bcc=bcc,
                reply_to=_strings(body.get("ReplyToAddresses"), "ReplyToAddresses"),
                headers=_headers(template.get("Headers"), "Content.Template.Headers"),
                attachments=_attachments(template.get("Attachments")),
                return_path=feedback, return_path_field=_FEEDBACK),
                stored, name, template_data(template.get("TemplateData"),
                                            "Content.Template.TemplateData"), control)
        elif kinds[0] == "Simple":
            if sender is None:
                raise bad_request("FromEmailAddress is required with Simple content")
            simple = _object(content["Simple"], "Content.Simple")
            subject = _text(simple.get("Subject"), "Content.Simple.Subject")
            if subject is None:
                raise bad_request("Content.Simple.Subject is required")
            parts_body = _object(simple.get("Body") or {}, "Content.Simple.Body")
            message_id = await self._send.simple(caller, send.Simple(
                sender=sender, sender_field="FromEmailAddress", subject=subject,
                text=_text(parts_body.get("Text"), "Content.Simple.Body.Text"),
                html=_text(parts_body.get("Html"), "Content.Simple.Body.Html"),
                to=to, cc=cc, bcc=bcc,
                reply_to=_strings(body.get("ReplyToAddresses"), "ReplyToAddresses"),
                headers=_headers(simple.get("Headers"), "Content.Simple.Headers"),
                attachments=_attachments(simple.get("Attachments")),
                return_path=feedback, return_path_field=_FEEDBACK), control, V2)
        else:
            raw = _object(content["Raw"], "Content.Raw")
            message_id = await self._send.raw(caller, send.Raw(
                data=_blob(raw.get("Data"), "Content.Raw.Data"), field="Content.Raw.Data",
                sender=sender, sender_field="FromEmailAddress", recipients=[*to, *cc, *bcc],
                return_path=feedback), control, V2)
        return {"MessageId": message_id}

    async def send_templated(self, caller: Caller, simple: send.Simple, template: Content,
                             name: str | None, data: Mapping[str, Any], control: Control
                             ) -> str:
        """`simple`, its subject and bodies `template` rendered with `data` (a
        SendEmail's, or a SendBulkEmail entry's)."""
        return await self._send.templated(caller, simple, template, name or "", data,
                                           control, V2)

    # -- templates ----------------------------------------------------------------------

    def template_store(self) -> TemplateStore:
        if self.templates is None:
            raise ApiError("InternalFailure", "This relay keeps no templates.", 500, "Receiver")
        return self.templates

    async def stored_template(self, caller: Caller, name: str) -> Content:
        """The caller's account's template `name`; NotFoundException for any other."""
        return await send.stored_template(self.templates, caller.account, name, V2)

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

    # -- GetAccount -------------------------------------------------------------------------

    async def get_account(self, caller: Caller) -> dict[str, Any]:
        settings = self._live.config.accounts[caller.account]
        return {
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": "HEALTHY",
            "ProductionAccessEnabled": not settings.sandbox,
            "SendingEnabled": caller.account not in self._paused_accounts(),
            "SendQuota": await send.send_quota(self._live.config, self._quotas,
                                               caller.account),
        }
