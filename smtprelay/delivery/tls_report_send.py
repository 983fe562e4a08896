"""TLS reporting (RFC 8460), the sending half: once a day, each recipient domain that
publishes a `_smtp._tls` TXT record gets the report of the day's sessions to it.

At `delivery.tls_reporting.send_at` (UTC) the reporter takes every earlier day still
counted (smtprelay.delivery.tls_report) and, per domain, asks DNS for its record
(section 3): none, or not exactly one valid one, and the counts are forgotten; a
failed lookup is tried again at the next round, for a day. Otherwise the report is
filed with one pending delivery per `rua` URI, in the transaction that takes the
counts, then delivered:

- mailto: a multipart/report message (section 5.3) from `from_address` goes through
  the relay's own acceptance pipeline as the account that owns that identity, so it
  is DKIM-signed with that identity's keys (section 3 requires a signature), spooled
  durably and delivered (and retried) like any message. A refusal with a 4xx reply
  (quota, a store not answering) is tried again; a 5xx gives up.
- https: a POST of the gzipped JSON with Content-Type application/tlsrpt+gzip
  (section 5.4); anything but 2xx is tried again.

Retries back off from 5 minutes, doubling, and stop 24 hours after the report was
filed (section 5.5). `send_now` (`smtprelay tls-report send`) does a round at once,
optionally closing the current day so far.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import email.utils
import logging
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from smtprelay.config import Config, ConfigSource
from smtprelay.config.tls_reporting import TLSReportingConfig, sending_account
from smtprelay.delivery.dns import stub_resolver
from smtprelay.delivery.tls_report import (
    CountKey,
    Delivery,
    TLSReportStore,
    compress,
    day_start,
    report_json,
    rfc3339,
    utc_day,
)
from smtprelay.spool.model import Envelope
from smtprelay.submission.seam import Client, Submission, SubmissionHandler

log = logging.getLogger("smtprelay.delivery.tlsrpt")

LISTENER = "tlsrpt"  # the Client.listener of report messages (logs, `queue list`)
RECORD_VERSION = "v=TLSRPTv1"
MEDIA_TYPE = "application/tlsrpt+gzip"
FIRST_RETRY = 300.0
MAX_RETRY = 4 * 3600.0
GIVE_UP_AFTER = 86400.0  # RFC 8460 5.5: "for up to 24 hours after the initial attempt"
KEEP_FILED = 7 * 86400.0  # filed reports stay listed this long
_IDLE_ROUND = 300.0  # a round at least this often (DNS failures, missed wake-ups)
_LOOKUPS_AT_ONCE = 16
_USER_AGENT = "smtprelay-tlsrpt"


class LookupFailed(Exception):
    """DNS could not say whether the domain has a record (try again later)."""


def parse_record(texts: Sequence[str]) -> tuple[str, ...] | None:
    """The `rua` URIs of a domain's TXT records at _smtp._tls (RFC 8460 3), or None
    when it has no usable record: records not starting with "v=TLSRPTv1" are ignored,
    and anything but exactly one that is left means no reporting. Only mailto: and
    https: URIs are kept (the two schemes section 3 defines)."""
    records = []
    for text in texts:
        version, sep, _ = text.partition(";")
        if version.strip() == RECORD_VERSION and (sep or text.strip() == RECORD_VERSION):
            records.append(text)
    if len(records) != 1:
        return None
    uris: list[str] = []
    for field in records[0].split(";")[1:]:
        name, eq, value = field.strip().partition("=")
        if eq and name.strip().lower() == "rua":
            for uri in value.split(","):
                uri = uri.strip()
                scheme = uri.partition(":")[0].lower()
                if (scheme == "mailto" and mailto_address(uri) is not None) or \
                        (scheme == "https" and urllib.parse.urlsplit(uri).hostname):
                    uris.append(uri)
    return tuple(uris) or None


def mailto_address(uri: str) -> str | None:
    """The address of a mailto: URI (RFC 6068), or None if it has not exactly one."""
    if not uri.lower().startswith("mailto:"):
        return None
    address = urllib.parse.unquote(uri[len("mailto:"):].partition("?")[0]).strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "," in address or any(
            c in address for c in " \t\r\n<>\"\\"):
        return None
    return f"{local}@{domain.lower()}"


class RecordFinder:
    """TXT lookups at _smtp._tls.<domain> on the resolvers delivery uses."""

    def __init__(self, nameservers: Sequence[str], timeout: float) -> None:
        self._resolver = stub_resolver(nameservers, timeout)

    async def find(self, domain: str) -> tuple[str, ...] | None:
        """The domain's report URIs; None without a usable record; LookupFailed."""
        try:
            name = dns.name.from_text(f"_smtp._tls.{domain}")
            answer = await self._resolver.resolve(name, dns.rdatatype.TXT,
                                                  raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.name.EmptyLabel, dns.name.LabelTooLong,
                dns.name.NameTooLong):
            return None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"TXT _smtp._tls.{domain}: {exc}") from None
        texts = [b"".join(rdata.strings).decode("utf-8", "replace")
                 for rdata in answer.rrset or ()]
        return parse_record(texts)


# ------------------------------------------------------------------ the message

def report_filename(submitter: str, policy_domain: str, start: float, end: float,
                    unique: str) -> str:
    """RFC 8460 5.1: sender "!" policy-domain "!" begin "!" end "!" unique-id ".json.gz"."""
    return f"{submitter}!{policy_domain}!{int(start)}!{int(end)}!{unique}.json.gz"


def report_message(*, from_address: str, to: str, submitter: str, policy_domain: str,
                   report_id: str, filename: str, body: bytes, now: float,
                   hostname: str) -> bytes:
    """The report as mail (RFC 8460 5.3): multipart/report; report-type="tlsrpt", a line
    for people, then the gzipped JSON as application/tlsrpt+gzip."""
    boundary = f"tlsrpt-{secrets.token_hex(12)}"
    encoded = base64.b64encode(body).decode("ascii")
    lines = "\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))
    head = (
        f"From: {from_address}\r\n"
        f"To: {to}\r\n"
        f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
        f"Message-ID: <tlsrpt.{secrets.token_hex(12)}@{hostname}>\r\n"
        # The ABNF of 5.3, folded before each part as the RFC's own example is.
        f"Subject: Report Domain: {policy_domain}\r\n Submitter: {submitter}\r\n"
        f" Report-ID: <{report_id}>\r\n"
        f"TLS-Report-Domain: {policy_domain}\r\n"
        f"TLS-Report-Submitter: {submitter}\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type="tlsrpt";\r\n boundary="{boundary}"\r\n'
        "\r\n"
        "This is a multipart message in MIME format.\r\n")
    text = (f"This is an aggregate TLS report from {submitter} about mail to "
            f"{policy_domain} (RFC 8460).\r\n")
    return (
        f"{head}\r\n--{boundary}\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
        f"{text}\r\n--{boundary}\r\n"
        f"Content-Type: {MEDIA_TYPE}\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f'Content-Disposition: attachment;\r\n filename="{filename}"\r\n\r\n'
        f"{lines}\r\n--{boundary}--\r\n").encode("ascii")


# ------------------------------------------------------------------ the reporter

@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did (the answer of `tls-report send`)."""

    filed: tuple[tuple[str, str], ...]  # (policy domain, report id)
    without_record: tuple[str, ...]  # domains whose counts were dropped
    lookup_failed: tuple[str, ...]
    delivered: tuple[tuple[str, str], ...]  # (report id, uri)
    failed: tuple[tuple[str, str, str], ...]  # (report id, uri, why)

    def as_dict(self) -> dict[str, Any]:
        return {"filed": [list(f) for f in self.filed],
                "without_record": list(self.without_record),
                "lookup_failed": list(self.lookup_failed),
                "delivered": [list(d) for d in self.delivered],
                "failed": [list(f) for f in self.failed]}


class TLSReporter:
    """Makes the day's reports at send_at and delivers them; `run` is its task."""

    def __init__(self, live: ConfigSource, store: TLSReportStore,
                 handler: SubmissionHandler, *, clock: Callable[[], float] = time.time,
                 finder: RecordFinder | None = None) -> None:
        self._live = live
        self._store = store
        self._handler = handler
        self._clock = clock
        dns_settings = live.config.delivery.dns
        self._finder = finder or RecordFinder(dns_settings.nameservers, dns_settings.timeout)
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> TLSReportingConfig:
        return self._live.config.delivery.tls_reporting

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._one_round(include_today=False, on_schedule=True)
            except Exception:
                log.exception("TLS reporting round failed; trying again later")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), await self._sleep_for())

    async def _sleep_for(self) -> float:
        now = self._clock()
        wait = min(_IDLE_ROUND, self._next_send_at(now) - now)
        due = await asyncio.to_thread(self._store.next_due)
        if due is not None:
            wait = min(wait, due - now)
        return max(0.05, wait)

    def _next_send_at(self, now: float) -> float:
        midnight = (now // 86400.0) * 86400.0
        at = midnight + self.settings.send_at_minutes * 60.0
        return at if at > now else at + 86400.0

    async def send_now(self, *, include_today: bool = False) -> RoundResult:
        """A round now: every day before today (and today so far with include_today)
        is reported, whatever send_at says; then every pending delivery is tried."""
        return await self._one_round(include_today=include_today, on_schedule=False,
                                     every_delivery=True)

    async def _one_round(self, *, include_today: bool, on_schedule: bool,
                         every_delivery: bool = False) -> RoundResult:
        async with self._round:
            now = self._clock()
            today = utc_day(now)
            minutes = int(now % 86400.0) // 60
            filed: list[tuple[str, str]] = []
            dropped: list[str] = []
            failed_lookups: list[str] = []
            if not on_schedule or minutes >= self.settings.send_at_minutes:
                await self._file(now, today, include_today, filed, dropped, failed_lookups)
            delivered, failed = await self._deliver(now, every_delivery)
            if on_schedule:
                await asyncio.to_thread(self._store.purge, now - KEEP_FILED)
            return RoundResult(tuple(filed), tuple(dropped), tuple(failed_lookups),
                               tuple(delivered), tuple(failed))

    async def _file(self, now: float, today: str, include_today: bool,
                    filed: list[tuple[str, str]], dropped: list[str],
                    failed_lookups: list[str]) -> None:
        pending = await asyncio.to_thread(self._store.pending, today)
        pending = [p for p in pending if p.day < today or include_today]
        if not pending:
            return
        gate = asyncio.Semaphore(_LOOKUPS_AT_ONCE)
        found: dict[str, tuple[str, ...] | LookupFailed | None] = {}

        async def lookup(domain: str) -> None:
            async with gate:
                try:
                    found[domain] = await self._finder.find(domain)
                except LookupFailed as exc:
                    found[domain] = exc

        await asyncio.gather(*(lookup(d) for d in sorted({p.policy_domain for p in pending})))
        yesterday = utc_day(now - 86400.0)
        for item in pending:
            answer = found[item.policy_domain]
            if isinstance(answer, LookupFailed):
                if item.day < yesterday:
                    # Counted more than a day before: a report now would be stale.
                    log.warning("TLS report for %s of %s dropped: %s", item.policy_domain,
                                item.day, answer)
                    await asyncio.to_thread(self._store.discard, item.day, item.policy_domain)
                    dropped.append(item.policy_domain)
                else:
                    log.info("TLS report for %s of %s waits: %s", item.policy_domain,
                             item.day, answer)
                    failed_lookups.append(item.policy_domain)
                continue
            if answer is None:
                await asyncio.to_thread(self._store.discard, item.day, item.policy_domain)
                dropped.append(item.policy_domain)
                continue
            # A whole day ends at 23:59:59, as in RFC 8460's example report.
            end = now if item.day == today else day_start(item.day) + 86399.0
            report_id = await asyncio.to_thread(
                self._store.file_report, item.day, item.policy_domain, end=end, now=now,
                uris=answer, build=self._builder(item.policy_domain))
            if report_id is not None:
                log.info("TLS report %s filed for %s (%s): %d successful, %d failed "
                         "sessions, to %s", report_id, item.policy_domain, item.day,
                         item.successes, item.failures, ", ".join(answer))
                filed.append((item.policy_domain, report_id))
        if include_today:
            await asyncio.to_thread(self._store.close_day_at, today, now)

    def _builder(self, policy_domain: str) -> Callable[
            [list[CountKey], list[int], float, float], tuple[str, str, bytes]]:
        settings = self.settings
        submitter = settings.submitter_domain

        def build(rows: list[CountKey], sessions: list[int], start: float,
                  end: float) -> tuple[str, str, bytes]:
            unique = secrets.token_hex(8)
            stamp = datetime.datetime.fromtimestamp(int(start), datetime.UTC).strftime(
                "%Y%m%dT%H%M%SZ")
            # Unique per node and report, and in the msg-id form the Subject's
            # "Report-ID: <...>" wants (RFC 8460 5.3).
            report_id = f"{stamp}.{unique}.{policy_domain}@{submitter}"
            report = report_json(
                organization_name=settings.organization_name or submitter,
                contact_info=settings.contact_info or settings.from_address or "",
                report_id=report_id, start=start, end=end, policy_domain=policy_domain,
                rows=rows, sessions=sessions)
            return (report_id, report_filename(submitter, policy_domain, start, end, unique),
                    compress(report))

        return build

    # -------------------------------------------------------------- delivering

    async def _deliver(self, now: float, every: bool
                       ) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
        delivered: list[tuple[str, str]] = []
        failed: list[tuple[str, str, str]] = []
        tried: set[tuple[str, str]] = set()  # once a round, even when due again
        while True:
            due = [d for d in await asyncio.to_thread(
                self._store.due, float("inf") if every else now)
                if (d.report_id, d.uri) not in tried]
            if not due:
                return delivered, failed
            for delivery in due:
                tried.add((delivery.report_id, delivery.uri))
                try:
                    problem = await self._send(delivery)
                except Exception as exc:  # a bug must not stop the other reports
                    log.exception("TLS report %s to %s", delivery.report_id, delivery.uri)
                    problem = (True, f"internal error: {exc!r}")
                now = self._clock()
                if problem is None:
                    await asyncio.to_thread(self._store.delivered, delivery.report_id,
                                            delivery.uri, now)
                    log.info("TLS report %s sent to %s", delivery.report_id, delivery.uri)
                    delivered.append((delivery.report_id, delivery.uri))
                    continue
                retry, why = problem
                retry_at = self._retry_at(delivery, now) if retry else None
                await asyncio.to_thread(self._store.attempt_failed, delivery.report_id,
                                        delivery.uri, why, retry_at=retry_at, now=now)
                log.warning("TLS report %s to %s failed (%s); %s", delivery.report_id,
                            delivery.uri, why,
                            "giving up" if retry_at is None
                            else f"next try at {rfc3339(retry_at)}")
                failed.append((delivery.report_id, delivery.uri, why))

    @staticmethod
    def _retry_at(delivery: Delivery, now: float) -> float | None:
        wait = min(MAX_RETRY, FIRST_RETRY * 2.0 ** delivery.attempts)
        if now + wait > delivery.created_at + GIVE_UP_AFTER:
            return None
        return now + wait

    async def _send(self, delivery: Delivery) -> tuple[bool, str] | None:
        """None when the destination has the report, else (worth retrying, why)."""
        if delivery.uri.lower().startswith("mailto:"):
            return await self._mail(delivery)
        return await self._post(delivery)

    async def _mail(self, delivery: Delivery) -> tuple[bool, str] | None:
        config: Config = self._live.config
        settings = config.delivery.tls_reporting
        to = mailto_address(delivery.uri)
        account = sending_account(settings, config.accounts)
        if to is None or settings.from_address is None or account is None:
            return False, ("delivery.tls_reporting.from_address is no account's identity"
                           if to is not None else "not a single mailto: address")
        for refusal in (self._handler.check_sender(account, settings.from_address),
                        self._handler.check_recipient(account, to)):
            if refusal is not None:
                return refusal.code < 500, f"{refusal.code} {refusal.text}"
        now = self._clock()
        data = report_message(
            from_address=settings.from_address, to=to, submitter=settings.submitter_domain,
            policy_domain=delivery.policy_domain, report_id=delivery.report_id,
            filename=delivery.filename, body=delivery.body, now=now,
            hostname=config.server.hostname)
        reply = await self._handler.submit(Submission(
            client=Client(ip="127.0.0.1", port=0, helo=config.server.hostname,
                          listener=LISTENER, account=account, auth_user=None,
                          tls_version=None, tls_cipher=None),
            envelope=Envelope(mail_from=settings.from_address, recipients=(to,),
                              smtputf8=not to.isascii(), body_8bitmime=False),
            data=data, received_at=now))
        if reply.is_success:
            return None
        return reply.code < 500, f"{reply.code} {reply.text}"

    async def _post(self, delivery: Delivery) -> tuple[bool, str] | None:
        settings = self.settings
        context = ssl.create_default_context(
            cafile=str(settings.https_ca_file) if settings.https_ca_file else None)
        timeout = aiohttp.ClientTimeout(total=settings.http_timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    delivery.uri, data=delivery.body, ssl=context,
                    headers={"Content-Type": MEDIA_TYPE, "User-Agent": _USER_AGENT},
                    allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return None
                return True, f"HTTP {response.status} {response.reason or ''}".strip()
        except TimeoutError:
            return True, f"no answer within {settings.http_timeout:g}s " \
                         "(delivery.tls_reporting.http_timeout)"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return True, f"{type(exc).__name__}: {exc}"
