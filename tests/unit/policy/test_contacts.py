"""Contact lists: the header a message names them with, what the configuration allows,
and the contacts' preferences on real SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.app.preflight import load_checked
from smtprelay.config import Config, ConfigError
from smtprelay.mail.headers import HeaderField, parse_header_section
from smtprelay.mail.replies import Reply
from smtprelay.policy.contacts import (
    ContactStore,
    ListOptions,
    SQLiteContactStore,
    options_of,
    parse_options,
    scope_set,
    set_scope,
)

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


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteContactStore]:
    s = SQLiteContactStore(tmp_path / "state.db")
    s.open()
    yield s
    s.close()


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

def test_is_a_contact_store(store: SQLiteContactStore) -> None:
    typed: ContactStore = store  # mypy checks the protocol; this keeps it used
    assert typed.get("news", "a@example.net") is None


def test_recipients_become_contacts_once(store: SQLiteContactStore) -> None:
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
                                                       store: SQLiteContactStore) -> None:
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


def test_unsubscribing_someone_who_was_no_contact_makes_one(store: SQLiteContactStore
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
