"""The SES v1 Query API with real clients: boto3's `ses` client, and django-ses as a
Django email backend, pointed at the relay with an API key from `smtprelay api-keys
create`, as an application that has always used SES's classic API does. Messages go
through the same pipeline as SMTP and v2 (the spool under the MessageId answered,
sets, tags, identities applied); refusals raise the exceptions SES v1 users catch,
in the Query protocol's XML."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.parsers import QueryParser

from tests.dnsserver import TestDNSServer
from tests.e2e.delivery_world import FAST_DELIVERY, wait_for
from tests.e2e.test_ses_api import (
    ACCOUNTS,
    SETS,
    api_key,
    error_of,
    once_resumed,
    stored,
    two_then_throttled,
    while_paused,
)
from tests.e2e.test_ses_api import (
    client as ses_client,
)
from tests.sinks import SmtpSink
from tests.support import DaemonProcess

MODEL = boto3.client("ses", region_name="eu-west-1").meta.service_model


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("sesv1"), api={"sesv1": True},
                           accounts=ACCOUNTS, configuration_sets=SETS).start()
    yield daemon
    daemon.stop()


def client(daemon: DaemonProcess, key: dict[str, str], region: str = "eu-west-1") -> Any:
    return ses_client(daemon, key, region, service="ses")


def set_of(daemon: DaemonProcess, message_id: str) -> tuple[str | None, dict[str, Any]]:
    with closing(sqlite3.connect(daemon.config.spool_path)) as conn:
        name, attrs = conn.execute("SELECT configuration_set, attrs FROM messages"
                                   " WHERE id = ?", (message_id,)).fetchone()
    return name, json.loads(attrs)


def signed(daemon: DaemonProcess, key: dict[str, str], body: bytes, *, method: str = "POST",
           query: str = "") -> tuple[int, dict[str, str], bytes]:
    """A request signed as botocore signs, with a body or a query no client would send."""
    url = f"http://127.0.0.1:{daemon.ports['http']}/" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body or None, headers={
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"} if body else {})
    SigV4Auth(Credentials(key["aws_access_key_id"], key["aws_secret_access_key"]), "ses",
              "eu-west-1").add_auth(request)
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=body or None, method=method, headers=dict(request.headers)),
                timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def parsed(status: int, body: bytes, operation: str | None = None) -> dict[str, Any]:
    """The answer as botocore's parser reads it, as a client would."""
    shape = MODEL.operation_model(operation).output_shape if operation else None
    return dict(QueryParser().parse({"status_code": status, "headers": {}, "body": body},
                                    shape))


def xml_error(body: bytes) -> tuple[str, str]:
    error = parsed(400, body)["Error"]
    return error["Code"], error["Message"]


SEND = {
    "Source": "App <app@example.com>",
    "Destination": {"ToAddresses": ["to@example.net"], "CcAddresses": ["cc@example.net"],
                    "BccAddresses": ["bcc@example.net"]},
    "Message": {"Subject": {"Data": "Grüße aus Köln", "Charset": "UTF-8"},
                "Body": {"Text": {"Data": "Schöne Grüße", "Charset": "UTF-8"},
                         "Html": {"Data": "<p>Schöne Grüße</p>"}}},
    "ReplyToAddresses": ["help@example.com"],
    "ConfigurationSetName": "marketing",
    "Tags": [{"Name": "campaign", "Value": "spring-2026"}],
}


def test_send_email_composes_text_and_html_and_applies_set_and_tags(
        relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    answer = ses.send_email(**SEND)
    entry = stored(relay, answer["MessageId"])
    assert entry["mail_from"] == "app@example.com" and entry["account"] == "acme"
    assert entry["recipients"] == ["to@example.net", "cc@example.net", "bcc@example.net"]
    message = message_from_bytes(entry["data"], policy=policy.default)
    assert message["Subject"] == "Grüße aus Köln"
    assert message["Reply-To"] == "help@example.com" and "Bcc" not in message
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content().strip() == "Schöne Grüße"
    assert html.get_content().strip() == "<p>Schöne Grüße</p>"
    assert "X-SES-CONFIGURATION-SET" not in message and "X-SES-MESSAGE-TAGS" not in message
    name, attrs = set_of(relay, answer["MessageId"])
    assert name == "marketing" and attrs["tags"]["campaign"] == ["spring-2026"]
    assert answer["ResponseMetadata"]["RequestId"]


def test_return_path_is_the_envelope_sender_and_must_be_verified(
        relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    answer = ses.send_email(**{**SEND, "ReturnPath": "bounces@example.com"})
    entry = stored(relay, answer["MessageId"])
    assert entry["mail_from"] == "bounces@example.com"
    assert message_from_bytes(entry["data"], policy=policy.default)["From"] == \
        "App <app@example.com>"
    code, message, status = error_of(ses.send_email, **{
        **SEND, "ReturnPath": "bounces@elsewhere.example"})
    assert (code, status) == ("MessageRejected", 400) and "elsewhere.example" in message


def test_send_raw_email_recipients_from_fields_or_destinations(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay), region="us-east-1")
    raw = (b"From: App <app@example.com>\nTo: a@example.net\nCc: c@example.net\n"
           b"Bcc: hidden@example.net\nX-SES-CONFIGURATION-SET: transactional\n"
           b"Subject: raw\n\nBody line\n")
    answer = ses.send_raw_email(RawMessage={"Data": raw})
    entry = stored(relay, answer["MessageId"])
    assert entry["mail_from"] == "app@example.com"
    assert entry["recipients"] == ["a@example.net", "c@example.net", "hidden@example.net"]
    assert b"hidden@example.net" not in entry["data"] and b"Body line\r\n" in entry["data"]
    assert set_of(relay, answer["MessageId"])[0] == "transactional"
    # Destinations are the recipients, whatever the fields say; the request's set
    # replaces the message's own; Source is the envelope sender.
    answer = ses.send_raw_email(RawMessage={"Data": raw}, Source="bounces@example.com",
                                Destinations=["only@example.net"],
                                ConfigurationSetName="marketing",
                                Tags=[{"Name": "kind", "Value": "raw"}])
    entry = stored(relay, answer["MessageId"])
    assert entry["recipients"] == ["only@example.net"]
    assert entry["mail_from"] == "bounces@example.com"
    assert b"hidden@example.net" not in entry["data"]
    name, attrs = set_of(relay, answer["MessageId"])
    assert name == "marketing" and attrs["tags"]["kind"] == ["raw"]
    code, _, _ = error_of(ses.send_raw_email, RawMessage={"Data": b"From: nobody\n\nx"})
    assert code == "InvalidParameterValue"


def test_get_send_quota(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    before = ses.get_send_quota()["SentLast24Hours"]
    ses.send_email(**SEND)  # three recipients
    deadline = time.monotonic() + 10  # the settlement lands after the answer
    while (quota := ses.get_send_quota())["SentLast24Hours"] != before + 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert quota["Max24HourSend"] == 5000.0 and quota["MaxSendRate"] == 1000.0
    # An account without a quota: no limit, as v2's GetAccount says it.
    other = client(relay, api_key(relay, "other")).get_send_quota()
    assert (other["Max24HourSend"], other["MaxSendRate"]) == (-1.0, -1.0)


def test_refusals_raise_the_exceptions_ses_v1_users_catch(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    code, message, status = error_of(ses.send_email, **{**SEND,
                                                         "Source": "x@unverified.example"})
    assert (code, status) == ("MessageRejected", 400)
    assert "Email address is not verified" in message and "unverified.example" in message
    code, message, status = error_of(ses.send_email, **{**SEND,
                                                         "ConfigurationSetName": "nope"})
    assert (code, message, status) == ("ConfigurationSetDoesNotExist",
                                       "Configuration set <nope> does not exist.", 400)
    with pytest.raises(ses.exceptions.ConfigurationSetDoesNotExistException):
        ses.send_email(**{**SEND, "ConfigurationSetName": "nope"})
    assert while_paused(relay, "marketing", ses.send_email, **SEND) == \
        "ConfigurationSetSendingPausedException"
    fifty_one = {**SEND, "Destination": {"ToAddresses": [f"r{i}@example.net"
                                                         for i in range(51)]}}
    assert error_of(ses.send_email, **fifty_one)[:2] == (
        "InvalidParameterValue", "Recipient count exceeds 50.")
    injected = {**SEND, "Message": {"Subject": {"Data": "Hi\r\nBcc: victim@example.org"},
                                    "Body": {"Text": {"Data": "x"}}}}
    code, message, _ = error_of(ses.send_email, **injected)
    assert code == "InvalidParameterValue" and "line break" in message
    code, message, _ = error_of(ses.send_templated_email, Source="app@example.com",
                                Destination={"ToAddresses": ["a@example.net"]},
                                Template="nope", TemplateData="{}")
    assert (code, message) == ("TemplateDoesNotExist", "Template nope does not exist.")
    # A message after all these is still taken, and spooled (once the set's resume
    # has reached the relay).
    assert stored(relay, once_resumed(ses.send_email, **SEND)["MessageId"])


def test_templated_sends_render_the_accounts_templates(tmp_path: Path) -> None:
    # The templates are v2's (made with CreateEmailTemplate), sent with v1's actions.
    relay = DaemonProcess(tmp_path, api={"sesv1": True, "sesv2": True}, accounts=ACCOUNTS,
                          configuration_sets=SETS).start()
    try:
        _templated_sends(relay)
    finally:
        relay.stop()


def _templated_sends(relay: DaemonProcess) -> None:
    key = api_key(relay)
    ses_client(relay, key).create_email_template(TemplateName="v1-hello", TemplateContent={
        "Subject": "Hi {{name}}", "Text": "{{#if vip}}VIP{{else}}Thanks{{/if}}"})
    ses = client(relay, key)
    one = ses.send_templated_email(
        Source="app@example.com", Destination={"ToAddresses": ["t@example.net"]},
        Template="v1-hello", TemplateData='{"name": "Ann", "vip": true}',
        ConfigurationSetName="transactional")
    message = message_from_bytes(stored(relay, one["MessageId"])["data"],
                                 policy=policy.default)
    assert message["Subject"] == "Hi Ann" and message.get_content().strip() == "VIP"
    answer = ses.send_bulk_templated_email(
        Source="app@example.com", Template="v1-hello",
        DefaultTemplateData='{"name": "friend"}',
        Destinations=[
            {"Destination": {"ToAddresses": ["b1@example.net"]},
             "ReplacementTemplateData": '{"name": "Bob"}'},
            {"Destination": {"ToAddresses": ["b2@example.net"]}},
            {"Destination": {"ToAddresses": ["x@unverified.example"]},
             "ReplacementTemplateData": "not json"}])
    first, second, bad = answer["Status"]
    assert first["Status"] == second["Status"] == "Success"
    assert first["MessageId"] != second["MessageId"]
    assert bad["Status"] == "InvalidParameterValue" and "not valid JSON" in bad["Error"]
    for message_id, name in ((first["MessageId"], "Bob"), (second["MessageId"], "friend")):
        data = stored(relay, message_id)["data"]
        assert message_from_bytes(data, policy=policy.default)["Subject"] == f"Hi {name}"
    code, _, _ = error_of(ses.send_templated_email, Source="app@example.com",
                          Destination={"ToAddresses": ["a@example.net"]},
                          Template="v1-hello", TemplateData="[1]")
    assert code == "InvalidParameterValue"


def test_requests_no_client_sends(relay: DaemonProcess) -> None:
    key = api_key(relay)
    status, headers, body = signed(relay, key, b"Action=SendEmail&Version=2010-12-01"
                                               b"&Source=app%40example.com")
    assert status == 400 and headers["x-amzn-RequestId"]
    assert xml_error(body) == ("ValidationError", "1 validation error detected: Value null "
                               "at 'message.subject.data' failed to satisfy constraint: "
                               "Member must not be null")
    status, _, body = signed(relay, key, b"Action=DeleteIdentity&Version=2010-12-01")
    assert status == 400 and xml_error(body) == (
        "InvalidAction", "The action DeleteIdentity is not valid for this web service.")
    status, _, body = signed(relay, key, b"Version=2010-12-01")
    assert status == 400 and xml_error(body)[0] == "MissingAction"
    status, _, body = signed(relay, key, b"Action=GetSendQuota&Source=%FF%FE")
    assert xml_error(body)[0] == "MalformedQueryString"
    status, _, body = signed(relay, key, b"Action=GetSendQuota&justaword")
    assert xml_error(body)[0] == "MalformedQueryString"
    # GET with the fields in the query string, as AWS also takes them.
    status, _, body = signed(relay, key, b"", method="GET",
                             query="Action=GetSendQuota&Version=2010-12-01")
    assert status == 200
    assert parsed(status, body, "GetSendQuota")["Max24HourSend"] == 5000.0


def test_signatures_are_checked_as_aws_checks_them(relay: DaemonProcess) -> None:
    key = api_key(relay)
    wrong = client(relay, {**key, "aws_secret_access_key": "x" * 40})
    code, message, status = error_of(wrong.get_send_quota)
    assert (code, status) == ("SignatureDoesNotMatch", 403)
    assert message.startswith("The request signature we calculated does not match")
    unknown = client(relay, {**key, "aws_access_key_id": "SRAKAAAAAAAAAAAAAAAA"})
    assert error_of(unknown.get_send_quota)[::2] == ("InvalidClientTokenId", 403)
    url = f"http://127.0.0.1:{relay.ports['http']}/"
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(url, data=b"Action=GetSendQuota", timeout=10)
    assert unsigned.value.code == 403
    assert xml_error(unsigned.value.read())[0] == "MissingAuthenticationToken"


def test_over_quota_is_throttling(tmp_path: Path) -> None:
    daemon = two_then_throttled(tmp_path, {"sesv1": True})
    try:
        ses = client(daemon, api_key(daemon))
        request = {**SEND, "Destination": {"ToAddresses": ["a@example.net"]}}
        del request["ConfigurationSetName"]
        first = ses.send_email(**request)["MessageId"]
        assert ses.send_raw_email(RawMessage={
            "Data": b"From: app@example.com\nTo: b@example.net\nSubject: x\n\nx\n"})
        assert error_of(ses.send_email, **request) == (
            "Throttling", "Maximum sending rate exceeded.", 400)
        assert stored(daemon, first)
    finally:
        daemon.stop()


def test_get_send_statistics_counts_sends_bounces_and_rejects(
        tmp_path: Path, dns_server: TestDNSServer, mx: SmtpSink) -> None:
    mx.script.rcpt_replies["gone@dest.test"] = "550 5.1.1 no such user"
    daemon = DaemonProcess(tmp_path, api={"sesv1": True}, accounts=ACCOUNTS,
                           configuration_sets=SETS, delivery={
                               "mode": "mx", "port": mx.port,
                               "dns": {"nameservers": [dns_server.nameserver]},
                               "dsn": {"enabled": False}, **FAST_DELIVERY}).start()
    try:
        ses = client(daemon, api_key(daemon))
        assert ses.get_send_statistics()["SendDataPoints"] == []
        ses.send_email(**{**SEND, "Destination": {"ToAddresses": [
            "a@dest.test", "gone@dest.test"]}})
        ses.send_email(**{**SEND, "ConfigurationSetName": "transactional",
                          "Destination": {"ToAddresses": ["b@dest.test"]}})
        twice = b"From: app@example.com\nTo: c@dest.test\nSubject: a\nSubject: b\n\nx\n"
        assert error_of(ses.send_raw_email, RawMessage={"Data": twice})[0] == \
            "MessageRejected"

        def counted() -> list[dict[str, Any]] | None:
            # Each figure is counted when its event is recorded (the reject in a group
            # commit of its own, each delivery when its attempt ends): wait for all of
            # them, then hold them to exact values.
            points = ses.get_send_statistics()["SendDataPoints"]
            done = (sum(p["Bounces"] for p in points) and sum(p["Rejects"] for p in points)
                    and sum(p["DeliveryAttempts"] for p in points) >= 3)
            return points if done else None

        points = wait_for(counted)
        assert points, "the sends, the bounce and the reject were not all counted"
        # Hourly points: all of these within this hour (or two, across its end).
        assert 1 <= len(points) <= 2
        totals = {k: sum(p[k] for p in points)
                  for k in ("DeliveryAttempts", "Bounces", "Complaints", "Rejects")}
        assert totals == {"DeliveryAttempts": 3, "Bounces": 1, "Complaints": 0, "Rejects": 1}
        for point in points:
            stamp = point["Timestamp"]
            assert stamp.minute == stamp.second == 0 and stamp.utcoffset().total_seconds() == 0
            assert abs(stamp.timestamp() - time.time()) < 2 * 3600
        # Another account's statistics are its own.
        other = client(daemon, api_key(daemon, "other"))
        assert other.get_send_statistics()["SendDataPoints"] == []
    finally:
        daemon.stop()


def test_django_ses_sends_through_the_relay(relay: DaemonProcess) -> None:
    """django-ses, the usual SES backend of Django, with only its endpoint changed."""
    import django
    from django.conf import settings

    key = api_key(relay)
    if not settings.configured:
        settings.configure(EMAIL_BACKEND="django_ses.SESBackend")
        django.setup()
    from django.core.mail import EmailMultiAlternatives, get_connection
    from django.test.utils import override_settings

    with override_settings(
            EMAIL_BACKEND="django_ses.SESBackend", AWS_SES_REGION_NAME="eu-west-1",
            AWS_SES_REGION_ENDPOINT_URL=f"http://127.0.0.1:{relay.ports['http']}",
            AWS_SES_ACCESS_KEY_ID=key["aws_access_key_id"],
            AWS_SES_SECRET_ACCESS_KEY=key["aws_secret_access_key"],
            AWS_SES_CONFIGURATION_SET="marketing"):
        before = {m["id"] for m in spooled_ids(relay)}
        message = EmailMultiAlternatives(
            subject="Bestätigung", body="Danke für Ihre Bestellung",
            from_email="Shop <shop@example.com>", to=["kunde@example.net"],
            bcc=["archive@example.net"], connection=get_connection())
        message.attach_alternative("<p>Danke für Ihre Bestellung</p>", "text/html")
        assert message.send() == 1
        # django-ses asked for the rate limit (GetSendQuota) and answers with the id.
        assert message.extra_headers["message_id"]
        assert message.extra_headers["request_id"]
    [new] = [m for m in spooled_ids(relay) if m["id"] not in before]
    assert new["id"] == message.extra_headers["message_id"]
    assert new["mail_from"] == "shop@example.com"
    assert new["recipients"] == ["kunde@example.net", "archive@example.net"]
    parsed = message_from_bytes(new["data"], policy=policy.default)
    assert parsed["Subject"] == "Bestätigung" and "Bcc" not in parsed
    assert set_of(relay, new["id"])[0] == "marketing"


def spooled_ids(daemon: DaemonProcess) -> list[dict[str, Any]]:
    from tests.support import spooled

    return spooled(daemon.config)


def test_workers_answer_v1_and_read_the_supervisors_statistics(tmp_path: Path) -> None:
    """With server.workers each worker answers the Query API on its own pipeline and
    reads GetSendStatistics from the supervisor's spool."""
    daemon = DaemonProcess(tmp_path, api={"sesv1": True}, accounts=ACCOUNTS,
                           configuration_sets=SETS,
                           server={"workers": 2, "transform_workers": 0}).start()
    try:
        ses = client(daemon, api_key(daemon))
        ids = {ses.send_email(**SEND)["MessageId"] for _ in range(4)}
        assert len(ids) == 4 and ids <= {m["id"] for m in spooled_ids(daemon)}

        def attempts() -> int:
            return sum(p["DeliveryAttempts"]
                       for p in ses.get_send_statistics()["SendDataPoints"])

        assert wait_for(lambda: attempts() == 12)  # 4 x 3 recipients
    finally:
        daemon.stop()
