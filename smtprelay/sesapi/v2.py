"""SES v2 operations (REST-JSON): the JSON of a request read into the parts
smtprelay.sesapi.send sends, as v1's form fields are (smtprelay.sesapi.v1), so both
APIs send through the same code and the same pipeline as SMTP.

`ConfigurationSetName`, `EmailTags` and `ListManagementOptions` become the X-SES-*
fields SES reads on SMTP (send.Control); `Simple` content is composed, `Raw` taken as
written (send.Simple, send.Raw).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Container, Mapping
from typing import Any

from smtprelay.config import ConfigSource
from smtprelay.mail import compose
from smtprelay.policy.quota import Quotas
from smtprelay.sesapi import send
from smtprelay.sesapi.errors import V2, bad_request
from smtprelay.sesapi.send import Caller, Control
from smtprelay.submission.seam import SubmissionHandler

__all__ = ["Caller", "SesV2"]


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


class SesV2:
    """The operations, on the handler SMTP sessions use."""

    def __init__(self, live: ConfigSource, handler: SubmissionHandler, quotas: Quotas,
                 paused_accounts: Callable[[], Container[str]],
                 clock: Callable[[], float] = time.time) -> None:
        self._live = live
        self._send = send.Sender(live, handler, clock)
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
        if kinds[0] == "Template":
            raise bad_request("Template content is not supported by this relay yet")
        destination = _object(body.get("Destination") or {}, "Destination")
        to = _strings(destination.get("ToAddresses"), "Destination.ToAddresses")
        cc = _strings(destination.get("CcAddresses"), "Destination.CcAddresses")
        bcc = _strings(destination.get("BccAddresses"), "Destination.BccAddresses")
        sender = _string(body.get("FromEmailAddress"), "FromEmailAddress")
        control = _control(body)
        if kinds[0] == "Simple":
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
                attachments=_attachments(simple.get("Attachments"))), control, V2)
        else:
            raw = _object(content["Raw"], "Content.Raw")
            message_id = await self._send.raw(caller, send.Raw(
                data=_blob(raw.get("Data"), "Content.Raw.Data"), field="Content.Raw.Data",
                sender=sender, sender_field="FromEmailAddress", recipients=[*to, *cc, *bcc]),
                control, V2)
        return {"MessageId": message_id}

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
