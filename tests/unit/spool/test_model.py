"""The message attributes: typed for code, the same JSON in the spool as before."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.spool.model import MessageAttributes, Tracking
from tests.support import examples

# What the spool held when the attributes were a plain dict (written at dc72fa0).
STORED: list[dict[str, Any]] = [
    {"tags": {"ses:source-ip": ["127.0.0.1"], "campaign": ["spring"]}, "tls": "TLSv1.3",
     "uncounted": [1, 3], "tag_errors": ["bad tag"],
     "control_headers": {"X-SES-CONFIGURATION-SET": "transactional"},
     "tracking": {"links": 2, "open": True, "unsubscribe": False}, "events": True},
    {"dsn_for": "018bd0e1a2b3-0123456789abcdef"},
    {"auto_reply_for": "018bd0e1a2b3-0123456789abcdef"},
    {},
]


def test_stored_attributes_read_back_typed_and_write_the_same_json() -> None:
    for stored in STORED:
        attrs = MessageAttributes.from_json(json.loads(json.dumps(stored)))
        assert attrs.as_json() == stored
        assert attrs == stored and dict(attrs) == stored
    full = MessageAttributes.from_json(STORED[0])
    assert full.tracking == Tracking(links=2, open=True, unsubscribe=False)
    assert full.uncounted == (1, 3) and full.events and full.tls == "TLSv1.3"
    assert full["tags"]["campaign"] == ["spring"]


def test_keys_of_a_newer_relay_and_values_of_the_wrong_type_are_kept() -> None:
    stored = {"tags": {"a": ["b"]}, "priority": "bulk", "tls": 3, "events": "yes"}
    attrs = MessageAttributes.from_json(stored)
    assert attrs.tls is None and not attrs.events and attrs.tags == {"a": ["b"]}
    assert attrs.as_json() == stored


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
_keys = st.sampled_from(["tags", "tls", "uncounted", "tag_errors", "control_headers",
                         "tracking", "events", "dsn_for", "auto_reply_for", "other"])


@settings(max_examples=examples(500))
@given(st.dictionaries(_keys, _json, max_size=6))
def test_any_stored_value_reads_without_error_and_keeps_every_key(
        stored: dict[str, Any]) -> None:
    attrs = MessageAttributes.from_json(stored)
    assert set(attrs.as_json()) == set(stored)
    if isinstance(stored.get("tracking"), dict):
        assert isinstance(attrs.tracking, Tracking)
    again = MessageAttributes.from_json(json.loads(json.dumps(attrs.as_json())))
    assert again.as_json() == attrs.as_json()

