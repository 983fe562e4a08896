"""Bounce messages to senders: turns a message's final failures into a spooled DSN.

Called by the spool inside the transaction that records a message's last pending
recipient as final, when some recipients bounced: the DSN is spooled in that same
transaction, so a crash can neither lose it nor send it twice. The DSN lists every
recipient that bounced over the message's life (recipients of other domains may have
failed on earlier attempts) and those refused by the suppression list, as SES reports
suppression-list bounces "by the same means" as remote ones. It goes from the null
sender `<>` to the original envelope sender, so a DSN that bounces is never answered
(`should_send_dsn`), and never for a message that was itself automatic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from smtprelay.delivery.dsn_compose import FailedRecipient, build_dsn, should_send_dsn
from smtprelay.mail.headers import MalformedHeader, parse_header_section
from smtprelay.spool.model import (
    Envelope,
    MessageAttributes,
    NewMessage,
    Outcome,
    QueuedMessage,
    new_message_id,
)

log = logging.getLogger("smtprelay.delivery")

DSN_LISTENER = "dsn"  # the `listener` of a spooled DSN, shown by `queue list`


class DSNFactory:
    def __init__(self, reporting_mta: str, *, return_full_message: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.reporting_mta = reporting_mta
        self.return_full_message = return_full_message
        self._clock = clock

    def build(self, message: QueuedMessage, bounces: list[Outcome],
              body: bytes) -> NewMessage | None:
        try:
            headers = parse_header_section(body)
        except MalformedHeader:
            headers = []  # spooled mail passed the strict reader; be lenient anyway
        if not should_send_dsn(message.mail_from, headers):
            log.info("msg=%s no DSN: sender <%s> or the message itself is automatic",
                     message.message_id, message.mail_from)
            return None
        by_index = {r.index: r for r in message.recipients}
        latest: dict[int, Outcome] = {}
        for outcome in bounces:
            latest[outcome.index] = outcome  # ordered by id: the last one wins
        failed = [
            FailedRecipient(recipient=by_index[i].address, action="failed",
                            status=o.status or "5.0.0", diagnostic=o.diagnostic or "",
                            remote_mta=o.remote_mta, last_attempt=o.at)
            for i, o in sorted(latest.items()) if i in by_index
        ]
        if not failed:
            return None
        now = self._clock()
        data = build_dsn(original=body, envelope_sender=message.mail_from,
                         reporting_mta=self.reporting_mta, message_id=message.message_id,
                         arrival=message.received_at, recipients=failed, now=now,
                         return_full_message=self.return_full_message)
        sender = message.mail_from
        return NewMessage(
            message_id=new_message_id(now),
            envelope=Envelope(mail_from="", recipients=(sender,),
                              smtputf8=not sender.isascii(), body_8bitmime=not data.isascii()),
            data=data, account=message.account, configuration_set=None, received_at=now,
            client_ip="127.0.0.1", client_helo=self.reporting_mta, auth_user=None,
            listener=DSN_LISTENER, attrs=MessageAttributes(dsn_for=message.message_id))
