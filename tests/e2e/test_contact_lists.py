"""Contact lists end to end: a real relay, mail over SMTP with X-SES-LIST-MANAGEMENT-OPTIONS,
its one-click unsubscribe over HTTP, and what later mail does.

An unsubscribe is a subscription change: it stops the topic (or the list, or the
configuration set) it came from and nothing else, so a password reset still arrives;
nothing goes on the account's suppression list. Mail is held in the spool (delivery
mode hold): a recipient the relay will deliver to is "queued", one it holds back is
"suppressed" at once, with its Bounce event.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprelay.policy.contacts import SQLiteContactStore, set_scope
from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool.store import get_message, open_for_cli
from tests.e2e.delivery_world import wait_for
from tests.support import Credential, RunningRelay, events, running, session, spooled

HOST = "links.test"
LIST_HEADER = "X-SES-LIST-MANAGEMENT-OPTIONS"
TOPICS = [
    {"name": "sports", "display_name": "Sports news", "description": "Scores and fixtures.",
     "default_subscription_status": "OPT_IN"},
    {"name": "cycling", "display_name": "Cycling", "default_subscription_status": "OPT_IN"},
    {"name": "daily", "display_name": "Daily digest", "default_subscription_status": "OPT_OUT"},
]


def events_path(relay: RunningRelay) -> Path:
    return relay.config.server.data_dir.parent / "events.ndjson"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    destinations = [{"name": "all", "type": "file", "path": str(tmp_path / "events.ndjson")}]
    with running(
            tmp_path, tracking_domains={HOST: {}},
            contact_lists={
                "news": {"account": "acme", "description": "Example news",
                         "unsubscribe_domain": HOST, "https": False, "topics": TOPICS},
                "theirs": {"account": "other", "unsubscribe_domain": HOST, "https": False}},
            configuration_sets={
                # Without unsubscribe.one_click: a list's link is added all the same.
                "transactional": {"event_destinations": destinations},
                "marketing": {"tracking": {"domain": HOST, "https": False},
                              "unsubscribe": {"one_click": True},
                              "event_destinations": destinations}}) as r:
        yield r


def send(relay: RunningRelay, cred: Credential, rcpts: list[str], subject: str,
         *headers: str) -> tuple[int, str]:
    """(code, message id or reply text) for a message with these extra header lines."""
    data = (f"From: app@example.com\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
            + "".join(f"{h}\r\n" for h in headers)
            + "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
              "Hello. Leave: {{amazonSESUnsubscribeUrl}}\r\n").encode()
    with session(relay, cred) as smtp:
        smtp.mail("app@example.com")
        for rcpt in rcpts:
            smtp.rcpt(rcpt)
        code, reply = smtp.data(data)
    text = reply.decode()
    return code, text.split()[-1] if code == 250 else text


def accepted(relay: RunningRelay, cred: Credential, rcpts: list[str], subject: str,
             *headers: str) -> str:
    code, message_id = send(relay, cred, rcpts, subject, *headers)
    assert code == 250, message_id
    return message_id


def states(relay: RunningRelay, message_id: str) -> dict[str, tuple[str, str | None]]:
    """Recipient -> (state, last reply) as the spool has it."""
    conn = open_for_cli(relay.config.spool_path)
    try:
        stored = get_message(conn, message_id)
        assert stored is not None
        return {r.address: (r.state.value, r.last_reply) for r in stored.recipients}
    finally:
        conn.close()


def state(relay: RunningRelay, message_id: str, rcpt: str = "reader@example.net") -> str:
    return states(relay, message_id)[rcpt][0]


def unsubscribe_url(relay: RunningRelay, message_id: str) -> str:
    [data] = [m["data"] for m in spooled(relay.config) if m["id"] == message_id]
    header = re.search(rb"^List-Unsubscribe: <([^>]+)>\r\n", data, re.MULTILINE)
    assert header is not None, data[:2000]
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in data
    url = header.group(1).decode()
    # The footer placeholder is the same link.
    assert f"Leave: {url}".encode() in data
    assert LIST_HEADER.encode() not in data  # hygiene takes X-SES-* out
    return url


def post_unsubscribe(relay: RunningRelay, url: str) -> int:
    return one_click(relay.http_port, url)


def one_click(port: int, url: str) -> int:
    """POST a one-click unsubscribe URL (RFC 8058) to the relay's HTTP port, as a
    mailbox provider does; the answer's status."""
    prefix = f"http://{HOST}"
    assert url.startswith(prefix + "/u/"), url
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", url[len(prefix):], body=b"List-Unsubscribe=One-Click",
                     headers={"Host": HOST, "User-Agent": "Mozilla/5.0 Firefox/128.0",
                              "Content-Type": "application/x-www-form-urlencoded"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def page(relay: RunningRelay, url: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", relay.http_port, timeout=10)
    try:
        conn.request("GET", url[len(f"http://{HOST}"):], headers={"Host": HOST})
        response = conn.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        conn.close()


def records(relay: RunningRelay, message_id: str, kind: str) -> list[dict[str, Any]]:
    """The message's events of one type, once the publisher wrote them (each record is
    checked against docs/events.schema.json)."""
    path = events_path(relay)
    return wait_for(lambda: [r for r in events(path) if r["mail"]["messageId"] == message_id
                             and r["eventType"] == kind], 15)


def not_suppressed(relay: RunningRelay, address: str) -> None:
    store = SQLiteSuppressionStore(relay.config.state_path)
    try:
        assert store.lookup("acme", [address]) == {}
    finally:
        store.close()


def test_a_topic_unsubscribe_stops_that_topic_and_nothing_else(relay: RunningRelay) -> None:
    cred = relay.credential()
    first = accepted(relay, cred, ["reader@example.net"], "match report",
                     f"{LIST_HEADER}: news; topic=sports")
    assert state(relay, first) == "queued"
    url = unsubscribe_url(relay, first)
    assert "Sports news" in page(relay, url)  # the page names what the button leaves
    assert post_unsubscribe(relay, url) == 200

    [record] = records(relay, first, "Subscription")
    assert record["subscription"]["contactList"] == "news"
    assert record["subscription"]["source"] == "UnsubscribeHeader"
    assert record["subscription"]["oldTopicPreferences"] == {
        "unsubscribeAll": False, "topicSubscriptionStatus": [
            {"topicName": "sports", "subscriptionStatus": "OptIn"},
            {"topicName": "cycling", "subscriptionStatus": "OptIn"},
            {"topicName": "daily", "subscriptionStatus": "OptOut"}]}
    assert record["subscription"]["newTopicPreferences"] == {
        "unsubscribeAll": False, "topicSubscriptionStatus": [
            {"topicName": "sports", "subscriptionStatus": "OptOut"},
            {"topicName": "cycling", "subscriptionStatus": "OptIn"},
            {"topicName": "daily", "subscriptionStatus": "OptOut"}]}
    assert set(record["subscription"]) == {"contactList", "timestamp", "source",
                                           "newTopicPreferences", "oldTopicPreferences"}
    assert record["mail"]["destination"] == ["reader@example.net"]
    # A subscription change, not an account-wide complaint.
    not_suppressed(relay, "reader@example.net")

    # The topic is held back, with a Bounce that says why...
    sports = accepted(relay, cred, ["reader@example.net"], "next match",
                      f"{LIST_HEADER}: news; topic=sports")
    state_now, reply = states(relay, sports)["reader@example.net"]
    assert state_now == "suppressed"
    assert reply == "the recipient unsubscribed from topic 'sports' of contact list 'news'"
    [bounce] = records(relay, sports, "Bounce")
    assert (bounce["bounce"]["bounceType"], bounce["bounce"]["bounceSubType"]) == (
        "Permanent", "OnAccountSuppressionList")
    assert bounce["bounce"]["bouncedRecipients"][0]["diagnosticCode"] == reply
    # ...another topic of the list, the list without a topic, and mail without list
    # options (a password reset, in this set or another) still go out.
    cycling = accepted(relay, cred, ["reader@example.net"], "tour",
                       f"{LIST_HEADER}: news; topic=cycling")
    whole = accepted(relay, cred, ["reader@example.net"], "all news", f"{LIST_HEADER}: news")
    reset = accepted(relay, cred, ["reader@example.net"], "reset your password")
    marketing = accepted(relay, cred, ["reader@example.net"], "offer",
                         "X-SES-CONFIGURATION-SET: marketing")
    assert [state(relay, m) for m in (cycling, whole, reset, marketing)] == ["queued"] * 4


def test_an_opt_out_topic_reaches_only_those_who_opted_in(relay: RunningRelay) -> None:
    cred = relay.credential()
    daily = accepted(relay, cred, ["new@example.net"], "digest",
                     f"{LIST_HEADER}: news; topic=daily")
    # A new contact has no preference: the topic's default OPT_OUT holds it back.
    assert states(relay, daily)["new@example.net"] == (
        "suppressed", "the recipient unsubscribed from topic 'daily' of contact list 'news'")


def test_an_unsubscribe_without_a_topic_leaves_the_whole_list(relay: RunningRelay) -> None:
    cred = relay.credential()
    first = accepted(relay, cred, ["reader@example.net"], "news", f"{LIST_HEADER}: news")
    assert "any of these emails" in page(relay, unsubscribe_url(relay, first))
    assert post_unsubscribe(relay, unsubscribe_url(relay, first)) == 200
    [record] = records(relay, first, "Subscription")
    assert record["subscription"]["contactList"] == "news"
    assert record["subscription"]["oldTopicPreferences"]["unsubscribeAll"] is False
    assert record["subscription"]["newTopicPreferences"]["unsubscribeAll"] is True
    not_suppressed(relay, "reader@example.net")

    held = [accepted(relay, cred, ["reader@example.net"], "more", *header)
            for header in ([f"{LIST_HEADER}: news"], [f"{LIST_HEADER}: news; topic=sports"],
                           [f"{LIST_HEADER}: news; topic=cycling"])]
    for message_id in held:
        assert states(relay, message_id)["reader@example.net"] == (
            "suppressed", "the recipient unsubscribed from contact list 'news'")
    reset = accepted(relay, cred, ["reader@example.net"], "reset your password")
    assert state(relay, reset) == "queued"
    # Unsubscribing again changes nothing, and reports nothing new.
    assert post_unsubscribe(relay, unsubscribe_url(relay, first)) == 200
    later = accepted(relay, cred, ["x@example.net"], "flush")  # a later event to wait for
    records(relay, later, "Send")
    assert len(records(relay, first, "Subscription")) == 1


def test_a_sets_own_unsubscribe_stops_only_that_sets_mail(relay: RunningRelay) -> None:
    cred = relay.credential()
    offer = accepted(relay, cred, ["reader@example.net"], "offer",
                     "X-SES-CONFIGURATION-SET: marketing")
    url = unsubscribe_url(relay, offer)
    assert post_unsubscribe(relay, url) == 200
    [record] = records(relay, offer, "Subscription")
    # The set stands for the list it has none of.
    assert record["subscription"]["contactList"] == "marketing"
    assert record["subscription"]["newTopicPreferences"] == {
        "unsubscribeAll": True, "topicSubscriptionStatus": []}
    assert record["subscription"]["oldTopicPreferences"] == {
        "unsubscribeAll": False, "topicSubscriptionStatus": []}
    not_suppressed(relay, "reader@example.net")
    store = SQLiteContactStore(relay.config.state_path)
    try:
        contact = store.get(set_scope("marketing"), "reader@example.net")
        assert contact is not None and contact.unsubscribe_all
    finally:
        store.close()

    again = accepted(relay, cred, ["reader@example.net"], "another offer",
                     "X-SES-CONFIGURATION-SET: marketing")
    assert states(relay, again)["reader@example.net"] == (
        "suppressed", "the recipient unsubscribed from configuration set 'marketing'")
    # The set's mail to a contact list is held back too: the person left this set.
    listed = accepted(relay, cred, ["reader@example.net"], "set and list",
                      "X-SES-CONFIGURATION-SET: marketing", f"{LIST_HEADER}: news")
    assert state(relay, listed) == "suppressed"
    # Another set's mail, and the list's mail in another set, arrive.
    reset = accepted(relay, cred, ["reader@example.net"], "reset your password")
    news = accepted(relay, cred, ["reader@example.net"], "news", f"{LIST_HEADER}: news")
    assert [state(relay, m) for m in (reset, news)] == ["queued", "queued"]


def test_every_recipient_becomes_a_contact(relay: RunningRelay) -> None:
    cred = relay.credential()
    store = SQLiteContactStore(relay.config.state_path)
    try:
        assert store.get("news", "a@example.net") is None
        message_id = accepted(relay, cred, ["a@example.net", "B@Example.NET"], "two",
                              f"{LIST_HEADER}: news; topic=sports")
        made = {address: store.get("news", address)
                for address in ("a@example.net", "B@example.net")}
        assert all(c is not None and not c.unsubscribe_all and not c.topics
                   for c in made.values()), made
        # Mail without list options makes no contact.
        accepted(relay, cred, ["c@example.net"], "reset your password")
        assert store.get("news", "c@example.net") is None
    finally:
        store.close()
    assert [st for st, _ in states(relay, message_id).values()] == ["queued", "queued"]
    # Two recipients get the same bytes: no link can name one of them (as SES).
    [data] = [m["data"] for m in spooled(relay.config) if m["id"] == message_id]
    assert b"List-Unsubscribe" not in data


@pytest.mark.parametrize(("header", "reply"), [
    (f"{LIST_HEADER}: nosuchlist", "554 5.3.0 Message rejected: Contact list nosuchlist "
                                   "does not exist"),
    # Another account's list is refused in the same words.
    (f"{LIST_HEADER}: theirs", "554 5.3.0 Message rejected: Contact list theirs does not "
                               "exist"),
    (f"{LIST_HEADER}: news; topic=golf", "554 5.3.0 Message rejected: Topic golf does not "
                                         "exist in contact list news"),
    (f"{LIST_HEADER}: news; golf", "554 5.6.0 Message rejected: X-SES-LIST-MANAGEMENT-"
                                   "OPTIONS must be '<list>; topic=<topic>' (topic optional): "
                                   "unknown parameter 'golf'"),
])
def test_an_unknown_or_foreign_list_is_refused(relay: RunningRelay, header: str,
                                               reply: str) -> None:
    cred = relay.credential()
    code, text = send(relay, cred, ["reader@example.net"], "refused", header)
    assert f"{code} {text}" == reply
    assert spooled(relay.config) == []
    store = SQLiteContactStore(relay.config.state_path)
    try:
        assert store.get("news", "reader@example.net") is None
    finally:
        store.close()


def test_the_event_matches_the_guides_example(relay: RunningRelay) -> None:
    """SES's guide's Subscription record (event-publishing-retrieving-firehose-examples):
    the same keys at every level, the same spelling of the values."""
    cred = relay.credential()
    first = accepted(relay, cred, ["reader@example.net"], "news", f"{LIST_HEADER}: news")
    assert post_unsubscribe(relay, unsubscribe_url(relay, first)) == 200
    [record] = records(relay, first, "Subscription")
    guide = json.loads("""{
      "contactList": "ContactListName",
      "timestamp": "2022-01-12T01:00:17.910Z",
      "source": "UnsubscribeHeader",
      "newTopicPreferences": {"unsubscribeAll": true, "topicSubscriptionStatus": [
        {"topicName": "ExampleTopicName", "subscriptionStatus": "OptOut"}]},
      "oldTopicPreferences": {"unsubscribeAll": false, "topicSubscriptionStatus": [
        {"topicName": "ExampleTopicName", "subscriptionStatus": "OptOut"}]}}""")
    ours = record["subscription"]
    assert set(ours) == set(guide)
    for side in ("newTopicPreferences", "oldTopicPreferences"):
        assert set(ours[side]) == set(guide[side])
        for status in ours[side]["topicSubscriptionStatus"]:
            assert set(status) == {"topicName", "subscriptionStatus"}
            assert status["subscriptionStatus"] in ("OptIn", "OptOut")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", ours["timestamp"])
    assert record["eventType"] == "Subscription"
