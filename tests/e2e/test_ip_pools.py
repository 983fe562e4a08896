"""IP pools end to end: a set's mail really leaves from its pool's addresses with their
HELO names, Delivery events name the address, and the warm-up's caps hold per mailbox
provider and in total, with the overflow going where the pool says (a warm address,
or waiting in the queue without a bounce), across a restart, until the next day's caps.

Pool addresses are loopback addresses of their own (127.0.1.N), the MX hosts sinks on
127.0.0.N that record each session's peer address and EHLO name; a "Gmail" MX is a
sink whose name the test DNS server puts under google.com.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smtprelay.app.control import control_path
from smtprelay.auth.stores import credential_store
from smtprelay.cli.status import ask
from smtprelay.state.warmup import day_of
from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, Admin
from tests.e2e.delivery_world import World, wait_for
from tests.sinks import SmtpSink
from tests.support import Credential, message

A, B = "127.0.1.2", "127.0.1.3"
HELO = {A: "o2.pool.test", B: "o3.pool.test"}
# Day 1: 3 recipients in all, 2 to one provider; day 2: 6 and 4.
TABLE = {"schedule": "custom", "days": 2, "table": [
    {"day": 1, "total": 3, "per_provider": 2}, {"day": 2, "total": 6, "per_provider": 4}]}


@pytest.fixture(autouse=True)
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


def address(ip: str, *, warm: bool = False) -> dict[str, Any]:
    return {"address": ip, "helo": HELO[ip], "warm": warm}


def top(tmp_path: Path, pool: dict[str, Any]) -> dict[str, Any]:
    return {"ip_pools": {"bulk": pool}, "http": ADMIN_HTTP,
            "configuration_sets": {
                "transactional": {},
                "bulk": {"delivery": {"ip_pool": "bulk"}, "event_destinations": [
                    {"name": "file", "type": "file",
                     "event_types": ["Delivery", "DeliveryDelay"],
                     "path": str(tmp_path / "events.ndjson")}]}}}


def send(net: World, recipient: str, configuration_set: str = "bulk") -> str:
    body = f"X-SES-CONFIGURATION-SET: {configuration_set}\r\n".encode() + message(
        to=recipient)
    return net.submit([recipient], data=body)


def peers(sink: SmtpSink) -> list[tuple[str | None, str | None]]:
    """(peer address, EHLO name) of the session each accepted transaction came in."""
    return [(sink.sessions[t.session].peer, sink.sessions[t.session].helo)
            for t in sink.received]


def google_mx(net: World, domain: str) -> SmtpSink:
    """An MX host for `domain` that the provider table says is Google's."""
    net.dns.add_zone("google.com")
    ip = net.address()
    sink = net.sinks.smtp(host=ip, port=net.port)
    net.mx(domain, (10, f"alt{ip.rsplit('.', 1)[1]}.aspmx.l.google.com", ip))
    return sink


def test_a_pools_mail_leaves_from_its_addresses_with_their_helo_names(
        net: World, tmp_path: Path) -> None:
    one, two = net.smtp_host("one.test"), net.smtp_host("two.test")
    net.start(top=top(tmp_path, {"addresses": [address(A, warm=True),
                                               address(B, warm=True)]}))
    recipients = ["r0@one.test", "r1@two.test", "r2@one.test", "r3@two.test"]
    ids = [send(net, rcpt) for rcpt in recipients]
    for message_id, rcpt in zip(ids, recipients, strict=True):
        assert net.wait_final(message_id) == {rcpt: "delivered"}
    # The addresses take turns (one.test's first message from A, two.test's from B),
    # and a destination's next message goes where its session is already open.
    assert peers(one) == [(A, HELO[A])] * 2
    assert peers(two) == [(B, HELO[B])] * 2
    # Each Delivery event names the address its message left from (ses:outgoing-ip).
    def deliveries() -> dict[str, list[str]]:
        return {r["mail"]["messageId"]: r["mail"]["tags"]["ses:outgoing-ip"]
                for r in events(tmp_path, "Delivery")}

    wait_for(lambda: len(deliveries()) == 4)
    sent_from = {t.rcpt_tos[0]: mx.sessions[t.session].peer
                 for mx in (one, two) for t in mx.received}
    assert deliveries() == {m: [sent_from[rcpt]] for m, rcpt in zip(ids, recipients,
                                                                      strict=True)}
    # A set without a pool leaves as before: the host's source, the relay's own name.
    other = send(net, "plain@one.test", configuration_set="transactional")
    assert net.wait_final(other) == {"plain@one.test": "delivered"}
    assert peers(one)[-1] == ("127.0.0.1", "relay.test")


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_warmup_caps_hold_per_provider_and_in_total_and_the_overflow_waits(
        net: World, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    gmail = google_mx(net, "gm.test")
    plain = net.smtp_host("plain.test")
    config = top(tmp_path, {"addresses": [address(A)], "warmup": TABLE, "overflow": "wait"})
    if backend == "redis":  # every node of a cluster counts against the same caps
        config["store"] = {"backend": "redis", "url": request.getfixturevalue("redis_url"),
                           "node": "node-a"}
    # A DeliveryDelay record after a second's wait (delivery.delay.after).
    delay = {"after": "1s", "every": "1h"}
    relay = net.start(top=config, delay=delay)
    if backend == "redis":  # World's credential is made in the state database
        store = credential_store(relay.config)
        store.open()
        try:
            secret = store.create("acme", "test")
        finally:
            store.close()
        net._cred = Credential(secret.credential.username, secret.password, "acme")
    admin = Admin(relay.http_port)
    to_gmail = [send(net, f"g{i}@gm.test") for i in range(3)]
    # Gmail's cap of 2 (the third one waits, retried in between: deferred or sending).
    assert wait_for(lambda: _delivered(net, to_gmail) == 2 and _held(net, to_gmail) == 1)
    assert len(gmail.received) == 2
    to_plain = [send(net, f"p{i}@plain.test") for i in range(2)]
    # The day's total of 3: one more, to a destination of no provider.
    assert wait_for(lambda: _delivered(net, to_plain) == 1 and _held(net, to_plain) == 1)
    assert len(plain.received) == 1
    assert {p for p, _ in peers(gmail) + peers(plain)} == {A}
    waiting = [m for m in to_gmail + to_plain if _held(net, [m])]
    assert len(waiting) == 2
    for message_id in waiting:
        [recipient] = net.message(message_id).recipients
        assert recipient.last_reply is not None
        assert recipient.last_reply.startswith("x-local; IP pool bulk: every address is at")
    # Retried (delivery.retry: 1 s, at most 2 s) and still waiting: never bounced, no DSN.
    assert wait_for(lambda: all(net.message(m).recipients[0].attempts >= 2
                                for m in waiting))
    assert _held(net, waiting) == 2
    assert not [o for m in waiting for o in net.outcomes(m) if o.kind == "bounce"]
    # Their DeliveryDelay events say SES's SendingDeferral, and no outgoing address.
    assert wait_for(lambda: len(events(tmp_path, "DeliveryDelay")) == 2)
    delays = events(tmp_path, "DeliveryDelay")
    assert {d["mail"]["messageId"] for d in delays} == set(waiting)
    assert {d["deliveryDelay"]["delayType"] for d in delays} == {"SendingDeferral"}
    assert all("ses:outgoing-ip" not in d["mail"]["tags"] for d in delays)

    # The counts survive a restart: the caps still hold after it.
    net.stop()
    relay = net.start(top=config, delay=delay)
    admin = Admin(relay.http_port)
    assert wait_for(lambda: all(net.message(m).recipients[0].attempts >= 3
                                for m in waiting))
    assert len(gmail.received) == 2 and len(plain.received) == 1
    assert _held(net, waiting) == 2
    [status] = admin.get("/api/v1/ip-pools/bulk").json["items"]
    assert (status["day"], status["WarmupStatus"], status["WarmupPercentage"]) == (
        1, "IN_PROGRESS", 0)
    assert status["caps"] == {"total": 3, "per_provider": 2}
    assert status["sent_today"] == {"total": 3, "by_provider": {"google": 2, "other": 1}}

    # Day 2 (as if a day had passed since the address started): the caps rise to 6 and
    # 4, and the waiting mail goes.
    moved = admin.put(f"/api/v1/ip-pools/bulk/addresses/{A}/warmup", body={"day": 2})
    assert moved.status == 200, moved.body
    assert (moved.json["day"], moved.json["WarmupPercentage"]) == (2, 50)
    assert moved.json["started"] == time.strftime(
        "%Y-%m-%d", time.gmtime((day_of(time.time()) - 1) * 86400))
    for message_id in waiting:
        assert net.wait_final(message_id) == {
            net.message(message_id).recipients[0].address: "delivered"}
    assert len(gmail.received) == 3 and len(plain.received) == 2
    [status] = admin.get("/api/v1/ip-pools").json["items"]
    assert status["caps"] == {"total": 6, "per_provider": 4}
    assert status["sent_today"] == {"total": 5, "by_provider": {"google": 3, "other": 2}}
    # `smtprelay stats` reads what the daemon saved (the state database within a
    # second, or Redis).
    def stats() -> dict[str, Any]:
        shown = cli(net, "stats", "--json")
        assert shown.returncode == 0, shown.stderr
        [pool_address] = json.loads(shown.stdout)["ip_pools"]
        return dict(pool_address)

    assert wait_for(lambda: stats()["sent_today"]["total"] == 5)
    assert stats() == status
    text = cli(net, "stats").stdout
    assert "IP pools, warm-up today" in text
    [line] = [line for line in text.splitlines() if A in line]
    assert line.split() == ["bulk", A, "2", "50%", "IN_PROGRESS", "5", "6", "4", "google=3,",
                            "other=2"]


def test_overflow_goes_to_a_warm_address_of_the_same_pool(net: World,
                                                          tmp_path: Path) -> None:
    mx = net.smtp_host("dest.test")
    net.start(top=top(tmp_path, {"addresses": [address(A), address(B, warm=True)],
                                 "warmup": TABLE, "overflow": "warmed"}))
    ids = [send(net, f"r{i}@dest.test") for i in range(6)]
    for message_id in ids:
        net.wait_final(message_id)
    assert all(set(net.states(m).values()) == {"delivered"} for m in ids)
    # Turns A B A B A B: A sends its day's 3 (no provider here: the total counts),
    # its remaining turns go to the warm B; nothing waited.
    assert sorted(p for p, _ in peers(mx)) == [A] * 3 + [B] * 3
    assert all(net.message(m).recipients[0].attempts == 1 for m in ids)


def test_the_admin_api_refuses_unknown_pools_addresses_and_days(
        net: World, tmp_path: Path) -> None:
    net.smtp_host("dest.test")
    relay = net.start(top=top(tmp_path, {"addresses": [address(A)]}))
    admin = Admin(relay.http_port)
    assert admin.get("/api/v1/ip-pools/nope").status == 404
    path = f"/api/v1/ip-pools/bulk/addresses/{B}/warmup"
    assert admin.put(path, body={"day": 2}).status == 404  # B is not in the pool
    path = f"/api/v1/ip-pools/bulk/addresses/{A}/warmup"
    assert admin.put(path, body={"day": 0}).status == 422
    assert admin.put(path, body={}).status == 422
    assert admin.put(path, body={"day": "2"}).status == 422
    [status] = admin.get("/api/v1/ip-pools").json["items"]
    # Never used: day 1 from its first delivery on, the standard ramp's first caps.
    assert status == {"Ip": A, "Helo": HELO[A], "PoolName": "bulk",
                      "WarmupStatus": "IN_PROGRESS", "WarmupPercentage": 0, "day": 1,
                      "started": None, "caps": {"total": 200, "per_provider": 80},
                      "sent_today": {"total": 0, "by_provider": {}}}
    done = admin.put(path, body={"day": 31}).json
    assert (done["WarmupStatus"], done["WarmupPercentage"], done["caps"]) == ("DONE", 100,
                                                                              None)


def test_the_cli_puts_an_address_on_a_warmup_day_through_the_running_relay(
        net: World, tmp_path: Path) -> None:
    net.smtp_host("dest.test")
    relay = net.start(top=top(tmp_path, {"addresses": [address(A)], "warmup": TABLE}))
    admin = Admin(relay.http_port)
    moved = cli(net, "ip-pools", "warmup", "bulk", A, "--day", "2")
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.strip() == (f"bulk {A}: warm-up day 2, 50% (IN_PROGRESS); caps "
                                    "today 6 in all, 4 per mailbox provider")
    # The relay's own counters (the ones its deliveries count against) changed.
    [status] = admin.get("/api/v1/ip-pools/bulk").json["items"]
    assert (status["day"], status["caps"]) == (2, {"total": 6, "per_provider": 4})

    def listed() -> list[dict[str, Any]]:
        shown = cli(net, "ip-pools", "list", "--json")
        assert shown.returncode == 0, shown.stderr
        found: list[dict[str, Any]] = json.loads(shown.stdout)
        return found

    # `list` reads what the relay saved (the state database, within a second).
    assert wait_for(lambda: listed()[0]["day"] == 2)
    assert listed() == [status]
    [line] = [line for line in cli(net, "ip-pools", "list").stdout.splitlines() if A in line]
    assert line.split()[:5] == ["bulk", A, "2", "50%", "IN_PROGRESS"]
    for args, reason in ((("nope", A), "no IP pool 'nope' in the configuration"),
                         (("bulk", B), f"{B} is not an address of IP pool 'bulk'"),
                         (("bulk", A, "--day", "0"), "day must be from 1 to 366"),
                         (("bulk", A, "--day", "two"), "invalid int value: 'two'")):
        command = [*args, "--day", "2"] if "--day" not in args else list(args)
        refused = cli(net, "ip-pools", "warmup", *command)
        assert refused.returncode != 0 and reason in refused.stderr, refused.stderr
    # The control socket's request itself, with wrong types (the CLI never sends them).
    control = str(control_path(relay.config.server.data_dir))
    for wrong in ({"day": "2"}, {"day": True}, {"day": 2.0}, {"address": None}):
        request = {"request": "warmup-day", "pool": "bulk", "address": A, "day": 2, **wrong}
        assert "needs pool and address" in ask(control, json.dumps(request))["error"]
    assert admin.get("/api/v1/ip-pools/bulk").json["items"][0]["day"] == 2  # unchanged
    net.stop()
    down = cli(net, "ip-pools", "warmup", "bulk", A, "--day", "3")
    assert down.returncode == 1 and "no relay is running" in down.stderr


def events(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    """The events of `kind` the set's file destination has written so far."""
    path = tmp_path / "events.ndjson"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["eventType"] == kind]


def cli(net: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "smtprelay", *args, "-c",
                           str(net.tmp_path / "smtprelay.yaml")],
                          capture_output=True, text=True, timeout=60, check=False)


def _held(net: World, ids: list[str]) -> int:
    """Recipients of these messages tried and still in the queue (deferred, or being
    tried again)."""
    return sum(r.state.value in ("deferred", "sending") and r.attempts >= 1
               for m in ids for r in net.message(m).recipients)


def _delivered(net: World, ids: list[str]) -> int:
    return sum(r.state.value == "delivered" for m in ids for r in net.message(m).recipients)
