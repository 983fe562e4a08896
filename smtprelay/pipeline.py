"""What happens to a message after DATA: policy checks, then the spool, then the reply.

Later stages (quotas, suppression, transforms) plug in here, between the checks and
the spool; the SMTP session only ever sees this module's replies.
"""

from __future__ import annotations

import email.utils
import logging
from email.parser import BytesHeaderParser
from email.policy import compat32

from smtprelay import identities, metrics
from smtprelay.config import Config
from smtprelay.smtp import replies as R
from smtprelay.smtp.replies import Reply
from smtprelay.spool.model import NewMessage, new_message_id
from smtprelay.spool.store import Spool, SpoolError, SpoolFullError
from smtprelay.submission import Submission

log = logging.getLogger("smtprelay.pipeline")

# Headers whose addresses must each fall under the account's identities (SES checks
# From, Sender and Return-Path besides the envelope sender).
_CHECKED_HEADERS = ("From", "Sender", "Return-Path")


def header_block(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 2]


def header_addresses(data: bytes) -> tuple[dict[str, list[str]], bool]:
    """Addresses in the checked headers, and whether a From header is present at all."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(header_block(data))
    found: dict[str, list[str]] = {}
    for name in _CHECKED_HEADERS:
        values = [str(v) for v in headers.get_all(name, [])]
        if values:
            pairs = email.utils.getaddresses(values)
            found[name] = [addr if addr else "(unparseable)" for _, addr in pairs] or [
                "(unparseable)"]
    return found, "From" in found


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
        found, has_from = header_addresses(submission.data)
        if not has_from:
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
