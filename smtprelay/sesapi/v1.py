"""SES v1 operations (the Query protocol, API version 2010-12-01): form fields
(``Action=SendEmail&Destination.ToAddresses.member.1=...``, as botocore's
QuerySerializer writes them) read into the parts smtprelay.sesapi.send sends, as v2's
JSON is, and answers in the XML botocore's QueryParser reads
(``<SendEmailResponse><SendEmailResult>...``).

Request parameters SES v1 has and v2 lacks: SendEmail's ReturnPath becomes the
envelope sender (where the relay's bounce messages go, as SES sends feedback to it);
SourceArn, FromArn and ReturnPathArn become the X-SES-*-ARN fields of sending
authorization. SendTemplatedEmail and SendBulkTemplatedEmail render the account's
templates (those v2's template operations keep) as v2's Template content does
(send.Sender.templated), a bulk request's destinations each its own message with a
per-destination Status. GetSendStatistics reads the per-set hourly counters
(smtprelay.spool.set_stats, or the cluster's with store: redis): SES answers in
15-minute points, the relay in hourly ones, the finest it keeps.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape

from smtprelay.auth.aws_errors import QUERY_NAMESPACE
from smtprelay.config import ConfigSource
from smtprelay.mail import compose
from smtprelay.policy.quota import Quotas
from smtprelay.policy.templates import TemplateStore
from smtprelay.sesapi import render as templates
from smtprelay.sesapi import send
from smtprelay.sesapi.errors import V1, ApiError, bad_request
from smtprelay.sesapi.send import Caller, Control
from smtprelay.spool.set_stats import DAY, HOUR, Counters, Kind, Window, hour_of
from smtprelay.submission.seam import SubmissionHandler

VERSION = "2010-12-01"
STATISTICS_DAYS = 14  # SES: "the last two weeks of sending activity"
MAX_BULK_DESTINATIONS = 50  # SES: "up to 50 destinations" per SendBulkTemplatedEmail

# SendBulkTemplatedEmail: the error code of a refused destination -> its Status.
_BULK_STATUS = {
    "MessageRejected": "MessageRejected",
    "MailFromDomainNotVerifiedException": "MailFromDomainNotVerified",
    "ConfigurationSetDoesNotExist": "ConfigurationSetDoesNotExist",
    "TemplateDoesNotExist": "TemplateDoesNotExist",
    "AccountSendingPausedException": "AccountSendingPaused",
    "ConfigurationSetSendingPausedException": "ConfigurationSetSendingPaused",
    "InvalidParameterValue": "InvalidParameterValue",
    "ServiceUnavailable": "TransientFailure",
}

Result = dict[str, Any]


class Form:
    """A request's parameters, by their flattened names."""

    def __init__(self, params: Mapping[str, str]) -> None:
        self._params = params

    @classmethod
    def parse(cls, encoded: bytes) -> Form:
        """application/x-www-form-urlencoded (a POST body or a GET query string)."""
        try:
            text = encoded.decode("ascii")
            pieces = [p for p in text.split("&") if p]
            if any("=" not in p for p in pieces):
                raise ValueError("a field without '='")
            params: dict[str, str] = {}
            for name, value in urllib.parse.parse_qsl(text, keep_blank_values=True,
                                                      errors="strict"):
                if name in params:
                    raise ValueError(f"{name} appears more than once")
                params[name] = value
        except (UnicodeDecodeError, ValueError) as exc:
            # AWS's common error for a query it cannot read, with its status.
            raise ApiError("MalformedQueryString", "The query string contains a syntax "
                           f"error: {exc}", 404) from None
        return cls(params)

    def get(self, name: str) -> str | None:
        return self._params.get(name)

    def required(self, name: str) -> str:
        value = self._params.get(name)
        if value is None:
            # SES's own answer for a member that is missing, naming it as its model
            # does (lower camel case).
            where = ".".join(p[:1].lower() + p[1:] for p in name.split("."))
            raise ApiError("ValidationError", f"1 validation error detected: Value null at "
                           f"'{where}' failed to satisfy constraint: Member must not be null")
        return value

    def has(self, prefix: str) -> bool:
        """Whether any parameter's name starts with `prefix`."""
        return any(name.startswith(prefix) for name in self._params)

    def members(self, name: str) -> list[str]:
        """A list: name.member.1, name.member.2, ... with no gap."""
        found: list[str] = []
        while (value := self._params.get(f"{name}.member.{len(found) + 1}")) is not None:
            found.append(value)
        return found

    def text(self, name: str) -> compose.Text | None:
        """A Content structure: name.Data and name.Charset."""
        if f"{name}.Data" not in self._params:
            return None
        return compose.Text(self.required(f"{name}.Data"), self.get(f"{name}.Charset"))

    def control(self, tag_lists: Sequence[str] = ("Tags",)) -> Control:
        """The request's Control; tags from `tag_lists` in order, a later tag replacing
        an earlier one of its name (a bulk destination's ReplacementTags)."""
        tags: dict[str, tuple[str, str]] = {}
        for tag_list in tag_lists:
            i = 1
            while f"{tag_list}.member.{i}.Name" in self._params or \
                    f"{tag_list}.member.{i}.Value" in self._params:
                where = f"{tag_list}.member.{i}"
                name, value = send.tag(self.required(f"{where}.Name"),
                                       self.required(f"{where}.Value"), where, V1)
                tags[name] = (name, value)
                i += 1
        return Control(configuration_set=self.get("ConfigurationSetName"),
                       tags=list(tags.values()),
                       source_arn=self.get("SourceArn"), from_arn=self.get("FromArn"),
                       return_path_arn=self.get("ReturnPathArn"))


class SesV1:
    """The operations, on the handler SMTP sessions use."""

    def __init__(self, live: ConfigSource, handler: SubmissionHandler, quotas: Quotas,
                 counters: Counters, clock: Callable[[], float] = time.time,
                 templates: TemplateStore | None = None) -> None:
        self._live = live
        self._templates = templates
        self._send = send.Sender(live, handler, clock)
        self._quotas = quotas
        self._counters = counters
        self._clock = clock
        self._operations: dict[str, Callable[[Caller, Form], Any]] = {
            "SendEmail": self.send_email,
            "SendRawEmail": self.send_raw_email,
            "GetSendQuota": self.get_send_quota,
            "GetSendStatistics": self.get_send_statistics,
            "SendTemplatedEmail": self.send_templated_email,
            "SendBulkTemplatedEmail": self.send_bulk_templated_email,
        }

    async def call(self, caller: Caller, encoded: bytes, request_id: str) -> bytes:
        """The XML answer to a request's form fields, or an ApiError."""
        form = Form.parse(encoded)
        action = form.get("Action")
        if not action:
            raise ApiError("MissingAction", "The request must contain the parameter Action.")
        version = form.get("Version")
        if version is not None and version != VERSION:
            raise ApiError("InvalidParameterValue", f"Version {version} is not supported; "
                           f"this API is version {VERSION}.")
        operation = self._operations.get(action)
        if operation is None:
            raise ApiError("InvalidAction",
                           f"The action {action} is not valid for this web service.")
        result: Result = await operation(caller, form)
        return render(action, result, request_id)

    async def send_email(self, caller: Caller, form: Form) -> Result:
        sender = form.required("Source")
        subject = compose.Text(form.required("Message.Subject.Data"),
                               form.get("Message.Subject.Charset"))
        message_id = await self._send.simple(caller, _simple(
            form, sender, "Destination", subject=subject,
            text=form.text("Message.Body.Text"), html=form.text("Message.Body.Html")),
            form.control(), V1)
        return {"MessageId": message_id}

    async def send_templated_email(self, caller: Caller, form: Form) -> Result:
        sender = form.required("Source")
        name = form.required("Template")
        template = await send.stored_template(self._templates, caller.account, name, V1)
        message_id = await self._send.templated(
            caller, _simple(form, sender, "Destination"), template, name,
            send.template_data(form.required("TemplateData"), "TemplateData", V1),
            form.control(), V1)
        return {"MessageId": message_id}

    async def send_bulk_templated_email(self, caller: Caller, form: Form) -> Result:
        sender = form.required("Source")
        name = form.required("Template")
        count = 0
        while form.has(f"Destinations.member.{count + 1}."):
            count += 1
        if not count:
            form.required("Destinations.member.1.Destination")
        if count > MAX_BULK_DESTINATIONS:
            raise bad_request(f"Destinations: at most {MAX_BULK_DESTINATIONS} per request, "
                              f"not {count}", V1)
        template = await send.stored_template(self._templates, caller.account, name, V1)
        defaults = send.template_data(form.get("DefaultTemplateData"),
                                      "DefaultTemplateData", V1)
        statuses: list[Result] = []
        for i in range(1, count + 1):
            where = f"Destinations.member.{i}"
            try:
                message_id = await self._send.templated(
                    caller, _simple(form, sender, f"{where}.Destination"), template, name,
                    templates.merged(defaults, send.template_data(
                        form.get(f"{where}.ReplacementTemplateData"),
                        f"{where}.ReplacementTemplateData", V1)),
                    form.control(("DefaultTags", f"{where}.ReplacementTags")), V1)
            except ApiError as exc:
                statuses.append({"Status": _bulk_status(exc), "Error": exc.message})
            else:
                statuses.append({"Status": "Success", "MessageId": message_id})
        return {"Status": statuses}

    async def send_raw_email(self, caller: Caller, form: Form) -> Result:
        data = send.base64_data(form.required("RawMessage.Data"), "RawMessage.Data", V1)
        message_id = await self._send.raw(caller, send.Raw(
            data=data, field="RawMessage.Data", sender=form.get("Source"),
            sender_field="Source", recipients=form.members("Destinations")),
            form.control(), V1)
        return {"MessageId": message_id}

    async def get_send_quota(self, caller: Caller, _form: Form) -> Result:
        return await send.send_quota(self._live.config, self._quotas, caller.account)

    async def get_send_statistics(self, caller: Caller, _form: Form) -> Result:
        points = await asyncio.to_thread(data_points, self._counters, caller.account,
                                         self._clock())
        return {"SendDataPoints": points}

_NO_SUBJECT = compose.Text("")  # a templated message's: the template's replaces it


def _simple(form: Form, sender: str, destination: str, *,
            subject: compose.Text = _NO_SUBJECT, text: compose.Text | None = None,
            html: compose.Text | None = None) -> send.Simple:
    """A message to `destination`'s addresses with the request's Source, ReplyTo and
    ReturnPath; a templated one's subject and bodies are the template's."""
    return send.Simple(
        sender=sender, sender_field="Source", subject=subject, text=text, html=html,
        to=form.members(f"{destination}.ToAddresses"),
        cc=form.members(f"{destination}.CcAddresses"),
        bcc=form.members(f"{destination}.BccAddresses"),
        reply_to=form.members("ReplyToAddresses"), return_path=form.get("ReturnPath"))


def _bulk_status(error: ApiError) -> str:
    if error.code == "Throttling":
        return ("AccountDailyQuotaExceeded" if error.message.startswith("Daily")
                else "AccountThrottled")
    return _BULK_STATUS.get(error.code, "Failed")


def data_points(counters: Counters, account: str, now: float) -> list[Result]:
    """An account's SendDataPoints over the last two weeks, one per hour that counted
    anything, oldest first (blocking: the counters are read from SQLite or Redis)."""
    points: list[Result] = []
    for hour in range(hour_of(now - STATISTICS_DAYS * DAY), hour_of(now) + 1):
        counts = counters.set_totals(Window(HOUR, hour, hour), by="account",
                                     account=account).get(account)
        if counts is None:
            continue
        # Bounces: the hard ones, as in the bounce rate SES watches.
        point = {"DeliveryAttempts": counts[Kind.SEND], "Bounces": counts[Kind.BOUNCE],
                 "Complaints": counts[Kind.COMPLAINT], "Rejects": counts[Kind.REJECT]}
        if any(point.values()):
            points.append({"Timestamp": datetime.datetime.fromtimestamp(
                hour * HOUR, datetime.UTC), **point})
    return points


def render(action: str, result: Result, request_id: str) -> bytes:
    """The Query protocol's answer: the result wrapped as botocore's model says
    (``resultWrapper``: <Action>Result), lists as <member> elements."""
    return (f'<{action}Response xmlns="{QUERY_NAMESPACE}">'
            f"<{action}Result>{_xml(result)}</{action}Result>"
            f"<ResponseMetadata><RequestId>{escape(request_id)}</RequestId>"
            f"</ResponseMetadata></{action}Response>\n").encode()


def _xml(value: Any) -> str:
    if isinstance(value, dict):
        return "".join(f"<{k}>{_xml(v)}</{k}>" for k, v in value.items())
    if isinstance(value, list):
        return "".join(f"<member>{_xml(v)}</member>" for v in value)
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return escape(str(value))
