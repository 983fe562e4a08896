"""The List-Unsubscribe mailto URI end to end (issue 15): mail to it unsubscribes.

A relay delivers to an aiosmtpd sink; the test reads the delivered message's
``<mailto:u-TAG@DOMAIN?subject=unsubscribe-TOKEN>``, sends a mail to that address to
the relay's feedback listener (the MX of DOMAIN) as a mail program would, and checks
what the one-click POST would have done: the Subscription event, and the next message
of that set (or list topic) to the person held back with the reason. A forged address
is refused at RCPT, and a replayed mail changes nothing more.
"""

from __future__ import annotations

import re
import smtplib
import urllib.parse
from pathlib import Path
from typing import Any

from smtprelay.spool.store import get_message, open_for_cli
from tests.e2e.delivery_world import World, wait_for
from tests.e2e.test_feedback_loop import FBL, MAIL_FROM_DOMAIN, drained, mx
from tests.support import RunningRelay, events

HOST = "links.test"
MAILTO_DOMAIN = "unsub.example.com"
READER = "reader@dest.test"
LIST_HEADER = "X-SES-LIST-MANAGEMENT-OPTIONS"


def start(net: World, tmp_path: Path) -> RunningRelay:
    destinations = [{"name": "archive", "type": "file",
                     "path": str(tmp_path / "events.ndjson")}]
    net.mx(MAIL_FROM_DOMAIN, (10, "feedback.relay.test", "127.0.0.1"))
    return net.start(top={
        "listeners": [
            {"name": "submission", "address": "127.0.0.1", "port": 0, "tls": "starttls"},
            {"name": "submissions", "address": "127.0.0.1", "port": 0, "tls": "implicit"},
            {"name": "feedback", "address": "127.0.0.1", "port": 0, "tls": "starttls",
             "role": "feedback"}],
        "identities": {"example.com": {"mail_from_domain": MAIL_FROM_DOMAIN}},
        "feedback": {"addresses": [FBL]},
        "tracking_domains": {HOST: {}},
        "contact_lists": {"news": {
            "account": "acme", "unsubscribe_domain": HOST, "https": False, "mailto": True,
            "topics": [{"name": "sports", "display_name": "Sports",
                        "default_subscription_status": "OPT_IN"}]}},
        "configuration_sets": {"transactional": {
            "tracking": {"domain": HOST, "https": False},
            "unsubscribe": {"one_click": True, "mailto": MAILTO_DOMAIN},
            "event_destinations": destinations}}})


def text(subject: str, *headers: str) -> bytes:
    return (f"From: app@example.com\r\nTo: {READER}\r\nSubject: {subject}\r\n"
            + "".join(f"{h}\r\n" for h in headers)
            + "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nHello.\r\n").encode()


def mailto_of(sink: Any, subject: str) -> tuple[str, str]:
    """The address and subject of the mailto URI in the delivered message."""
    [data] = [t.data for t in sink.received if f"Subject: {subject}".encode() in t.data]
    found = re.search(rb"<mailto:([^?>]+)\?subject=([^>]+)>", data)
    assert found is not None, data[:1500]
    return found.group(1).decode(), urllib.parse.unquote(found.group(2).decode())


def mail_to(relay: RunningRelay, address: str, subject: str) -> tuple[int, bytes]:
    """What a mail program sends for the URI: from the person, to the address."""
    with smtplib.SMTP("127.0.0.1", relay.port("feedback"), timeout=10) as smtp:
        smtp.ehlo("mx.dest.test")
        smtp.mail(READER)
        code, reply = smtp.rcpt(address)
        if code != 250:
            return code, reply
        return smtp.data(f"From: {READER}\r\nTo: {address}\r\nSubject: {subject}\r\n"
                         "\r\nThis message was sent to unsubscribe.\r\n".encode())


def subscriptions(tmp_path: Path, message_id: str) -> list[dict[str, Any]]:
    return [r for r in events(tmp_path / "events.ndjson")
            if r["mail"]["messageId"] == message_id and r["eventType"] == "Subscription"]


def held_back(net: World, message_id: str) -> str | None:
    """The reason the reader's copy was held back, once it was."""
    assert net.relay is not None
    assert net.wait_final(message_id) == {READER: "suppressed"}
    conn = open_for_cli(net.relay.config.spool_path)
    try:
        stored = get_message(conn, message_id)
        assert stored is not None
        return stored.recipients[0].last_reply
    finally:
        conn.close()


def test_mail_to_a_sets_mailto_address_unsubscribes_as_the_one_click_post_does(
        net: World, tmp_path: Path) -> None:
    sink = mx(net)
    relay = start(net, tmp_path)
    first = net.submit([READER], data=text("first offer"))
    assert net.wait_final(first) == {READER: "delivered"}
    address, subject = mailto_of(sink, "first offer")
    local, _, domain = address.partition("@")
    assert domain == MAILTO_DOMAIN and local.startswith("u-") and len(local) <= 64
    assert subject.startswith("unsubscribe-")

    # A forged or altered address is no mailbox here.
    altered = ("u-" + ("b" if local[2] == "a" else "a") + local[3:]) + "@" + domain
    assert mail_to(relay, altered, subject) == (
        550, b"5.1.1 Recipient address rejected: not a feedback address of this server")

    # The address alone says who: a mail program that drops the subject still works.
    # The address is case-blind, as MTAs may change it.
    assert mail_to(relay, address.upper(), "unsubscribe")[0] == 250
    [record] = wait_for(lambda: subscriptions(tmp_path, first))
    assert record["subscription"]["contactList"] == "transactional"
    assert record["subscription"]["source"] == "UnsubscribeHeader"
    assert record["subscription"]["newTopicPreferences"]["unsubscribeAll"] is True
    assert record["mail"]["destination"] == [READER]

    # A replay changes nothing and publishes nothing more.
    assert mail_to(relay, address, subject)[0] == 250
    assert wait_for(lambda: drained(relay))
    inbox = relay.relay.feedback_inbox
    assert inbox is not None and inbox.count("unmatched") == 0

    second = net.submit([READER], data=text("second offer"))
    assert held_back(net, second) == ("the recipient unsubscribed from configuration set "
                                         "'transactional'")
    assert len(subscriptions(tmp_path, first)) == 1


def test_mail_to_a_lists_mailto_address_leaves_the_topic(
        net: World, tmp_path: Path) -> None:
    sink = mx(net)
    relay = start(net, tmp_path)
    first = net.submit([READER], data=text("match report", f"{LIST_HEADER}: news; topic=sports"))
    assert net.wait_final(first) == {READER: "delivered"}
    address, subject = mailto_of(sink, "match report")
    local, _, domain = address.partition("@")
    assert domain == HOST and local.startswith("u-") and len(local) <= 64

    # Which list and topic is in the token of the subject: without it, nothing
    # changes and the mail is kept as unmatched, with the reason.
    assert mail_to(relay, address, "unsubscribe")[0] == 250
    assert wait_for(lambda: drained(relay))
    inbox = relay.relay.feedback_inbox
    assert inbox is not None and inbox.count("unmatched") == 1
    # A reply's "Re: " in front of the subject does not matter.
    assert mail_to(relay, address, "Re: " + subject)[0] == 250
    [record] = wait_for(lambda: subscriptions(tmp_path, first))
    assert record["subscription"]["contactList"] == "news"
    assert record["subscription"]["newTopicPreferences"]["topicSubscriptionStatus"] == [
        {"topicName": "sports", "subscriptionStatus": "OptOut"}]

    sports = net.submit([READER], data=text("next match", f"{LIST_HEADER}: news; topic=sports"))
    assert held_back(net, sports) == ("the recipient unsubscribed from topic 'sports' of "
                                         "contact list 'news'")
    # The set's own mail still goes: a topic unsubscribe is that topic's.
    other = net.submit([READER], data=text("receipt"))
    assert net.wait_final(other) == {READER: "delivered"}
    assert len(subscriptions(tmp_path, first)) == 1
