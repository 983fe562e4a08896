"""Backoff (next_retry) and the SES DeliveryDelay type (delay_type) of a temporary failure."""

from __future__ import annotations

import random

import pytest

from smtprelay.config import RetryConfig
from smtprelay.delivery.model import RecipientResult, Verdict
from smtprelay.delivery.retry import JITTER, delay_type, next_retry

NOW = 1_700_000_000.0
FAR = NOW + 10 * 86400.0
RETRY = RetryConfig(first=60.0, max_interval=3600.0, max_lifetime=5 * 86400.0)


def deferred(code: int | None = 451, status: str = "4.3.0", text: str = "try later",
             retry_after: float | None = None) -> RecipientResult:
    diagnostic = f"smtp; {code} {status} {text}" if code is not None else text
    return RecipientResult(recipient="r@example.net", verdict=Verdict.DEFERRED, code=code,
                           status=status, diagnostic=diagnostic,
                           remote_mta="mx.example.net [192.0.2.1]", retry_after=retry_after)


def waits(attempts: int, *, seeds: range = range(200), retry: RetryConfig = RETRY,
          result: RecipientResult | None = None, expires_at: float = FAR) -> list[float]:
    return [next_retry(attempts, result or deferred(), retry, now=NOW, expires_at=expires_at,
                       rng=random.Random(seed)) - NOW for seed in seeds]


# ------------------------------------------------------------------ next_retry

@pytest.mark.parametrize(("attempts", "base"), [
    (1, 60.0), (2, 120.0), (3, 240.0), (4, 480.0), (5, 960.0), (6, 1920.0)])
def test_backoff_doubles_from_first_within_jitter(attempts: int, base: float) -> None:
    got = waits(attempts)
    assert all(base * (1 - JITTER) <= w <= base * (1 + JITTER) for w in got), (min(got),
                                                                              max(got))
    # The jitter is real and spread over both sides, not a constant factor.
    assert min(got) < base * 0.9
    assert max(got) > base * 1.1


def test_jitter_is_twenty_percent() -> None:
    assert JITTER == 0.2


@pytest.mark.parametrize("attempts", [7, 8, 20, 1000])
def test_backoff_is_capped_at_max_interval_before_jitter(attempts: int) -> None:
    got = waits(attempts)
    assert all(3600 * 0.8 <= w <= 3600 * 1.2 for w in got)
    assert max(got) > 3600 * 1.1  # the cap is applied before the jitter, not after


def test_attempts_zero_is_treated_as_the_first() -> None:
    assert waits(0, seeds=range(5)) == waits(1, seeds=range(5))


def test_same_rng_seed_same_time() -> None:
    a = next_retry(3, deferred(), RETRY, now=NOW, expires_at=FAR, rng=random.Random(42))
    b = next_retry(3, deferred(), RETRY, now=NOW, expires_at=FAR, rng=random.Random(42))
    assert a == b


def test_first_and_max_interval_come_from_the_config() -> None:
    retry = RetryConfig(first=10.0, max_interval=30.0, max_lifetime=3600.0)
    first = waits(1, retry=retry)
    assert all(8 <= w <= 12 for w in first)
    capped = waits(4, retry=retry)  # 80 without the cap
    assert all(24 <= w <= 36 for w in capped)


def test_retry_hint_replaces_the_backoff_without_jitter() -> None:
    hinted = deferred(text="greylisted, try again in 5 minutes", retry_after=300.0)
    # Early attempt: the hint is longer than the backoff.
    assert waits(1, result=hinted, seeds=range(20)) == [300.0] * 20
    # Late attempt: the hint is what the remote asked for (retry.py: it replaces).
    assert waits(6, result=hinted, seeds=range(20)) == [300.0] * 20


def test_retry_hint_is_capped_at_max_interval() -> None:
    hinted = deferred(text="try again in 5 hours", retry_after=5 * 3600.0)
    assert waits(1, result=hinted, seeds=range(5)) == [3600.0] * 5


def test_never_scheduled_past_the_expiry() -> None:
    expires_at = NOW + 100.0
    assert waits(5, expires_at=expires_at) == [100.0] * 200
    hinted = deferred(retry_after=3000.0)
    assert waits(1, result=hinted, expires_at=expires_at, seeds=range(3)) == [100.0] * 3
    # Already expired: the attempt is due at the deadline itself, not later.
    past = next_retry(1, deferred(), RETRY, now=NOW, expires_at=NOW - 5,
                      rng=random.Random(1))
    assert past == NOW - 5


def test_before_the_expiry_the_backoff_is_untouched() -> None:
    got = waits(1, expires_at=NOW + 73.0)  # 60 +- 12 fits
    assert all(48 <= w <= 72 for w in got)


# ------------------------------------------------------------------ delay_type

@pytest.mark.parametrize(("result", "expected"), [
    # Mailbox full: by status or by wording.
    (deferred(452, "4.2.2", "Mailbox full"), "MailboxFull"),
    (deferred(452, "4.2.2", "user busy"), "MailboxFull"),
    (deferred(450, "4.0.0", "mailbox is full, try later"), "MailboxFull"),
    (deferred(452, "4.3.1", "Insufficient storage"), "MailboxFull"),
    (deferred(451, "4.5.0", "user over quota"), "MailboxFull"),
    # 4.7.x: policy; with spam wording it is content.
    (deferred(451, "4.7.1", "Message looks like spam"), "SpamDetected"),
    (deferred(421, "4.7.0", "unsolicited bulk mail from your IP"), "SpamDetected"),
    (deferred(450, "4.7.1", "Client host rejected: greylisted"), "IPFailure"),
    (deferred(421, "4.7.28", "rate limited due to IP reputation"), "IPFailure"),
    # The sending IP without a 4.7 status: needs a reply from a server.
    (deferred(421, "4.0.0", "Too many connections from your host"), "IPFailure"),
    (deferred(450, "4.3.2", "listed on a block list"), "IPFailure"),
    # Our own reasons.
    (deferred(None, "4.3.0", "x-local; transport crashed"), "InternalFailure"),
    (deferred(None, "4.4.4", "x-local; no usable destination address"), "InternalFailure"),
    # Nothing heard from a server.
    (deferred(None, "4.4.1", "connect to mx [192.0.2.1]:25: Connection refused"),
     "TransientCommunicationFailure"),
    (deferred(None, "4.4.3", "x-dns; MX lookup for example.net: SERVFAIL"),
     "TransientCommunicationFailure"),
    (deferred(None, "4.4.2", "lost connection with mx while sending MAIL FROM"),
     "TransientCommunicationFailure"),
    # Any other 4xx the server said.
    (deferred(451, "4.3.0", "Local error in processing"), "RecipientServerError"),
    # "try again later" is what nearly every 4xx says; it does not make the reply about
    # our IP (docs/events.md's DeliveryDelay example, issue 15).
    (deferred(451, "4.3.0", "Temporary server error, try again later"),
     "RecipientServerError"),
    (deferred(451, "4.3.2", "System not accepting network messages, try again later"),
     "RecipientServerError"),
    (deferred(421, "4.4.5", "Server busy, try again later"), "RecipientServerError"),
    (deferred(421, "4.0.0", "Too many connections, try again later"), "IPFailure"),
    (deferred(450, "4.1.1", "Recipient address rejected: unverified"),
     "RecipientServerError"),
    # A reply that is not 4xx (nonsense codes are deferred too).
    (deferred(354, "4.0.0", "strange"), "General"),
], ids=lambda v: v if isinstance(v, str) else v.diagnostic[:40])
def test_delay_type(result: RecipientResult, expected: str) -> None:
    assert delay_type(result) == expected


SES_DELAY_TYPES = {"InternalFailure", "General", "MailboxFull", "SpamDetected",
                   "RecipientServerError", "IPFailure", "TransientCommunicationFailure",
                   "BYOIPHostNameLookupUnavailable", "Undetermined", "SendingDeferral"}


def test_delay_type_is_always_an_ses_delay_type() -> None:
    for code in (None, 250, 354, 421, 450, 451, 452, 550):
        for status in ("4.0.0", "4.2.2", "4.4.1", "4.7.1", "5.0.0"):
            for text in ("", "spam", "mailbox full", "x-local; oops", "rbl", "\u00e9"):
                assert delay_type(deferred(code, status, text)) in SES_DELAY_TYPES


@pytest.mark.parametrize("result", [
    deferred(None, "4.7.4", "TLS is required, but was not offered by mx.example.net "
                            "[192.0.2.1]"),
    deferred(None, "4.7.5", "TLS handshake with mx.example.net [192.0.2.1] failed: "
                            "[SSL] record layer failure"),
], ids=["tls-not-offered", "tls-handshake-failed"])
def test_tls_trouble_without_a_reply_is_a_communication_failure(
        result: RecipientResult) -> None:
    # retry.py: "Nothing was heard from a server: connection, TLS or DNS trouble" is
    # TransientCommunicationFailure; the client reports TLS trouble with code None.
    assert delay_type(result) == "TransientCommunicationFailure"
