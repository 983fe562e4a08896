"""Which addresses an identity covers (smtprelay.policy.identities)."""

from __future__ import annotations

from smtprelay.policy.identities import covers, failing


def test_identity_coverage() -> None:
    assert covers("example.com", "a@example.com")
    assert covers("example.com", "a@mail.EXAMPLE.com")
    assert not covers("example.com", "a@badexample.com")
    assert not covers("example.com", "a@example.com.evil.net")
    assert covers("news@example.org", "news@example.org")
    assert covers("news@example.org", "News+May@Example.org")
    assert not covers("news@example.org", "newsletter@example.org")
    assert not covers("news@example.org", "other@example.org")
    assert failing(["example.com"], ["a@example.com", "b@x.net", "b@x.net", "c@y.net"]) == [
        "b@x.net", "c@y.net"]
