"""SES v2 templates and SendBulkEmail with real boto3 sesv2 clients against a running
relay (capture delivery, events to a file): templates are each account's own; a
templated message is rendered, composed and sent as SendEmail's Simple content is; a
bulk send is one message per entry, each with its own data, its own Send and
Delivery events; a message whose data misses a variable is not sent and gives a
Rendering Failure event; bad input gets AWS's error shapes."""

from __future__ import annotations

import email
import json
from collections.abc import Iterator
from email import policy
from pathlib import Path

import pytest

from tests.e2e.delivery_world import wait_for
from tests.e2e.test_ses_api import api_key, client, error_of
from tests.support import DaemonProcess, events, spooled

ACCOUNTS = {
    "acme": {"identities": ["example.com"], "default_configuration_set": "transactional",
             "quota": {"max_send_rate": 1000, "burst": 1000, "max_24h_send": 5000}},
    "other": {"identities": ["other.example"]},
}

TEMPLATE = {
    "Subject": "Hello {{contact.firstName}} & co",
    "Text": "Dear {{contact.firstName}},\n{{#each items}}- {{this}}\n{{/each}}"
            "{{#if vip}}VIP{{else}}regular{{/if}}",
    "Html": "<h1>Hi {{contact.firstName}}</h1>{{#if vip}}<b>VIP</b>{{/if}}",
}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    tmp = tmp_path_factory.mktemp("templates")
    daemon = DaemonProcess(
        tmp, api={"sesv2": True}, accounts=ACCOUNTS, delivery={"mode": "capture"},
        configuration_sets={"transactional": {"accounts": ["acme"], "event_destinations": [
            {"name": "archive", "type": "file", "path": str(tmp / "events.ndjson")}]}},
    ).start()
    yield daemon
    daemon.stop()


def event_path(daemon: DaemonProcess) -> Path:
    return Path(daemon.config.configuration_sets["transactional"]
                .event_destinations[0].path or "")


def event_types(daemon: DaemonProcess, *, checked: bool = False) -> dict[str, list[str]]:
    """Each message's event types so far; `checked`: each record checked against
    docs/events.schema.json (slow: not in a wait loop)."""
    path = event_path(daemon)
    records = (events(path) if checked else
               [json.loads(line) for line in path.read_text().splitlines()]
               if path.exists() else [])
    found: dict[str, list[str]] = {}
    for record in records:
        found.setdefault(record["mail"]["messageId"], []).append(record["eventType"])
    return found


def captured_all(daemon: DaemonProcess, message_ids: list[str]
                 ) -> dict[str, email.message.EmailMessage]:
    """The captured messages of `message_ids`, once all are there (one CLI run a try)."""
    def files() -> dict[str, str] | None:
        found = {c["message_id"]: c["file"] for c in json.loads(
            daemon.cli("captured", "list", "--json").stdout)}
        return found if all(m in found for m in message_ids) else None

    found = wait_for(files, 60, 0.5)
    parsed = {m: email.message_from_bytes(Path(found[m]).read_bytes(), policy=policy.default)
              for m in message_ids}
    assert all(isinstance(p, email.message.EmailMessage) for p in parsed.values())
    return parsed  # type: ignore[return-value]


def captured(daemon: DaemonProcess, message_id: str) -> email.message.EmailMessage:
    return captured_all(daemon, [message_id])[message_id]


def test_templates_are_stored_per_account(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    ses.create_email_template(TemplateName="welcome", TemplateContent=TEMPLATE)
    got = ses.get_email_template(TemplateName="welcome")
    assert got["TemplateName"] == "welcome" and got["TemplateContent"] == TEMPLATE
    assert error_of(ses.create_email_template, TemplateName="welcome",
                    TemplateContent=TEMPLATE)[:2] == (
        "AlreadyExistsException", "Template welcome already exists.")
    ses.update_email_template(TemplateName="welcome",
                              TemplateContent={**TEMPLATE, "Subject": "Hi {{contact.firstName}}"})
    assert ses.get_email_template(TemplateName="welcome")["TemplateContent"]["Subject"] == \
        "Hi {{contact.firstName}}"
    for i in range(5):
        ses.create_email_template(TemplateName=f"page-{i}", TemplateContent={"Subject": "x"})
    names: list[str] = []
    token: dict[str, str] = {}
    while True:
        page = ses.list_email_templates(PageSize=2, **token)
        assert len(page["TemplatesMetadata"]) <= 2
        names += [t["TemplateName"] for t in page["TemplatesMetadata"]]
        if "NextToken" not in page:
            break
        token = {"NextToken": page["NextToken"]}
    assert names == [f"page-{i}" for i in range(5)] + ["welcome"]
    # Another account sees none of them and cannot touch them.
    other = client(relay, api_key(relay, "other"))
    assert other.list_email_templates()["TemplatesMetadata"] == []
    for call in (other.get_email_template, other.delete_email_template):
        assert error_of(call, TemplateName="welcome") == (
            "NotFoundException", "Template welcome does not exist.", 404)
    assert error_of(other.update_email_template, TemplateName="welcome",
                    TemplateContent=TEMPLATE)[0] == "NotFoundException"
    ses.delete_email_template(TemplateName="page-0")
    assert error_of(ses.get_email_template, TemplateName="page-0")[0] == "NotFoundException"


def test_test_render_email_template(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    ses.create_email_template(TemplateName="render-me", TemplateContent=TEMPLATE)
    rendered = ses.test_render_email_template(
        TemplateName="render-me",
        TemplateData=json.dumps({"contact": {"firstName": "Ann"}, "items": ["a", "b"],
                                 "vip": True}))["RenderedTemplate"]
    message = email.message_from_string(rendered, policy=policy.default)
    assert message["Subject"] == "Hello Ann & co"
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n") == "Dear Ann,\n- a\n- b\nVIP\n"
    code, text, _ = error_of(ses.test_render_email_template, TemplateName="render-me",
                             TemplateData=json.dumps({"items": []}))
    assert code == "BadRequestException"
    assert text == "Attribute 'contact.firstName' is not present in the rendering data."


def test_send_email_with_a_template(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    ses.create_email_template(TemplateName="stored", TemplateContent=TEMPLATE)
    data = {"contact": {"firstName": "<Bob>"}, "items": ["x"], "vip": False}
    sent = ses.send_email(FromEmailAddress="app@example.com",
                          Destination={"ToAddresses": ["bob@example.net"]},
                          Content={"Template": {
                              "TemplateArn": "arn:aws:ses:eu-west-1:1:template/stored",
                              "TemplateData": json.dumps(data),
                              "Headers": [{"Name": "X-Campaign", "Value": "t1"}]}})
    message = captured(relay, sent["MessageId"])
    assert message["Subject"] == "Hello <Bob> & co" and message["X-Campaign"] == "t1"
    # SES escapes nothing, in the HTML part neither.
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<h1>Hi <Bob></h1>" in html and "VIP" not in html
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "- x\r\n" in text and "regular" in text
    inline = ses.send_email(FromEmailAddress="app@example.com",
                            Destination={"ToAddresses": ["inline@example.net"]},
                            Content={"Template": {
                                "TemplateContent": {"Subject": "Inline {{n}}",
                                                    "Text": "n={{n}}"},
                                "TemplateData": '{"n": 7}'}})
    assert captured(relay, inline["MessageId"])["Subject"] == "Inline 7"


def test_bulk_send_of_fifty(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    ses.create_email_template(TemplateName="bulk", TemplateContent={
        "Subject": "For {{name}} ({{tier}})", "Text": "Hello {{name}}, tier {{tier}}"})
    entries = [{"Destination": {"ToAddresses": [f"r{i}@example.net"]},
                "ReplacementEmailContent": {"ReplacementTemplate": {
                    "ReplacementTemplateData": json.dumps({"name": f"N{i}"})}}}
               for i in range(50)]
    answer = ses.send_bulk_email(
        FromEmailAddress="app@example.com",
        DefaultContent={"Template": {"TemplateName": "bulk",
                                     "TemplateData": '{"name": "friend", "tier": "gold"}'}},
        BulkEmailEntries=entries, ConfigurationSetName="transactional",
        DefaultEmailTags=[{"Name": "campaign", "Value": "bulk1"}])
    results = answer["BulkEmailEntryResults"]
    assert [r["Status"] for r in results] == ["SUCCESS"] * 50
    ids = [r["MessageId"] for r in results]
    assert len(set(ids)) == 50
    messages = captured_all(relay, ids)
    for i, message_id in enumerate(ids):
        message = messages[message_id]
        assert message["Subject"] == f"For N{i} (gold)"
        assert message["To"] == f"r{i}@example.net"
    wait_for(lambda: all("Delivery" in event_types(relay).get(m, []) for m in ids), 60, 0.5)
    found = event_types(relay, checked=True)
    for message_id in ids:
        assert sorted(found[message_id]) == ["Delivery", "Send"]


def test_a_missing_variable_is_a_rendering_failure(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    ses.create_email_template(TemplateName="needs-name",
                              TemplateContent={"Subject": "Hi {{name}}", "Text": "x"})
    answer = ses.send_bulk_email(
        FromEmailAddress="app@example.com",
        DefaultContent={"Template": {"TemplateName": "needs-name"}},
        BulkEmailEntries=[
            {"Destination": {"ToAddresses": ["fine@example.net"]},
             "ReplacementEmailContent": {"ReplacementTemplate": {
                 "ReplacementTemplateData": '{"name": "Fine"}'}}},
            {"Destination": {"ToAddresses": ["broken@example.net"]}},
            {"Destination": {"ToAddresses": ["rejected@unverified.example"]},
             "ReplacementEmailContent": {"ReplacementTemplate": {
                 "ReplacementTemplateData": "not json"}}},
        ])
    fine, broken, bad = answer["BulkEmailEntryResults"]
    assert fine["Status"] == "SUCCESS" and broken["Status"] == "SUCCESS"
    assert bad["Status"] == "INVALID_PARAMETER" and "not valid JSON" in bad["Error"]
    assert captured(relay, fine["MessageId"])["Subject"] == "Hi Fine"
    # SES answers with a message id, sends nothing, and publishes the failure.
    record = wait_for(lambda: [r for r in events(event_path(relay))
                               if r["mail"]["messageId"] == broken["MessageId"]])
    assert record[0]["eventType"] == "Rendering Failure"
    assert record[0]["failure"] == {
        "errorMessage": "Attribute 'name' is not present in the rendering data.",
        "templateName": "needs-name"}
    assert record[0]["mail"]["destination"] == ["broken@example.net"]
    assert not [m for m in spooled(relay.config) if m["id"] == broken["MessageId"]]


def test_bad_input_gets_aws_errors(relay: DaemonProcess) -> None:
    ses = client(relay, api_key(relay))
    before = ses.send_email(FromEmailAddress="app@example.com",
                            Destination={"ToAddresses": ["before@example.net"]},
                            Content={"Simple": {"Subject": {"Data": "before"},
                                                "Body": {"Text": {"Data": "x"}}}})
    code, message, status = error_of(ses.create_email_template, TemplateName="broken",
                                     TemplateContent={"Subject": "{{#if a}}open"})
    assert (code, status) == ("BadRequestException", 400) and "Subject part" in message
    assert error_of(ses.get_email_template, TemplateName="broken")[0] == "NotFoundException"
    ses.create_email_template(TemplateName="ok", TemplateContent={"Subject": "{{a}}"})
    assert error_of(ses.update_email_template, TemplateName="ok",
                    TemplateContent={"Text": "{{/each}}"})[0] == "BadRequestException"
    code, message, _ = error_of(ses.send_email, FromEmailAddress="app@example.com",
                                Destination={"ToAddresses": ["a@example.net"]},
                                Content={"Template": {"TemplateName": "ok",
                                                      "TemplateData": "{not json"}})
    assert code == "BadRequestException" and "TemplateData is not valid JSON" in message
    assert error_of(ses.send_email, FromEmailAddress="app@example.com",
                    Destination={"ToAddresses": ["a@example.net"]},
                    Content={"Template": {"TemplateName": "nope", "TemplateData": "{}"}}) == (
        "NotFoundException", "Template nope does not exist.", 404)
    code, message, _ = error_of(
        ses.send_bulk_email, FromEmailAddress="app@example.com",
        DefaultContent={"Template": {"TemplateName": "ok", "TemplateData": '{"a": 1}'}},
        BulkEmailEntries=[{"Destination": {"ToAddresses": [f"r{i}@example.net"]}}
                          for i in range(51)])
    assert code == "BadRequestException" and "at most 50" in message
    after = ses.send_email(FromEmailAddress="app@example.com",
                           Destination={"ToAddresses": ["after@example.net"]},
                           Content={"Template": {"TemplateName": "ok",
                                                 "TemplateData": '{"a": "after"}'}})
    assert captured(relay, after["MessageId"])["Subject"] == "after"
    assert captured(relay, before["MessageId"])["Subject"] == "before"
