"""What the feedback listener accepts: reports to VERP addresses and to the feedback addresses.

The SMTP side is the submission session with ``role: feedback`` (``smtprelay.smtp.session``):
no AUTH, any envelope sender (DSNs come from ``<>``). This handler decides the rest:

* RCPT: a VERP address (``b-TAG@<mail_from_domain>``) whose tag verifies with the
  tracking keys (``smtprelay.bounces.verp``), or one of ``feedback.addresses`` (where
  mailbox providers' feedback loops send complaint reports), compared without regard
  to case. Everything else, a forged, altered or retired tag included, is refused
  with ``550 5.1.1``: the listener is the MX of the MAIL FROM domains and must not
  become a mailbox for anything else. Also the List-Unsubscribe mailto addresses:
  ``u-TAG@<mailto domain>`` whose tag verifies, and fixed mailto addresses
  (``smtprelay.feedback.unsubscribes``); a forged or altered one gets ``550 5.1.1`` too.
* DATA: the report goes into the feedback inbox (``smtprelay.feedback.inbox``) and is
  durable on disk before the ``250``; parsing and acting on it happen later, in the
  processor, so a flood of reports costs the listener one group-committed write each.
  A report that would leave less free space than the spool needs
  (``store.spool_reserve``, ``smtprelay.spool.space``) gets ``452 4.3.1`` instead.
* Per client: sessions at once, MAIL commands and report bytes per window
  (``smtprelay.feedback.peers``); the SMTP layer asks at connect and at MAIL
  (``smtprelay.smtp.session.PeerGate``, which this class is).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from smtprelay.bounces import return_path, verp
from smtprelay.config import Config, Derived
from smtprelay.db.writer import DiskFullError, WriteError
from smtprelay.feedback.inbox import Arrival, FeedbackInbox
from smtprelay.feedback.peers import PeerLimits, PeerLimitSettings
from smtprelay.feedback.processor import FeedbackSource
from smtprelay.feedback.unsubscribes import MailtoTargets
from smtprelay.infra import metrics
from smtprelay.mail.address import Address
from smtprelay.mail.replies import Reply
from smtprelay.spool import space
from smtprelay.submission.seam import Submission
from smtprelay.transform.unsubscribe import InvalidMailtoTag, decode_mailto

log = logging.getLogger("smtprelay.feedback")

UNKNOWN_RECIPIENT = Reply(550, "5.1.1 Recipient address rejected: not a feedback address "
                               "of this server")
STORAGE_FULL = Reply(452, "4.3.1 Insufficient system storage")
LOCAL_ERROR = Reply(451, "4.3.0 Local error in processing; try again later")


@dataclass(frozen=True, slots=True)
class _Recipients:
    """What RCPT accepts under one configuration: VERP addresses at these domains, and
    the feedback addresses (lower case)."""

    domains: frozenset[str]
    addresses: frozenset[str]
    unsubscribes: MailtoTargets

    @classmethod
    def of(cls, config: Config) -> _Recipients:
        unsubscribes = MailtoTargets.of(config)
        return cls(return_path.feedback_domains(config),
                   frozenset(a.lower() for a in config.feedback.addresses)
                   | unsubscribes.addresses, unsubscribes)


class FeedbackReceiver:
    """The feedback listener's ``SubmissionHandler``."""

    def __init__(self, live: FeedbackSource, inbox: FeedbackInbox, *,
                 on_stored: Callable[[], None] = lambda: None) -> None:
        self._live = live
        self._inbox = inbox
        # Called after each report is durable: the processor looks at once.
        self._on_stored = on_stored
        # The addresses it answers for follow a reload.
        self._recipients = Derived(live, _Recipients.of)
        self._keep_free = Derived(live, space.reserve)
        self._peers = PeerLimits(Derived(live, PeerLimitSettings.of))

    # The SMTP layer's PeerGate: per-client limits (smtprelay.feedback.peers).

    def connect(self, ip: str) -> Reply | None:
        refusal = self._peers.connect(ip)
        if refusal is not None:
            log.warning("feedback listener refused connection client=%s: %s", ip,
                        refusal.text)
        return refusal

    def disconnect(self, ip: str) -> None:
        self._peers.disconnect(ip)

    def mail(self, ip: str, size: int | None) -> Reply | None:
        refusal = self._peers.mail(ip, size)
        if refusal is not None:
            log.info("feedback listener refused mail client=%s: %s", ip, refusal.text)
        return refusal

    def check_sender(self, account: str, address: str) -> Reply | None:
        return None  # reports come from anyone, most from the null sender

    def check_recipient(self, account: str, address: str) -> Reply | None:
        recipients = self._recipients()
        if address.lower() in recipients.addresses:
            return None
        parsed = Address.parse(address)
        local = parsed.local
        reason = "not a feedback address"
        kind = "unknown"
        if recipients.unsubscribes.tagged(parsed):
            try:
                decode_mailto(local, self._live.keyring)
                return None
            except InvalidMailtoTag as exc:
                reason, kind = str(exc), "unsubscribe"
        elif parsed.domain in recipients.domains:
            try:
                verp.decode(local, self._live.keyring)
                return None
            except verp.InvalidVerpTag as exc:
                reason, kind = f"VERP tag {exc.reason}", "verp"
        metrics.FEEDBACK_RECIPIENTS_REFUSED.labels(reason=kind).inc()
        log.info("feedback listener refused rcpt=%s: %s", address, reason)
        return UNKNOWN_RECIPIENT

    async def submit(self, submission: Submission) -> Reply:
        client = submission.client
        arrival = Arrival(received_at=submission.received_at, listener=client.listener,
                          peer_ip=client.ip, helo=client.helo, tls=client.tls_version,
                          mail_from=submission.envelope.mail_from,
                          recipients=submission.envelope.recipients, raw=submission.data)
        try:
            report_id = await self._inbox.store(arrival, self._keep_free())
        except space.ReserveError as exc:
            metrics.FEEDBACK_REFUSED.labels(reason="spool_reserve").inc()
            log.error("feedback report from %s refused with 452: %s", client.ip, exc)
            return STORAGE_FULL
        except DiskFullError as exc:
            metrics.FEEDBACK_REFUSED.labels(reason="disk_full").inc()
            log.error("feedback report from %s refused with 452, disk full: %s", client.ip,
                      exc)
            return STORAGE_FULL
        except WriteError as exc:
            log.error("feedback report from %s refused with 451: %s", client.ip, exc)
            return LOCAL_ERROR
        self._peers.stored(client.ip, len(arrival.raw))
        metrics.FEEDBACK_RECEIVED.inc()
        metrics.FEEDBACK_INBOX_DEPTH.inc()
        log.info("feedback report=%d received client=%s from=<%s> rcpts=%s size=%d",
                 report_id, client.ip, arrival.mail_from, ",".join(arrival.recipients),
                 len(arrival.raw))
        self._on_stored()
        return Reply(250, f"2.0.0 Ok: report {report_id} queued")
