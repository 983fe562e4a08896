"""Sending policy over SMTP: quotas, sandbox, configuration sets, tags and suppression."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path
from typing import Any

import pytest

from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool.store import get_message, get_outcomes, open_for_cli
from tests.support import (
    Credential,
    DaemonProcess,
    RunningRelay,
    client_context,
    message,
    running,
    send_raw,
    session,
    spooled,
)


def queued(relay: RunningRelay, message_id: str) -> Any:
    conn = open_for_cli(relay.config.spool_path)
    try:
        return get_message(conn, message_id), get_outcomes(conn, message_id)
    finally:
        conn.close()


def test_a_burst_of_50_recipients_over_the_rate_is_refused_whole(tmp_path: Path) -> None:
    """SES refuses a message over the rate whole, after DATA (its 454), so smtplib's
    sendmail raises instead of dropping the refused recipients silently. (One token a
    second and a burst of 14: a refusal below needs no more than 5 s between sends.)"""
    accounts = {"acme": {"identities": ["example.com"],
                         "quota": {"max_send_rate": 1, "burst": 14, "max_24h_send": 1000}}}
    rate = (454, b"4.7.0 Throttling failure: Maximum sending rate exceeded")
    with running(tmp_path, accounts=accounts, configuration_sets={}) as relay:
        cred = relay.credential()
        smtp = session(relay, cred)
        smtp.mail("app@example.com")
        assert {smtp.rcpt(f"r{n}@example.net") for n in range(50)} == {(250, b"2.1.5 Ok")}
        assert smtp.data(message()) == rate
        # Nothing was taken: 14 fit at once, and then 5 are over the rate.
        assert send_raw(smtp, [f"s{n}@example.net" for n in range(14)], message())[0] == 250
        assert send_raw(smtp, [f"t{n}@example.net" for n in range(5)], message()) == rate
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail("app@example.com", [f"v{n}@example.net" for n in range(5)],
                          message())
        assert (refused.value.smtp_code, refused.value.smtp_error) == rate
        smtp.quit()
        (entry,) = spooled(relay.config)
        assert entry["recipients"] == [f"s{n}@example.net" for n in range(14)]


def test_daily_quota_reached_mid_session_and_after_restart(tmp_path: Path) -> None:
    accounts = {"acme": {"identities": ["example.com"],
                         "quota": {"max_send_rate": 100, "max_24h_send": 5}}}
    daily = (454, b"4.7.0 Throttling failure: Daily message quota exceeded")
    with running(tmp_path, accounts=accounts, configuration_sets={}) as relay:
        cred = relay.credential()
        smtp = session(relay, cred)
        assert send_raw(smtp, ["a@x.net", "b@x.net", "c@x.net"], message())[0] == 250
        # Three more would make 6: the whole message is refused, nothing counted...
        assert send_raw(smtp, ["d@x.net", "e@x.net", "f@x.net"], message()) == daily
        # ...so two still fit, and then nothing more.
        assert send_raw(smtp, ["d@x.net", "e@x.net"], message())[0] == 250
        assert send_raw(smtp, ["g@x.net"], message()) == daily
        smtp.quit()
        assert sum(len(e["recipients"]) for e in spooled(relay.config)) == 5
    with running(tmp_path, accounts=accounts, configuration_sets={}) as relay:
        smtp = session(relay, cred)
        assert send_raw(smtp, ["h@x.net"], message()) == daily
        smtp.quit()


def test_unknown_and_paused_configuration_sets(tmp_path: Path) -> None:
    sets = {"transactional": {}, "paused": {"sending_enabled": False}}
    with running(tmp_path, configuration_sets=sets) as relay:
        cred = relay.credential()
        smtp = session(relay, cred)
        unknown = b"X-SES-CONFIGURATION-SET: nosuchset\r\n" + message()
        assert send_raw(smtp, ["a@x.net"], unknown) == (
            554, b"5.3.0 Configuration set does not exist")
        paused = b"X-Configuration-Set: paused\r\n" + message()
        assert send_raw(smtp, ["a@x.net"], paused) == (
            554, b"5.7.1 Sending paused for this configuration set")
        assert send_raw(smtp, ["a@x.net"], message())[0] == 250
        smtp.quit()
        (entry,) = spooled(relay.config)
        stored, _ = queued(relay, entry["id"])
        assert stored.configuration_set == "transactional"  # the account default


def test_tags_control_headers_removed_and_bad_tags_reported(relay: RunningRelay,
                                                            cred: Credential) -> None:
    data = ("X-SES-CONFIGURATION-SET: transactional\r\n"
            "X-SES-MESSAGE-TAGS: campaign=spring_2026, tier=gold, prénom=José, bad tag=x\r\n"
            "X-SES-MESSAGE-TAGS: region=eu-west\r\n").encode() + message(sender="a@example.com")
    smtp = session(relay, cred)
    smtp.mail("app@example.com", ["SMTPUTF8"])
    smtp.rcpt("a@x.net")
    code, _ = smtp.data(data)
    assert code == 250
    smtp.quit()
    (entry,) = spooled(relay.config)
    assert b"X-SES-" not in entry["data"]
    stored, _ = queued(relay, entry["id"])
    tags = stored.attrs["tags"]
    assert tags["campaign"] == ["spring_2026"]
    assert tags["tier"] == ["gold"]
    assert tags["region"] == ["eu-west"]
    assert tags["ses:configuration-set"] == ["transactional"]
    assert tags["ses:from-domain"] == ["example.com"]
    assert tags["ses:source-ip"] == ["127.0.0.1"]
    assert tags["ses:caller-identity"] == [cred.username]
    assert "prénom" not in tags
    assert len(stored.attrs["tag_errors"]) == 2
    assert stored.attrs["control_headers"]["X-SES-CONFIGURATION-SET"] == "transactional"


def test_sandbox_accepts_only_verified_recipients_and_the_simulator(tmp_path: Path) -> None:
    accounts = {"acme": {"identities": ["example.com"], "sandbox": True,
                         "quota": {"max_send_rate": 50, "max_24h_send": 200}}}
    with running(tmp_path, accounts=accounts, configuration_sets={}) as relay:
        smtp = session(relay, relay.credential())
        smtp.mail("app@example.com")
        assert smtp.rcpt("someone@example.net") == (
            554, b"5.7.1 Message rejected: Email address is not verified. The following "
                 b"identities failed the check: someone@example.net")
        assert smtp.rcpt("colleague@example.com")[0] == 250
        assert smtp.rcpt("success@simulator.smtprelay.invalid")[0] == 250
        assert smtp.data(message())[0] == 250
        smtp.quit()
        (entry,) = spooled(relay.config)
        assert entry["recipients"] == ["colleague@example.com",
                                       "success@simulator.smtprelay.invalid"]


def test_suppressed_recipient_is_accepted_not_delivered_and_bounced(tmp_path: Path) -> None:
    sets = {"transactional": {}, "complaints-only": {"suppression": {"reasons": ["COMPLAINT"]}},
            "no-suppression": {"suppression": {"reasons": []}}}
    with running(tmp_path, configuration_sets=sets) as relay:
        store = SQLiteSuppressionStore(relay.config.state_path)
        store.open()
        store.add("acme", "Gone@Example.NET", "BOUNCE", source_message_id="m-1")
        store.add("other", "alive@example.net", "BOUNCE")  # another account's list
        store.close()
        smtp = session(relay, relay.credential())
        ids = []
        for set_name in ("transactional", "complaints-only", "no-suppression"):
            data = f"X-SES-CONFIGURATION-SET: {set_name}\r\n".encode() + message()
            code, text = send_raw(smtp, ["Gone@example.net", "alive@example.net"], data)
            assert code == 250  # accepted at RCPT and DATA, as SES does
            ids.append(text.decode().split()[-1])
        smtp.quit()
        stored, outcomes = queued(relay, ids[0])
        assert [(r.address, r.state.value) for r in stored.recipients] == [
            ("Gone@example.net", "suppressed"), ("alive@example.net", "queued")]
        assert [(o.index, o.kind, o.bounce_type, o.bounce_subtype) for o in outcomes] == [
            (0, "bounce", "Permanent", "OnAccountSuppressionList")]
        for other in ids[1:]:
            stored, outcomes = queued(relay, other)
            assert [r.state.value for r in stored.recipients] == ["queued", "queued"]
            assert outcomes == []


def test_stats_shows_usage_against_quota(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, accounts={
        "acme": {"identities": ["example.com"],
                 "quota": {"max_send_rate": 100, "max_24h_send": 1000}},
        "other": {"identities": ["other.test"]}}, configuration_sets={}).start()
    try:
        cred = json.loads(daemon.cli("credentials", "create", "acme", "--json").stdout)
        smtp = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=10)
        smtp.starttls(context=client_context())
        smtp.login(cred["username"], cred["password"])
        smtp.sendmail("app@example.com", ["a@x.net", "b@x.net", "c@x.net"], message())
        smtp.quit()
        daemon.cli("suppression", "add", "x@y.net", "--account", "acme", "--reason", "BOUNCE")
        import time
        deadline = time.monotonic() + 10
        while True:
            shown = json.loads(daemon.cli("stats", "--json").stdout)
            rows = {r["account"]: r for r in shown["accounts"]}
            if rows["acme"]["sent_24h"] == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert rows["acme"]["sent_24h"] == 3
        assert rows["acme"]["max_24h_send"] == 1000
        assert rows["acme"]["suppressed_addresses"] == 1
        assert rows["acme"]["spool_recipients"] == {"queued": 3}
        assert rows["other"]["max_24h_send"] is None
        text = daemon.cli("stats").stdout
        assert "acme" in text and "0.3%" in text
    finally:
        daemon.stop()
