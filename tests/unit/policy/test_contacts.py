"""Contact lists: the header a message names them with, what the configuration allows,
and the contacts' preferences on each backend of store.backend (real SQLite, and a
real Redis: tests/redis_server.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from smtprelay.app.preflight import load_checked
from smtprelay.config import Config, ConfigError
from smtprelay.mail.headers import HeaderField, parse_header_section
from smtprelay.mail.replies import Reply
from smtprelay.policy.contacts import (
    ContactChange,
    ContactStore,
    ListOptions,
    SQLiteContactStore,
    options_of,
    parse_options,
    scope_set,
    set_scope,
)
from smtprelay.policy.contacts_redis import RedisContactStore
from tests.redis_server import RedisServer, on_backend

CONFIG = """
listeners: [{name: s, port: 2587, tls: none}]
accounts: {acme: {identities: [example.com]}, other: {identities: [other.test]}}
tracking_domains: {links.example.com: {}}
contact_lists:
  news:
    account: acme
    unsubscribe_domain: links.example.com
    topics:
      - {name: sports, display_name: Sports, default_subscription_status: OPT_IN}
      - {name: daily, display_name: Daily, default_subscription_status: OPT_OUT}
  theirs: {account: other, unsubscribe_domain: links.example.com}
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return load_checked(path).config


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContactStore]:
    """Each backend of store.backend: the state database, and Redis for a cluster."""
    yield from on_backend(request, lambda: SQLiteContactStore(tmp_path / "state.db"),
                          RedisContactStore.from_url)


# --- configuration -----------------------------------------------------------------------

def test_lists_load_with_their_topics(tmp_path: Path) -> None:
    config = load(tmp_path, CONFIG)
    news = config.contact_lists["news"]
    assert news.account == "acme" and news.https is True
    assert [(t.name, t.default_subscription_status) for t in news.topics] == [
        ("sports", "OPT_IN"), ("daily", "OPT_OUT")]
    assert news.topic("daily") is news.topics[1] and news.topic("nope") is None


def test_list_problems_name_their_key(tmp_path: Path) -> None:
    found = problems(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
accounts: {acme: {identities: [example.com]}}
tracking_domains: {links.example.com: {}}
contact_lists:
  "bad name": {account: acme, unsubscribe_domain: links.example.com}
""")
    assert len(found) == 1 and found[0].startswith("contact_lists: 'bad name' is not a valid "
                                                   "contact list name")
    found = problems(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
accounts: {acme: {identities: [example.com]}}
tracking_domains: {links.example.com: {}}
contact_lists:
  nohost: {account: acme}
  twice:
    account: acme
    unsubscribe_domain: links.example.com
    topics:
      - {name: a, display_name: A, default_subscription_status: OPT_IN}
      - {name: a, display_name: A again, default_subscription_status: MAYBE}
      - {name: "b;c", display_name: B, default_subscription_status: OPT_OUT}
""")
    assert found == [
        "contact_lists.nohost.unsubscribe_domain: required key is missing",
        "contact_lists.twice.topics[1].default_subscription_status: Input should be "
        "'OPT_IN' or 'OPT_OUT', got 'MAYBE'",
        "contact_lists.twice.topics[2].name: 'b;c' is not a valid topic name: use 1-64 "
        "letters, digits, '-' and '_' (it is written in the X-SES-LIST-MANAGEMENT-OPTIONS "
        "header field)",
    ]
    assert problems(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
accounts: {acme: {identities: [example.com]}}
tracking_domains: {links.example.com: {}}
contact_lists:
  twice:
    account: acme
    unsubscribe_domain: links.example.com
    topics:
      - {name: a, display_name: A, default_subscription_status: OPT_IN}
      - {name: a, display_name: A again, default_subscription_status: OPT_OUT}
""") == ["contact_lists.twice: topics: the topic name 'a' is used twice"]
    found = problems(tmp_path, """
listeners: [{name: s, port: 2587, tls: none}]
accounts: {acme: {identities: [example.com]}}
tracking_domains: {links.example.com: {}}
contact_lists:
  ghost: {account: nobody, unsubscribe_domain: elsewhere.example.com}
""")
    assert found == [
        "contact_lists.ghost.account: 'nobody' is not an account; list it under accounts or "
        "name the account that sends to this list",
        "contact_lists.ghost.unsubscribe_domain: elsewhere.example.com is not listed under "
        "tracking_domains; add it there (with its certificate for https)",
    ]


def test_an_account_has_one_contact_list_as_in_ses(tmp_path: Path) -> None:
    found = problems(tmp_path, CONFIG + """
  offers: {account: acme, unsubscribe_domain: links.example.com}
  more: {account: acme, unsubscribe_domain: links.example.com}
""")
    assert found == [
        f"contact_lists.{name}.account: account 'acme' already has contact list 'news' "
        f"(contact_lists.news); an account has one contact list, as in SES: make this "
        f"list's topics topics of 'news' (up to 20) and remove contact_lists.{name}, or "
        "give it another account" for name in ("offers", "more")]
    # One list each for two accounts is what SES allows.
    assert sorted(load(tmp_path, CONFIG).contact_lists) == ["news", "theirs"]


def test_check_config_names_both_lists(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from smtprelay.cli.main import main

    path = tmp_path / "c.yaml"
    path.write_text(CONFIG + "  offers: {account: acme, unsubscribe_domain: "
                             "links.example.com}\n")
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"configuration {path} has 1 problem(s):" in err
    assert ("  contact_lists.offers.account: account 'acme' already has contact list "
            "'news' (contact_lists.news); an account has one contact list") in err


# --- the header ------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "parsed"), [
    ("news", ("news", None)),
    ("news; topic=sports", ("news", "sports")),
    ("  news ;TOPIC = sports ; ", ("news", "sports")),
    ('news; topic="sports"', ("news", "sports")),
])
def test_the_header_is_read_as_ses_writes_it(value: str, parsed: tuple[str, str | None]
                                             ) -> None:
    assert parse_options(value) == parsed


@pytest.mark.parametrize(("value", "why"), [
    ("", "no contact list named"),
    ("; topic=sports", "no contact list named"),
    ("news; sports", "unknown parameter 'sports'"),
    ("news; color=blue", "unknown parameter 'color=blue'"),
    ("news; topic=a; topic=b", "topic= is given twice"),
    ("news letters", "not a valid contact list name"),
    ("news; topic=", "not a valid topic name"),
])
def test_a_malformed_header_says_what_is_wrong(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_options(value)


def fields(*lines: str) -> list[HeaderField]:
    return parse_header_section(("".join(f"{line}\r\n" for line in lines) + "\r\n").encode())


def test_options_of_a_message(tmp_path: Path) -> None:
    config = load(tmp_path, CONFIG)
    plain = fields("From: a@example.com", "Subject: reset your password")
    assert options_of(config, "acme", plain) is None
    found = options_of(config, "acme", fields(
        "From: a@example.com", "X-SES-LIST-MANAGEMENT-OPTIONS: news; topic=daily"))
    assert isinstance(found, ListOptions)
    assert (found.contact_list, found.topic and found.topic.name) == ("news", "daily")
    assert found.where == "topic 'daily' of contact list 'news'"
    whole = options_of(config, "acme", fields("x-ses-list-management-options: news"))
    assert isinstance(whole, ListOptions) and whole.topic is None

    def refusal(account: str, *lines: str) -> str:
        reply = options_of(config, account, fields(*lines))
        assert isinstance(reply, Reply) and reply.code == 554
        return reply.text

    assert refusal("acme", "X-SES-LIST-MANAGEMENT-OPTIONS: nope") == \
        "5.3.0 Message rejected: Contact list nope does not exist"
    # Another account's list is answered as if it did not exist.
    assert refusal("acme", "X-SES-LIST-MANAGEMENT-OPTIONS: theirs") == \
        "5.3.0 Message rejected: Contact list theirs does not exist"
    assert refusal("acme", "X-SES-LIST-MANAGEMENT-OPTIONS: news; topic=golf") == \
        "5.3.0 Message rejected: Topic golf does not exist in contact list news"
    assert refusal("acme", "X-SES-LIST-MANAGEMENT-OPTIONS: news; flavour=x").startswith(
        "5.6.0 Message rejected: X-SES-LIST-MANAGEMENT-OPTIONS must be '<list>; topic=<topic>'")
    assert "duplicate header" in refusal("acme", "X-SES-LIST-MANAGEMENT-OPTIONS: news",
                                         "X-SES-LIST-MANAGEMENT-OPTIONS: news; topic=daily")


def test_a_sets_implicit_list_cannot_be_a_configured_one() -> None:
    assert set_scope("marketing") == "configuration-set:marketing"
    assert scope_set(set_scope("a:b")) == "a:b" and scope_set("news") is None
    with pytest.raises(ValueError):
        parse_options(set_scope("marketing"))


# --- contacts ------------------------------------------------------------------------------

def test_is_a_contact_store(store: ContactStore) -> None:
    typed: ContactStore = store  # mypy checks the protocol; this keeps it used
    assert typed.get("news", "a@example.net") is None


def test_recipients_become_contacts_once(store: ContactStore) -> None:
    assert store.contacts("news", ["a@example.net"]) == {}  # looking creates nothing
    made = store.contacts("news", ["a@Example.NET", "b@example.net"], create_at=100.0)
    assert set(made) == {"a@Example.NET", "b@example.net"}
    contact = made["a@Example.NET"]
    assert (contact.address, contact.unsubscribe_all, dict(contact.topics),
            contact.attributes, contact.created_at) == ("a@example.net", False, {}, "{}", 100.0)
    again = store.contacts("news", ["a@example.net"], create_at=200.0)
    assert again["a@example.net"].created_at == 100.0
    # Another list's contacts are apart.
    assert store.contacts("other", ["a@example.net"]) == {}


def test_unsubscribing_from_a_topic_then_from_the_list(tmp_path: Path,
                                                       store: ContactStore) -> None:
    news = load(tmp_path, CONFIG).contact_lists["news"]
    sports, daily = news.topics
    store.contacts("news", ["a@example.net"], create_at=100.0)
    contact = store.get("news", "a@example.net")
    assert contact is not None
    assert contact.receives(sports) and not contact.receives(daily)  # the defaults
    assert contact.receives(None)
    before, after = store.unsubscribe("news", "a@example.net", "sports", at=150.0)
    assert before == contact
    assert dict(after.topics) == {"sports": "OPT_OUT"} and not after.unsubscribe_all
    assert not after.receives(sports) and after.receives(None)
    assert (after.created_at, after.updated_at) == (100.0, 150.0)
    assert store.get("news", "a@EXAMPLE.net.") == after  # the domain is case-blind
    _, whole = store.unsubscribe("news", "a@example.net", None, at=160.0)
    assert whole.unsubscribe_all and dict(whole.topics) == {"sports": "OPT_OUT"}
    assert not whole.receives(None)


def test_unsubscribing_someone_who_was_no_contact_makes_one(store: ContactStore
                                                            ) -> None:
    before, after = store.unsubscribe(set_scope("marketing"), "x@example.net", None, at=5.0)
    assert before is None and after.unsubscribe_all and after.created_at == 5.0
    assert store.contacts(set_scope("marketing"), ["x@example.net"])["x@example.net"] == after
    assert store.contacts(set_scope("billing"), ["x@example.net"]) == {}


def test_the_daemon_and_the_cli_share_the_table(tmp_path: Path) -> None:
    daemon = SQLiteContactStore(tmp_path / "state.db")
    cli = SQLiteContactStore(tmp_path / "state.db")
    try:
        daemon.contacts("news", ["a@example.net"], create_at=1.0)
        cli.unsubscribe("news", "a@example.net", None, at=2.0)
        contact = daemon.get("news", "a@example.net")
        assert contact is not None and contact.unsubscribe_all
    finally:
        daemon.close()
        cli.close()


def test_two_nodes_on_one_redis_share_the_contacts(redis_url: str) -> None:
    """store: redis: an unsubscribe on one node is what every node's next list message
    finds (with the SQLite store, each node had its own)."""
    a = RedisContactStore.from_url(redis_url)
    b = RedisContactStore.from_url(redis_url)
    try:
        a.contacts("news", ["a@example.net"], create_at=1.0)
        b.unsubscribe("news", "a@EXAMPLE.net", "sports", at=2.0)
        found = a.contacts("news", ["a@example.net", "new@example.net"], create_at=3.0)
        assert dict(found["a@example.net"].topics) == {"sports": "OPT_OUT"}
        assert found["a@example.net"].created_at == 1.0
        assert b.get("news", "new@example.net") == found["new@example.net"]
        # Another prefix (another cluster on the same Redis) is apart.
        other = RedisContactStore.from_url(redis_url, prefix="elsewhere:")
        assert other.get("news", "a@example.net") is None
        other.close()
    finally:
        a.close()
        b.close()


def test_a_list_message_is_at_most_two_round_trips(redis_url: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The send path asks Redis once for all its recipients, and once more only to
    create those who are no contacts yet, however many there are."""
    import redis.connection

    store = RedisContactStore.from_url(redis_url)
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self: redis.connection.AbstractConnection, command: object,
                 check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)  # type: ignore[arg-type]

    try:
        store.get("news", "warm@example.net")  # connect (and its handshake) first
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                            counting)
        rcpts = [f"u{i}@example.net" for i in range(500)]
        assert len(store.contacts("news", rcpts, create_at=1.0)) == 500
        assert len(sent) == 2
        sent.clear()
        store.unsubscribe("news", "u7@example.net", None, at=2.0)
        sent.clear()
        found = store.contacts("news", [*rcpts, "x@example.net"], create_at=3.0)
        assert len(sent) == 2 and not found["u7@example.net"].receives(None)
        sent.clear()
        assert len(store.contacts("news", rcpts, create_at=4.0)) == 500
        assert len(sent) == 1  # all known: one read, nothing written
    finally:
        store.close()


def test_concurrent_changes_of_one_contact_all_hold(redis_url: str) -> None:
    """Two nodes changing one contact at once: each change is computed from the contact
    as it is when written, so neither undoes the other."""
    from concurrent.futures import ThreadPoolExecutor

    stores = [RedisContactStore.from_url(redis_url) for _ in range(4)]
    topics = [f"t{i}" for i in range(40)]

    def work(n: int) -> None:
        for topic in topics[n::4]:
            stores[n].unsubscribe("news", "a@example.net", topic, at=float(n))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(4)))  # raises what a thread raised
    try:
        contact = stores[0].get("news", "a@example.net")
        assert contact is not None and sorted(contact.topics) == sorted(topics)
    finally:
        for s in stores:
            s.close()


def test_a_change_made_between_the_read_and_the_write_is_kept(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An import computes each contact from what it read; one unsubscribed by another
    node meanwhile is read and computed again, so the unsubscribe is not undone."""
    store = RedisContactStore.from_url(redis_url)
    other = RedisContactStore.from_url(redis_url)
    try:
        store.put_many("news", [ContactChange("a@example.net", attributes='{"v": 1}')], at=1.0)
        reads: list[list[str]] = []
        original = store._lists.get_many  # the race comes right after this read

        def racing(name: str, keys: Sequence[str]) -> list[bytes | None]:
            values = original(name, keys)
            if not reads:
                other.unsubscribe("news", "a@example.net", None, at=2.0)
            reads.append(list(keys))
            return values

        monkeypatch.setattr(store._lists, "get_many", racing)
        assert store.put_many("news", [ContactChange("a@example.net", attributes='{"v": 2}')],
                              at=3.0) == (0, 1)
        assert reads == [["a@example.net"], ["a@example.net"]]
        contact = store.get("news", "a@example.net")
        assert contact is not None and contact.unsubscribe_all
        assert (contact.attributes, contact.updated_at) == ('{"v": 2}', 3.0)
    finally:
        store.close()
        other.close()


def test_contacts_survive_a_redis_crash_with_the_documented_persistence() -> None:
    """docs/cluster.md: with appendonly yes a Redis restart keeps the contacts, so a
    person who unsubscribed stays unsubscribed (kill -9, started again on its files)."""
    server = RedisServer(durable=True).start()
    try:
        store = RedisContactStore.from_url(server.url)
        store.contacts("news", [f"u{i}@example.net" for i in range(300)], create_at=1.0)
        store.unsubscribe("news", "u5@example.net", None, at=2.0)
        store.unsubscribe("news", "u6@example.net", "daily", at=3.0)
        store.close()
        server.crash()
        server.start()
        store = RedisContactStore.from_url(server.url)
        assert store.count("news") == 300
        left = store.get("news", "u5@example.net")
        assert left is not None and left.unsubscribe_all and left.updated_at == 2.0
        topic = store.get("news", "u6@example.net")
        assert topic is not None and dict(topic.topics) == {"daily": "OPT_OUT"}
        assert [c.address for c in store.page("news", limit=2, after="u4@example.net")] == [
            "u50@example.net", "u51@example.net"]
        store.close()
    finally:
        server.stop()
