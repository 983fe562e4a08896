"""GET /sns/confirm: where a notification webhook's receiver confirms its subscription.

A webhook with ``format: notification`` first POSTs SNS's SubscriptionConfirmation,
whose ``SubscribeURL`` is ``<http.public_url>/sns/confirm?Action=ConfirmSubscription
&TopicArn=...&Token=...`` (smtprelay.events.subscriptions). A GET with a TopicArn and
Token the relay sent confirms that subscription (saved before the answer) and is
answered as SNS answers ConfirmSubscription: 200 with ``ConfirmSubscriptionResponse``
XML holding the SubscriptionArn; a repeated GET gets the same answer. Any other TopicArn
or Token confirms nothing and gets 404. HEAD is refused (405): link checkers and
scanners HEAD URLs, and must not confirm anything.
"""

from __future__ import annotations

import logging
import uuid
from xml.sax.saxutils import escape

from aiohttp import web

from smtprelay.events.subscriptions import CONFIRM_PATH, Confirmer

log = logging.getLogger("smtprelay.http")

_XMLNS = "http://sns.amazonaws.com/doc/2010-03-31/"
_XML = "text/xml"


def confirm_response(subscription_arn: str, request_id: str) -> str:
    return (f'<ConfirmSubscriptionResponse xmlns="{_XMLNS}">\n'
            "  <ConfirmSubscriptionResult>\n"
            f"    <SubscriptionArn>{escape(subscription_arn)}</SubscriptionArn>\n"
            "  </ConfirmSubscriptionResult>\n"
            "  <ResponseMetadata>\n"
            f"    <RequestId>{request_id}</RequestId>\n"
            "  </ResponseMetadata>\n"
            "</ConfirmSubscriptionResponse>\n")


def error_response(code: str, message: str, request_id: str) -> str:
    return (f'<ErrorResponse xmlns="{_XMLNS}">\n'
            f"  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n"
            f"    <Message>{escape(message)}</Message>\n  </Error>\n"
            f"  <RequestId>{request_id}</RequestId>\n"
            "</ErrorResponse>\n")


class SubscriptionConfirmations:
    """The route; `confirmer` (the publisher) checks the token and records the
    confirmation."""

    def __init__(self, confirmer: Confirmer) -> None:
        self._confirmer = confirmer

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(CONFIRM_PATH, self._confirm, allow_head=False)

    async def _confirm(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        topic_arn = request.query.get("TopicArn", "")
        token = request.query.get("Token", "")
        try:
            subscription_arn = await self._confirmer.confirm(topic_arn, token)
        except OSError as exc:
            log.error("GET %s: the confirmation could not be saved, so it is not taken "
                      "(the receiver is asked again): %s", CONFIRM_PATH, exc.strerror or exc)
            return web.Response(status=503, content_type=_XML, text=error_response(
                "ServiceUnavailable", "The confirmation could not be saved", request_id))
        if subscription_arn is None:
            log.info("GET %s: no subscription has that TopicArn and Token; nothing "
                     "confirmed (404)", CONFIRM_PATH)
            return web.Response(status=404, content_type=_XML, text=error_response(
                "NotFound", "No subscription has that TopicArn and Token", request_id))
        return web.Response(content_type=_XML,
                            text=confirm_response(subscription_arn, request_id))
