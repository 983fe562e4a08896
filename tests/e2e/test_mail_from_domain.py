"""Custom MAIL FROM domains and their MX record (issue 15): the relay sends with VERP
senders at the domain only while DNS shows its MX record; without it, an identity's
behavior_on_mx_failure decides: use_default sends with the sender's own address,
reject refuses the mail with SES's MailFromDomainNotVerified. Real DNS, a real relay
and a real SMTP sink."""

from __future__ import annotations

import asyncio
import smtplib
from typing import Any

import pytest

from tests.e2e.delivery_world import World, wait_for
from tests.support import client_context, message

pytestmark = pytest.mark.peer

DOMAIN = "bounce.example.com"


def identities(behavior: str) -> dict[str, Any]:
    return {"identities": {"example.com": {"mail_from_domain": DOMAIN,
                                           "behavior_on_mx_failure": behavior}}}


def envelope_senders(mx: Any) -> list[str]:
    return [t.mail_from for t in mx.received]


def test_with_its_mx_record_the_domain_carries_the_verp_senders(net: World) -> None:
    mx = net.smtp_host("dest.test")
    net.mx(DOMAIN, (10, "feedback.relay.test", "127.0.0.1"))
    net.start(top=identities("reject"))
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    [sender] = envelope_senders(mx)
    assert sender.endswith("@" + DOMAIN) and sender.startswith("b-")


def test_without_it_use_default_sends_with_the_senders_own_address(net: World) -> None:
    mx = net.smtp_host("dest.test")
    net.start(top=identities("use_default"))
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    assert envelope_senders(mx) == ["app@example.com"]


def test_without_it_reject_refuses_the_mail_at_submission(net: World) -> None:
    mx = net.smtp_host("dest.test")
    relay = net.start(top=identities("reject"))
    cred = relay.credential("acme")
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=10) as smtp:
        smtp.starttls(context=client_context())
        smtp.login(cred.username, cred.password)
        assert smtp.mail("app@example.com") == (
            554, b"5.7.1 Message rejected: MailFromDomainNotVerified: the MAIL FROM domain "
                 b"bounce.example.com has no MX record")
        smtp.rset()
        # Another identity's mail is not concerned.
        assert smtp.sendmail("news@example.org", ["a@dest.test"],
                             message(sender="news@example.org")) == {}
    wait_for(lambda: mx.received)
    assert envelope_senders(mx) == ["news@example.org"]


def test_an_mx_record_published_later_is_picked_up(net: World) -> None:
    mx = net.smtp_host("dest.test")
    relay = net.start(top=identities("use_default"))
    assert relay.relay.mail_from is not None
    assert not relay.relay.mail_from.verified(DOMAIN)
    net.mx(DOMAIN, (10, "feedback.relay.test", "127.0.0.1"))
    checks = relay.relay.mail_from

    async def next_round() -> None:  # what the background round does every few minutes
        checks._resolver.clear_cache()  # the negative answer's TTL, passed
        await checks.check_all()

    asyncio.run_coroutine_threadsafe(next_round(), relay._loop).result(10)
    assert checks.verified(DOMAIN)
    message_id = net.submit(["a@dest.test"])
    assert net.wait_final(message_id) == {"a@dest.test": "delivered"}
    wait_for(lambda: mx.received)
    assert envelope_senders(mx)[0].endswith("@" + DOMAIN)
