"""The SES v2 API with the real AWS SDK for Python: boto3's `sesv2` client pointed at the
relay with `endpoint_url` and an API key made by `smtprelay api-keys create`, as an
application migrating from SES does. Each message goes through the same pipeline as
SMTP: it is in the spool under the MessageId the API answered, with the
configuration set, tags and identities applied; each refusal raises the exception an
SES user catches."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import re
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
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config as BotoConfig
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.support import DaemonProcess, spooled

ACCOUNTS = {
    "acme": {"identities": ["example.com"], "default_configuration_set": "transactional",
             "quota": {"max_send_rate": 1000, "burst": 1000, "max_24h_send": 5000}},
    "other": {"identities": ["other.example"]},
}
SETS = {"transactional": {"accounts": ["acme"]}, "marketing": {"accounts": ["acme"]}}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("ses"), api={"sesv2": True},
                           accounts=ACCOUNTS, configuration_sets=SETS).start()
    yield daemon
    daemon.stop()


def api_key(daemon: DaemonProcess, account: str = "acme") -> dict[str, str]:
    made = json.loads(daemon.cli("api-keys", "create", account, "--json").stdout)
    return {"aws_access_key_id": made["access_key_id"],
            "aws_secret_access_key": made["secret_access_key"]}


def client(daemon: DaemonProcess, key: dict[str, str], region: str = "eu-west-1",
           service: str = "sesv2") -> Any:
    # One attempt: a refusal must reach the test, not be retried by botocore.
    return boto3.client(service, endpoint_url=f"http://127.0.0.1:{daemon.ports['http']}",
                        region_name=region, config=BotoConfig(retries={"total_max_attempts": 1}),
                        **key)


def stored(daemon: DaemonProcess, message_id: str) -> dict[str, Any]:
    [entry] = [m for m in spooled(daemon.config) if m["id"] == message_id]
    return entry


def error_of(call: Any, **kwargs: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as refused:
        call(**kwargs)
    error = refused.value.response["Error"]
    status = refused.value.response["ResponseMetadata"]["HTTPStatusCode"]
    return error["Code"], error["Message"], status


def while_paused(daemon: DaemonProcess, name: str, call: Any, **kwargs: Any) -> str:
    """The code `call` is refused with while the set `name` is paused by the CLI,
    asked until the relay has read the pause (it reads pauses every few seconds)."""
    daemon.cli("sets", "pause", name, "--reason", "test")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                call(**kwargs)
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            assert time.monotonic() < deadline
    finally:
        daemon.cli("sets", "resume", name)


def once_resumed(call: Any, **kwargs: Any) -> Any:
    """`call`'s answer once a set resumed by the CLI is resumed in the relay too (it
    reads pauses every few seconds)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return call(**kwargs)
        except ClientError as exc:
            if "Paused" not in exc.response["Error"]["Code"] or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


SIMPLE = {
    "FromEmailAddress": "App <app@example.com>",
    "Destination": {"ToAddresses": ["to@example.net"], "CcAddresses": ["cc@example.net"],
                    "BccAddresses": ["bcc@example.net"]},
    "ReplyToAddresses": ["help@example.com"],
    "Content": {"Simple": {"Subject": {"Data": "Grüße", "Charset": "UTF-8"},
                           "Body": {"Text": {"Data": "Hello"},
                                    "Html": {"Data": "<p>Hello</p>"}},
                           "Headers": [{"Name": "X-Campaign", "Value": "spring"}]}},
    "ConfigurationSetName": "marketing",
    "EmailTags": [{"Name": "campaign", "Value": "spring-2026"}],
}


def test_send_email_simple_is_spooled_under_its_message_id(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    answer = ses.send_email(**SIMPLE)
    entry = stored(relay, answer["MessageId"])
    assert entry["mail_from"] == "app@example.com" and entry["account"] == "acme"
    assert entry["recipients"] == ["to@example.net", "cc@example.net", "bcc@example.net"]
    message = message_from_bytes(entry["data"], policy=policy.default)
    assert message["Subject"] == "Grüße" and message["X-Campaign"] == "spring"
    assert message["To"] == "to@example.net" and "Bcc" not in message
    assert message.get_content_type() == "multipart/alternative"
    # The request's set and tags went the pipeline's way: taken out of the message,
    # applied to it.
    assert "X-SES-CONFIGURATION-SET" not in message
    with closing(sqlite3.connect(relay.config.spool_path)) as conn:
        set_name, attrs = conn.execute("SELECT configuration_set, attrs FROM messages"
                                       " WHERE id = ?", (answer["MessageId"],)).fetchone()
    assert set_name == "marketing"
    assert json.loads(attrs)["tags"]["campaign"] == ["spring-2026"]


def test_send_email_raw_takes_recipients_from_its_fields_and_drops_bcc(
        relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay), region="us-east-1")
    # LF line ends, as Python's email package writes them.
    raw = (b"From: app@example.com\nTo: a@example.net\nBcc: hidden@example.net\n"
           b"Subject: raw\n\nBody line\n")
    answer = ses.send_email(Content={"Raw": {"Data": raw}})
    entry = stored(relay, answer["MessageId"])
    assert entry["recipients"] == ["a@example.net", "hidden@example.net"]
    assert b"hidden@example.net" not in entry["data"]
    assert b"Body line\r\n" in entry["data"]


def test_refusals_raise_the_exceptions_ses_users_catch(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    unverified = {**SIMPLE, "FromEmailAddress": "someone@unverified.example"}
    code, message, status = error_of(ses.send_email, **unverified)
    assert (code, status) == ("MessageRejected", 400)
    assert "Email address is not verified" in message and "unverified.example" in message
    code, message, status = error_of(ses.send_email, **{**SIMPLE,
                                                         "ConfigurationSetName": "nope"})
    assert (code, status) == ("NotFoundException", 404)
    assert message == "Configuration set <nope> does not exist."
    # A set of another account is answered as one that does not exist.
    other = client(relay, api_key(relay, "other"))
    code, _, _ = error_of(other.send_email, **{
        **SIMPLE, "FromEmailAddress": "app@other.example",
        "ConfigurationSetName": "transactional"})
    assert code == "NotFoundException"
    assert while_paused(relay, "marketing", ses.send_email, **SIMPLE) == \
        "SendingPausedException"
    fifty_one = {**SIMPLE, "Destination": {"ToAddresses": [f"r{i}@example.net"
                                                           for i in range(51)]}}
    assert error_of(ses.send_email, **fifty_one)[:2] == (
        "BadRequestException", "Recipient count exceeds 50.")
    injected = {**SIMPLE, "Content": {"Simple": {
        "Subject": {"Data": "Hi\r\nBcc: victim@example.org"},
        "Body": {"Text": {"Data": "x"}}}}}
    code, message, _ = error_of(ses.send_email, **injected)
    assert code == "BadRequestException" and "line break" in message
    not_mime = {"Content": {"Raw": {"Data": b"just some words"}},
                "FromEmailAddress": "app@example.com",
                "Destination": {"ToAddresses": ["a@example.net"]}}
    assert error_of(ses.send_email, **not_mime)[0] == "MessageRejected"
    # A message after all these is still taken.
    assert once_resumed(ses.send_email, **SIMPLE)["MessageId"]


def two_then_throttled(tmp_path: Path, api: dict[str, bool]) -> DaemonProcess:
    """A relay, started, whose account acme may send two messages and then no more
    for a long while (its rate bucket holds two)."""
    return DaemonProcess(tmp_path, api=api, accounts={"acme": {
        "identities": ["example.com"],
        "quota": {"max_send_rate": 0.001, "burst": 2, "max_24h_send": 100}}}).start()


def test_over_quota_is_too_many_requests(tmp_path: Path) -> None:
    daemon = two_then_throttled(tmp_path, {"sesv2": True})
    try:
        ses = client(daemon, api_key(daemon))
        request = {**SIMPLE, "Destination": {"ToAddresses": ["a@example.net"]}}
        del request["ConfigurationSetName"]
        assert ses.send_email(**request)["MessageId"]
        assert ses.send_email(**request)["MessageId"]
        assert error_of(ses.send_email, **request) == (
            "TooManyRequestsException", "Maximum sending rate exceeded.", 429)
        deadline = time.monotonic() + 10  # the settlements land after the answers
        while (account := ses.get_account())["SendQuota"]["SentLast24Hours"] != 2.0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert account["SendQuota"] == {"Max24HourSend": 100.0, "MaxSendRate": 0.001,
                                        "SentLast24Hours": 2.0}
        assert account["SendingEnabled"] is True
    finally:
        daemon.stop()


def test_signatures_are_checked_as_aws_checks_them(relay: DaemonProcess,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key = api_key(relay)
    wrong = client(relay, {**key, "aws_secret_access_key": "x" * 40})
    code, message, status = error_of(wrong.get_account)
    assert status == 403 and code == "InvalidSignatureException"
    assert message.startswith("The request signature we calculated does not match")
    unknown = client(relay, {**key, "aws_access_key_id": "SRAKAAAAAAAAAAAAAAAA"})
    assert error_of(unknown.get_account)[2] == 403
    relay.cli("api-keys", "disable", key["aws_access_key_id"])
    try:
        deadline = time.monotonic() + 10  # the relay keeps a key for a few seconds
        while True:
            try:
                client(relay, key).get_account()
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "UnrecognizedClientException"
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        relay.cli("api-keys", "enable", key["aws_access_key_id"])
    # Unsigned, and signed ten minutes ago (AWS allows five).
    url = f"http://127.0.0.1:{relay.ports['http']}/v2/email/account"
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(url, timeout=10)
    assert unsigned.value.code == 403
    assert unsigned.value.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
    old = AWSRequest(method="GET", url=url)
    signed_at = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) \
        - datetime.timedelta(minutes=10)
    with monkeypatch.context() as patched:  # botocore's signer, with its clock put back
        patched.setattr(botocore.auth, "get_current_datetime", lambda: signed_at)
        SigV4Auth(Credentials(key["aws_access_key_id"], key["aws_secret_access_key"]), "ses",
                  "eu-west-1").add_auth(old)
    with pytest.raises(urllib.error.HTTPError) as expired:
        urllib.request.urlopen(urllib.request.Request(url, headers=dict(old.headers)),
                               timeout=10)
    body = json.loads(expired.value.read())
    assert expired.value.code == 403 and body["message"].startswith("Signature expired:")
    # A body over api.max_request_size is refused before it is read whole.
    big = {"Content": {"Raw": {"Data": base64.b64encode(b"x" * 11 * 1024 * 1024).decode()}}}
    send_url = url.replace("account", "outbound-emails")
    request = AWSRequest(method="POST", url=send_url,
                         data=json.dumps(big).encode(),
                         headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key["aws_access_key_id"], key["aws_secret_access_key"]), "ses",
              "eu-west-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", relay.ports["http"], timeout=30)
    try:
        conn.request("POST", "/v2/email/outbound-emails", body=request.body,
                     headers=dict(request.headers))
        too_big = conn.getresponse()
        assert too_big.status == 413
        assert re.search(r"larger than \d+ bytes", json.loads(too_big.read())["message"])
    finally:
        conn.close()


def test_workers_answer_the_api_on_their_own_pipelines(tmp_path: Path) -> None:
    """With server.workers the worker processes serve the HTTP listeners: each answers
    SendEmail itself, its message in the one spool."""
    daemon = DaemonProcess(tmp_path, api={"sesv2": True}, accounts=ACCOUNTS,
                           configuration_sets=SETS,
                           server={"workers": 2, "transform_workers": 0}).start()
    try:
        ses = client(daemon, api_key(daemon))
        ids = {ses.send_email(**SIMPLE)["MessageId"] for _ in range(6)}
        assert len(ids) == 6
        assert ids <= {m["id"] for m in spooled(daemon.config)}
        # 6 x 3 recipients, once the settlements (after each answer) have landed.
        deadline = time.monotonic() + 10
        while ses.get_account()["SendQuota"]["SentLast24Hours"] != 18.0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        daemon.stop()


def signed_post(daemon: DaemonProcess, key: dict[str, str], body: bytes) -> tuple[int, Any]:
    """A SendEmail request with any body, signed by botocore's signer."""
    url = f"http://127.0.0.1:{daemon.ports['http']}/v2/email/outbound-emails"
    request = AWSRequest(method="POST", url=url, data=body,
                         headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(key["aws_access_key_id"], key["aws_secret_access_key"]), "ses",
              "eu-west-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.ports["http"], timeout=30)
    try:
        conn.request("POST", "/v2/email/outbound-emails", body=body,
                     headers=dict(request.headers))
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_malformed_bodies_and_a_paused_account_are_refused_and_nothing_else_lost(
        relay: DaemonProcess) -> None:
    key = api_key(relay, "other")
    before = len(spooled(relay.config))
    for body in (b"{not json", b"[1, 2]", b'{"Content": {"Simple": "text"}}',
                 b'{"Content": {"Raw": {"Data": "not base64!"}}}', b"\xff\xfe"):
        status, answer = signed_post(relay, key, body)
        assert status == 400 and answer["__type"] == "BadRequestException", (body, answer)
    ses = client(relay, key)
    request = {**SIMPLE, "FromEmailAddress": "app@other.example"}
    del request["ConfigurationSetName"]
    relay.cli("accounts", "pause", "other", "--reason", "test")
    try:
        deadline = time.monotonic() + 10
        while True:  # until the relay has read the pause
            try:
                ses.send_email(**request)
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "SendingPausedException"
                assert exc.response["Error"]["Message"] == \
                    "Sending is paused for this account."
                break
            assert time.monotonic() < deadline
    finally:
        relay.cli("accounts", "resume", "other")
    sent = once_resumed(ses.send_email, **request)["MessageId"]
    assert sent in {m["id"] for m in spooled(relay.config)}
    assert len(spooled(relay.config)) > before


def test_a_large_body_is_hashed_and_checked_like_a_small_one(relay: DaemonProcess) -> None:
    """Bodies over 16 KB are hashed in a thread: still checked, byte for byte."""
    key = api_key(relay)
    raw = (b"From: app@example.com\r\nTo: big@example.net\r\nSubject: big\r\n\r\n"
           + b"y" * 76 + b"\r\n") * 800
    answer = client(relay, key).send_email(Content={"Raw": {"Data": raw}})
    assert raw.split(b"\r\n\r\n", 1)[1] in stored(relay, answer["MessageId"])["data"]
    wrong = client(relay, {**key, "aws_secret_access_key": "y" * 40})
    code, _, status = error_of(wrong.send_email, Content={"Raw": {"Data": raw}})
    assert (code, status) == ("InvalidSignatureException", 403)


def test_feedback_forwarding_address_is_where_bounces_go(relay: DaemonProcess) -> None:
    """FeedbackForwardingEmailAddress: the relay's bounce messages go to the envelope
    sender, so that is what it becomes; an address of no verified identity is refused
    as an unverified sender is."""
    ses = client(relay, api_key(relay))
    simple = {**SIMPLE, "FeedbackForwardingEmailAddress": "bounces@example.com"}
    answer = ses.send_email(**simple)
    assert stored(relay, answer["MessageId"])["mail_from"] == "bounces@example.com"
    raw = ses.send_email(Content={"Raw": {"Data": b"From: app@example.com\r\n"
                                                  b"To: a@example.net\r\n\r\nx\r\n"}},
                         FeedbackForwardingEmailAddress="raw-bounces@example.com")
    assert stored(relay, raw["MessageId"])["mail_from"] == "raw-bounces@example.com"
    code, message, _ = error_of(ses.send_email, **{
        **SIMPLE, "FeedbackForwardingEmailAddress": "x@unverified.example"})
    assert code == "MessageRejected" and "unverified.example" in message
