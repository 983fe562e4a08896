"""What happens to a message after DATA: policy checks, then the spool, then the reply.

Later stages (quotas, suppression, transforms) plug in here, between the checks and
the spool; the SMTP session only ever sees this module's replies.
"""

from __future__ import annotations

import logging

from smtprelay import identities, metrics
from smtprelay.config import Config
from smtprelay.headers import HeaderField, MalformedHeader, addresses, parse_header_section
from smtprelay.smtp import replies as R
from smtprelay.smtp.replies import Reply
from smtprelay.spool.model import NewMessage, new_message_id
from smtprelay.spool.store import Spool, SpoolError, SpoolFullError
from smtprelay.submission import Submission

log = logging.getLogger("smtprelay.pipeline")

# Headers whose addresses must each fall under the account's identities (SES checks
# From, Sender and Return-Path besides the envelope sender).
_CHECKED_HEADERS = ("from", "sender", "return-path")


def header_addresses(fields: list[HeaderField]) -> dict[str, list[str]]:
    """Addresses of the checked headers, by lower-case header name."""
    found: dict[str, list[str]] = {}
    for field in fields:
        if field.key in _CHECKED_HEADERS:
            found.setdefault(field.key, []).extend(addresses(field.value))
    return found


class Pipeline:
    def __init__(self, config: Config, spool: Spool) -> None:
        self._config = config
        self._spool = spool

    def update_config(self, config: Config) -> None:
        self._config = config

    def _identities(self, account: str) -> list[str]:
        settings = self._config.accounts.get(account)
        return settings.identities if settings is not None else []

    def check_sender(self, account: str, address: str) -> Reply | None:
        failing = identities.failing(self._identities(account), [address])
        return R.not_verified(failing) if failing else None

    async def submit(self, submission: Submission) -> Reply:
        client = submission.client
        account = self._config.accounts.get(client.account)
        if account is None:
            # The account was removed by a reload while the session was open.
            return R.AUTH_REQUIRED
        try:
            fields = parse_header_section(submission.data)
        except MalformedHeader as exc:
            metrics.MESSAGES_REJECTED.labels(reason="bad_header").inc()
            return R.malformed_header(str(exc))
        found = header_addresses(fields)
        if "from" not in found:
            metrics.MESSAGES_REJECTED.labels(reason="no_from").inc()
            return R.NO_FROM
        addresses = [a for values in found.values() for a in values]
        failing = identities.failing(account.identities, addresses)
        if failing:
            metrics.MESSAGES_REJECTED.labels(reason="identity").inc()
            log.info("client=%s account=%s refused: identities %s not verified", client.ip,
                     client.account, ", ".join(failing))
            return R.not_verified(failing)
        config_set = account.default_configuration_set
        if config_set is not None and not self._config.configuration_sets[config_set] \
                .sending_enabled:
            metrics.MESSAGES_REJECTED.labels(reason="set_paused").inc()
            return R.SET_PAUSED
        message_id = new_message_id(submission.received_at)
        message = NewMessage(
            message_id=message_id, envelope=submission.envelope, data=submission.data,
            account=client.account, configuration_set=config_set,
            received_at=submission.received_at, client_ip=client.ip, client_helo=client.helo,
            auth_user=client.auth_user, listener=client.listener,
            attrs={"tls": client.tls_version} if client.tls_version else {},
        )
        try:
            await self._spool.enqueue(message)
        except SpoolFullError as exc:
            metrics.MESSAGES_REJECTED.labels(reason="storage_full").inc()
            log.error("msg=%s spool full, refused with 452: %s", message_id, exc)
            return R.STORAGE_FULL
        except SpoolError as exc:
            metrics.MESSAGES_REJECTED.labels(reason="spool_error").inc()
            log.error("msg=%s spool write failed, refused with 451: %s", message_id, exc)
            return R.LOCAL_ERROR
        metrics.MESSAGES_ACCEPTED.labels(listener=client.listener).inc()
        metrics.RECIPIENTS_ACCEPTED.inc(len(submission.envelope.recipients))
        metrics.MESSAGE_BYTES.observe(len(submission.data))
        metrics.SPOOL_DEPTH.inc()
        log.info("msg=%s accepted account=%s user=%s client=%s from=<%s> rcpts=%d size=%d",
                 message_id, client.account, client.auth_user or "-", client.ip,
                 submission.envelope.mail_from, len(submission.envelope.recipients),
                 len(submission.data))
        return R.accepted(message_id)
