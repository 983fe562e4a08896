"""The signed List-Unsubscribe mailto address (smtprelay.transform.unsubscribe) and its
configuration: u-TAG within 64 octets, case-blind, forgeries refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.config import ConfigError, load_config
from smtprelay.transform.tokens import KeyRing
from smtprelay.transform.unsubscribe import (
    InvalidMailtoTag,
    MailtoTag,
    decode_mailto,
    mailto_address,
    mailto_local_part,
)
from tests.support import base_config, write_config

MESSAGE = "018bd0e1a2b3-0123456789abcdef"


def test_a_tag_names_message_recipient_and_scope_and_fits_a_local_part() -> None:
    ring = KeyRing.generate(1000.0)
    for recipient, listed in ((0, False), (49, True), (2**32 - 1, True)):
        local = mailto_local_part(ring, MESSAGE, recipient, contact_list=listed)
        assert local.startswith("u-") and len(local) <= 64 and local == local.lower()
        assert decode_mailto(local.upper(), ring, 2000.0) == MailtoTag(MESSAGE, recipient,
                                                                        listed)
    assert len(mailto_local_part(ring, MESSAGE, 0, contact_list=False)) == 46
    assert mailto_address("fixed@example.com", ring, MESSAGE, 0,
                          contact_list=False) == "fixed@example.com"
    assert mailto_address("unsub.example.com", ring, MESSAGE, 0,
                          contact_list=False).endswith("@unsub.example.com")


def test_forged_altered_and_foreign_tags_are_refused() -> None:
    ring, other = KeyRing.generate(1000.0), KeyRing.generate(1000.0)
    local = mailto_local_part(ring, MESSAGE, 0, contact_list=False)
    altered = local[:10] + ("a" if local[10] != "a" else "b") + local[11:]
    for bad, reason in ((altered, "tampered"), ("b-" + local[2:], "not an unsubscribe address"),
                        ("u-abc!", "malformed"), (local + "a", "tampered")):
        with pytest.raises(InvalidMailtoTag) as info:
            decode_mailto(bad, ring)
        assert info.value.reason == reason
    with pytest.raises(InvalidMailtoTag):
        decode_mailto(local, other)


@pytest.mark.parametrize("value,target", [
    (True, "links.test"), ("Unsub.Example.com", "unsub.example.com"),
    ("leave@example.com", "leave@example.com"), (False, None), (None, None)])
def test_mailto_is_true_a_domain_or_a_fixed_address(tmp_path: Path, value: object,
                                                    target: str | None) -> None:
    path = write_config(tmp_path / "smtprelay.yaml", base_config(
        tmp_path / "var", tracking_domains={"links.test:8080": {}}, listeners=[
            {"name": "feedback", "address": "127.0.0.1", "port": 0, "role": "feedback"}],
        configuration_sets={"s": {"tracking": {"domain": "links.test:8080"},
                                  "unsubscribe": {"one_click": True, "mailto": value}}}))
    assert load_config(path).config.configuration_sets["s"].unsubscribe_mailto == target


def test_a_signed_mailto_without_a_feedback_listener_names_the_key_and_the_fix(
        tmp_path: Path) -> None:
    path = write_config(tmp_path / "smtprelay.yaml", base_config(
        tmp_path / "var", tracking_domains={"links.test": {}},
        configuration_sets={"s": {"tracking": {"domain": "links.test"},
                                  "unsubscribe": {"one_click": True, "mailto": True}}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "configuration_sets.s.unsubscribe.mailto" in str(info.value)
    assert "role: feedback" in str(info.value)
