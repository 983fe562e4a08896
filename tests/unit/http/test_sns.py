"""GET /sns/confirm (smtprelay.http.sns) against a stand-in for the publisher."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from smtprelay.http.sns import SubscriptionConfirmations


class Confirmer:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.broken = False

    async def confirm(self, topic_arn: str, token: str) -> str | None:
        self.asked.append((topic_arn, token))
        if self.broken:
            raise OSError(28, "No space left on device")
        return f"{topic_arn}:0f8e" if token == "good" else None


def test_the_answers_are_snss() -> None:
    confirmer = Confirmer()

    async def scenario() -> None:
        app = web.Application()
        SubscriptionConfirmations(confirmer).add_routes(app)
        async with TestClient(TestServer(app)) as client:
            query = {"Action": "ConfirmSubscription", "TopicArn": "arn:a&<b>", "Token": "good"}
            response = await client.get("/sns/confirm", params=query)
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/xml")
            text = await response.text()
            assert "<SubscriptionArn>arn:a&amp;&lt;b&gt;:0f8e</SubscriptionArn>" in text
            assert "<RequestId>" in text
            response = await client.get("/sns/confirm", params={**query, "Token": "bad"})
            assert response.status == 404 and "<Code>NotFound</Code>" in await response.text()
            response = await client.get("/sns/confirm")
            assert response.status == 404
            response = await client.head("/sns/confirm", params=query)
            assert response.status == 405
            confirmer.broken = True
            response = await client.get("/sns/confirm", params=query)
            assert response.status == 503
            assert "<Code>ServiceUnavailable</Code>" in await response.text()

    asyncio.run(scenario())
    # HEAD never reached the confirmer; a missing parameter is asked as empty.
    assert confirmer.asked == [("arn:a&<b>", "good"), ("arn:a&<b>", "bad"), ("", ""),
                               ("arn:a&<b>", "good")]
