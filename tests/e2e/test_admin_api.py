"""The admin API (/api/v1) over real sockets against a running relay.

Tokens (the secret, signed tokens from the CLI, and every way to get a 401), the
suppression list, the queue (a message held by a host that answers 451), pausing and
resuming configuration sets through the API and the CLI, seen from the SMTP side,
and the per-set statistics after real deliveries, bounces, opens and clicks.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smtprelay.http import admin_auth
from tests.e2e.admin_client import ADMIN_HTTP, ENV, SECRET, TWO_SETS, Admin, send, suppression_path
from tests.e2e.delivery_world import World, wait_for
from tests.support import RunningRelay, relay_fixture, running

# The token tests send dozens of wrong tokens from one address: above the lockout's
# limit here (test_admin_lockout.py tests the lockout).
relay = relay_fixture(env={ENV: SECRET}, http=ADMIN_HTTP, configuration_sets=TWO_SETS,
                      auth={"max_failures_per_ip": 1000})


@pytest.fixture
def admin_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, SECRET)


def cli(relay: RunningRelay, *args: str) -> subprocess.CompletedProcess[str]:
    config = relay.config.server.data_dir.parent / "smtprelay.yaml"
    return subprocess.run([sys.executable, "-m", "smtprelay", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------- tokens


def test_missing_wrong_expired_and_tampered_tokens_get_one_identical_401(
        relay: RunningRelay, caplog: pytest.LogCaptureFixture) -> None:
    admin = Admin(relay.http_port)
    expired = admin_auth.issue(SECRET, time.time() - 5)
    good = admin_auth.issue(SECRET, time.time() + 600)
    version, expiry, signature = good.split(".")
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    tampered = [
        f"{version}.{expiry}.{flipped}",                    # signature changed
        f"{version}.{int(expiry) + 86400}.{signature}",      # expiry pushed back
        f"v2.{expiry}.{signature}",                          # another version
        admin_auth.issue("some-other-secret-0123456789", time.time() + 600),
        f"{version}.0{expiry}.{signature}",                  # the same expiry, respelled
    ]
    wrong_headers: list[dict[str, str]] = [
        {},                                                  # no Authorization at all
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {SECRET}"},                # the secret, wrong scheme
        {"Authorization": f"Bearer {SECRET}x"},
        {"Authorization": f"Bearer {SECRET[:-1]}"},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {expired}"},
        *({"Authorization": f"Bearer {token}"} for token in tampered),
    ]
    caplog.set_level(logging.INFO, logger="smtprelay.http.admin")
    answers = []
    for path in ("/api/v1/queue", "/api/v1/openapi.json", "/api/v1/no-such-route",
                 "/api/v1/accounts/nobody/suppression/x@y.test", "/api/"):
        for headers in wrong_headers:
            answer = Admin(relay.http_port, token=None).get(path, headers=headers)
            answers.append((path, headers, answer))
    # DELETE and PUT too: nothing changes, and nothing says whether the route exists.
    answers.append(("put", {}, admin.put(suppression_path("acme", "a@b.test"),
                                         body={"reason": "BOUNCE"}, token="nope")))
    answers.append(("delete", {}, admin.delete("/api/v1/queue/x", token=expired)))
    first = answers[0][2]
    for path, headers, answer in answers:
        assert answer.status == 401, (path, headers)
        assert answer.body == first.body, (path, headers)
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="smtprelay"'
        assert answer.headers["Content-Type"] == first.headers["Content-Type"]
        assert answer.headers.get("Content-Length") == first.headers.get("Content-Length")
    assert first.json == {"error": {"code": "unauthorized",
                                    "message": "a valid bearer token is required"}}
    assert admin.get(suppression_path("acme", "a@b.test")).status == 404  # not suppressed

    # Each refusal is logged with the client's address, never with what was sent.
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) >= len(answers)
    assert all("127.0.0.1" in r.getMessage() for r in refusals)
    for secretish in (SECRET, expired, *tampered, "wrong-token"):
        assert secretish not in caplog.text
    assert "signed token expired" in caplog.text  # for the operator, not the client


def test_the_secret_and_a_signed_token_from_the_cli_are_both_accepted(
        relay: RunningRelay) -> None:
    issued = cli(relay, "admin-token", "issue", "--expires", "1h", "--json")
    assert issued.returncode == 0, issued.stderr
    token = json.loads(issued.stdout)
    assert re.fullmatch(r"v1\.\d+\.[A-Za-z0-9_-]{43}", token["token"])
    assert 3590 < token["expires_at"] - time.time() <= 3600
    for credential in (SECRET, token["token"]):
        answer = Admin(relay.http_port, token=credential).get("/api/v1/openapi.json")
        assert answer.status == 200
        assert answer.json["openapi"].startswith("3.1")
    # A short-lived one stops working when it expires.
    short = json.loads(cli(relay, "admin-token", "issue", "--expires", "1s", "--json").stdout)
    deadline = short["expires_at"] + 0.2
    time.sleep(max(0.0, deadline - time.time()))
    assert Admin(relay.http_port, token=short["token"]).get("/api/v1/queue").status == 401


def test_admin_token_issue_names_what_is_missing(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with running(tmp_path, http=ADMIN_HTTP) as relay:
        unset = cli(relay, "admin-token", "issue", "--expires", "1h")
        assert unset.returncode == 1
        assert ENV in unset.stderr and "http.admin_token_env" in unset.stderr
        assert "Traceback" not in unset.stderr
        bad = cli(relay, "admin-token", "issue", "--expires", "soon")
        assert bad.returncode == 1 and "--expires soon" in bad.stderr


@pytest.mark.parametrize("setting", ["unset variable", "empty variable", "no key"])
def test_without_a_secret_everything_under_api_is_a_plain_404(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    http: dict[str, Any] = {"listen": ["127.0.0.1:0"]}
    if setting != "no key":
        http["admin_token_env"] = ENV
    if setting == "empty variable":
        monkeypatch.setenv(ENV, "   ")
    else:
        monkeypatch.delenv(ENV, raising=False)
    with running(tmp_path, http=http) as relay:
        for path in ("/api/v1/openapi.json", "/api/v1/queue", "/api/", "/api/v1/stats"):
            for token in (None, SECRET, "   "):
                answer = Admin(relay.http_port, token=token).get(path)
                assert answer.status == 404, (path, token)
                assert "WWW-Authenticate" not in answer.headers
        assert Admin(relay.http_port).get("/healthz").status == 200


# ------------------------------------------------------------------------- suppression


def test_suppression_round_trip_and_a_suppressed_recipient_is_not_sent_to(
        relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    path = suppression_path("acme", "Gone@Example.NET")
    assert admin.get(path).status == 404
    added = admin.put(path, body={"reason": "BOUNCE"})
    assert added.status == 201
    assert added.json["address"] == "Gone@example.net"  # the domain is case-insensitive
    assert added.json["reason"] == "BOUNCE" and added.json["account"] == "acme"
    changed = admin.put(path, body={"reason": "COMPLAINT"})
    assert changed.status == 200 and changed.json["reason"] == "COMPLAINT"
    assert admin.get(suppression_path("acme", "Gone@example.net")).json["reason"] == \
        "COMPLAINT"
    # Another account's list is its own.
    assert admin.get(suppression_path("other", "Gone@example.net")).status == 404
    for i in range(5):
        admin.put(suppression_path("acme", f"user{i}@list.test"),
                  body={"reason": "BOUNCE" if i % 2 else "COMPLAINT"})
    admin.put(suppression_path("acme", "a/b@list.test"), body={"reason": "BOUNCE"})

    # Search: a prefix, a reason, and pages that follow each other.
    found = admin.get(suppression_path("acme") + "?prefix=user").json
    assert [e["address"] for e in found["items"]] == [f"user{i}@list.test" for i in range(5)]
    assert found["next_cursor"] is None
    bounces = admin.get(suppression_path("acme") + "?reason=BOUNCE").json["items"]
    assert {e["address"] for e in bounces} == {"user1@list.test", "user3@list.test",
                                               "a/b@list.test"}
    seen: list[str] = []
    cursor = ""
    while True:
        page = admin.get(suppression_path("acme") + f"?limit=2{cursor}").json
        assert len(page["items"]) <= 2
        seen += [e["address"] for e in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == sorted(seen) and len(seen) == 7
    assert admin.get(suppression_path("acme", "a/b@list.test")).status == 200

    # Mail to the suppressed address is accepted and not delivered, as in SES.
    code, reply = send(relay, relay.credential(), ["Gone@example.net", "ok@example.net"])
    assert code == 250
    queued = admin.get(f"/api/v1/queue/{reply.split()[-1]}").json
    assert [(r["address"], r["state"]) for r in queued["recipients"]] == [
        ("Gone@example.net", "suppressed"), ("ok@example.net", "queued")]

    removed = admin.delete(path)
    assert removed.status == 200 and removed.json["removed"] is True
    assert admin.delete(path).status == 404
    code, reply = send(relay, relay.credential(), ["Gone@example.net"])
    queued = admin.get(f"/api/v1/queue/{reply.split()[-1]}").json
    assert [r["state"] for r in queued["recipients"]] == ["queued"]

    # Bad input: each with its status and a message that says what to do.
    unknown = admin.get(suppression_path("nobody", "x@y.test"))
    assert unknown.status == 404 and "nobody" in unknown.json["error"]["message"]
    for body, status in (({"reason": "SPAM"}, 422), ({}, 422), ({"why": "x"}, 422),
                         ([1], 422), ({"reason": 1}, 422)):
        answer = admin.put(suppression_path("acme", "x@y.test"), body=body)
        assert answer.status == status, body
        assert set(answer.json["error"]) == {"code", "message"}
    assert admin.put(suppression_path("acme", "x@y.test"), raw=b"{not json",
                     headers={"Content-Type": "application/json"}).status == 400
    assert admin.put(suppression_path("acme", "x@y.test"), raw=b'{"reason": "BOUNCE"}',
                     headers={"Content-Type": "text/plain"}).status == 415
    for address in ("no-at-sign", "x@", "@y.test", "a b@y.test", "x@..."):
        answer = admin.put(suppression_path("acme", address), body={"reason": "BOUNCE"})
        assert answer.status == 422, address
    for query in ("limit=0", "limit=1001", "limit=x", "reason=bounce"):
        assert admin.get(suppression_path("acme") + f"?{query}").status == 400, query


# ------------------------------------------------------------------------- queue


@pytest.fixture
def net(admin_env: None, net: World) -> World:
    """tests/e2e/conftest.py's `net`, with the admin token in the environment."""
    return net


def deferred_and_delivered(net: World) -> tuple[RunningRelay, Admin, str, str]:
    """A relay whose MX keeps deferring a@dest.test (next try in an hour) and took
    b@dest.test: the relay, its admin client, and the two messages' ids."""
    net.smtp_host("dest.test", rcpt_replies={"a@dest.test": "451 4.2.0 greylisted"})
    relay = net.start(top={"http": ADMIN_HTTP},
                      retry={"first": "1h", "max_interval": "2h", "max_lifetime": "1d"})
    deferred = net.submit(["a@dest.test"])
    delivered = net.submit(["b@dest.test"])
    net.wait_states(deferred, {"a@dest.test": "deferred"})
    net.wait_final(delivered)
    return relay, Admin(relay.http_port), deferred, delivered


def test_queue_list_show_retry_and_delete_a_message_a_host_keeps_deferring(
        net: World) -> None:
    relay, admin, held, delivered = deferred_and_delivered(net)

    waiting = admin.get("/api/v1/queue?state=deferred").json
    assert [m["id"] for m in waiting["items"]] == [held]
    assert [m["id"] for m in admin.get("/api/v1/queue?state=finished").json["items"]] == \
        [delivered]
    everything = admin.get("/api/v1/queue?account=acme").json["items"]
    assert [m["id"] for m in everything] == sorted([held, delivered])
    assert admin.get("/api/v1/queue?account=other").json["items"] == []
    first = admin.get("/api/v1/queue?limit=1").json
    assert len(first["items"]) == 1 and first["next_cursor"] == first["items"][0]["id"]
    rest = admin.get(f"/api/v1/queue?limit=1&cursor={first['next_cursor']}").json
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None

    # `smtprelay queue list` takes the same filters.
    listed = cli(relay, "queue", "list", "--state", "deferred", "--account", "acme", "--json")
    assert [m["id"] for m in json.loads(listed.stdout)] == [held]

    shown = admin.get(f"/api/v1/queue/{held}").json
    [recipient] = shown["recipients"]
    assert recipient["state"] == "deferred" and recipient["attempts"] == 1
    assert "451" in recipient["last_reply"]
    assert recipient["next_attempt"] > time.time() + 600  # the next try is an hour away

    retried = admin.post(f"/api/v1/queue/{held}/retry")
    assert retried.status == 200 and retried.json == {"message_id": held, "recipients_due": 1}
    wait_for(lambda: net.message(held).recipients[0].attempts == 2)
    assert net.message(held).recipients[0].state.value == "deferred"
    everyone = admin.post("/api/v1/queue/retry")
    assert everyone.status == 200 and everyone.json["recipients_due"] == 1
    wait_for(lambda: net.message(held).recipients[0].attempts == 3)

    finished = admin.post(f"/api/v1/queue/{delivered}/retry")
    assert finished.status == 409 and "final" in finished.json["error"]["message"]
    assert admin.delete(f"/api/v1/queue/{held}").json == {"message_id": held,
                                                            "deleted": True}
    for method, path in (("GET", f"/api/v1/queue/{held}"), ("DELETE", f"/api/v1/queue/{held}"),
                         ("POST", f"/api/v1/queue/{held}/retry")):
        gone = admin.call(method, path)
        assert gone.status == 404 and held in gone.json["error"]["message"]
    assert admin.get("/api/v1/queue?state=pending").json["items"] == []
    assert admin.get("/api/v1/queue?state=resting").status == 400
    assert admin.call("PATCH", "/api/v1/queue").status == 405


def test_queue_hold_keeps_a_message_through_a_flush_until_released(net: World) -> None:
    _, admin, waiting, delivered = deferred_and_delivered(net)

    held = admin.post(f"/api/v1/queue/{waiting}/hold")
    assert held.status == 200 and held.json == {"message_id": waiting, "recipients_held": 1}
    assert [m["id"] for m in admin.get("/api/v1/queue?state=held").json["items"]] == [waiting]
    assert admin.get(f"/api/v1/queue/{waiting}").json["recipients"][0]["held"] is True
    assert admin.post(f"/api/v1/queue/{waiting}/hold").status == 409  # nothing left to hold
    # A flush leaves it held: nothing is due.
    assert admin.post("/api/v1/queue/retry").json["recipients_due"] == 0
    assert net.message(waiting).recipients[0].attempts == 1

    released = admin.post(f"/api/v1/queue/{waiting}/release")
    assert released.status == 200 and released.json == {"message_id": waiting,
                                                         "recipients_due": 1}
    wait_for(lambda: net.message(waiting).recipients[0].attempts == 2)
    again = admin.post(f"/api/v1/queue/{waiting}/release")
    assert again.status == 409 and "not held" in again.json["error"]["message"]
    finished = admin.post(f"/api/v1/queue/{delivered}/hold")
    assert finished.status == 409
    for action in ("hold", "release"):
        gone = admin.post(f"/api/v1/queue/no-such-message/{action}")
        assert gone.status == 404 and "no-such-message" in gone.json["error"]["message"]
    assert net.message(delivered).recipients[0].state.value == "delivered"


# ------------------------------------------------------------------------- pauses


def test_a_set_paused_through_the_api_gets_554_and_other_sets_still_send(
        relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    cred = relay.credential()
    assert send(relay, cred, ["a@x.test"], configuration_set="marketing")[0] == 250
    paused = admin.post("/api/v1/configuration-sets/marketing/pause",
                        body={"reason": "list cleaning"})
    assert paused.status == 200
    assert paused.json["accepting"] is False
    assert paused.json["paused"]["reason"] == "manual"
    assert paused.json["paused"]["detail"] == "list cleaning"
    assert paused.json["paused"]["by"] == "api 127.0.0.1"

    code, reply = send(relay, cred, ["a@x.test"], configuration_set="marketing")
    assert (code, reply) == (554, "5.7.1 Sending paused for this configuration set")
    assert send(relay, cred, ["a@x.test"], configuration_set="transactional")[0] == 250
    assert send(relay, cred, ["a@x.test"])[0] == 250  # the account's default set

    listed = {s["name"]: s for s in admin.get("/api/v1/configuration-sets").json["items"]}
    assert listed["marketing"]["paused"]["detail"] == "list cleaning"
    assert listed["transactional"]["paused"] is None and listed["transactional"]["accepting"]
    again = admin.post("/api/v1/configuration-sets/marketing/pause")
    assert again.status == 409 and "already paused" in again.json["error"]["message"]
    # The CLI sees the same state.
    shown = json.loads(cli(relay, "sets", "list", "--json").stdout)
    assert {r["name"]: r["accepting"] for r in shown} == {"marketing": False,
                                                          "transactional": True}

    resumed = admin.post("/api/v1/configuration-sets/marketing/resume")
    assert resumed.status == 200 and resumed.json["accepting"] is True
    assert send(relay, cred, ["a@x.test"], configuration_set="marketing")[0] == 250
    assert admin.post("/api/v1/configuration-sets/marketing/resume").status == 409

    for path in ("/api/v1/configuration-sets/nope/pause", "/api/v1/configuration-sets/nope",
                 "/api/v1/configuration-sets/nope/resume",
                 "/api/v1/configuration-sets/nope/stats"):
        answer = admin.call("GET" if path.endswith("nope") or path.endswith("stats")
                            else "POST", path)
        assert answer.status == 404 and "nope" in answer.json["error"]["message"], path
    too_long = admin.post("/api/v1/configuration-sets/marketing/pause",
                          body={"reason": "x" * 1001})
    assert too_long.status == 422


def test_an_account_paused_through_the_api_gets_554_for_every_set_until_resumed(
        relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    cred = relay.credential()
    listed = {a["name"]: a for a in admin.get("/api/v1/accounts").json["items"]}
    assert set(listed) == {"acme", "other"}
    assert listed["acme"]["accepting"] is True and listed["acme"]["paused"] is None
    # The guard has judged it (nothing sent yet: ok) or not yet run (null).
    assert listed["acme"]["reputation"] is None or listed["acme"]["reputation"]["state"] == "ok"

    paused = admin.post("/api/v1/accounts/acme/pause", body={"reason": "compromised key"})
    assert paused.status == 200, paused.json
    assert paused.json["accepting"] is False
    assert paused.json["paused"]["detail"] == "compromised key"
    assert paused.json["paused"]["by"] == "api 127.0.0.1"
    for configuration_set in ("marketing", "transactional", None):
        code, reply = send(relay, cred, ["a@x.test"], configuration_set=configuration_set)
        assert (code, reply) == (554, "5.7.1 Sending paused for this account")
    assert admin.post("/api/v1/accounts/acme/pause").status == 409
    again = admin.post("/api/v1/accounts/acme/pause")
    assert again.json["error"]["message"] == ("account 'acme' is already paused (manual, by "
                                              "api 127.0.0.1); resume it first to pause it "
                                              "again")
    assert admin.get("/api/v1/accounts/acme").json["paused"]["reason"] == "manual"
    # The sets themselves are not paused: resuming the account is what lets mail in.
    sets = {s["name"]: s for s in admin.get("/api/v1/configuration-sets").json["items"]}
    assert sets["marketing"]["accepting"] is True

    resumed = admin.post("/api/v1/accounts/acme/resume")
    assert resumed.status == 200 and resumed.json["accepting"] is True
    assert send(relay, cred, ["a@x.test"], configuration_set="marketing")[0] == 250
    assert admin.post("/api/v1/accounts/acme/resume").status == 409
    for method, path in (("GET", "/api/v1/accounts/nope"),
                         ("POST", "/api/v1/accounts/nope/pause"),
                         ("POST", "/api/v1/accounts/nope/resume")):
        answer = admin.call(method, path)
        assert answer.status == 404 and "nope" in answer.json["error"]["message"], path


def test_the_api_names_a_paused_account_account_and_a_paused_set_configuration_set(
        relay: RunningRelay) -> None:
    admin = Admin(relay.http_port)
    paused = admin.post("/api/v1/accounts/acme/pause", body={"reason": "leaked key"})
    assert paused.status == 200, paused.json
    pause = paused.json["paused"]
    assert pause == {"account": "acme", "reason": "manual", "detail": "leaked key",
                     "since": pause["since"], "by": "api 127.0.0.1"}
    listed = {a["name"]: a for a in admin.get("/api/v1/accounts").json["items"]}
    assert listed["acme"]["paused"] == pause
    assert admin.get("/api/v1/accounts/acme").json["paused"] == pause
    marketing = admin.post("/api/v1/configuration-sets/marketing/pause").json["paused"]
    assert marketing["configuration_set"] == "marketing" and "account" not in marketing


def test_the_cli_names_a_paused_account_account_and_a_paused_set_configuration_set(
        relay: RunningRelay) -> None:
    assert cli(relay, "accounts", "pause", "other", "--reason", "typo").returncode == 0
    rows = {r["name"]: r for r in json.loads(cli(relay, "accounts", "list", "--json").stdout)}
    pause = rows["other"]["paused"]
    assert pause == {"account": "other", "reason": "manual", "detail": "typo",
                     "since": pause["since"], "by": "cli"}
    assert rows["acme"]["paused"] is None
    stats = json.loads(cli(relay, "stats", "--json").stdout)
    assert {a["account"]: a["paused"] for a in stats["accounts"]} == {"acme": None,
                                                                      "other": pause}
    assert cli(relay, "sets", "pause", "marketing").returncode == 0
    sets = {r["name"]: r for r in json.loads(cli(relay, "sets", "list", "--json").stdout)}
    marketing = sets["marketing"]["paused"]
    assert marketing["configuration_set"] == "marketing" and "account" not in marketing


def test_a_pause_made_with_the_cli_is_noticed_by_the_running_daemon(
        relay: RunningRelay) -> None:
    cred = relay.credential()
    assert send(relay, cred, ["a@x.test"], configuration_set="marketing")[0] == 250
    done = cli(relay, "sets", "pause", "marketing", "--reason", "spam trap hits")
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    wait_for(lambda: send(relay, cred, ["a@x.test"], configuration_set="marketing")[0] == 554,
             timeout=5, interval=0.1)
    assert time.monotonic() - started < 2.0  # within about a second
    assert send(relay, cred, ["a@x.test"], configuration_set="transactional")[0] == 250
    shown = Admin(relay.http_port).get("/api/v1/configuration-sets/marketing").json
    assert shown["paused"]["by"] == "cli" and shown["paused"]["detail"] == "spam trap hits"
    listing = cli(relay, "sets", "list").stdout
    assert re.search(r"marketing\s+paused \(manual\).*cli\s+spam trap hits", listing)

    twice = cli(relay, "sets", "pause", "marketing")
    assert twice.returncode == 1 and "already paused" in twice.stderr
    unknown = cli(relay, "sets", "pause", "nope")
    assert unknown.returncode == 1 and "configuration_sets.nope" in unknown.stderr

    assert cli(relay, "sets", "resume", "marketing").returncode == 0
    relay.relay.reload(None)  # SIGHUP: re-read at once rather than within a second
    wait_for(lambda: send(relay, cred, ["a@x.test"], configuration_set="marketing")[0] == 250,
             timeout=5, interval=0.1)
    not_paused = cli(relay, "sets", "resume", "marketing")
    assert not_paused.returncode == 1 and "not paused" in not_paused.stderr


# ------------------------------------------------------------------------- statistics

TRACKED_HOST = "links.test"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def _html(subject: str) -> bytes:
    return (f"From: app@example.com\r\nTo: someone@dest.test\r\nSubject: {subject}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            '<html><body><a href="https://shop.example/p">Buy</a></body></html>\r\n'
            ).encode()


def test_stats_count_what_happened_to_mail_with_rates(net: World) -> None:
    mx = net.smtp_host("dest.test", rcpt_replies={"gone@dest.test": "550 5.1.1 no such user"})
    relay = net.start(top={
        "http": {**ADMIN_HTTP, "machine_detection": {"too_fast": 0}},
        "tracking_domains": {TRACKED_HOST: {}},
        # No event destination: statistics are counted all the same.
        "configuration_sets": {"transactional": {"tracking": {
            "open": True, "click": True, "domain": TRACKED_HOST, "https": False}},
            "marketing": {}},
    })
    admin = Admin(relay.http_port)
    assert admin.put(suppression_path("acme", "blocked@dest.test"),
                     body={"reason": "BOUNCE"}).status == 201
    ids = [net.submit([rcpt], data=_html(f"offer {i}")) for i, rcpt in enumerate(
        ["a@dest.test", "b@dest.test", "c@dest.test", "gone@dest.test"])]
    ids.append(net.submit(["blocked@dest.test", "d@dest.test"], data=_html("two")))
    for message_id in ids:
        net.wait_final(message_id)

    # Follow the first message's link twice and open it once, as a person; one more
    # click by a script (no User-Agent) is counted as a machine's.
    first = next(t for t in mx.received if t.rcpt_tos == ("a@dest.test",))
    [click] = re.findall(rf"http://{TRACKED_HOST}(/c/[A-Za-z0-9_-]+)".encode(), first.data)
    [pixel] = re.findall(rf"http://{TRACKED_HOST}(/o/[A-Za-z0-9_-]+)".encode(), first.data)
    tracking = Admin(relay.http_port, token=None)
    for user_agent in (BROWSER, BROWSER, ""):
        answer = tracking.get(click.decode(), headers={"Host": TRACKED_HOST,
                                                       "User-Agent": user_agent})
        assert answer.status == 302
    assert tracking.get(pixel.decode(), headers={"Host": TRACKED_HOST,
                                                  "User-Agent": BROWSER}).status == 200

    def counts() -> dict[str, Any]:
        found: dict[str, Any] = admin.get(
            "/api/v1/configuration-sets/transactional/stats").json
        return found if found["counts"]["click"] == 3 and found["counts"]["open"] == 1 else {}

    stats = wait_for(counts, 10)
    assert stats, admin.get("/api/v1/configuration-sets/transactional/stats").json
    c = stats["counts"]
    assert (c["send"], c["suppressed"], c["delivery"], c["bounce"]) == (6, 1, 4, 1)
    assert (c["click"], c["click_unique"], c["click_machine"]) == (3, 1, 1)
    assert (c["open"], c["open_unique"], c["open_machine"]) == (1, 1, 0)
    assert c["complaint"] == 0 and c["bounce_transient"] == 0
    assert stats["rates"] == {"bounce": pytest.approx(1 / 5), "complaint": 0.0,
                              "open": pytest.approx(1 / 4), "click": pytest.approx(1 / 4)}
    assert stats["window"]["until"] - stats["window"]["since"] >= 86400

    report = admin.get("/api/v1/stats?window=1h").json
    by_set = {s["configuration_set"]: s for s in report["configuration_sets"]}
    assert by_set["transactional"]["counts"]["delivery"] == 4
    assert by_set["marketing"]["counts"]["send"] == 0 and by_set["marketing"]["rates"][
        "bounce"] is None
    assert report["total"]["counts"]["send"] == 6
    assert [a["account"] for a in report["accounts"]] == ["acme"]
    assert admin.get("/api/v1/stats?window=24").status == 400

    # `smtprelay stats` shows the same, per set.
    config = net.tmp_path / "smtprelay.yaml"
    shown = subprocess.run([sys.executable, "-m", "smtprelay", "stats", "--json", "-c",
                            str(config)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    sets = {s["configuration_set"]: s for s in json.loads(shown.stdout)["configuration_sets"]}
    assert sets["transactional"]["counts"] == c
    assert sets["transactional"]["status"] == "accepting"
    table = subprocess.run([sys.executable, "-m", "smtprelay", "stats", "-c", str(config)],
                           capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"transactional\s+6\s+4\s+1\s+20\.0%", table), table


def test_a_body_of_white_space_is_not_json_and_pauses_nothing(relay: RunningRelay) -> None:
    # Found by schemathesis: "\r" as a JSON body paused the account as an empty one.
    admin = Admin(relay.http_port)
    for raw in (b"\r", b" ", b"\r\n\t"):
        answer = admin.post("/api/v1/accounts/acme/pause", raw=raw,
                            headers={"Content-Type": "application/json"})
        assert answer.status == 400 and "not JSON" in answer.json["error"]["message"], raw
    listed = {a["name"]: a for a in admin.get("/api/v1/accounts").json["items"]}
    assert listed["acme"]["paused"] is None and listed["acme"]["accepting"] is True
    # No body at all is still an empty request: the pause takes no options.
    assert admin.post("/api/v1/accounts/acme/pause").status == 200


def test_a_client_gone_in_the_middle_of_its_body_is_an_info_line_not_an_error(
        relay: RunningRelay, caplog: pytest.LogCaptureFixture) -> None:
    import socket
    caplog.set_level(logging.INFO, logger="smtprelay.http.admin")
    with socket.create_connection(("127.0.0.1", relay.http_port), 5) as sock:
        sock.sendall(b"POST /api/v1/accounts/acme/pause HTTP/1.1\r\nHost: relay.test\r\n"
                     b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"reason"')
        # The body ends 91 octets short: the client is done sending (EOF), then waits.
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(64)
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    assert wait_for(lambda: "in the middle of its body" in caplog.text, 10)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    listed = {a["name"]: a for a in Admin(relay.http_port).get("/api/v1/accounts").json["items"]}
    assert listed["acme"]["paused"] is None
