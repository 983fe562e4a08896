"""SES v2 email templates and bulk sending: CreateEmailTemplate, GetEmailTemplate,
UpdateEmailTemplate, DeleteEmailTemplate, ListEmailTemplates, TestRenderEmailTemplate
and SendBulkEmail.

Templates are the calling account's own (policy.templates); one of another account
does not exist for it. A template that does not compile is refused when it is created
or updated (BadRequestException), so a send never meets one.

SendBulkEmail sends each entry as its own message through SesV2's send path (the
same checks, quotas and events as SendEmail): the default template rendered with the
entry's ReplacementTemplateData over DefaultContent's TemplateData. An entry that
fails does not fail the others: it gets its BulkEmailStatus and Error; one whose data
does not fit the template is answered SUCCESS with a message id and not sent, with a
Rendering Failure event, as SES does.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from smtprelay.mail import compose
from smtprelay.policy.templates import Content, TemplateExists, TooManyTemplates
from smtprelay.sesapi import render, send
from smtprelay.sesapi.errors import ApiError, bad_request, not_found
from smtprelay.sesapi.v2 import (
    Caller,
    SesV2,
    _attachments,
    _control,
    _headers,
    _object,
    _string,
    _strings,
    destination,
    template_content,
    template_data,
)
from smtprelay.sesapi.v2_rest import Request, Route, cursor_of, member, next_token

MAX_BULK_ENTRIES = 50  # SES: "up to 50 destinations in each call"
DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PATH = "/templates"

# The error code of a refused entry -> its BulkEmailStatus (the SESv2 model's enum).
_STATUS = {
    "MessageRejected": "MESSAGE_REJECTED",
    "MailFromDomainNotVerifiedException": "MAIL_FROM_DOMAIN_NOT_VERIFIED",
    "BadRequestException": "INVALID_PARAMETER",
    "ServiceUnavailable": "TRANSIENT_FAILURE",
    "AccessDeniedException": "MESSAGE_REJECTED",
}


def _status(error: ApiError) -> str:
    if error.code == "NotFoundException":
        return ("CONFIGURATION_SET_NOT_FOUND" if error.message.startswith("Configuration set")
                else "INVALID_PARAMETER")
    if error.code == "TooManyRequestsException":
        return ("ACCOUNT_DAILY_QUOTA_EXCEEDED" if error.message.startswith("Daily")
                else "ACCOUNT_THROTTLED")
    if error.code == "SendingPausedException":
        return ("ACCOUNT_SENDING_PAUSED" if "account" in error.message
                else "CONFIGURATION_SET_SENDING_PAUSED")
    return _STATUS.get(error.code, "FAILED")


def _name(value: str | None) -> str:
    if value is None or not _NAME.match(value):
        raise bad_request("TemplateName must be 1 to 64 ASCII letters, digits, underscores "
                          "and dashes")
    return value


def _content_json(content: Content) -> dict[str, str]:
    return {key: value for key, value in (("Subject", content.subject),
                                          ("Text", content.text), ("Html", content.html))
            if value is not None}


def _mime(rendered: render.Rendered) -> str:
    """TestRenderEmailTemplate's RenderedTemplate: the rendered parts as a MIME message."""
    message = EmailMessage(policy=SMTP)
    message["Subject"] = rendered.subject
    if rendered.text is not None:
        message.set_content(rendered.text)
    if rendered.html is not None:
        if rendered.text is None:
            message.set_content(rendered.html, subtype="html")
        else:
            message.add_alternative(rendered.html, subtype="html")
    return message.as_string()


class SesV2Templates:
    """The template operations and SendBulkEmail, on SesV2's store and send path."""

    def __init__(self, v2: SesV2) -> None:
        self._v2 = v2

    def routes(self) -> list[Route]:
        one = f"{_PATH}/{{TemplateName}}"
        return [Route("POST", _PATH, self.create),
                Route("GET", _PATH, self.list_templates),
                Route("GET", one, self.get),
                Route("PUT", one, self.update),
                Route("DELETE", one, self.delete),
                Route("POST", f"{one}/render", self.test_render),
                Route("POST", "/outbound-bulk-emails", self.send_bulk)]

    async def create(self, caller: Caller, request: Request) -> dict[str, Any]:
        body = request.json()
        name = _name(_string(body.get("TemplateName"), "TemplateName", required=True))
        content = template_content(member(body, "TemplateContent", dict, required=True),
                                   "TemplateContent")
        store = self._v2.template_store()
        try:
            await asyncio.to_thread(store.create, caller.account, name, content)
        except TemplateExists:
            raise ApiError("AlreadyExistsException",
                           f"Template {name} already exists.") from None
        except TooManyTemplates:
            raise ApiError("LimitExceededException",
                           "Maximum number of templates reached.") from None
        return {}

    async def get(self, caller: Caller, request: Request) -> dict[str, Any]:
        name = request.path["TemplateName"]
        content = await self._v2.stored_template(caller, name)
        return {"TemplateName": name, "TemplateContent": _content_json(content)}

    async def update(self, caller: Caller, request: Request) -> dict[str, Any]:
        name = request.path["TemplateName"]
        content = template_content(member(request.json(), "TemplateContent", dict,
                                          required=True), "TemplateContent")
        store = self._v2.template_store()
        if not await asyncio.to_thread(store.update, caller.account, name, content):
            raise not_found(f"Template {name} does not exist.")
        return {}

    async def delete(self, caller: Caller, request: Request) -> dict[str, Any]:
        name = request.path["TemplateName"]
        store = self._v2.template_store()
        if not await asyncio.to_thread(store.delete, caller.account, name):
            raise not_found(f"Template {name} does not exist.")
        return {}

    async def list_templates(self, caller: Caller, request: Request) -> dict[str, Any]:
        # SES's own page sizes for templates (1 to 100, 10 when not asked), not
        # v2_rest's for suppression and contacts.
        text = request.one("PageSize")
        if text is not None and not (text.isascii() and text.isdigit()):
            raise bad_request("PageSize must be a number")
        size = DEFAULT_PAGE_SIZE if text is None else int(text)
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise bad_request(f"PageSize must be from 1 to {MAX_PAGE_SIZE}")
        after = cursor_of(request.one("NextToken"))
        store = self._v2.template_store()
        found = await asyncio.to_thread(store.page, caller.account, after=after,
                                        limit=size + 1)
        return {"TemplatesMetadata": [{"TemplateName": t.name,
                                       "CreatedTimestamp": t.created_at}
                                      for t in found[:size]],
                **next_token(found[size - 1].name if len(found) > size else None)}

    async def test_render(self, caller: Caller, request: Request) -> dict[str, Any]:
        name = request.path["TemplateName"]
        data = template_data(member(request.json(), "TemplateData", str, required=True),
                             "TemplateData")
        content = await self._v2.stored_template(caller, name)
        try:
            rendered = render.render(content, data)
        except render.RenderingFailure as exc:
            raise bad_request(str(exc)) from None
        return {"RenderedTemplate": _mime(rendered)}

    # -- SendBulkEmail ------------------------------------------------------------------

    async def send_bulk(self, caller: Caller, request: Request) -> dict[str, Any]:
        body = request.json()
        default = _object(body.get("DefaultContent"), "DefaultContent") \
            if body.get("DefaultContent") is not None else None
        if default is None or default.get("Template") is None:
            raise bad_request("DefaultContent.Template is required")
        template = _object(default["Template"], "DefaultContent.Template")
        entries = body.get("BulkEmailEntries")
        if not isinstance(entries, list) or not entries:
            raise bad_request("BulkEmailEntries must list at least one entry")
        if len(entries) > MAX_BULK_ENTRIES:
            raise bad_request(f"BulkEmailEntries: at most {MAX_BULK_ENTRIES} entries "
                              f"per request, not {len(entries)}")
        content, name = await self._v2.template_of(caller, template, "DefaultContent.Template")
        defaults = template_data(template.get("TemplateData"),
                                 "DefaultContent.Template.TemplateData")
        headers = _headers(template.get("Headers"), "DefaultContent.Template.Headers")
        attachments = _attachments(template.get("Attachments"))
        sender = _string(body.get("FromEmailAddress"), "FromEmailAddress")
        if sender is None:
            raise bad_request("FromEmailAddress is required")
        reply_to = _strings(body.get("ReplyToAddresses"), "ReplyToAddresses")
        set_name = _string(body.get("ConfigurationSetName"), "ConfigurationSetName")
        default_tags = body.get("DefaultEmailTags") or []
        results = []
        for i, item in enumerate(entries):
            try:
                message_id = await self._entry(
                    caller, i, item, sender=sender, reply_to=reply_to, set_name=set_name,
                    default_tags=default_tags, content=content, name=name,
                    defaults=defaults, headers=headers, attachments=attachments)
            except ApiError as exc:
                results.append({"Status": _status(exc), "Error": exc.message})
            else:
                results.append({"Status": "SUCCESS", "MessageId": message_id})
        return {"BulkEmailEntryResults": results}

    async def _entry(self, caller: Caller, i: int, item: Any, *, sender: str,
                     reply_to: list[str], set_name: str | None, default_tags: Any,
                     content: Content, name: str | None, defaults: Mapping[str, Any],
                     headers: list[tuple[str, str]],
                     attachments: list[compose.Attachment]) -> str:
        where = f"BulkEmailEntries[{i}]"
        entry = _object(item, where)
        to, cc, bcc = destination(entry.get("Destination"), f"{where}.Destination")
        replacement = _object(entry.get("ReplacementEmailContent") or {},
                              f"{where}.ReplacementEmailContent")
        replacement_template = _object(replacement.get("ReplacementTemplate") or {},
                                       f"{where}.ReplacementEmailContent.ReplacementTemplate")
        data = template_data(
            replacement_template.get("ReplacementTemplateData"),
            f"{where}.ReplacementEmailContent.ReplacementTemplate.ReplacementTemplateData")
        # The entry's tags and headers replace the defaults of the same name.
        tags = {t.get("Name"): t for t in [*default_tags, *(entry.get("ReplacementTags") or [])]
                if isinstance(t, dict)}
        own_headers = _headers(entry.get("ReplacementHeaders"), f"{where}.ReplacementHeaders")
        replaced = {k.lower() for k, _ in own_headers}
        return await self._v2.send_templated(caller, send.Simple(
            sender=sender, sender_field="FromEmailAddress", subject=compose.Text(""),
            to=to, cc=cc, bcc=bcc, reply_to=reply_to,
            headers=[*(h for h in headers if h[0].lower() not in replaced), *own_headers],
            attachments=attachments), content, name, render.merged(defaults, data),
            _control({"ConfigurationSetName": set_name, "EmailTags": list(tags.values())}))
