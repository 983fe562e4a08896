"""TLS reporting (RFC 8460): the record's syntax, the counts' store, the report's JSON
against the RFC's schema, the report message, and the configuration's checks."""

from __future__ import annotations

import email
import email.message
import email.policy
import gzip
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from smtprelay.config import ConfigError
from smtprelay.delivery.client import ConnectError
from smtprelay.delivery.model import Destination, Verdict
from smtprelay.delivery.tls_outcome import TLSOutcome
from smtprelay.delivery.tls_report import (
    CountKey,
    TLSReportCollector,
    TLSReportStore,
    compress,
    day_start,
    observed,
    report_json,
    utc_day,
)
from smtprelay.delivery.tls_report_send import (
    mailto_address,
    parse_record,
    report_filename,
    report_message,
)
from tests.support import base_config, write_config

SCHEMA = json.loads((Path(__file__).parents[2] / "data" / "tlsrpt.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
DAY = "2026-12-05"
NOON = day_start(DAY) + 12 * 3600


def outcome(domain: str = "example.net", failure: str | None = None, *,
            policy_type: str = "no-policy-found", strings: tuple[str, ...] = (),
            mx: str = "mx1.example.net", ip: str = "192.0.2.1") -> TLSOutcome:
    return TLSOutcome(policy_type, domain, strings, mx, ip, "198.51.100.7",  # type: ignore[arg-type]
                      failure)


# ------------------------------------------------------------------ the TXT record

@pytest.mark.parametrize(("texts", "expected"), [
    (["v=TLSRPTv1; rua=mailto:tlsrpt@example.net"], ("mailto:tlsrpt@example.net",)),
    (["v=TLSRPTv1;rua=mailto:a@example.net, https://reports.example.net/tlsrpt"],
     ("mailto:a@example.net", "https://reports.example.net/tlsrpt")),
    # Section 3's example with an extension field, which is ignored.
    (["v=TLSRPTv1; rua=https://r.example.net/x; ext=1;"], ("https://r.example.net/x",)),
    # Other TXT records at the name are discarded before counting.
    (["v=spf1 -all", "v=TLSRPTv1; rua=mailto:a@example.net"], ("mailto:a@example.net",)),
    # Not exactly one record: no reporting.
    (["v=TLSRPTv1; rua=mailto:a@example.net", "v=TLSRPTv1; rua=mailto:b@example.net"], None),
    ([], None),
    (["v=TLSRPTv10; rua=mailto:a@example.net"], None),
    (["rua=mailto:a@example.net; v=TLSRPTv1"], None),
    (["v=TLSRPTv1"], None),  # no rua
    # Schemes other than mailto and https are not reporting addresses.
    (["v=TLSRPTv1; rua=http://r.example.net/x,ftp://x"], None),
    (["v=TLSRPTv1; rua=http://r.example.net/x, mailto:a@example.net"],
     ("mailto:a@example.net",)),
])
def test_record(texts: list[str], expected: tuple[str, ...] | None) -> None:
    assert parse_record(texts) == expected


def test_mailto_addresses() -> None:
    assert mailto_address("mailto:TLS@Example.NET") == "TLS@example.net"
    assert mailto_address("mailto:tls%2Breports@example.net?subject=x") == \
        "tls+reports@example.net"
    assert mailto_address("mailto:a@example.net,b@example.net") is None
    assert mailto_address("mailto:nobody") is None
    assert mailto_address("https://example.net") is None


# ------------------------------------------------------------------ the report

def filed_report(store: TLSReportStore, domain: str = "example.net", *,
                 end: float | None = None, report_id: str = "r1@relay.test") -> dict[str, Any]:
    built: dict[str, Any] = {}

    def build(rows: list[CountKey], sessions: list[int], start: float,
              end: float) -> tuple[str, str, bytes]:
        built["report"] = report_json(
            organization_name="Relay Org", contact_info="tlsrpt@relay.test",
            report_id=report_id, start=start, end=end, policy_domain=domain,
            rows=rows, sessions=sessions)
        return report_id, "f.json.gz", compress(built["report"])

    filed = store.file_report(DAY, domain, end=end or day_start(DAY) + 86399,
                              now=NOON, uris=["mailto:a@example.net"], build=build)
    assert filed == report_id
    report: dict[str, Any] = built["report"]
    return report


async def test_counts_become_a_report_the_schema_accepts(tmp_path: Path) -> None:
    store = TLSReportStore(tmp_path / "t.db")
    collector = TLSReportCollector(store, clock=lambda: NOON)
    for _ in range(5):
        collector.record(outcome())
    for _ in range(2):
        collector.record(outcome(failure="starttls-not-supported", mx="mx2.example.net",
                                 ip="192.0.2.2"))
    collector.record(outcome(failure="validation-failure"))
    sts = ("version: STSv1", "mode: enforce", "mx: *.example.net", "max_age: 86400")
    collector.record(outcome(policy_type="sts", strings=sts))
    collector.record(outcome(policy_type="sts", strings=sts, failure="certificate-expired"))
    collector.record(outcome(policy_type="tlsa", strings=("3 1 1 abcd",)))
    collector.record(outcome("other.example", failure="starttls-not-supported"))
    await collector.close()

    assert {(p.policy_domain, p.successes, p.failures) for p in store.pending()} == {
        ("example.net", 7, 4), ("other.example", 0, 1)}
    report = filed_report(store)
    VALIDATOR.validate(report)
    assert report["date-range"] == {"start-datetime": "2026-12-05T00:00:00Z",
                                    "end-datetime": "2026-12-05T23:59:59Z"}
    by_type = {p["policy"]["policy-type"]: p for p in report["policies"]}
    none = by_type["no-policy-found"]
    assert none["policy"] == {"policy-type": "no-policy-found", "policy-domain": "example.net"}
    assert none["summary"] == {"total-successful-session-count": 5,
                               "total-failure-session-count": 3}
    assert none["failure-details"] == [
        {"result-type": "starttls-not-supported", "sending-mta-ip": "198.51.100.7",
         "receiving-mx-hostname": "mx2.example.net", "receiving-ip": "192.0.2.2",
         "failed-session-count": 2},
        {"result-type": "validation-failure", "sending-mta-ip": "198.51.100.7",
         "receiving-mx-hostname": "mx1.example.net", "receiving-ip": "192.0.2.1",
         "failed-session-count": 1}]
    assert by_type["sts"]["policy"] == {"policy-type": "sts", "policy-string": list(sts),
                                        "policy-domain": "example.net",
                                        "mx-host": ["*.example.net"]}
    assert by_type["sts"]["summary"] == {"total-successful-session-count": 1,
                                         "total-failure-session-count": 1}
    assert by_type["tlsa"]["policy"]["mx-host"] == ["mx1.example.net"]
    assert "failure-details" not in by_type["tlsa"]
    # Taken once: the domain's counts are gone, the other domain's are still there.
    assert [p.policy_domain for p in store.pending()] == ["other.example"]
    assert store.file_report(DAY, "example.net", end=0, now=NOON, uris=[],
                             build=lambda *a: ("x", "x", b"")) is None
    store.close()


def test_schema_refuses_what_the_rfc_does_not_define() -> None:
    good = {"organization-name": "o", "date-range": {"start-datetime": "2026-12-05T00:00:00Z",
                                                      "end-datetime": "2026-12-05T23:59:59Z"},
            "contact-info": "c", "report-id": "r",
            "policies": [{"policy": {"policy-type": "no-policy-found", "policy-domain": "d"},
                          "summary": {"total-successful-session-count": 1,
                                      "total-failure-session-count": 0}}]}
    VALIDATOR.validate(good)
    for broken in (
        {**good, "organisation-name": "o"},
        {**good, "date-range": {"start-datetime": "2026-12-05", "end-datetime": "x"}},
        {**good, "policies": [{"policy": {"policy-type": "dane", "policy-domain": "d"},
                               "summary": good["policies"][0]["summary"]}]},  # type: ignore[index]
        {**good, "policies": [{**good["policies"][0],  # type: ignore[index]
                               "failure-details": [{"result-type": "tls-broken",
                                                    "failed-session-count": 1}]}]},
    ):
        assert not VALIDATOR.is_valid(broken)


def test_a_day_reported_early_continues_where_that_report_ended(tmp_path: Path) -> None:
    store = TLSReportStore(tmp_path / "t.db")
    store.add([(CountKey.of(outcome(), DAY), 3)])
    first = filed_report(store, end=NOON)
    assert first["date-range"]["end-datetime"] == "2026-12-05T12:00:00Z"
    store.close_day_at(DAY, NOON)
    store.add([(CountKey.of(outcome(), DAY), 1)])
    second = filed_report(store, report_id="r2@relay.test")
    assert second["date-range"] == {"start-datetime": "2026-12-05T12:00:00Z",
                                    "end-datetime": "2026-12-05T23:59:59Z"}
    assert second["policies"][0]["summary"]["total-successful-session-count"] == 1
    store.close()


def test_deliveries_retry_then_finish_and_are_purged(tmp_path: Path) -> None:
    store = TLSReportStore(tmp_path / "t.db")
    store.add([(CountKey.of(outcome(), DAY), 1)])
    store.file_report(DAY, "example.net", end=NOON, now=NOON,
                      uris=["mailto:a@example.net", "https://r.example.net/"],
                      build=lambda *a: ("r1", "f.json.gz", b"gz"))
    assert {d.uri for d in store.due(NOON)} == {"mailto:a@example.net",
                                                "https://r.example.net/"}
    store.delivered("r1", "mailto:a@example.net", NOON)
    store.attempt_failed("r1", "https://r.example.net/", "HTTP 503", retry_at=NOON + 300,
                         now=NOON)
    assert store.due(NOON + 299) == []
    assert store.next_due() == NOON + 300
    assert store.purge(NOON + 10 * 86400) == 0  # a destination still pending
    [again] = store.due(NOON + 300)
    assert again.attempts == 1 and again.body == b"gz"
    store.attempt_failed("r1", "https://r.example.net/", "HTTP 503", retry_at=None,
                         now=NOON + 300)
    assert store.next_due() is None
    [report] = store.reports()
    assert report.destinations == (("https://r.example.net/", "failed", 2, "HTTP 503"),
                                   ("mailto:a@example.net", "sent", 1, None))
    assert store.purge(NOON + 10 * 86400) == 1
    assert store.reports() == []
    store.close()


def test_counts_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    store = TLSReportStore(tmp_path / "t.db")
    store.add([(CountKey.of(outcome(), DAY), 2)])
    store.close()
    again = TLSReportStore(tmp_path / "t.db")
    again.add([(CountKey.of(outcome(), DAY), 1)])
    assert [(p.successes, p.failures) for p in again.pending()] == [(3, 0)]
    again.close()


def test_days_are_utc() -> None:
    assert utc_day(day_start(DAY)) == DAY
    assert utc_day(day_start(DAY) - 1) == "2026-12-04"


# ------------------------------------------------------------------ what a session says

@pytest.mark.parametrize(("status", "code", "expected"), [
    ("4.7.4", None, "starttls-not-supported"),  # require, not offered
    ("4.7.5", 454, "starttls-not-supported"),  # require, STARTTLS refused
    ("4.7.5", None, "validation-failure"),  # require, the handshake failed
    ("4.4.1", None, None),  # no connection: transient, not reported
])
def test_required_tls_failures(status: str, code: int | None, expected: str | None) -> None:
    error = ConnectError(Verdict.DEFERRED, status, "why", code=code)
    found = observed("example.net", Destination(host="mx1.example.net", address="192.0.2.1",
                                                preference=10), error)
    if expected is None:
        assert found is None
    else:
        assert found == TLSOutcome("no-policy-found", "example.net", (), "mx1.example.net",
                                   "192.0.2.1", None, expected)


# ------------------------------------------------------------------ the message

def test_report_message() -> None:
    body = compress({"report-id": "x"})
    name = report_filename("relay.test", "example.net", day_start(DAY), NOON, "00ff")
    assert name == f"relay.test!example.net!{int(day_start(DAY))}!{int(NOON)}!00ff.json.gz"
    data = report_message(from_address="tlsrpt@relay.test", to="rua@example.net",
                          submitter="relay.test", policy_domain="example.net",
                          report_id="abc@relay.test", filename=name, body=body, now=NOON,
                          hostname="relay.test")
    assert b"\n" not in data.replace(b"\r\n", b"")
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["Subject"] == ("Report Domain: example.net Submitter: relay.test "
                                  "Report-ID: <abc@relay.test>")
    assert message["TLS-Report-Domain"] == "example.net"
    assert message["TLS-Report-Submitter"] == "relay.test"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_filename() == name
    assert json.loads(gzip.decompress(attachment.get_content())) == {"report-id": "x"}


# ------------------------------------------------------------------ configuration

def config_problems(tmp_path: Path, reporting: dict[str, Any]) -> list[str]:
    from smtprelay.app.preflight import load_checked

    path = write_config(tmp_path / "c.yaml", base_config(
        tmp_path / "var", delivery={"mode": "mx", "tls_reporting": reporting}))
    with pytest.raises(ConfigError) as info:
        load_checked(path)
    return info.value.problems


def test_configuration_problems_name_the_key(tmp_path: Path) -> None:
    [problem] = config_problems(tmp_path, {"enabled": True, "organization_name": "Org"})
    assert problem.startswith("delivery.tls_reporting") and "from_address" in problem
    [problem] = config_problems(tmp_path, {"enabled": True, "organization_name": "Org",
                                           "from_address": "tlsrpt@nowhere.test"})
    assert problem.startswith("delivery.tls_reporting.from_address: tlsrpt@nowhere.test is "
                              "not an identity of any account")
    [problem] = config_problems(tmp_path, {"enabled": True, "organization_name": "Org",
                                           "from_address": "tlsrpt@example.com",
                                           "submitter": "relay.test"})
    assert "submitter: relay.test is not the domain of from_address" in problem
    [problem] = config_problems(tmp_path, {"send_at": "25:00"})
    assert problem.startswith("delivery.tls_reporting.send_at")


# ------------------------------------------------------------------ the daily round

class FakeLive:
    def __init__(self, config: Any) -> None:
        self.config = config


class Finder:
    """DNS as the test says: domain -> URIs, None (no record) or a LookupFailed."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    async def find(self, domain: str) -> tuple[str, ...] | None:
        answer = self.answers.get(domain)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]


class Handler:
    """The pipeline's seam, answering submissions with `reply`."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.submitted: list[Any] = []

    def check_sender(self, account: str, address: str) -> None:
        return None

    def check_recipient(self, account: str, address: str) -> None:
        return None

    async def submit(self, submission: Any) -> Any:
        self.submitted.append(submission)
        return self.reply


def reporter_for(tmp_path: Path, now: list[float], answers: dict[str, Any],
                 reply: Any) -> tuple[Any, TLSReportStore, Handler]:
    from smtprelay.config import load_config
    from smtprelay.delivery.tls_report_send import RecordFinder, TLSReporter

    path = write_config(tmp_path / "c.yaml", base_config(tmp_path / "var", delivery={
        "mode": "mx", "tls_reporting": {"enabled": True, "organization_name": "Org",
                                        "from_address": "tlsrpt@example.com",
                                        "send_at": "01:30"}}))
    store = TLSReportStore(tmp_path / "t.db")
    handler = Handler(reply)
    finder: RecordFinder = Finder(answers)  # type: ignore[assignment]
    reporter = TLSReporter(FakeLive(load_config(path).config), store,
                           handler, clock=lambda: now[0], finder=finder)  # type: ignore[arg-type]
    return reporter, store, handler


async def test_the_day_is_reported_at_send_at_and_mailed_as_the_identitys_account(
        tmp_path: Path) -> None:
    from smtprelay.mail.replies import Reply

    next_day = day_start(DAY) + 86400
    now = [next_day + 3600]  # 01:00, before send_at (01:30)
    reporter, store, handler = reporter_for(
        tmp_path, now, {"example.net": ("mailto:rua@example.net",)},
        Reply(250, "2.0.0 Ok 1"))
    store.add([(CountKey.of(outcome(), DAY), 4)])
    store.add([(CountKey.of(outcome("quiet.example"), DAY), 1)])
    nothing = await reporter._one_round(include_today=False, on_schedule=True)
    assert nothing.filed == () and len(store.pending()) == 2
    now[0] = next_day + 5400  # 01:30
    done = await reporter._one_round(include_today=False, on_schedule=True)
    assert [domain for domain, _ in done.filed] == ["example.net"]
    assert done.without_record == ("quiet.example",)
    assert store.pending() == []
    [submission] = handler.submitted
    assert submission.client.account == "acme" and submission.client.listener == "tlsrpt"
    assert submission.envelope.mail_from == "tlsrpt@example.com"
    assert submission.envelope.recipients == ("rua@example.net",)
    message = email.message_from_bytes(submission.data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    [attachment] = [p for p in message.iter_parts()
                    if p.get_content_type() == "application/tlsrpt+gzip"]
    body = json.loads(gzip.decompress(attachment.get_content()))
    VALIDATOR.validate(body)
    assert body["policies"][0]["summary"]["total-successful-session-count"] == 4
    store.close()


async def test_refusals_are_retried_or_given_up_and_lookups_retried(tmp_path: Path) -> None:
    from smtprelay.delivery.tls_report_send import LookupFailed
    from smtprelay.mail.replies import Reply

    now = [day_start(DAY) + 86400 + 7200]
    reporter, store, handler = reporter_for(
        tmp_path, now, {"example.net": ("mailto:rua@example.net",),
                        "refused.example": ("mailto:rua@refused.example",),
                        "flaky.example": LookupFailed("SERVFAIL"),
                        "old.example": LookupFailed("SERVFAIL")},
        Reply(454, "4.7.0 Throttling failure: Maximum sending rate exceeded"))
    for domain in ("example.net", "flaky.example"):
        store.add([(CountKey.of(outcome(domain), DAY), 1)])
    store.add([(CountKey.of(outcome("old.example"), "2026-12-01"), 1)])
    result = await reporter._one_round(include_today=False, on_schedule=True)
    # A day-old count waits for DNS; an older one is dropped.
    assert result.lookup_failed == ("flaky.example",)
    assert result.without_record == ("old.example",)
    assert [p.policy_domain for p in store.pending()] == ["flaky.example"]
    [(_, uri, why)] = result.failed
    assert uri == "mailto:rua@example.net" and why.startswith("454")
    assert store.next_due() == now[0] + 300  # 4xx: again in five minutes
    handler.reply = Reply(554, "5.7.1 no")
    now[0] += 300
    again = await reporter._one_round(include_today=False, on_schedule=True)
    assert [f[2] for f in again.failed] == ["554 5.7.1 no"]
    assert store.next_due() is None  # 5xx: given up
    store.close()
