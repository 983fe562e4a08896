"""The contact-list operations on each store backend (real SQLite, real Redis): the
typed results and refusals the admin API and the CLI both use, SES's ListContacts
filter, and the import/export files in SES's CreateImportJob layout."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.config import Config
from smtprelay.operations import contacts as ops
from smtprelay.operations.contact_files import UnreadableFile
from smtprelay.operations.errors import (
    BadContact,
    ContactExists,
    ContactListNotFound,
    ContactNotFound,
    TopicNotFound,
)
from smtprelay.policy.contacts import (
    Contact,
    ContactChange,
    ContactFilter,
    ContactStore,
    SQLiteContactStore,
)
from smtprelay.policy.contacts_redis import RedisContactStore
from tests.redis_server import on_backend
from tests.support import examples

TOPICS = [
    {"name": "Sports", "display_name": "Sports", "default_subscription_status": "OPT_IN"},
    {"name": "Cycling", "display_name": "Cycling", "default_subscription_status": "OPT_IN"},
    {"name": "daily", "display_name": "Daily", "default_subscription_status": "OPT_OUT"},
]


def make_config(data_dir: Path) -> Config:
    return Config.model_validate({
        "server": {"data_dir": str(data_dir)},
        "listeners": [{"name": "s", "address": "127.0.0.1", "port": 0, "tls": "none"}],
        "accounts": {"acme": {"identities": ["example.com"]},
                     "other": {"identities": ["other.test"]}},
        "tracking_domains": {"links.example.com": {}},
        "contact_lists": {
            "news": {"account": "acme", "unsubscribe_domain": "links.example.com",
                     "description": "Example news", "topics": TOPICS},
            "theirs": {"account": "other", "unsubscribe_domain": "links.example.com"}},
    })


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, config: Config) -> Iterator[ContactStore]:
    """Each backend of store.backend: the state database, and Redis (a real server,
    tests/redis_server.py) for a cluster of nodes."""
    yield from on_backend(request, lambda: SQLiteContactStore(config.state_path),
                          RedisContactStore.from_url)


# -- the lists ------------------------------------------------------------------------------


def test_the_lists_come_from_the_configuration(config: Config) -> None:
    assert [(found.name, found.settings.account) for found in ops.lists(config)] == [
        ("news", "acme"), ("theirs", "other")]
    assert ops.contact_list(config, "news").as_json() == {
        "ContactListName": "news", "Account": "acme", "Description": "Example news",
        "Topics": [
            {"TopicName": "Sports", "DisplayName": "Sports", "Description": "",
             "DefaultSubscriptionStatus": "OPT_IN"},
            {"TopicName": "Cycling", "DisplayName": "Cycling", "Description": "",
             "DefaultSubscriptionStatus": "OPT_IN"},
            {"TopicName": "daily", "DisplayName": "Daily", "Description": "",
             "DefaultSubscriptionStatus": "OPT_OUT"}]}
    with pytest.raises(ContactListNotFound) as missing:
        ops.contact_list(config, "nope")
    assert str(missing.value) == "no contact list 'nope' in the configuration (contact_lists.nope)"
    assert missing.value.known == ("news", "theirs")


# -- one contact ----------------------------------------------------------------------------


def test_create_get_update_delete(store: ContactStore, config: Config) -> None:
    made = ops.create(store, config, "news", "Reader@Example.NET",
                      topics=[("Sports", "OPT_OUT")], attributes='{"Name": "John"}', at=100.0)
    assert (made.address, made.unsubscribe_all, dict(made.topics), made.attributes,
            made.created_at, made.updated_at) == (
        "Reader@example.net", False, {"Sports": "OPT_OUT"}, '{"Name": "John"}', 100.0, 100.0)
    assert ops.get(store, config, "news", "Reader@EXAMPLE.net.") == made
    assert ops.contact_json(made, config.contact_lists["news"]) == {
        "ContactListName": "news", "EmailAddress": "Reader@example.net", "UnsubscribeAll": False,
        "TopicPreferences": [{"TopicName": "Sports", "SubscriptionStatus": "OPT_OUT"}],
        "TopicDefaultPreferences": [
            {"TopicName": "Sports", "SubscriptionStatus": "OPT_IN"},
            {"TopicName": "Cycling", "SubscriptionStatus": "OPT_IN"},
            {"TopicName": "daily", "SubscriptionStatus": "OPT_OUT"}],
        "AttributesData": '{"Name": "John"}', "CreatedTimestamp": 100.0,
        "LastUpdatedTimestamp": 100.0}

    with pytest.raises(ContactExists) as exists:
        ops.create(store, config, "news", "Reader@example.net")
    assert str(exists.value) == "Reader@example.net is already a contact of list 'news'"
    # The same address on another list is another contact.
    assert ops.create(store, config, "theirs", "reader@example.net").contact_list == "theirs"

    # SES's UpdateContact: the given preferences are all of them; what is not given
    # (the attributes here) stays.
    replaced = ops.update(store, config, "news", "reader@example.net".replace("r", "R", 1),
                          topics=[("daily", "OPT_IN")], replace_topics=True, at=200.0)
    assert dict(replaced.topics) == {"daily": "OPT_IN"}
    assert (replaced.attributes, replaced.created_at, replaced.updated_at) == (
        '{"Name": "John"}', 100.0, 200.0)
    # The CLI's: each given topic changes, None takes a preference away.
    merged = ops.update(store, config, "news", "Reader@example.net",
                        topics=[("Sports", "OPT_OUT"), ("daily", None)], unsubscribe_all=True,
                        attributes="{}")
    assert (dict(merged.topics), merged.unsubscribe_all, merged.attributes) == (
        {"Sports": "OPT_OUT"}, True, "{}")
    assert ops.update(store, config, "news", "Reader@example.net").unsubscribe_all is True

    assert ops.delete(store, config, "news", "Reader@EXAMPLE.net") == "Reader@example.net"
    for call in (lambda: ops.get(store, config, "news", "Reader@example.net"),
                 lambda: ops.delete(store, config, "news", "Reader@example.net"),
                 lambda: ops.update(store, config, "news", "Reader@example.net",
                                    unsubscribe_all=False)):
        with pytest.raises(ContactNotFound) as missing:
            call()
        assert str(missing.value) == "Reader@example.net is not a contact of list 'news'"
    assert ops.get(store, config, "theirs", "reader@example.net").address == "reader@example.net"


def test_every_call_wants_a_configured_list(store: ContactStore, config: Config) -> None:
    for call in (lambda: ops.get(store, config, "nope", "a@x.test"),
                 lambda: ops.create(store, config, "nope", "a@x.test"),
                 lambda: ops.update(store, config, "nope", "a@x.test"),
                 lambda: ops.delete(store, config, "nope", "a@x.test"),
                 lambda: ops.page(store, config, "nope", limit=10),
                 lambda: ops.make_filter(config, "nope"),
                 lambda: ops.export(store, config, "nope", io.StringIO(), "csv"),
                 # A set's implicit list is not one the operators manage.
                 lambda: ops.get(store, config, "configuration-set:news", "a@x.test")):
        with pytest.raises(ContactListNotFound):
            call()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"address": "no-at-sign"}, BadContact, "'no-at-sign' is not an email address (no @)"),
    ({"address": "a b@x.test"}, BadContact,
     "'a b@x.test' contains white space or control characters"),
    ({"address": "@x.test"}, BadContact, "'@x.test' has an empty local part"),
    ({"address": "a\udcff@x.test"}, BadContact, "'a\\udcff@x.test' is not UTF-8"),
    ({"topics": [("golf", "OPT_IN")]}, TopicNotFound,
     "Topic golf does not exist in contact list news (its topics: Sports, Cycling, daily)"),
    # Topic names are exact, as in the header field.
    ({"topics": [("sports", "OPT_IN")]}, TopicNotFound,
     "Topic sports does not exist in contact list news (its topics: Sports, Cycling, daily)"),
    ({"topics": [("Sports", "opt_in")]}, BadContact,
     "'opt_in' is not a subscription status (topic Sports): use OPT_IN or OPT_OUT"),
    ({"topics": [("Sports", "SUBSCRIBED")]}, BadContact,
     "'SUBSCRIBED' is not a subscription status (topic Sports): use OPT_IN or OPT_OUT"),
    ({"topics": [("Sports", "OPT_IN"), ("Sports", "OPT_OUT")]}, BadContact,
     "topic Sports is given twice"),
    ({"attributes": "Name=John"}, BadContact,
     "the attributes are not JSON (Expecting value at character 0)"),
    ({"attributes": '{"Name": "John"'}, BadContact,
     "the attributes are not JSON (Expecting ',' delimiter at character 15)"),
    ({"attributes": '["John"]'}, BadContact, "the attributes must be a JSON object, not an array"),
    ({"attributes": '"John"'}, BadContact, "the attributes must be a JSON object, not a string"),
    ({"attributes": "42"}, BadContact, "the attributes must be a JSON object, not a number"),
    ({"attributes": "null"}, BadContact, "the attributes must be a JSON object, not null"),
    ({"attributes": '{"a": NaN}'}, BadContact, "the attributes are not JSON (NaN is not a "
                                                "JSON value)"),
    ({"attributes": '{"a": ' + "[" * 2000 + "]" * 2000 + "}"}, BadContact,
     "the attributes are not JSON (nested too deeply)"),
    ({"attributes": '{"a": "\udc80"}'}, BadContact,
     "the attributes are not UTF-8 (a lone surrogate)"),
    ({"attributes": json.dumps({"a": "x" * 4096})}, BadContact,
     "the attributes are 4105 characters; at most 4096"),
])
def test_create_refuses_what_a_contact_cannot_hold(store: ContactStore, config: Config,
                                                   kwargs: dict[str, object],
                                                   error: type[Exception], message: str) -> None:
    kwargs = dict(kwargs)  # the parameters are shared by both backends' runs
    address = str(kwargs.pop("address", "a@example.net"))
    with pytest.raises(error) as refused:
        ops.create(store, config, "news", address, **kwargs)  # type: ignore[arg-type]
    assert str(refused.value) == message
    assert store.count("news") == 0
    if isinstance(refused.value, BadContact):
        assert refused.value.field in ("EmailAddress", "TopicPreferences", "AttributesData")


def test_the_largest_attributes_are_taken(store: ContactStore, config: Config) -> None:
    largest = json.dumps({"a": "é" * (ops.MAX_ATTRIBUTES - 9)}, ensure_ascii=False)
    assert len(largest) == ops.MAX_ATTRIBUTES
    made = ops.create(store, config, "news", "a@example.net", attributes=largest)
    assert ops.get(store, config, "news", "a@example.net").attributes == largest == made.attributes


def test_a_lookup_of_an_address_that_cannot_be_stored_finds_nothing(
        store: ContactStore, config: Config) -> None:
    for call in (ops.get, ops.delete):
        with pytest.raises(ContactNotFound):
            call(store, config, "news", "\udcff@x.test")


# -- ListContacts ---------------------------------------------------------------------------


def seed(store: ContactStore) -> None:
    """One contact for each case the filter tells apart."""
    rows = {
        "a-none@x.test": ContactChange("a-none@x.test"),
        "b-sports-out@x.test": ContactChange("b-sports-out@x.test", topics={"Sports": "OPT_OUT"}),
        "c-sports-in@x.test": ContactChange("c-sports-in@x.test", topics={"Sports": "OPT_IN"}),
        "d-all-out@x.test": ContactChange("d-all-out@x.test", unsubscribe_all=True),
        "e-all-out-sports-in@x.test": ContactChange("e-all-out-sports-in@x.test",
                                                    unsubscribe_all=True,
                                                    topics={"Sports": "OPT_IN"}),
        "f-daily-in@x.test": ContactChange("f-daily-in@x.test", topics={"daily": "OPT_IN"}),
    }
    assert store.put_many("news", rows.values(), at=1.0) == (6, 0)
    store.put_many("theirs", [ContactChange("a-none@x.test")], at=1.0)


def listed(store: ContactStore, config: Config, **filters: object) -> list[str]:
    where = ops.make_filter(config, "news", **filters)  # type: ignore[arg-type]
    found = ops.page(store, config, "news", where=where, limit=100)
    assert found.next_cursor is None
    return [contact.address.split("@")[0] for contact in found.items]


def test_list_contacts_filters_as_ses_describes(store: ContactStore,
                                               config: Config) -> None:
    seed(store)
    everyone = ["a-none", "b-sports-out", "c-sports-in", "d-all-out", "e-all-out-sports-in",
                "f-daily-in"]
    assert listed(store, config) == everyone
    # Without a topic, the status is the list's: OPT_OUT unsubscribed from all of it.
    assert listed(store, config, status="OPT_OUT") == ["d-all-out", "e-all-out-sports-in"]
    assert listed(store, config, status="OPT_IN") == ["a-none", "b-sports-out", "c-sports-in",
                                                      "f-daily-in"]
    # With a topic: only explicit preferences, unless the default may stand in.
    assert listed(store, config, topic="Sports", status="OPT_IN") == ["c-sports-in"]
    assert listed(store, config, topic="Sports", status="OPT_OUT") == [
        "b-sports-out", "e-all-out-sports-in"]  # unsubscribed from all: out of every topic
    assert listed(store, config, topic="Sports", status="OPT_IN", use_default=True) == [
        "a-none", "c-sports-in", "f-daily-in"]
    assert listed(store, config, topic="daily", status="OPT_IN", use_default=True) == [
        "f-daily-in"]  # the topic's default is OPT_OUT
    assert listed(store, config, topic="daily", status="OPT_OUT", use_default=True) == [
        "a-none", "b-sports-out", "c-sports-in", "d-all-out", "e-all-out-sports-in"]
    # A topic alone: those with a preference for it; everyone with the default.
    assert listed(store, config, topic="Sports") == [
        "b-sports-out", "c-sports-in", "e-all-out-sports-in"]
    assert listed(store, config, topic="Sports", use_default=True) == everyone
    # use_default without a topic has nothing to apply to.
    assert listed(store, config, use_default=True) == everyone

    with pytest.raises(TopicNotFound, match="Topic golf does not exist in contact list news"):
        ops.make_filter(config, "news", topic="golf")
    with pytest.raises(BadContact, match="'IN' is not a subscription status"):
        ops.make_filter(config, "news", status="IN")


def test_list_contacts_pages_with_a_cursor(store: ContactStore, config: Config) -> None:
    seed(store)
    seen: list[str] = []
    cursor = None
    while True:
        found = ops.page(store, config, "news", limit=4, after=cursor)
        seen += [c.address for c in found.items]
        cursor = found.next_cursor
        if cursor is None:
            break
        assert cursor == found.items[-1].address
    assert len(seen) == 6 and seen == sorted(seen)
    filtered = ops.page(store, config, "news", limit=1,
                        where=ops.make_filter(config, "news", status="OPT_OUT"))
    assert [c.address for c in filtered.items] == ["d-all-out@x.test"]
    assert filtered.next_cursor == "d-all-out@x.test"
    # Any address is a place to start: a cursor made up or altered starts after it.
    assert [c.address for c in ops.page(store, config, "news", limit=10,
                                        after="c-zzz@x.test").items] == [
        "d-all-out@x.test", "e-all-out-sports-in@x.test", "f-daily-in@x.test"]
    assert ops.page(store, config, "news", limit=10, after="\U0010ffff").items == ()
    # One that no page can end with is refused.
    for bad in ("x" * 321, "a\x00b@x.test", "a\nb", "\udcff"):
        with pytest.raises(ops.BadCursor):
            ops.page(store, config, "news", limit=10, after=bad)


contact_changes = st.builds(
    ContactChange,
    address=st.sampled_from([f"{c}@x.test" for c in "abcdefgh"]),
    unsubscribe_all=st.booleans(),
    topics=st.dictionaries(st.sampled_from(["Sports", "Cycling", "daily", "gone"]),
                           st.sampled_from(["OPT_IN", "OPT_OUT"])))


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@settings(max_examples=examples(300), deadline=None)
@given(changes=st.lists(contact_changes, max_size=8),
       status=st.sampled_from([None, "OPT_IN", "OPT_OUT"]),
       topic=st.sampled_from([None, "Sports", "Cycling", "daily"]),
       use_default=st.booleans())
def test_the_stores_filter_is_the_one_described(tmp_path_factory: pytest.TempPathFactory,
                                                request: pytest.FixtureRequest, backend: str,
                                                changes: list[ContactChange],
                                                status: str | None, topic: str | None,
                                                use_default: bool) -> None:
    """SQLite answers with ContactFilter.sql(), Redis with ContactFilter.matches: both
    list what the filter's description says."""
    config = make_config(tmp_path_factory.mktemp("filter"))
    store: ContactStore
    if backend == "redis":
        # One server for every example; a key prefix of its own keeps each apart.
        server = request.getfixturevalue("redis_server")
        store = RedisContactStore.from_url(server.url, prefix=f"{uuid.uuid4().hex}:")
    else:
        store = SQLiteContactStore(config.state_path)
    try:
        store.put_many("news", changes, at=1.0)
        where = ops.make_filter(config, "news", status=status, topic=topic,
                                use_default=use_default)
        everyone = list(store.iterate("news"))
        assert [c.address for c in store.page("news", where=where, limit=100)] == [
            c.address for c in everyone if where.matches(c)]
    finally:
        store.close()


def test_filter_matches_reads_as_the_send_path(config: Config) -> None:
    """With the default standing in, OPT_IN for a topic is exactly who receives it."""
    news = config.contact_lists["news"]
    for topic in news.topics:
        where = ContactFilter("OPT_IN", topic, use_default=True)
        for contact in (Contact("news", "a@x"), Contact("news", "a@x", True),
                        Contact("news", "a@x", False, {topic.name: "OPT_OUT"}),
                        Contact("news", "a@x", True, {topic.name: "OPT_IN"}),
                        Contact("news", "a@x", False, {topic.name: "OPT_IN"})):
            assert where.matches(contact) == contact.receives(topic)


# -- import and export (SES's CreateImportJob layout) ------------------------------------


# Seed 004, "Bulk importing contacts to your contact list", as the guide prints them.
GUIDE_CSV = """\
emailAddress,unsubscribeAll,attributesData,topicPreferences.Sports,topicPreferences.Cycling
example1@amazon.com,false,{"Name": "John"},OPT_IN,OPT_OUT
example2@amazon.com,true,,OPT_OUT,OPT_OUT
"""
GUIDE_JSON = """\
{
    "emailAddress": "example1@amazon.com",
    "unsubscribeAll": false,
    "attributesData": "{\\"Name\\": \\"John\\"}",
    "topicPreferences": [
        {
            "topicName": "Sports",
            "subscriptionStatus": "OPT_IN"
        },
        {
            "topicName": "Cycling",
            "subscriptionStatus": "OPT_OUT"
        }
    ]
}
{
    "emailAddress": "example2@amazon.com",
    "unsubscribeAll": true,
    "topicPreferences": [
        {
            "topicName": "Sports",
            "subscriptionStatus": "OPT_OUT"
        },
        {
            "topicName": "Cycling",
            "subscriptionStatus": "OPT_OUT"
        }
    ]
}
"""


@pytest.mark.parametrize(("fmt", "text"), [("csv", GUIDE_CSV), ("json", GUIDE_JSON)])
def test_the_guides_import_examples_are_read(store: ContactStore, config: Config,
                                             fmt: str, text: str) -> None:
    checked = ops.read_file(config, "news", text, "contacts", fmt)
    assert (checked.bad, checked.problems, checked.duplicates) == (0, [], 0)
    assert ops.import_plan(store, config, "news", checked) == ops.Imported(2, 0)
    one = ops.get(store, config, "news", "example1@amazon.com")
    two = ops.get(store, config, "news", "example2@amazon.com")
    assert (one.unsubscribe_all, dict(one.topics), json.loads(one.attributes)) == (
        False, {"Sports": "OPT_IN", "Cycling": "OPT_OUT"}, {"Name": "John"})
    assert (two.unsubscribe_all, dict(two.topics), two.attributes) == (
        True, {"Sports": "OPT_OUT", "Cycling": "OPT_OUT"}, "{}")


def test_an_import_reports_each_bad_row_and_takes_the_good(store: ContactStore,
                                                          config: Config) -> None:
    ops.create(store, config, "news", "kept@x.test", topics=[("daily", "OPT_IN")],
               attributes='{"keep": true}', at=1.0)
    text = "\n".join([
        "EmailAddress,unsubscribe_all,topicPreferences.Sports,attributesData",
        "good@x.test,false,OPT_OUT,",
        "no-at-sign,false,,",
        "bad-flag@x.test,maybe,,",
        "bad-status@x.test,,SUBSCRIBED,",
        'bad-json@x.test,,,"{""a"": 1"',
        "short@x.test,true",
        ",true,,",
        "kept@x.test,true,opt_in,",  # empty cells leave the rest as it was
        "good@X.TEST,true,,",  # the same address again: the last row wins
    ])
    checked = ops.read_file(config, "news", text, "in.csv", "csv")
    assert checked.problems == [
        "in.csv:3: 'no-at-sign' is not an email address (no @)",
        "in.csv:4: unsubscribeAll is 'maybe', not true or false",
        "in.csv:5: 'SUBSCRIBED' is not a subscription status (topic Sports): use OPT_IN or "
        "OPT_OUT",
        "in.csv:6: the attributes are not JSON (Expecting ',' delimiter at character 7)",
        "in.csv:7: 2 columns, the header has 4",
        "in.csv:8: no emailAddress",
    ]
    assert (checked.bad, checked.duplicates) == (6, 1)
    assert ops.import_plan(store, config, "news", checked, at=5.0) == ops.Imported(1, 1)
    good = ops.get(store, config, "news", "good@x.test")
    assert (good.unsubscribe_all, dict(good.topics)) == (True, {})
    kept = ops.get(store, config, "news", "kept@x.test")
    assert (kept.unsubscribe_all, dict(kept.topics), kept.attributes, kept.created_at,
            kept.updated_at) == (True, {"Sports": "OPT_IN", "daily": "OPT_IN"},
                                 '{"keep": true}', 1.0, 5.0)


def test_json_import_problems_name_their_line(config: Config) -> None:
    text = "\n".join([
        '{"emailAddress": "a@x.test", "topicPreferences": [{"topicName": "golf",'
        ' "subscriptionStatus": "OPT_IN"}]}',
        '{"emailAddress": "b@x.test", "unsubscribeAll": "yes"}',
        '{"emailAddress": "c@x.test", "colour": "blue"}',
        '{"emailAddress": "d@x.test", "attributesData": ["x"]}',
        '{"emailAddress": "e@x.test", "topicPreferences": {"Sports": "OPT_IN"}}',
        '{"emailAddress": "f@x.test", "attributesData": "[1]"}',
        '{"emailAddress": "g@x.test", broken',
        '["not", "an", "object"]',
        '{"emailAddress": "h@x.test", "attributesData": {"Name": "Ann"}, "UnsubscribeAll": null}',
    ])
    checked = ops.read_file(config, "news", text, "in.ndjson", "json")
    assert checked.problems == [
        "in.ndjson:1: Topic golf does not exist in contact list news (its topics: Sports, "
        "Cycling, daily)",
        "in.ndjson:2: unsubscribeAll must be true or false",
        "in.ndjson:3: unknown key 'colour' (expected emailAddress, unsubscribeAll, "
        "attributesData, topicPreferences)",
        "in.ndjson:4: attributesData must be a string holding a JSON object",
        'in.ndjson:5: topicPreferences must be a list of {"topicName": ..., '
        '"subscriptionStatus": "OPT_IN" | "OPT_OUT"}',
        "in.ndjson:6: the attributes must be a JSON object, not an array",
        "in.ndjson:7: invalid JSON (Expecting property name enclosed in double quotes)",
        "in.ndjson:8: not a JSON object",
    ]
    assert list(checked.changes) == ["h@x.test"]
    assert json.loads(checked.changes["h@x.test"].attributes or "") == {"Name": "Ann"}
    # A JSON list of the same objects.
    listed = ops.read_file(config, "news", '[{"emailAddress": "a@x.test"},\n 7]', "l.json",
                           "json")
    assert list(listed.changes) == ["a@x.test"]
    assert listed.problems == ["l.json:2: not a JSON object"]
    # An object spread over lines that breaks is one bad row; the next object is read.
    broken = GUIDE_JSON.replace('"unsubscribeAll": false,', '"unsubscribeAll": false', 1)
    checked = ops.read_file(config, "news", broken, "g.json", "json")
    assert checked.problems == ["g.json:4: invalid JSON (Expecting ',' delimiter)"]
    assert list(checked.changes) == ["example2@amazon.com"]


@pytest.mark.parametrize(("header", "message"), [
    ("emailAddress,topicPreferences.Golf", "h.csv:1: column 'topicPreferences.Golf': the "
                                           "list has no topic 'Golf' (its topics: Sports, "
                                           "Cycling, daily)"),
    ("address,reason", "h.csv:1: unknown column 'address' in the header (expected "
                       "emailAddress, unsubscribeAll, attributesData and "
                       "topicPreferences.<topic> columns; the first line must be the header)"),
    ("unsubscribeAll,topicPreferences.Sports", "h.csv:1: the header has no emailAddress "
                                               "column (the first line must be the header)"),
    ("emailAddress,EmailAddress", "h.csv:1: the column address is there twice"),
])
def test_a_csv_header_that_cannot_be_read_imports_nothing(config: Config, header: str,
                                                          message: str) -> None:
    with pytest.raises(UnreadableFile) as refused:
        ops.read_file(config, "news", header + "\na@x.test,OPT_IN\n", "h.csv", "csv")
    assert str(refused.value) == message


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_an_export_imports_back_as_it_was(tmp_path: Path, store: ContactStore,
                                          config: Config, fmt: str) -> None:
    seed(store)
    ops.update(store, config, "news", "a-none@x.test",
               attributes='{"Name": "Zoë", "tags": ["a", "b,c"]}')
    out = io.StringIO()
    assert ops.export(store, config, "news", out, fmt) == 6
    if fmt == "csv":
        assert out.getvalue().splitlines()[0] == ("emailAddress,unsubscribeAll,attributesData,"
                                                  "topicPreferences.Sports,"
                                                  "topicPreferences.Cycling,"
                                                  "topicPreferences.daily")
    elsewhere = SQLiteContactStore(tmp_path / "elsewhere.db")
    try:
        checked = ops.read_file(config, "news", out.getvalue(), "export", fmt)
        assert checked.bad == 0
        ops.import_plan(elsewhere, config, "news", checked)
        assert [(c.address, c.unsubscribe_all, dict(c.topics), c.attributes)
                for c in elsewhere.iterate("news")] == [
            (c.address, c.unsubscribe_all, dict(c.topics), c.attributes)
            for c in store.iterate("news")]
    finally:
        elsewhere.close()
