"""TLS reporting (RFC 8460) end to end: the relay delivers to MX sinks that do STARTTLS
well, badly or not at all, then reports each recipient domain's sessions to what its
`_smtp._tls` record names: by mail through the relay itself (to another sink) and by
an HTTPS POST (to an aiohttp server), every report checked against the RFC's schema.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import re
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from smtprelay.delivery.tls_report import TLSReportStore, database_path
from tests.dkimpeers import Key, identities, mail_dkim, ours
from tests.dnsserver import TestDNSServer
from tests.e2e.delivery_world import World, wait_for
from tests.support import free_port

SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "tlsrpt.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
FROM = "tls-reports@example.com"
RUA = "tlsrpt@reports.test"


@dataclass
class Posted:
    path: str
    content_type: str
    body: bytes


class ReportReceiver:
    """An HTTPS server that takes POSTed reports (RFC 8460 5.4), on its own loop."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.posts: list[Posted] = []
        self.port = free_port()
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/tlsrpt"

    async def _take(self, request: web.Request) -> web.Response:
        self.posts.append(Posted(request.path, request.headers.get("Content-Type", ""),
                                 await request.read()))
        return web.Response(status=201)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/tlsrpt", self._take)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._tls).start()

    def start(self) -> ReportReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def receiver(sink_tls: ssl.SSLContext) -> Iterator[ReportReceiver]:
    server = ReportReceiver(sink_tls).start()
    try:
        yield server
    finally:
        server.stop()


def start(net: World, sink_tls_dir: Path, keys: dict[str, Key]) -> None:
    """The relay with reports on, from an identity signed with both keys."""
    net.start(top={"identities": identities(keys)}, tls_reporting={
        "enabled": True, "organization_name": "Relay Test Org", "from_address": FROM,
        "contact_info": "postmaster@example.com",
        "https_ca_file": str(sink_tls_dir / "sink-cert.pem")})


def send_reports(net: World, *, include_today: bool = True) -> dict[str, Any]:
    assert net.relay is not None
    answer: dict[str, Any] = net.relay.call(
        net.relay.relay.send_tls_reports(include_today=include_today, wait=None))
    return answer


def report_of(data: bytes) -> tuple[EmailMessage, str, dict[str, Any]]:
    """A report message: the message, the attachment's file name and the report."""
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    [attachment] = [p for p in message.iter_parts()
                    if p.get_content_type() == "application/tlsrpt+gzip"]
    assert isinstance(attachment, EmailMessage)
    name = attachment.get_filename()
    assert name is not None
    report: dict[str, Any] = json.loads(gzip.decompress(attachment.get_content()))
    VALIDATOR.validate(report)
    return message, name, report


def summary(report: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(p["policy"]["policy-type"], p["summary"]["total-successful-session-count"],
             p["summary"]["total-failure-session-count"]) for p in report["policies"]]


def test_reports_by_mail_and_https_count_each_domains_sessions(
        net: World, dns: TestDNSServer, keys: dict[str, Key], sink_tls_dir: Path,
        receiver: ReportReceiver) -> None:
    good = net.smtp_host("good.test", starttls=True)
    net.smtp_host("broken.test", starttls=True, starttls_failure="garbage")
    net.smtp_host("plain.test")
    quiet = net.smtp_host("quiet.test", starttls=True)
    reports = net.smtp_host("reports.test")
    dns.add("_smtp._tls.good.test", "TXT", f'"v=TLSRPTv1; rua=mailto:{RUA}"')
    dns.add("_smtp._tls.broken.test", "TXT", f'"v=TLSRPTv1; rua={receiver.url}"')
    # A long record in two strings, as DNS holds them: joined before reading.
    dns.add("_smtp._tls.plain.test", "TXT",
            f'"v=TLSRPTv1; rua=mailto:{RUA}," "{receiver.url}"')
    dns.add("_smtp._tls.quiet.test", "TXT", '"v=spf1 -all"')  # not a TLSRPT record
    start(net, sink_tls_dir, keys)

    message_id = net.submit(["a@good.test", "b@good.test", "c@broken.test", "d@plain.test",
                             "e@quiet.test"])
    assert set(net.wait_final(message_id).values()) == {"delivered"}
    assert [t.tls for t in good.received] == [True]
    assert [t.tls for t in quiet.received] == [True]

    answer = send_reports(net)
    assert sorted(domain for domain, _ in answer["filed"]) == [
        "broken.test", "good.test", "plain.test"]
    assert answer["without_record"] == ["quiet.test"]
    ids = dict(answer["filed"])

    # By mail: through the relay, signed, to the sink of reports.test.
    wait_for(lambda: len(reports.received) == 2)
    mailed = {}
    for txn in reports.received:
        assert txn.mail_from.endswith("example.com") and txn.rcpt_tos == (RUA,)
        message, name, report = report_of(txn.data)
        domain = report["policies"][0]["policy"]["policy-domain"]
        mailed[domain] = report
        assert message["From"] == FROM
        assert message["TLS-Report-Domain"] == domain
        assert message["TLS-Report-Submitter"] == "example.com"
        assert message["Subject"] == (f"Report Domain: {domain} Submitter: example.com "
                                      f"Report-ID: <{report['report-id']}>")
        assert re.fullmatch(rf"example\.com!{re.escape(domain)}!\d+!\d+![0-9a-f]+\.json\.gz",
                            name)
        assert report["report-id"] == ids[domain]
        assert report["organization-name"] == "Relay Test Org"
        assert report["contact-info"] == "postmaster@example.com"
        # RFC 8460 3: "reports sent via SMTP MUST contain a valid DKIM signature".
        # Checked by an independent verifier (Mail::DKIM; OpenDKIM is test_dkim's).
        assert ours(mail_dkim(txn.data, dns))["rsa-sha256"] == "pass"
        signed = re.search(rb"DKIM-Signature:.*?\bh=([^;]+);", txn.data, re.S)
        assert signed is not None
        fields = {f.strip().lower() for f in re.sub(rb"\s", b"", signed[1]).split(b":")}
        assert {b"tls-report-domain", b"tls-report-submitter"} <= fields
    assert set(mailed) == {"good.test", "plain.test"}
    assert summary(mailed["good.test"]) == [("no-policy-found", 1, 0)]
    assert summary(mailed["plain.test"]) == [("no-policy-found", 0, 1)]
    [detail] = mailed["plain.test"]["policies"][0]["failure-details"]
    assert detail == {"result-type": "starttls-not-supported", "sending-mta-ip": "127.0.0.1",
                      "receiving-mx-hostname": "mx4.plain.test", "receiving-ip": "127.0.0.4",
                      "failed-session-count": 1}

    # By HTTPS: the same reports, gzipped, as application/tlsrpt+gzip.
    wait_for(lambda: len(receiver.posts) == 2)
    posted = {}
    for post in receiver.posts:
        assert post.content_type == "application/tlsrpt+gzip"
        report = json.loads(gzip.decompress(post.body))
        VALIDATOR.validate(report)
        posted[report["policies"][0]["policy"]["policy-domain"]] = report
    assert posted["plain.test"] == mailed["plain.test"]
    assert summary(posted["broken.test"]) == [("no-policy-found", 0, 1)]
    [detail] = posted["broken.test"]["policies"][0]["failure-details"]
    assert detail["result-type"] == "validation-failure"  # STARTTLS, then no handshake
    assert detail["receiving-mx-hostname"] == "mx3.broken.test"

    # Nothing is left counted of those sessions, and each destination has its report.
    assert net.relay is not None
    store = TLSReportStore(database_path(net.relay.config.server.data_dir))
    try:
        assert {p.policy_domain for p in store.pending()} <= {"reports.test"}
        states = {(r.policy_domain, uri): state for r in store.reports()
                  for uri, state, _, _ in r.destinations}
    finally:
        store.close()
    assert states == {("good.test", f"mailto:{RUA}"): "sent",
                      ("broken.test", receiver.url): "sent",
                      ("plain.test", f"mailto:{RUA}"): "sent",
                      ("plain.test", receiver.url): "sent"}
    # Reported once: a second round finds nothing new for these domains.
    again = send_reports(net)
    assert not {d for d, _ in again["filed"]} & {"good.test", "broken.test", "plain.test"}
    assert len(receiver.posts) == 2


def test_a_restart_between_the_sessions_and_the_report_loses_no_count(
        net: World, dns: TestDNSServer, keys: dict[str, Key], sink_tls_dir: Path) -> None:
    net.smtp_host("good.test", starttls=True)
    net.smtp_host("plain.test")
    reports = net.smtp_host("reports.test")
    for domain in ("good.test", "plain.test"):
        dns.add(f"_smtp._tls.{domain}", "TXT", f'"v=TLSRPTv1; rua=mailto:{RUA}"')
    start(net, sink_tls_dir, keys)
    first = net.submit(["a@good.test", "b@plain.test"])
    assert set(net.wait_final(first).values()) == {"delivered"}
    net.stop()  # the last second's counts are written as the relay stops

    start(net, sink_tls_dir, keys)
    second = net.submit(["c@plain.test"])
    assert set(net.wait_final(second).values()) == {"delivered"}
    # The operator's way: `smtprelay tls-report send` asks the running relay.
    assert net.relay is not None
    run = subprocess.run(
        [sys.executable, "-m", "smtprelay", "tls-report", "send", "--include-today",
         "-c", str(net.tmp_path / "smtprelay.yaml")], capture_output=True, text=True,
        timeout=60)
    assert run.returncode == 0, run.stderr
    # What it did, unless the round outlasted the control socket's few seconds.
    assert ("filed" in run.stdout and "good.test" in run.stdout) or \
        "still at it" in run.stdout, run.stdout
    wait_for(lambda: len(reports.received) == 2)
    found = {}
    for txn in reports.received:
        _, _, report = report_of(txn.data)
        found[report["policies"][0]["policy"]["policy-domain"]] = summary(report)
    assert found == {"good.test": [("no-policy-found", 1, 0)],
                     "plain.test": [("no-policy-found", 0, 2)]}

    listed = subprocess.run(
        [sys.executable, "-m", "smtprelay", "tls-report", "list", "--json",
         "-c", str(net.tmp_path / "smtprelay.yaml")], capture_output=True, text=True,
        timeout=60)
    assert listed.returncode == 0, listed.stderr
    filed = json.loads(listed.stdout)["reports"]
    assert sorted(r["policy_domain"] for r in filed) == ["good.test", "plain.test"]
    assert all(d["state"] == "sent" for r in filed for d in r["destinations"])


def test_an_unreachable_https_address_is_retried_later(
        net: World, dns: TestDNSServer, keys: dict[str, Key], sink_tls_dir: Path) -> None:
    net.smtp_host("good.test", starttls=True)
    closed = f"https://127.0.0.1:{free_port()}/tlsrpt"  # nothing listens there
    dns.add("_smtp._tls.good.test", "TXT", f'"v=TLSRPTv1; rua={closed}"')
    start(net, sink_tls_dir, keys)
    message_id = net.submit(["a@good.test"])
    assert set(net.wait_final(message_id).values()) == {"delivered"}
    answer = send_reports(net)
    [(report_id, uri, why)] = answer["failed"]
    assert uri == closed and why
    assert net.relay is not None
    store = TLSReportStore(database_path(net.relay.config.server.data_dir))
    try:
        [report] = store.reports()
        due = store.next_due()
    finally:
        store.close()
    assert report.report_id == report_id
    assert report.destinations[0][1:3] == ("pending", 1)  # kept, one attempt made
    assert due is not None and due > report.created_at + 60  # backs off, not at once

