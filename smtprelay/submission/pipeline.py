"""What happens to a message after DATA: policy checks, then the spool, then the reply.

Later stages (quotas, suppression, transforms) plug in here, between the checks and
the spool; the SMTP session only ever sees this module's replies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container, Sequence
from typing import Protocol

from smtprelay.bounces import return_path
from smtprelay.config import Config, ConfigSource
from smtprelay.events import records
from smtprelay.events.model import RenderingFailure
from smtprelay.infra import metrics
from smtprelay.mail import replies as R
from smtprelay.mail.headers import (
    MAX_COMMENT_DEPTH,
    HeaderField,
    MalformedHeader,
    addresses,
    comment_depth,
    content_type,
    parse_header_section,
)
from smtprelay.mail.replies import Reply
from smtprelay.policy import authorization, configuration_sets, contacts, content, identities
from smtprelay.policy.contacts import ContactStore, ListOptions
from smtprelay.policy.quota import Quotas
from smtprelay.policy.suppression import SuppressionEntry, SuppressionStore
from smtprelay.spool import set_stats
from smtprelay.spool.model import (
    EventRecord,
    MessageAttributes,
    NewMessage,
    Tracking,
    new_message_id,
)
from smtprelay.spool.store import (
    SpoolError,
    SpoolFullError,
    suppressed_diagnostic,
    unsubscribed_reason,
)
from smtprelay.state.api import StateUnavailable
from smtprelay.submission.seam import Submission
from smtprelay.transform import hygiene, tracking
from smtprelay.transform.dkim import SigningKey
from smtprelay.transform.finish import Finished, FinishFailed
from smtprelay.transform.finisher import Finisher
from smtprelay.transform.keys import KeySource, SignerSource
from smtprelay.transform.pool import TransformPool, TransformUnavailable

log = logging.getLogger("smtprelay.pipeline")

# Headers whose addresses must each fall under the account's identities (SES checks
# From, Sender and Return-Path besides the envelope sender).
_CHECKED_HEADERS = ("from", "sender", "return-path")
# Every field that holds addresses (RFC 5322 3.6.2-3.6.6): what events, DSNs and
# receivers parse as address lists.
_ADDRESS_FIELDS = frozenset((
    "from", "sender", "reply-to", "to", "cc", "bcc", "return-path", "resent-from",
    "resent-sender", "resent-to", "resent-cc", "resent-bcc", "disposition-notification-to"))
# The MIME walk costs ~0.2 ms for 50 KB but up to ~100 ms for hostile megabytes of
# nesting: above this size it runs in a thread so other sessions keep moving.
_INLINE_CHECK_LIMIT = 1024 * 1024


def header_addresses(fields: list[HeaderField]) -> dict[str, list[str]]:
    """Addresses of the checked headers, by lower-case header name."""
    found: dict[str, list[str]] = {}
    for field in fields:
        if field.key in _CHECKED_HEADERS:
            found.setdefault(field.key, []).extend(addresses(field.value))
    return found


class AcceptingSpool(Protocol):
    """What acceptance needs of the spool: the Spool itself in one process, a
    spool.remote.RemoteSpool in a worker process."""

    async def enqueue(self, message: NewMessage) -> None: ...

    def count_later(self, counts: set_stats.Bump) -> None: ...

    async def record_unsent(self, record: NewMessage, events: tuple[EventRecord, ...]
                            ) -> None: ...


class PipelineSource(ConfigSource, KeySource, SignerSource, Protocol):
    """What the pipeline reads for every message, swapped by a reload: the configuration,
    the tracking keys and the DKIM keys (the daemon's holder, smtprelay.app.live)."""


class Pipeline:
    def __init__(self, live: PipelineSource, spool: AcceptingSpool, quotas: Quotas,
                 suppression: SuppressionStore, *,
                 paused_sets: Container[str] = frozenset(),
                 paused_accounts: Callable[[], Container[str]] = frozenset,
                 transform_pool: TransformPool | None = None,
                 on_spooled: Callable[[], None] = lambda: None,
                 mail_from: return_path.MailFromVerification | None = None,
                 contacts: ContactStore | None = None) -> None:
        self._live = live
        self._spool = spool
        self._quotas = quotas
        self._suppression = suppression
        # The contact lists' contacts (policy.contacts); None: mail naming a list is
        # refused with 451 (a pipeline built without the state database's contacts).
        self._contacts = contacts
        # The sets paused at run time (smtprelay.policy.pauses.PausedSets), and the
        # accounts (PausedSets.accounts): all their mail refused.
        self.paused_sets = paused_sets
        self.paused_accounts = paused_accounts
        # The worker processes that track and add unsubscribe links for sets that do
        # (server.transform_workers); None: that work is done here.
        self.transform_pool = transform_pool
        self._finisher = Finisher(transform_pool)
        # Called after each message is durable, so delivery starts without polling.
        self.on_spooled = on_spooled
        # Which custom MAIL FROM domains have their MX record (None: all of them).
        self._mail_from = mail_from or return_path.AllVerified()

    @property
    def _config(self) -> Config:
        return self._live.config

    def _identities(self, account: str) -> list[str]:
        settings = self._config.accounts.get(account)
        return settings.identities if settings is not None else []

    def check_sender(self, account: str, address: str) -> Reply | None:
        # An identity that authorizes the account may be the sender too; the message's
        # X-SES-SOURCE-ARN must then name it (checked after DATA).
        mine = [*self._identities(account), *authorization.delegates_of(self._config, account)]
        failing = identities.failing(mine, [address])
        if failing:
            return R.not_verified(failing)
        missing = return_path.refused_mail_from(address, self._config, self._mail_from)
        if missing is not None:
            metrics.MESSAGES_REJECTED.labels(reason="mail_from_domain").inc()
            return R.mail_from_not_verified(missing)
        return None

    def check_recipient(self, account: str, address: str) -> Reply | None:
        settings = self._config.accounts.get(account)
        if settings is None:
            return R.AUTH_REQUIRED
        if settings.sandbox:
            # SES sandbox: only verified identities and the mailbox simulator.
            allowed = [*settings.identities, self._config.simulator.domain]
            if identities.failing(allowed, [address]):
                metrics.MESSAGES_REJECTED.labels(reason="sandbox").inc()
                return R.not_verified([address])
        return None

    async def submit(self, submission: Submission) -> Reply:
        """Quotas, then check, transform and spool; the quotas are committed for a
        spooled message and given back for any other outcome."""
        account = submission.client.account
        recipients = submission.envelope.recipients
        simulated = [i for i, rcpt in enumerate(recipients)
                     if self._config.simulator.covers(rcpt)]
        daily = len(recipients) - len(simulated)
        # SES refuses a message over its sender's rate or 24-hour quota whole, after
        # DATA: a refusal per recipient at RCPT lets a client send the message to the
        # others and drop the refused one silently (smtplib.sendmail does).
        # The mailbox simulator's recipients count against the rate, not the 24 h.
        # The reservation (a round trip with the state in Redis or behind the
        # supervisor) runs beside the message's checks and its suppression look-up,
        # and is waited for before the transforms spend CPU on the message.
        reservation = _Reservation(
            submission, asyncio.ensure_future(
                self._quotas.reserve(account, len(recipients), daily)))
        reply: Reply | None = None
        try:
            reply = await self._submit(submission, simulated, reservation)
        finally:
            sent = reply is not None and reply.is_success
            reservation.task.add_done_callback(
                lambda task: self._settle(task, account, len(recipients), daily, sent))
        # A message over its quota is refused as such whatever else is wrong with it,
        # as when the quota was asked first.
        return await reservation.refusal() or reply

    async def rendering_failed(self, submission: Submission, template_name: str,
                               error: str) -> Reply:
        """A templated message whose data did not fit its template (SES API): SES
        answers with a message id and sends nothing; the configuration set's
        destinations learn of it by a Rendering Failure event."""
        client = submission.client
        try:
            fields = parse_header_section(submission.data)
        except MalformedHeader as exc:
            return _refuse("bad_header", R.malformed_header(str(exc)))
        choice = configuration_sets.choose(self._config, client.account, fields,
                                           self.paused_sets)
        if isinstance(choice, Reply):
            return _refuse("set_paused" if choice is R.SET_PAUSED else "set_unknown", choice)
        message_id = new_message_id(submission.received_at)
        settings = self._config.configuration_sets.get(choice.name) if choice.name else None
        log.info("msg=%s not sent: template %r did not render: %s account=%s set=%s",
                 message_id, template_name, error, client.account, choice.name or "-")
        if settings is None or not settings.publishes:
            return R.accepted(message_id)
        found = header_addresses(fields)
        from_domain = identities.split_address((found.get("from") or ["@"])[0])[1]
        record = NewMessage(
            message_id=message_id, envelope=submission.envelope, data=submission.data,
            account=client.account, configuration_set=choice.name,
            received_at=submission.received_at, client_ip=client.ip,
            client_helo=client.helo, auth_user=client.auth_user, listener=client.listener,
            attrs=MessageAttributes(tags=configuration_sets.auto_tags(
                choice, from_domain=from_domain, source_ip=client.ip,
                caller=client.auth_user or client.account)))
        event = records.make(message_id, choice.name, submission.received_at,
                             RenderingFailure(template_name, error))
        try:
            await self._spool.record_unsent(record, (event,))
        except SpoolError as exc:
            log.error("msg=%s rendering failure event not recorded: %s", message_id, exc)
            return _refuse("spool_error", R.LOCAL_ERROR)
        return R.accepted(message_id)

    def _content_refusal(self, account: str, set_name: str | None, refusal: Reply) -> Reply:
        self._spool.count_later(set_stats.Bump(account, set_name, time.time(),
                                              {set_stats.Kind.REJECT: 1}))
        return _refuse("content", refusal)

    def _settle(self, task: asyncio.Future[Reply | None], account: str, recipients: int,
                daily: int, sent: bool) -> None:
        """Give back or commit what a reservation took, once its answer is known."""
        if task.cancelled() or task.exception() is not None or task.result() is not None:
            return  # nothing was taken
        self._quotas.settle_later(account, recipients, daily, sent=sent)

    async def _submit(self, submission: Submission, simulated: list[int],
                      reservation: _Reservation) -> Reply:
        """`simulated`: the indexes of the mailbox simulator's recipients."""
        client = submission.client
        account = self._config.accounts.get(client.account)
        if account is None:
            # The account was removed by a reload while the session was open.
            return R.AUTH_REQUIRED
        try:
            fields = parse_header_section(submission.data)
        except MalformedHeader as exc:
            return _refuse("bad_header", R.malformed_header(str(exc)))
        for field in fields:
            if (field.key in _ADDRESS_FIELDS and "(" in field.value
                    and comment_depth(field.value) > MAX_COMMENT_DEPTH):
                # Address parsers recurse per level: refused whole, before any reads it.
                return _refuse("bad_header", R.nested_too_deep(field.name, MAX_COMMENT_DEPTH))
        found = header_addresses(fields)
        if "from" not in found:
            return _refuse("no_from", R.NO_FROM)
        caller = client.auth_user or client.account
        granted = authorization.grant(self._config, client.account, caller, fields)
        if isinstance(granted, Reply):
            log.info("client=%s account=%s refused: %s", client.ip, client.account,
                     granted.text)
            return _refuse("access_denied", granted)
        own = account.identities
        mail_from = submission.envelope.mail_from
        failing = identities.failing([*own, *granted.sender], [mail_from] if mail_from else [])
        for header, allowed in (("from", granted.from_header), ("sender", granted.from_header),
                                ("return-path", granted.return_path)):
            for address in identities.failing([*own, *allowed], found.get(header, [])):
                if address not in failing:
                    failing.append(address)
        if not failing and granted.delegated_from is not None and authorization.from_allowed(
                self._config, granted.delegated_from, found.get("from", [])):
            # The identity's policy does not let delegates write this From.
            return _refuse("access_denied", R.access_denied(caller, granted.from_arn))
        if failing:
            log.info("client=%s account=%s refused: identities %s not verified", client.ip,
                     client.account, ", ".join(failing))
            return _refuse("identity", R.not_verified(failing))
        if client.account in self.paused_accounts():
            return _refuse("account_paused", R.ACCOUNT_PAUSED)
        choice = configuration_sets.choose(self._config, client.account, fields, self.paused_sets)
        if isinstance(choice, Reply):
            reason = "set_paused" if choice is R.SET_PAUSED else "set_unknown"
            return _refuse(reason, choice)
        options = contacts.options_of(self._config, client.account, fields)
        if isinstance(options, Reply):
            log.info("client=%s account=%s refused: %s", client.ip, client.account,
                     options.text)
            return _refuse("list_management", options)
        if len(submission.data) > _INLINE_CHECK_LIMIT:
            refusal = await asyncio.to_thread(content.refusal, submission.data, fields)
        else:
            refusal = content.refusal(submission.data, fields)
        if refusal is not None:
            # Over its quota, the message is refused as that, not counted as content.
            return await reservation.refusal() or self._content_refusal(
                client.account, choice.name, refusal)
        if options is not None:
            # A list message makes its recipients contacts: only one that may be sent.
            refused = await reservation.refusal()
            if refused is not None:
                return refused
        suppressed = await self._suppressed(client.account, choice.name,
                                            submission.envelope.recipients, options,
                                            submission.received_at)
        if suppressed is None:
            return _refuse("suppression_error", R.LOCAL_ERROR)

        message_id = new_message_id(submission.received_at)
        recipients = submission.envelope.recipients
        # Our Received field stays apart from the client's bytes: it becomes the
        # spool's prefix (NewMessage.prefix), with the DKIM signatures in front of it.
        received, data = hygiene.clean(submission.data, fields, info=hygiene.ReceivedInfo(
            hostname=self._config.server.hostname, client_helo=client.helo,
            client_ip=client.ip, tls_version=client.tls_version, tls_cipher=client.tls_cipher,
            authenticated=client.auth_user is not None, message_id=message_id,
            recipient=recipients[0] if len(recipients) == 1 else None,
            received_at=submission.received_at))
        settings = self._config.configuration_sets.get(choice.name) if choice.name else None
        list_unsubscribe = None if options is None else tracking.ListUnsubscribe(
            options.contact_list, None if options.topic is None else options.topic.name,
            options.settings.unsubscribe_domain, options.settings.https,
            options.settings.mailto_target)
        plan = tracking.plan_of(settings, list_unsubscribe)
        # Tokens that must name each recipient: one copy per recipient, made at delivery
        # (transform.copies); this run checks the message (a second open tracker refuses
        # it) and counts its links, and the spool keeps it as submitted.
        per_recipient = plan is not None and len(recipients) > 1
        from_domain = identities.split_address(found["from"][0])[1]
        refused = await reservation.refusal()
        if refused is not None:
            return refused
        # Each per-recipient copy is signed at delivery, over its own tokens.
        keys = () if per_recipient else self._live.signer.keys_for(from_domain)
        finished = await self._finish(
            message_id, data, plan, keys,
            0 if len(recipients) == 1 or per_recipient else None, submission.received_at,
            content_type(fields),
            # The header fields read above still describe the data when hygiene did not
            # change it: the signer need not read them again.
            fields if data is submission.data else None)
        if isinstance(finished, Reply):
            return finished
        transformed = finished.result
        signatures = finished.signatures
        if not per_recipient:
            # Signed over `data`; our Received field is not among the fields signed
            # (dkim.SIGNED_FIELDS), so it need not be in what was hashed.
            data = transformed.data
        if choice.tag_errors:
            log.info("msg=%s ignored bad message tags: %s", message_id,
                     "; ".join(choice.tag_errors))
        publishes = settings is not None and settings.publishes
        attrs = MessageAttributes(
            tags=configuration_sets.auto_tags(choice, from_domain=from_domain,
                                              source_ip=client.ip,
                                              caller=client.auth_user or client.account),
            tls=client.tls_version or None,
            copies=plan.as_json() if per_recipient and plan is not None else None,
            # Mailbox simulator recipients stay out of the set statistics (so of the
            # reputation guard), as SES leaves them out of its rates.
            uncounted=tuple(simulated) if simulated
            and not self._config.simulator.counts_for_reputation else None,
            tag_errors=choice.tag_errors or None,
            control_headers=choice.control_headers or None,
            tracking=Tracking(transformed.link_count, transformed.opens_tracked,
                              transformed.unsubscribe_url is not None)
            if transformed.link_count or transformed.opens_tracked
            or transformed.unsubscribe_url else None,
            # The scheduler records this message's delivery events too.
            events=publishes)
        events: tuple[EventRecord, ...] = ()
        if publishes:
            events = records.accepted(
                message_id, choice.name, submission.received_at,
                {recipients[i]: suppressed_diagnostic(reason)
                 for i, reason in suppressed.items()}, self._config.server.hostname)
        message = NewMessage(
            message_id=message_id, envelope=submission.envelope, data=data,
            account=client.account, configuration_set=choice.name,
            received_at=submission.received_at, client_ip=client.ip, client_helo=client.helo,
            auth_user=client.auth_user, listener=client.listener, attrs=attrs,
            prefix=signatures + received, suppressed=suppressed, events=events,
            # An unsubscribe needs the recipient's address back from the mail record.
            publishes=bool(events) or transformed.unsubscribe_url is not None,
        )
        try:
            await self._spool.enqueue(message)
        except SpoolFullError as exc:
            log.error("msg=%s spool full, refused with 452: %s", message_id, exc)
            return _refuse("storage_full", R.STORAGE_FULL)
        except SpoolError as exc:
            log.error("msg=%s spool write failed, refused with 451: %s", message_id, exc)
            return _refuse("spool_error", R.LOCAL_ERROR)
        self.on_spooled()
        metrics.MESSAGES_ACCEPTED.labels(listener=client.listener).inc()
        metrics.RECIPIENTS_ACCEPTED.inc(len(recipients))
        metrics.MESSAGE_BYTES.observe(message.size)
        if len(suppressed) < len(recipients):
            metrics.SPOOL_DEPTH.inc()
        log.info("msg=%s accepted account=%s user=%s client=%s from=<%s> rcpts=%d size=%d "
                 "set=%s suppressed=%d", message_id, client.account, client.auth_user or "-",
                 client.ip, submission.envelope.mail_from, len(recipients), message.size,
                 choice.name or "-", len(suppressed))
        return R.accepted(message_id)

    async def _finish(self, message_id: str, data: bytes, plan: tracking.Plan | None,
                      keys: Sequence[SigningKey], recipient: int | None, received_at: float,
                      media_type: str, fields: list[HeaderField] | None
                      ) -> Finished | Reply:
        """Tracking and unsubscribe as `plan` says (tokens naming `recipient`, None: the
        whole message), or only the ses:* clean-up without a plan, then the DKIM
        signatures; or the refusal."""
        try:
            done = await self._finisher.finish(
                data, plan, self._live.keyring, keys, message_id=message_id,
                recipient=recipient, issued_at=received_at, media_type=media_type,
                fields=fields)
        except tracking.DuplicateOpenTracker:
            return _refuse("content", R.DUPLICATE_OPEN_TRACKER)
        except TransformUnavailable as exc:
            log.error("msg=%s %s, refused with 451 (the client will send it again)",
                      message_id, exc)
            return _refuse("transform_error", R.LOCAL_ERROR)
        except FinishFailed as exc:
            # Like OpenDKIM's default for internal errors: a temporary failure, so the
            # client keeps the message instead of it leaving unsigned.
            log.error("msg=%s %s failed, refused with 451: %s", message_id,
                      "DKIM signing" if exc.stage == "dkim" else "tracking transform",
                      exc.detail)
            return _refuse(f"{exc.stage}_error", R.LOCAL_ERROR)
        result = done.result
        if result.problems:
            log.info("msg=%s tracking: %s", message_id, "; ".join(result.problems))
        if result.link_count:
            metrics.LINKS_TRACKED.inc(result.link_count)
        return done

    async def _suppressed(self, account: str, set_name: str | None,
                          recipients: tuple[str, ...], options: ListOptions | None,
                          received_at: float) -> dict[int, str] | None:
        """Recipient index -> reason: the suppression list's, for the reasons the
        configuration set applies, else the contact lists' (UNSUBSCRIBED ...). One
        thread hop for both, as they are in the same database."""
        reasons: tuple[str, ...] = ("BOUNCE", "COMPLAINT")
        if set_name is not None:
            reasons = self._config.configuration_sets[set_name].suppression.reasons
        if not reasons and options is None and (set_name is None or self._contacts is None):
            return {}  # nothing to look up: no thread hop
        if options is not None and self._contacts is None:
            log.error("account=%s: mail to contact list %s refused with 451: this "
                      "pipeline has no contact store", account, options.contact_list)
            return None

        on_loop = bool(reasons) and self._suppression.looks_up_on_loop

        def suppressed(entries: dict[str, SuppressionEntry]) -> dict[int, str]:
            return {i: entries[rcpt].reason for i, rcpt in enumerate(recipients)
                    if rcpt in entries and entries[rcpt].reason in reasons}

        def look() -> dict[int, str]:
            held: dict[int, str] = {}
            if reasons and not on_loop:
                held = suppressed(self._suppression.lookup(account, recipients))
            for i, reason in self._unsubscribed(set_name, recipients, options,
                                                received_at).items():
                held.setdefault(i, reason)
            return held

        try:
            if not on_loop:
                return await asyncio.to_thread(look)
            # The suppression list on the loop, beside the contacts in a thread.
            listed = self._suppression.lookup_on_loop(account, recipients)
            if self._contacts is None or (options is None and set_name is None):
                return suppressed(await listed)
            entries, held = await asyncio.gather(listed, asyncio.to_thread(look))
            # The list's reason before an unsubscribe, as look() has it.
            return {**held, **suppressed(entries)}
        except Exception as exc:
            # Sending anyway could mail people who asked not to get mail: the client
            # retries on a 451 instead.
            log.error("suppression or contact lookup failed account=%s: %s", account, exc)
            return None

    def _unsubscribed(self, set_name: str | None, recipients: tuple[str, ...],
                      options: ListOptions | None, received_at: float) -> dict[int, str]:
        """The recipients who left the message's list or topic (each recipient not yet
        a contact of the list becomes one, as SES does), or the configuration set's own
        implicit list; blocking, in a thread."""
        store = self._contacts
        if store is None:
            return {}
        held: dict[int, str] = {}
        if options is not None:
            found = store.contacts(options.contact_list, recipients, create_at=received_at)
            for i, rcpt in enumerate(recipients):
                contact = found.get(rcpt)
                if contact is not None and not contact.receives(options.topic):
                    where = (f"contact list {options.contact_list!r}"
                             if contact.unsubscribe_all else options.where)
                    held[i] = unsubscribed_reason(where)
        if set_name is not None:
            found = store.contacts(contacts.set_scope(set_name), recipients)
            for i, rcpt in enumerate(recipients):
                contact = found.get(rcpt)
                if contact is not None and contact.unsubscribe_all and i not in held:
                    held[i] = unsubscribed_reason(f"configuration set {set_name!r}")
        return held


class _Reservation:
    """A message's quota reservation under way, and the refusal it comes to (asked
    for twice: before the transforms, and once the message's fate is known)."""

    def __init__(self, submission: Submission, task: asyncio.Future[Reply | None]) -> None:
        self.submission = submission
        self.task = task
        self._answer: asyncio.Future[Reply | None] | None = None

    def refusal(self) -> asyncio.Future[Reply | None]:
        if self._answer is None:
            self._answer = asyncio.ensure_future(self._refusal())
        return self._answer

    async def _refusal(self) -> Reply | None:
        client = self.submission.client
        try:
            refusal = await asyncio.shield(self.task)
        except StateUnavailable as exc:
            # Never sent over a limit nobody could check: the client keeps the message.
            log.error("client=%s account=%s refused with 451: %s", client.ip,
                      client.account, exc)
            return _refuse("state_unavailable", R.LOCAL_ERROR)
        if refusal is None:
            return None
        reason = "rate" if refusal is R.RATE_EXCEEDED else "daily_quota"
        log.info("client=%s account=%s refused: %s (%d recipients)", client.ip,
                 client.account, refusal.text, len(self.submission.envelope.recipients))
        return _refuse(reason, refusal)


def _refuse(reason: str, reply: Reply) -> Reply:
    metrics.MESSAGES_REJECTED.labels(reason=reason).inc()
    return reply
