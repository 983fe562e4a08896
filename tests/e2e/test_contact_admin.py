"""The contact lists through the admin API (/api/v1/contact-lists) over real sockets, and
what a change made there does to the next message sent over SMTP.

SES's names and refusals: EmailAddress, TopicPreferences, UnsubscribeAll,
AttributesData; NotFoundException, AlreadyExistsException and BadRequestException as
the error code. Every bad input is sent and its answer checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from smtprelay.policy.contacts import SQLiteContactStore
from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, Admin
from tests.e2e.test_contact_lists import (
    LIST_HEADER,
    TOPICS,
    accepted,
    events_path,
    not_suppressed,
    records,
    states,
)
from tests.support import RunningRelay, events, relay_fixture, send_raw, session

HOST = "links.test"
NEWS = "/api/v1/contact-lists/news"


def lists_config(tmp_path: Path) -> dict[str, Any]:
    destinations = [{"name": "all", "type": "file", "path": str(tmp_path / "events.ndjson")}]
    return {
        "tracking_domains": {HOST: {}},
        "contact_lists": {
            "news": {"account": "acme", "description": "Example news",
                     "unsubscribe_domain": HOST, "https": False, "topics": TOPICS},
            "theirs": {"account": "other", "unsubscribe_domain": HOST, "https": False}},
        "configuration_sets": {"transactional": {"event_destinations": destinations}},
    }


relay = relay_fixture(lists_config, env={ENV: SECRET}, http=ADMIN_HTTP)


def contact_path(address: str, contact_list: str = "news") -> str:
    return f"/api/v1/contact-lists/{contact_list}/contacts/{quote(address, safe='@')}"


def accepted_from(relay: RunningRelay, account: str, sender: str, rcpt: str,
                  *headers: str) -> str:
    """A message of `account` from `sender`; its id."""
    data = (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hello\r\n"
            + "".join(f"{h}\r\n" for h in headers) + "\r\nHello.\r\n").encode()
    with session(relay, relay.credential(account)) as smtp:
        code, reply = send_raw(smtp, [rcpt], data, sender=sender)
    assert code == 250, reply
    return reply.decode().split()[-1]


def error(answer: Any) -> tuple[int, str, str]:
    body = answer.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return answer.status, body["error"]["code"], body["error"]["message"]


# -- the lists and one contact ------------------------------------------------------------------


def test_lists_and_a_contacts_life(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    listed = admin.get("/api/v1/contact-lists")
    assert listed.status == 200
    assert [(item["ContactListName"], item["Account"]) for item in listed.json["items"]] == [
        ("news", "acme"), ("theirs", "other")]
    news = admin.get(NEWS).json
    assert news["Description"] == "Example news"
    assert [(t["TopicName"], t["DisplayName"], t["DefaultSubscriptionStatus"])
            for t in news["Topics"]] == [("sports", "Sports news", "OPT_IN"),
                                         ("cycling", "Cycling", "OPT_IN"),
                                         ("daily", "Daily digest", "OPT_OUT")]

    # SES's CreateContact request, as the guide writes it.
    made = admin.post(f"{NEWS}/contacts", body={
        "EmailAddress": "Reader@Example.NET", "UnsubscribeAll": False,
        "TopicPreferences": [{"TopicName": "sports", "SubscriptionStatus": "OPT_IN"}],
        "AttributesData": "{\"Name\": \"John\", \"Location\": \"Seattle\"}"})
    assert made.status == 201, made.body
    contact = made.json
    assert contact == {
        "ContactListName": "news", "EmailAddress": "Reader@example.net", "UnsubscribeAll": False,
        "TopicPreferences": [{"TopicName": "sports", "SubscriptionStatus": "OPT_IN"}],
        "TopicDefaultPreferences": [
            {"TopicName": "sports", "SubscriptionStatus": "OPT_IN"},
            {"TopicName": "cycling", "SubscriptionStatus": "OPT_IN"},
            {"TopicName": "daily", "SubscriptionStatus": "OPT_OUT"}],
        "AttributesData": "{\"Name\": \"John\", \"Location\": \"Seattle\"}",
        "CreatedTimestamp": contact["CreatedTimestamp"],
        "LastUpdatedTimestamp": contact["CreatedTimestamp"]}
    assert admin.get(contact_path("Reader@example.NET.")).json == contact

    # UpdateContact: the preferences given are all of them; what is left out stays.
    changed = admin.put(contact_path("Reader@example.net"), body={
        "TopicPreferences": [{"TopicName": "daily", "SubscriptionStatus": "OPT_IN"}]})
    assert changed.status == 200, changed.body
    assert changed.json["TopicPreferences"] == [{"TopicName": "daily",
                                                 "SubscriptionStatus": "OPT_IN"}]
    assert changed.json["AttributesData"] == contact["AttributesData"]
    assert changed.json["LastUpdatedTimestamp"] >= contact["LastUpdatedTimestamp"]
    again = admin.put(contact_path("Reader@example.net"), body={"UnsubscribeAll": True})
    assert again.json["UnsubscribeAll"] is True
    assert again.json["TopicPreferences"] == changed.json["TopicPreferences"]
    cleared = admin.put(contact_path("Reader@example.net"), body={"TopicPreferences": []})
    assert cleared.json["TopicPreferences"] == [] and cleared.json["UnsubscribeAll"] is True

    deleted = admin.delete(contact_path("Reader@EXAMPLE.net"))
    assert deleted.status == 200
    assert deleted.json == {"ContactListName": "news", "EmailAddress": "Reader@example.net",
                            "Deleted": True}
    assert error(admin.get(contact_path("Reader@example.net"))) == (
        404, "NotFoundException", "Reader@example.net is not a contact of list 'news'")
    assert error(admin.delete(contact_path("Reader@example.net")))[:2] == (
        404, "NotFoundException")


def test_list_contacts_filters_and_pages(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    people: dict[str, dict[str, Any]] = {
        "a@x.test": {},
        "b@x.test": {"TopicPreferences": [{"TopicName": "sports",
                                           "SubscriptionStatus": "OPT_OUT"}]},
        "c@x.test": {"TopicPreferences": [{"TopicName": "daily",
                                           "SubscriptionStatus": "OPT_IN"}]},
        "d@x.test": {"UnsubscribeAll": True},
        "e@x.test": {"TopicPreferences": [{"TopicName": "sports",
                                           "SubscriptionStatus": "OPT_IN"}]},
    }
    for address, fields in people.items():
        assert admin.post(f"{NEWS}/contacts", body={"EmailAddress": address,
                                                    **fields}).status == 201
    # Another list's contact is not in this one.
    assert admin.post("/api/v1/contact-lists/theirs/contacts",
                      body={"EmailAddress": "z@x.test"}).status == 201

    def addresses(query: str) -> list[str]:
        answer = admin.get(f"{NEWS}/contacts?{query}")
        assert answer.status == 200, answer.body
        assert answer.json["next_cursor"] is None
        return [c["EmailAddress"] for c in answer.json["items"]]

    assert addresses("") == list(people)
    assert addresses("status=OPT_OUT") == ["d@x.test"]
    assert addresses("status=OPT_IN") == ["a@x.test", "b@x.test", "c@x.test", "e@x.test"]
    assert addresses("topic=sports&status=OPT_IN") == ["e@x.test"]
    assert addresses("topic=sports&status=OPT_IN&use_default=true") == [
        "a@x.test", "c@x.test", "e@x.test"]
    assert addresses("topic=daily&status=OPT_IN&use_default=true") == ["c@x.test"]
    assert addresses("topic=sports&status=OPT_OUT&use_default=false") == ["b@x.test"]
    assert addresses("topic=sports") == ["b@x.test", "e@x.test"]
    assert addresses("use_default=true") == list(people)  # nothing to apply to

    seen: list[str] = []
    cursor = ""
    while True:
        answer = admin.get(f"{NEWS}/contacts?limit=2{cursor}").json
        seen += [c["EmailAddress"] for c in answer["items"]]
        if answer["next_cursor"] is None:
            break
        assert len(answer["items"]) == 2
        cursor = "&cursor=" + quote(answer["next_cursor"], safe="")
    assert seen == list(people)
    # A cursor changed by hand is a place in the list, nothing more: the page starts
    # after it (any address works, as SES's pages do not promise more).
    assert addresses("cursor=" + quote("b@x.test~", safe="")) == [
        "c@x.test", "d@x.test", "e@x.test"]


# -- every bad input gets its answer -------------------------------------------------------


def test_unknown_lists_and_topics_are_not_found(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    missing = (404, "NotFoundException",
               "no contact list 'nope' in the configuration (contact_lists.nope)")
    assert error(admin.get("/api/v1/contact-lists/nope")) == missing
    assert error(admin.get("/api/v1/contact-lists/nope/contacts")) == missing
    assert error(admin.post("/api/v1/contact-lists/nope/contacts",
                            body={"EmailAddress": "a@x.test"})) == missing
    assert error(admin.get(contact_path("a@x.test", "nope"))) == missing
    assert error(admin.put(contact_path("a@x.test", "nope"), body={})) == missing
    assert error(admin.delete(contact_path("a@x.test", "nope"))) == missing
    # A configuration set's own unsubscribes are not a list the API manages.
    assert error(admin.get(contact_path("a@x.test", "configuration-set:transactional")))[:2] == (
        404, "NotFoundException")

    golf = (404, "NotFoundException", "Topic golf does not exist in contact list news (its "
                                      "topics: sports, cycling, daily)")
    assert error(admin.post(f"{NEWS}/contacts", body={
        "EmailAddress": "a@x.test",
        "TopicPreferences": [{"TopicName": "golf", "SubscriptionStatus": "OPT_IN"}]})) == golf
    assert error(admin.get(f"{NEWS}/contacts?topic=golf&status=OPT_IN")) == golf
    assert admin.post(f"{NEWS}/contacts", body={"EmailAddress": "a@x.test"}).status == 201
    assert error(admin.put(contact_path("a@x.test"), body={
        "TopicPreferences": [{"TopicName": "golf", "SubscriptionStatus": "OPT_IN"}]})) == golf
    # The list "theirs" has no topics at all.
    assert error(admin.post("/api/v1/contact-lists/theirs/contacts", body={
        "EmailAddress": "a@x.test",
        "TopicPreferences": [{"TopicName": "sports", "SubscriptionStatus": "OPT_IN"}]})) == (
        404, "NotFoundException", "Topic sports does not exist in contact list theirs (its "
                                  "topics: none)")
    assert error(admin.put(contact_path("nobody@x.test"), body={"UnsubscribeAll": True})) == (
        404, "NotFoundException", "nobody@x.test is not a contact of list 'news'")


def test_a_second_create_already_exists(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    first = admin.post(f"{NEWS}/contacts", body={"EmailAddress": "a@X.test",
                                                 "UnsubscribeAll": True})
    assert first.status == 201
    # The domain in another case, or with the root's dot, is the same contact.
    for spelling in ("a@X.test", "a@x.TEST", "a@x.test."):
        assert error(admin.post(f"{NEWS}/contacts", body={"EmailAddress": spelling})) == (
            409, "AlreadyExistsException", "a@x.test is already a contact of list 'news'")
    # Nothing was changed by the refused creates.
    assert admin.get(contact_path("a@x.test")).json["UnsubscribeAll"] is True


BAD_BODIES: list[tuple[dict[str, Any], int, str]] = [
    ({}, 422, "EmailAddress is required"),
    ({"EmailAddress": "no-at-sign"}, 422,
     "EmailAddress: 'no-at-sign' is not an email address (no @)"),
    ({"EmailAddress": "a b@x.test"}, 422,
     "EmailAddress: 'a b@x.test' contains white space or control characters"),
    ({"EmailAddress": "@x.test"}, 422, "EmailAddress: '@x.test' has an empty local part"),
    ({"EmailAddress": "a@" + "x" * 320}, 422,
     "EmailAddress: address longer than 320 characters (322)"),
    ({"EmailAddress": "a\ud800@x.test"}, 422, "EmailAddress: 'a\\ud800@x.test' is not UTF-8"),
    ({"EmailAddress": 7}, 422, "EmailAddress must be a string"),
    ({"EmailAddress": "a@x.test", "TopicPreferences": [
        {"TopicName": "sports", "SubscriptionStatus": "SUBSCRIBED"}]}, 422,
     "TopicPreferences: 'SUBSCRIBED' is not a subscription status (topic sports): use OPT_IN "
     "or OPT_OUT"),
    ({"EmailAddress": "a@x.test", "TopicPreferences": [
        {"TopicName": "sports", "SubscriptionStatus": "opt_out"}]}, 422,
     "TopicPreferences: 'opt_out' is not a subscription status (topic sports): use OPT_IN or "
     "OPT_OUT"),
    ({"EmailAddress": "a@x.test", "TopicPreferences": [
        {"TopicName": "sports", "SubscriptionStatus": "OPT_IN"},
        {"TopicName": "sports", "SubscriptionStatus": "OPT_OUT"}]}, 422,
     "TopicPreferences: topic sports is given twice"),
    ({"EmailAddress": "a@x.test", "TopicPreferences": [{"TopicName": "sports"}]}, 422,
     'TopicPreferences[0] must be {"TopicName": ..., "SubscriptionStatus": "OPT_IN" | '
     '"OPT_OUT"}'),
    ({"EmailAddress": "a@x.test", "TopicPreferences": ["sports"]}, 422,
     'TopicPreferences[0] must be {"TopicName": ..., "SubscriptionStatus": "OPT_IN" | '
     '"OPT_OUT"}'),
    ({"EmailAddress": "a@x.test", "TopicPreferences": {"sports": "OPT_IN"}}, 422,
     "TopicPreferences must be a list"),
    ({"EmailAddress": "a@x.test", "UnsubscribeAll": "true"}, 422,
     "UnsubscribeAll must be a bool"),
    ({"EmailAddress": "a@x.test", "AttributesData": "Name=John"}, 422,
     "AttributesData: the attributes are not JSON (Expecting value at character 0)"),
    ({"EmailAddress": "a@x.test", "AttributesData": "[\"John\"]"}, 422,
     "AttributesData: the attributes must be a JSON object, not an array"),
    ({"EmailAddress": "a@x.test", "AttributesData": {"Name": "John"}}, 422,
     "AttributesData must be a string"),
    ({"EmailAddress": "a@x.test", "AttributesData": json.dumps({"a": "x" * 4096})}, 422,
     "AttributesData: the attributes are 4105 characters; at most 4096"),
    ({"EmailAddress": "a@x.test", "AttributesData": "{\"a\": NaN}"}, 422,
     "AttributesData: the attributes are not JSON (NaN is not a JSON value)"),
    ({"EmailAddress": "a@x.test", "ContactListName": "theirs"}, 422,
     "unknown field(s): ContactListName; allowed: AttributesData, EmailAddress, "
     "TopicPreferences, UnsubscribeAll"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
def test_a_bad_create_is_a_bad_request_and_creates_nothing(
        relay: RunningRelay, body: dict[str, Any], status: int, message: str) -> None:
    admin = Admin(relay.http_port)
    assert error(admin.post(f"{NEWS}/contacts", body=body)) == (
        status, "BadRequestException", message)
    assert admin.get(f"{NEWS}/contacts").json["items"] == []


def test_the_largest_contact_the_document_allows_fits_in_a_body(relay: RunningRelay) -> None:
    """Every character a 12-byte surrogate pair escape, as json.dumps sends it: the
    longest AttributesData and EmailAddress still fit the API's 64 KiB."""
    attributes = '{"a": "' + "\U0001f600" * 4087 + '"}'
    address = "\U0001f600" * 313 + "@x.test"
    assert (len(attributes), len(address)) == (4096, 320)
    body = {"EmailAddress": address, "AttributesData": attributes, "UnsubscribeAll": True,
            "TopicPreferences": [{"TopicName": t["name"], "SubscriptionStatus": "OPT_OUT"}
                                 for t in TOPICS]}
    assert 50_000 < len(json.dumps(body)) < 64 * 1024
    made = Admin(relay.http_port).post(f"{NEWS}/contacts", body=body)
    assert made.status == 201, made.body
    assert made.json["AttributesData"] == attributes


def test_a_bad_update_changes_nothing(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    made = admin.post(f"{NEWS}/contacts", body={"EmailAddress": "a@x.test",
                                                "AttributesData": "{\"n\": 1}"}).json
    for body, _status, message in BAD_BODIES:
        body = {k: v for k, v in body.items() if k != "EmailAddress"}
        if not body or message.startswith("unknown field"):
            continue
        assert error(admin.put(contact_path("a@x.test"), body=body)) == (
            422, "BadRequestException", message)
    assert error(admin.put(contact_path("a@x.test"), body={"EmailAddress": "b@x.test"})) == (
        422, "BadRequestException", "unknown field(s): EmailAddress; allowed: AttributesData, "
                                    "TopicPreferences, UnsubscribeAll")
    assert admin.get(contact_path("a@x.test")).json == made


@pytest.mark.parametrize(("raw", "headers", "status", "message"), [
    (b"{not json", {"Content-Type": "application/json"}, 400, "the body is not JSON"),
    (b"[]", {"Content-Type": "application/json"}, 422, "the body must be a JSON object"),
    (b"EmailAddress=a@x.test", {"Content-Type": "application/x-www-form-urlencoded"}, 415,
     "send the body as JSON, with Content-Type: application/json"),
])
def test_a_body_that_is_not_a_json_object(relay: RunningRelay, raw: bytes,
                                          headers: dict[str, str], status: int,
                                          message: str) -> None:
    answer = Admin(relay.http_port).post(f"{NEWS}/contacts", raw=raw, headers=headers)
    code = "unsupported_media_type" if status == 415 else "BadRequestException"
    assert error(answer) == (status, code, message)


@pytest.mark.parametrize(("query", "message"), [
    ("status=SUBSCRIBED", "status must be one of OPT_IN, OPT_OUT"),
    ("status=opt_in", "status must be one of OPT_IN, OPT_OUT"),
    ("topic=no%20such%3Btopic", "topic must be a topic name: 1-64 letters, digits, '-' and '_'"),
    ("use_default=yes", "use_default must be one of true, false"),
    ("limit=0", "limit must be a whole number from 1 to 1000"),
    # A cursor no page can end with: tampered, not just moved.
    ("cursor=a%00b%40x.test", "the cursor is not an address a page of contacts ends with (at "
                              "most 320 characters, no control characters); start again "
                              "without one"),
    ("cursor=" + "x" * 321, "the cursor is not an address a page of contacts ends with (at "
                            "most 320 characters, no control characters); start again "
                            "without one"),
])
def test_a_bad_listing_query_is_a_bad_request(relay: RunningRelay, query: str,
                                              message: str) -> None:
    assert error(Admin(relay.http_port).get(f"{NEWS}/contacts?{query}")) == (
        400, "BadRequestException", message)


def test_the_contact_routes_want_the_token(relay: RunningRelay) -> None:
    anonymous = Admin(relay.http_port, token=None)
    for method, path in (("GET", "/api/v1/contact-lists"), ("GET", f"{NEWS}/contacts"),
                         ("POST", f"{NEWS}/contacts"), ("PUT", contact_path("a@x.test")),
                         ("DELETE", contact_path("a@x.test"))):
        answer = anonymous.call(method, path, body={"EmailAddress": "a@x.test"})
        assert answer.status == 401, (method, path)
    store = SQLiteContactStore(relay.config.state_path)
    try:
        assert store.count("news") == 0
    finally:
        store.close()


# -- what the send path does with a change made here ---------------------------------------


def test_a_change_through_the_api_holds_for_the_next_message(relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    cred = relay.credential()
    made = admin.post(f"{NEWS}/contacts", body={
        "EmailAddress": "reader@example.net",
        "TopicPreferences": [{"TopicName": "sports", "SubscriptionStatus": "OPT_OUT"},
                             {"TopicName": "daily", "SubscriptionStatus": "OPT_IN"}]})
    assert made.status == 201
    sports = accepted(relay, cred, ["reader@example.net"], "match report",
                      f"{LIST_HEADER}: news; topic=sports")
    daily = accepted(relay, cred, ["reader@example.net"], "digest",
                     f"{LIST_HEADER}: news; topic=daily")
    cycling = accepted(relay, cred, ["reader@example.net"], "tour",
                       f"{LIST_HEADER}: news; topic=cycling")
    assert states(relay, sports)["reader@example.net"] == (
        "suppressed", "the recipient unsubscribed from topic 'sports' of contact list 'news'")
    [bounce] = records(relay, sports, "Bounce")
    assert (bounce["bounce"]["bounceType"], bounce["bounce"]["bounceSubType"]) == (
        "Permanent", "OnAccountSuppressionList")
    # The OPT_IN beats the topic's default OPT_OUT; a topic not named has its default.
    assert [states(relay, m)["reader@example.net"][0] for m in (daily, cycling)] == [
        "queued", "queued"]

    # Unsubscribed from the whole list: every topic and the list itself are held back;
    # mail that names no list still goes.
    assert admin.put(contact_path("reader@example.net"),
                     body={"UnsubscribeAll": True}).status == 200
    whole = accepted(relay, cred, ["reader@example.net"], "all news", f"{LIST_HEADER}: news")
    assert states(relay, whole)["reader@example.net"] == (
        "suppressed", "the recipient unsubscribed from contact list 'news'")
    reset = accepted(relay, cred, ["reader@example.net"], "reset your password")
    assert states(relay, reset)["reader@example.net"][0] == "queued"

    # Back in, with no preferences: sports follows its default OPT_IN again.
    assert admin.put(contact_path("reader@example.net"), body={
        "UnsubscribeAll": False, "TopicPreferences": []}).status == 200
    back = accepted(relay, cred, ["reader@example.net"], "next match",
                    f"{LIST_HEADER}: news; topic=sports")
    assert states(relay, back)["reader@example.net"][0] == "queued"

    # A change by the operator is not the recipient's: no Subscription event (SES makes
    # one only for the unsubscribe link or header), and nothing on the suppression list.
    records(relay, back, "Send")  # the publisher got this far
    assert [r for r in events(events_path(relay)) if r["eventType"] == "Subscription"] == []
    not_suppressed(relay, "reader@example.net")


def test_one_accounts_list_does_not_touch_anothers(relay: RunningRelay) -> None:
    """The same person on acme's list and on other's: leaving one list through the API
    holds back that list's mail only, whichever account asks."""
    admin = Admin(relay.http_port)
    for contact_list in ("news", "theirs"):
        assert admin.post(f"/api/v1/contact-lists/{contact_list}/contacts",
                          body={"EmailAddress": "both@example.net"}).status == 201
    assert admin.put(contact_path("both@example.net", "theirs"),
                     body={"UnsubscribeAll": True}).status == 200
    acme = accepted(relay, relay.credential("acme"), ["both@example.net"], "news",
                    f"{LIST_HEADER}: news")
    theirs = accepted_from(relay, "other", "app@other.test", "both@example.net",
                           f"{LIST_HEADER}: theirs")
    assert states(relay, acme)["both@example.net"][0] == "queued"
    assert states(relay, theirs)["both@example.net"] == (
        "suppressed", "the recipient unsubscribed from contact list 'theirs'")
    assert admin.get(contact_path("both@example.net")).json["UnsubscribeAll"] is False
