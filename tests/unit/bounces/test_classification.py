"""Bounce classification (smtprelay.bounces.classification): the rule table against real
provider replies (tests/unit/provider_replies.py), SES's bounce types, operator rules."""

from __future__ import annotations

import re

import pytest

from smtprelay.bounces.classification import (
    DEFAULT_RULES,
    SES_BOUNCE_TYPES,
    Rule,
    classify,
    rules_from_config,
)
from smtprelay.spool.store import suppressed_diagnostic, unsubscribed_reason
from tests.unit.provider_replies import (
    GMAIL_ATTACHMENT,
    GMAIL_NO_USER,
    GMAIL_OVER_QUOTA,
    GMAIL_RATE,
    GMAIL_UNAUTHENTICATED,
    GMAIL_UNSOLICITED,
    OUTLOOK_BANNED_IP,
    OUTLOOK_BLOCK_LIST,
    OUTLOOK_FULL,
    OUTLOOK_NOT_FOUND,
    OUTLOOK_UNAVAILABLE,
    YAHOO_DEFERRED,
    YAHOO_NO_ACCOUNT,
)


def _code(reply: str) -> int:
    return int(reply[:3])


@pytest.mark.parametrize(("reply", "expected"), [
    (GMAIL_NO_USER, ("Permanent", "NoEmail")),
    # SES: mailbox full is Transient even from a final 5xx (the address is good).
    (GMAIL_OVER_QUOTA, ("Transient", "MailboxFull")),
    (GMAIL_UNSOLICITED, ("Transient", "ContentRejected")),
    (GMAIL_RATE, ("Transient", "General")),
    (GMAIL_ATTACHMENT, ("Transient", "AttachmentRejected")),
    (GMAIL_UNAUTHENTICATED, ("Transient", "General")),
    (OUTLOOK_UNAVAILABLE, ("Permanent", "NoEmail")),
    # Aimed at our IP, not the address: not a reason to suppress the recipient.
    (OUTLOOK_BLOCK_LIST, ("Transient", "General")),
    (OUTLOOK_FULL, ("Transient", "MailboxFull")),
    (OUTLOOK_NOT_FOUND, ("Permanent", "NoEmail")),
    (OUTLOOK_BANNED_IP, ("Transient", "General")),
    (YAHOO_NO_ACCOUNT, ("Permanent", "NoEmail")),
    (YAHOO_DEFERRED, ("Transient", "General")),
    ("550 5.1.1 <x@example.com>: Recipient address rejected: User unknown in virtual "
     "mailbox table", ("Permanent", "NoEmail")),
    ("550 Recipient address rejected: no such user here", ("Permanent", "NoEmail")),
    ("550 user unknown", ("Permanent", "NoEmail")),
    ("550 No such user (x@example.com)", ("Permanent", "NoEmail")),
    ("550 Requested action not taken: mailbox unavailable", ("Permanent", "NoEmail")),
    # Postfix policy rejection of a recipient: 5.7.1, not "the address doesn't exist".
    ("554 5.7.1 <x@example.com>: Recipient address rejected: Access denied",
     ("Permanent", "General")),
    ("554 5.7.1 <x@example.com>: Relay access denied", ("Permanent", "General")),
    ("552 5.3.4 Message size exceeds fixed limit", ("Transient", "MessageTooLarge")),
    ("552 Message size exceeds maximum permitted", ("Transient", "MessageTooLarge")),
    ("552 Requested mail action aborted: exceeded storage allocation",
     ("Transient", "MailboxFull")),
    ("452 4.3.4 Message too big for system", ("Transient", "MessageTooLarge")),
    ("450 4.2.2 Mailbox full, try again later", ("Transient", "MailboxFull")),
    ("554 5.7.1 Message rejected: spam content detected", ("Transient", "ContentRejected")),
    ("451 4.7.1 Message rejected: suspected spam content", ("Transient", "ContentRejected")),
    ("554 5.6.1 Prohibited file type .exe in attachment", ("Transient", "AttachmentRejected")),
    ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
     "zen.spamhaus.org", ("Transient", "General")),
    ("550 5.2.1 The email account that you tried to reach is disabled",
     ("Permanent", "General")),
    ("451 4.3.0 Temporary local problem", ("Transient", "General")),
    # Yahoo's and qmail's "554: delivery error: dd ..." (a colon after the code).
    ("554: delivery error: dd This user doesn't have a yahoo.com account "
     "(x@yahoo.com) [0] - mta1234.mail.gq1.yahoo.com", ("Permanent", "NoEmail")),
    # A user-unknown wording in a temporary reply stays temporary.
    ("450 4.1.1 <x@example.com>: Recipient address rejected: User unknown",
     ("Transient", "General")),
])
def test_provider_replies(reply: str, expected: tuple[str, str]) -> None:
    assert classify(_code(reply), "", reply) == expected


@pytest.mark.parametrize(("code", "status", "diagnostic", "expected"), [
    # The guide's own example: status 5.0.0, "smtp; 550 user unknown" -> Permanent.
    (None, "5.0.0", "smtp; 550 user unknown", ("Permanent", "NoEmail")),
    (None, "5.0.0", "smtp; 550 go away", ("Permanent", "General")),
    # No status and "554:" (Yahoo, qmail): the code is still read from the text.
    (None, "", "smtp; 554: delivery error: dd Sorry your message to x@yahoo.com cannot "
     "be delivered. This mailbox is disabled (554.30)", ("Permanent", "General")),
    (None, "5.1.2", "X-Postfix; Host or domain name not found. Name service error "
     "for name=nowhere.invalid type=MX: Host not found", ("Permanent", "NoEmail")),
    (None, "5.4.4", "X-Postfix; Host or domain name not found", ("Permanent", "NoEmail")),
    (None, "5.1.10", "null MX (RFC 7505): the domain accepts no mail",
     ("Permanent", "NoEmail")),
    (550, "5.1.1", suppressed_diagnostic("BOUNCE"),
     ("Permanent", "OnAccountSuppressionList")),
    (550, "5.1.1", suppressed_diagnostic(unsubscribed_reason("contact list 'news'")),
     ("Permanent", "OnAccountSuppressionList")),
    (None, "5.1.1", "Amazon SES has suppressed sending to this address because it has "
     "a recent history of bouncing as an invalid address.", ("Permanent", "Suppressed")),
    (None, "4.4.7", "delivery time expired after 5 days; last error: connection refused",
     ("Transient", "General")),
    (None, "", "", ("Undetermined", "Undetermined")),
    # A generic Status above a specific reply (Exim's DSNs): the reply's code decides.
    (None, "5.0.0", "smtp; 552 5.2.2 Mailbox quota usage exceeded",
     ("Transient", "MailboxFull")),
    (None, "5.0.0", "smtp; 550 5.7.26 unauthenticated", ("Transient", "General")),
    # ... but not one of another class.
    (None, "5.0.0", "smtp; 450 4.1.1 user unknown", ("Permanent", "NoEmail")),
    (None, "", "the remote end said something odd", ("Undetermined", "Undetermined")),
    # The code alone gives the class; the enhanced code is found in the text.
    (550, "", "", ("Permanent", "General")),
    (None, "", "smtp; 552-5.2.2 mailbox full", ("Transient", "MailboxFull")),
    # An IPv4 address must not pass for an enhanced status code.
    (None, "", "rejected by [5.1.1.7]", ("Undetermined", "Undetermined")),
])
def test_ses_types(code: int | None, status: str, diagnostic: str,
                   expected: tuple[str, str]) -> None:
    assert classify(code, status, diagnostic) == expected


def test_defaults_only_produce_ses_types() -> None:
    assert {(r.bounce_type, r.bounce_subtype) for r in DEFAULT_RULES} <= SES_BOUNCE_TYPES
    assert DEFAULT_RULES[-1] == Rule("Undetermined", "Undetermined")


def test_operator_rules_come_first() -> None:
    custom = rules_from_config([
        {"bounce_type": "Permanent", "bounce_subtype": "NoEmail",
         "text": r"mailbox (has been )?closed"},
        {"bounce_type": "Transient", "bounce_subtype": "General",
         "code": r"^550$", "status": r"^5\.1\.1$", "text": "greylisted"},
    ])
    rules = custom + DEFAULT_RULES
    assert classify(550, "5.2.1", "550 5.2.1 Mailbox has been closed", rules) == \
        ("Permanent", "NoEmail")
    assert classify(550, "5.2.1", "550 5.2.1 Mailbox has been closed") == \
        ("Permanent", "General")
    assert classify(550, "5.1.1", "550 5.1.1 greylisted, odd server", rules) == \
        ("Transient", "General")
    # All of a rule's patterns must match: another code falls through to the defaults.
    assert classify(551, "5.1.1", "551 5.1.1 greylisted", rules) == ("Permanent", "NoEmail")
    # Text rules are case-insensitive.
    assert classify(550, "", "MAILBOX CLOSED", rules) == ("Permanent", "NoEmail")


@pytest.mark.parametrize(("items", "message"), [
    ([{"bounce_type": "Permanent", "bounce_subtype": "NoEmail", "text": "ok"},
      {"bounce_type": "Permanent", "bounce_subtype": "NoEmail", "status": "5.1.(1"}],
     "bounce rule 1: bad regex"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "General", "text": "[unclosed"}],
     "bounce rule 0: bad regex"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "MessageTooLarge", "code": "552"}],
     "bounce rule 0: Permanent/MessageTooLarge is not an SES bounce type"),
    ([{"bounce_type": "Permanant", "bounce_subtype": "General", "code": "5"}],
     "bounce rule 0: Permanant/General"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "General"}],
     "bounce rule 0: needs at least one"),
    ([{"bounce_type": "Permanent", "bounce_subtype": "General", "regex": "x"}],
     "bounce rule 0: unknown keys ['regex']"),
])
def test_bad_operator_rules(items: list[dict[str, str]], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        rules_from_config(items)
