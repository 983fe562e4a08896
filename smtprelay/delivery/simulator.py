"""The mailbox simulator: recipients at `simulator.domain` answered here, never sent.

SES's mailbox simulator (developer guide, "Using the mailbox simulator") in front of
whatever transport the delivery mode uses (mx, smarthost, capture): a transaction for
the simulator domain never reaches DNS, a socket or the capture directory; every
other one goes to the real transport untouched. In `hold` mode there is no transport,
and simulator mail stays queued like all other mail.

The local part before any ``+label`` (case-insensitive) picks the outcome:

``success``
    Delivery.
``bounce``
    A hard bounce, ``550 5.1.1 user unknown``, Bounce Permanent/General, and our DSN
    to the sender (the normal DSN path); no suppression entry is made, as SES makes
    none for the simulator.
``ooto``
    Delivery, then an RFC 3834 automatic reply from ``ooto@<domain>`` to the
    Return-Path of the message (its envelope sender, a VERP address when the identity
    has a custom MAIL FROM domain), spooled from the null sender and sent like any
    other mail. None when the message was itself automatic or came from ``<>``.
``complaint``
    Delivery, then a Complaint event (feedback type ``abuse``) when the message's
    configuration set publishes events; no suppression entry.
``suppressionlist``
    Bounce Permanent/OnAccountSuppressionList, as if the address were on the account's
    suppression list, without it being there (and with our DSN, as for any recipient
    the suppression list refused).
anything else
    SES's simulator host answers unknown mailboxes as any mail server does: a hard
    bounce like ``bounce@`` (550 5.1.1), so a typo in a test address shows up instead
    of passing for a delivery.

Simulator recipients count against the sending rate but not the 24-hour quota, and
stay out of the set statistics and so out of the reputation guard (the pipeline marks
them at acceptance; ``simulator.counts_for_reputation`` lets them in, for rehearsing
the guard). The Complaint event and the auto-reply are made after the attempt's
results are recorded (`after_record`), so they follow the Delivery event; a crash in
between loses them, which for simulated feedback is an acceptable price for not
touching the spool's recording path.
"""

from __future__ import annotations

import asyncio
import email.header
import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay.config import ConfigSource, is_simulator_address
from smtprelay.delivery.dsn_compose import should_send_dsn
from smtprelay.delivery.model import RecipientResult, Transaction, Verdict
from smtprelay.delivery.scheduler import Transport
from smtprelay.events import records
from smtprelay.events.model import Complaint, new_event_id
from smtprelay.mail.address import local_of
from smtprelay.mail.headers import HeaderField, MalformedHeader, addresses, parse_header_section
from smtprelay.spool import set_stats
from smtprelay.spool.model import (
    Envelope,
    EventRecord,
    MessageAttributes,
    NewMessage,
    QueuedMessage,
    new_message_id,
)
from smtprelay.spool.store import Spool

log = logging.getLogger("smtprelay.simulator")

# The `listener` of the auto-replies the simulator spools: not the sender's mail, so
# not in the set statistics (setstats.UNCOUNTED_LISTENERS).
SIMULATOR_LISTENER = "simulator"
PERMANENT = "Permanent"

SUCCESS, BOUNCE, OOTO, COMPLAINT, SUPPRESSIONLIST = (
    "success", "bounce", "ooto", "complaint", "suppressionlist")
SCENARIOS = (SUCCESS, BOUNCE, OOTO, COMPLAINT, SUPPRESSIONLIST)

_USER_UNKNOWN = "smtp; 550 5.1.1 user unknown"
_SUPPRESSED = ("Amazon SES did not send the message to this address because it is on the "
               "suppression list for your account (mailbox simulator)")


def scenario(address: str) -> str:
    """The simulator local part of `address` without its +label, lower case."""
    return local_of(address).split("+", 1)[0].lower()


def result_for(address: str, domain: str) -> RecipientResult:
    """What the simulated mailbox answers for one recipient."""
    mta = f"{domain} (mailbox simulator)"
    kind = scenario(address)
    if kind in (SUCCESS, OOTO, COMPLAINT):
        return RecipientResult(recipient=address, verdict=Verdict.DELIVERED, code=250,
                               status="2.0.0",
                               diagnostic="smtp; 250 2.0.0 Ok: mailbox simulator",
                               remote_mta=mta)
    if kind == SUPPRESSIONLIST:
        return RecipientResult(recipient=address, verdict=Verdict.BOUNCED, code=550,
                               status="5.1.1", diagnostic=_SUPPRESSED, remote_mta=mta,
                               bounce=(PERMANENT, "OnAccountSuppressionList"))
    # bounce@, and any mailbox the simulator does not have.
    return RecipientResult(recipient=address, verdict=Verdict.BOUNCED, code=550,
                           status="5.1.1", diagnostic=_USER_UNKNOWN, remote_mta=mta,
                           bounce=(PERMANENT, "General"))


@dataclass
class SimulatorTransport:
    """Answers the simulator domain's transactions; hands every other to `inner`."""

    inner: Transport
    spool: Spool
    live: ConfigSource  # simulator.domain follows a reload
    hostname: str
    # Called once an auto-reply is spooled, so the scheduler sends it now.
    wake: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.time

    def domain(self) -> str:
        return self.live.config.simulator.domain

    async def deliver(self, message: QueuedMessage, domain: str,
                      txn: Transaction) -> list[RecipientResult]:
        simulator = self.domain()
        if domain.lower().rstrip(".") != simulator:
            return await self.inner.deliver(message, domain, txn)
        return [result_for(rcpt, simulator) for rcpt in txn.recipients]

    async def after_record(self, message: QueuedMessage, txn: Transaction,
                           results: list[RecipientResult]) -> None:
        """The feedback that follows a simulated delivery: Complaint events and
        automatic replies (called by the scheduler once the results are recorded)."""
        simulator = self.domain()
        delivered = [r.recipient for r in results if r.verdict is Verdict.DELIVERED
                     and is_simulator_address(r.recipient, simulator)]
        complained = [a for a in delivered if scenario(a) == COMPLAINT]
        away = [a for a in delivered if scenario(a) == OOTO]
        if complained:
            await self._complaint(message, complained)
        for address in away:
            await self._auto_reply(message, txn, address)

    async def _complaint(self, message: QueuedMessage, recipients: list[str]) -> None:
        now = self.clock()
        # Counted as the deliveries before it were: left out of the statistics unless
        # simulator.counts_for_reputation kept them in (a reputation rehearsal).
        left_out = frozenset(message.attrs.uncounted or ())
        counted = sum(1 for r in message.recipients
                      if r.address in recipients and r.index not in left_out)
        counts = (set_stats.Bump(message.account, message.configuration_set, now,
                                 {set_stats.Kind.COMPLAINT: counted}),) if counted else ()
        events: tuple[EventRecord, ...] = ()
        if message.attrs.events:
            detail = Complaint(complained_recipients=tuple(recipients), timestamp=now,
                               feedback_id=new_event_id(now),
                               user_agent="smtprelay mailbox simulator",
                               complaint_feedback_type="abuse", arrival_date=now)
            events = (records.make(message.message_id, message.configuration_set, now,
                                   detail),)
        if events or counts:
            try:
                await self.spool.add_events(events, counts)
            except Exception as exc:
                log.error("msg=%s simulated complaint not recorded: %s",
                          message.message_id, exc)
                return
        log.info("msg=%s simulated complaint from %s%s", message.message_id,
                 ", ".join(recipients), "" if events else " (the set publishes no events)")

    async def _auto_reply(self, message: QueuedMessage, txn: Transaction,
                          recipient: str) -> None:
        body = await _body(self.spool, message.message_id)
        try:
            headers = parse_header_section(body) if body is not None else []
        except MalformedHeader:
            headers = []
        # SES: "to the address in the Return-Path header of the email, or the envelope
        # sender if the Return-Path header isn't present".
        return_path = _first_address(headers, "return-path") or txn.mail_from
        if not should_send_dsn(return_path, headers):
            log.info("msg=%s no simulated auto-reply: sender <%s> or the message is "
                     "automatic", message.message_id, return_path)
            return
        now = self.clock()
        reply = NewMessage(
            message_id=new_message_id(now),
            envelope=Envelope(mail_from="", recipients=(return_path,),
                              smtputf8=not return_path.isascii()),
            data=auto_reply(headers, sender=f"ooto@{self.domain()}", to=return_path,
                            hostname=self.hostname, now=now),
            account=message.account, configuration_set=None, received_at=now,
            client_ip="127.0.0.1", client_helo=self.hostname, auth_user=None,
            listener=SIMULATOR_LISTENER, attrs=MessageAttributes(auto_reply_for=message.message_id))
        try:
            await self.spool.enqueue(reply)
        except Exception as exc:
            log.error("msg=%s simulated auto-reply not spooled: %s", message.message_id, exc)
            return
        log.info("msg=%s simulated auto-reply from %s: msg=%s to=%s", message.message_id,
                 recipient, reply.message_id, return_path)
        self.wake()


async def _body(spool: Spool, message_id: str) -> bytes | None:
    return await asyncio.to_thread(spool.body, message_id)


def _first_address(headers: list[HeaderField], key: str) -> str | None:
    for header in headers:
        if header.key == key:
            found = addresses(header.value)
            if found:
                return found[0]
    return None


def _header(headers: list[HeaderField], key: str) -> str | None:
    for header in headers:
        if header.key == key:
            return " ".join(header.value.split())
    return None


def auto_reply(original: list[HeaderField], *, sender: str, to: str, hostname: str,
               now: float) -> bytes:
    """An RFC 3834 out-of-office reply to a message with header section `original`."""
    subject = _header(original, "subject") or ""
    if not subject.isascii():
        subject = email.header.Header(subject, "utf-8").encode()
    in_reply_to = _header(original, "message-id")
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: Auto: {subject}".rstrip(),
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: <{new_message_id(now)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "X-Auto-Response-Suppress: All",
    ]
    if in_reply_to:
        lines += [f"In-Reply-To: {in_reply_to}", f"References: {in_reply_to}"]
    lines += [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        "I am out of the office and will read your message when I return.",
        "",
        "(An automatic reply from the smtprelay mailbox simulator.)",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")
