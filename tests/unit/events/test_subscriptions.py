"""SNS subscriptions of notification webhooks (smtprelay.events.subscriptions)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from smtprelay.events.subscriptions import (
    Subscriptions,
    endpoint_id,
    subscribe_url,
)

TOPIC = "arn:smtprelay:sns:relay.test:bulk-lists"
ENDPOINT = endpoint_id("https://user:pass@lists.test/ses")


def test_a_token_confirms_its_subscription_once_and_survives_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "subs.json"

    async def scenario() -> None:
        store = Subscriptions(path)
        store.load()
        pending = await store.request("bulk/lists", ENDPOINT, TOPIC)
        assert await store.request("bulk/lists", ENDPOINT, TOPIC) == pending  # same token
        assert len(pending.token) == 128 and not store.confirmed("bulk/lists", ENDPOINT, TOPIC)
        other = await store.request("bulk/other", ENDPOINT, TOPIC)
        # Wrong tokens (one character off, a prefix, empty, too long, another's with
        # the wrong topic) confirm nothing.
        flipped = pending.token[:-1] + ("0" if pending.token[-1] != "0" else "1")
        for topic, token in ((TOPIC, flipped), (TOPIC, pending.token[:-1]), (TOPIC, ""),
                             (TOPIC, pending.token * 2), (TOPIC + "x", pending.token),
                             ("", pending.token)):
            assert await store.confirm(topic, token) is None
        assert not store.confirmed("bulk/lists", ENDPOINT, TOPIC)
        found = await store.confirm(TOPIC, pending.token)
        assert found is not None
        key, done = found
        assert key == "bulk/lists" and done.confirmed is not None
        assert done.subscription_arn is not None and done.subscription_arn.startswith(TOPIC + ":")
        assert await store.confirm(TOPIC, pending.token) == found  # a repeated GET
        assert store.confirmed("bulk/lists", ENDPOINT, TOPIC)
        assert not store.confirmed("bulk/other", ENDPOINT, TOPIC)
        assert other.token != pending.token

        again = Subscriptions(path)  # a restart
        again.load()
        assert again.confirmed("bulk/lists", ENDPOINT, TOPIC)
        assert again.get("bulk/other") == other
        # Another URL or topic is another subscription: a new token, to confirm again.
        moved = await again.request("bulk/lists", endpoint_id("https://new.test/"), TOPIC)
        assert moved.token != pending.token and moved.confirmed is None
        assert await again.confirm(TOPIC, pending.token) is None
        await again.forget({"bulk/other", "gone/never"})
        assert again.keys() == {"bulk/lists"}

    asyncio.run(scenario())
    assert path.stat().st_mode & 0o777 == 0o600
    saved = json.loads(path.read_text())
    assert "lists.test" not in path.read_text() and set(saved) == {"bulk/lists"}


def test_a_damaged_file_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "subs.json"
    path.write_text('{"bulk/lists": {"endpoint": 1}}')
    store = Subscriptions(path)
    store.load()
    assert store.keys() == set()


def test_the_subscribe_url_is_sns_query_on_the_relay() -> None:
    assert subscribe_url("https://relay.example.com/base/", TOPIC, "abc") == (
        "https://relay.example.com/base/sns/confirm?Action=ConfirmSubscription"
        f"&TopicArn={TOPIC}&Token=abc")
    assert subscribe_url("http://r.test", "arn:x y&z", "t") == (
        "http://r.test/sns/confirm?Action=ConfirmSubscription&TopicArn=arn:x%20y%26z&Token=t")
