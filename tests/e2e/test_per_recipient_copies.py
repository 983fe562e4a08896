"""Messages to several recipients whose content names each one go out as one copy each.

A tracked set with one-click unsubscribe (and a contact list message) to three
recipients: the MX host gets three transactions, one recipient each, every copy with
its own List-Unsubscribe and tracking tokens naming that recipient, and OpenDKIM
verifies each copy's own signatures. The unsubscribe link of one copy unsubscribes
that person only. A set that changes nothing still sends one body to all.
"""

from __future__ import annotations

import email
import email.policy
import http.client
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.transform import tokens
from tests.dkimpeers import Key, identities, opendkim, ours
from tests.dnsserver import TestDNSServer
from tests.e2e.delivery_world import World, wait_for, world
from tests.sinks import Received, SinkFactory

pytestmark = pytest.mark.peer

LINKS = "links.example.com"
RECIPIENTS = ["ann@dest.test", "bob@dest.test", "cat@dest.test"]
_TOKEN = re.compile(rf"http://{re.escape(LINKS)}/([cou])/([A-Za-z0-9_-]+)")


def newsletter(headers: str) -> bytes:
    return ("From: News <news@example.com>\r\nTo: list@example.com\r\nSubject: weekly\r\n"
            f"{headers}MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            '<html><body><p><a href="https://shop.example/sale?id=7">Sale</a></p>'
            '<p><a href="{{unsubscribe_url}}">Leave</a></p></body></html>\r\n').encode()


@pytest.fixture
def tracked(tmp_path: Path, dns: TestDNSServer, sinks: SinkFactory,
            keys: dict[str, Key]) -> Iterator[World]:
    with world(tmp_path, dns, sinks) as w:
        w.start(top={
            "identities": identities(keys),
            "tracking_domains": {LINKS: {}},
            "server": {"hostname": "relay.test", "data_dir": str(tmp_path / "var"),
                       "transform_workers": 1},
            "contact_lists": {"news": {"account": "acme", "unsubscribe_domain": LINKS,
                                       "https": False}},
            "configuration_sets": {
                "transactional": {},
                "marketing": {"tracking": {"open": True, "click": True, "domain": LINKS,
                                           "https": False},
                              "unsubscribe": {"one_click": True}}}})
        yield w


def unsubscribe_token(copy: bytes) -> str:
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    [value] = parsed.get_all("List-Unsubscribe")
    match = re.fullmatch(rf"<http://{re.escape(LINKS)}/u/([A-Za-z0-9_-]+)>", str(value))
    assert match, value
    return match.group(1)


def by_recipient(transactions: list[Received]) -> dict[str, bytes]:
    assert all(len(t.rcpt_tos) == 1 for t in transactions), \
        [t.rcpt_tos for t in transactions]
    return {t.rcpt_tos[0]: t.data for t in transactions}


def post_unsubscribe(w: World, token: str) -> int:
    assert w.relay is not None
    conn = http.client.HTTPConnection("127.0.0.1", w.relay.http_port, timeout=10)
    conn.request("POST", f"/u/{token}", body=b"List-Unsubscribe=One-Click", headers={
        "Host": LINKS, "Content-Type": "application/x-www-form-urlencoded"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_each_recipient_gets_a_signed_copy_with_its_own_tokens(
        tracked: World, dns: TestDNSServer, tmp_path: Path) -> None:
    mx = tracked.smtp_host("dest.test")
    message_id = tracked.submit(RECIPIENTS, sender="news@example.com",
                                data=newsletter("X-SES-CONFIGURATION-SET: marketing\r\n"))
    assert tracked.wait_final(message_id) == dict.fromkeys(RECIPIENTS, "delivered")
    copies = by_recipient(mx.received)
    assert sorted(copies) == RECIPIENTS
    assert tracked.relay is not None
    ring = tokens.KeyRing.load(tracked.relay.config.tracking_keys_path)
    seen: set[str] = set()
    for index, rcpt in enumerate(RECIPIENTS):
        copy = copies[rcpt]
        found = [(kind, tokens.decode(token, ring)) for kind, token in
                 _TOKEN.findall(copy.decode())]
        # The click, the pixel, the {{unsubscribe_url}} in the body and the header's URL.
        assert sorted(kind for kind, _ in found) == ["c", "o", "u", "u"], found
        assert {(p.message_id, p.recipient) for _, p in found} == {(message_id, index)}
        assert b"{{unsubscribe_url}}" not in copy
        seen.add(unsubscribe_token(copy))
        assert ours(opendkim(copy, dns, tmp_path / f"od{index}")) == {
            "rsa-sha256": "pass", "ed25519-sha256": "pass"}
    assert len(seen) == 3
    # The spool keeps one message, as submitted.
    [stored] = [m for m in tracked.messages() if m.message_id == message_id]
    assert stored.attrs.copies is not None


def test_one_copys_unsubscribe_link_unsubscribes_that_recipient_only(
        tracked: World) -> None:
    mx = tracked.smtp_host("dest.test")
    data = newsletter("X-SES-CONFIGURATION-SET: marketing\r\n")
    first = tracked.submit(RECIPIENTS, sender="news@example.com", data=data)
    tracked.wait_final(first)
    assert post_unsubscribe(tracked, unsubscribe_token(by_recipient(mx.received)[
        "bob@dest.test"])) == 200
    second = tracked.submit(RECIPIENTS, sender="news@example.com", data=data)
    assert tracked.wait_final(second) == {"ann@dest.test": "delivered",
                                          "bob@dest.test": "suppressed",
                                          "cat@dest.test": "delivered"}


def test_a_contact_list_message_gives_each_copy_its_list_link(tracked: World) -> None:
    mx = tracked.smtp_host("dest.test")
    assert tracked.relay is not None
    ring = tokens.KeyRing.load(tracked.relay.config.tracking_keys_path)
    message_id = tracked.submit(RECIPIENTS[:2], sender="news@example.com", data=newsletter(
        "X-SES-LIST-MANAGEMENT-OPTIONS: news\r\n"))
    tracked.wait_final(message_id)
    copies = by_recipient(mx.received)
    for index, rcpt in enumerate(RECIPIENTS[:2]):
        payload = tokens.decode(unsubscribe_token(copies[rcpt]), ring)
        assert isinstance(payload, tokens.UnsubscribeToken)
        assert (payload.recipient, payload.contact_list) == (index, "news")


def test_a_set_that_changes_nothing_sends_one_body_to_all(tracked: World) -> None:
    mx = tracked.smtp_host("dest.test")
    message_id = tracked.submit(RECIPIENTS, sender="news@example.com",
                                data=newsletter(""))
    tracked.wait_final(message_id)
    [txn] = wait_for(lambda: mx.received)
    assert txn.rcpt_tos == tuple(RECIPIENTS)
    assert b"{{unsubscribe_url}}" in txn.data  # the sender's business, left alone
    assert [m.attrs.copies for m in tracked.messages() if m.message_id == message_id] \
        == [None]
