"""SES v2's account-data operations with real boto3 `sesv2` clients against a running
relay: the suppression list, configuration sets and contact lists, each scoped to the
API key's account. Another account's key never sees, changes or learns of acme's
entries, sets, lists or contacts; a suppression put through the API stops the next
message to the address; Create/Delete of configuration and lists get AWS's
UnknownOperationException."""

from __future__ import annotations

import datetime
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.e2e.test_ses_api import api_key, client, error_of
from tests.support import DaemonProcess

HOST = "links.test"
ACCOUNTS = {
    "acme": {"identities": ["example.com"], "default_configuration_set": "transactional"},
    "other": {"identities": ["other.example"]},
}
SETS = {
    "transactional": {"accounts": ["acme"], "tls": "require",
                      "suppression": {"reasons": ["BOUNCE"]},
                      "tracking": {"click": True, "domain": HOST, "https": True}},
    "marketing": {"accounts": ["acme"]},
    "everyone": {"shared": True},
    "theirs": {"accounts": ["other"]},
}
TOPICS = [
    {"name": "sports", "display_name": "Sports news", "description": "Scores.",
     "default_subscription_status": "OPT_IN"},
    {"name": "daily", "display_name": "Daily digest", "default_subscription_status": "OPT_OUT"},
]
LISTS = {
    "news": {"account": "acme", "description": "Example news", "unsubscribe_domain": HOST,
             "https": False, "topics": TOPICS},
    "theirs": {"account": "other", "unsubscribe_domain": HOST, "https": False},
}


def relay_config(**more: Any) -> dict[str, Any]:
    return {"api": {"sesv2": True}, "accounts": ACCOUNTS, "configuration_sets": SETS,
            "tracking_domains": {HOST: {}}, "contact_lists": LISTS, **more}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(tmp_path_factory.mktemp("sesacct"), **relay_config()).start()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def acme(relay: DaemonProcess) -> Any:
    return client(relay, api_key(relay, "acme"))


@pytest.fixture(scope="module")
def other(relay: DaemonProcess) -> Any:
    return client(relay, api_key(relay, "other"))


def all_pages(call: Callable[..., dict[str, Any]], items: str, size: int,
              **kwargs: Any) -> tuple[list[Any], int]:
    """Every item of a listing, `size` at a time; and how many calls it took."""
    found: list[Any] = []
    calls = 0
    token: dict[str, str] = {}
    while True:
        answer = call(PageSize=size, **token, **kwargs)
        calls += 1
        assert len(answer[items]) <= size
        found += answer[items]
        if "NextToken" not in answer:
            return found, calls
        token = {"NextToken": answer["NextToken"]}


# ---------------------------------------------------------------------- suppression


def test_suppressed_destinations_put_get_update_delete(acme: Any) -> None:
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    assert error_of(acme.get_suppressed_destination, EmailAddress="Gone@Example.NET")[::2] \
        == ("NotFoundException", 404)
    assert acme.put_suppressed_destination(EmailAddress="Gone@Example.NET",
                                           Reason="BOUNCE")["ResponseMetadata"]
    found = acme.get_suppressed_destination(EmailAddress="Gone@example.net")[
        "SuppressedDestination"]
    # The domain is case-insensitive; LastUpdateTime a timestamp botocore parsed.
    assert found["EmailAddress"] == "Gone@example.net" and found["Reason"] == "BOUNCE"
    assert isinstance(found["LastUpdateTime"], datetime.datetime)
    assert found["LastUpdateTime"] >= before
    acme.put_suppressed_destination(EmailAddress="Gone@example.net", Reason="COMPLAINT")
    assert acme.get_suppressed_destination(EmailAddress="Gone@example.net")[
        "SuppressedDestination"]["Reason"] == "COMPLAINT"
    # Odd characters travel in the path.
    acme.put_suppressed_destination(EmailAddress="a/b+c@example.net", Reason="BOUNCE")
    assert acme.get_suppressed_destination(EmailAddress="a/b+c@example.net")[
        "SuppressedDestination"]["EmailAddress"] == "a/b+c@example.net"
    acme.delete_suppressed_destination(EmailAddress="a/b+c@example.net")
    assert error_of(acme.delete_suppressed_destination,
                    EmailAddress="a/b+c@example.net")[::2] == ("NotFoundException", 404)
    code, message, status = error_of(acme.put_suppressed_destination,
                                     EmailAddress="x@example.net", Reason="SPAM")
    assert (code, status) == ("BadRequestException", 400) and "BOUNCE" in message
    code, message, _ = error_of(acme.put_suppressed_destination, EmailAddress="no-at-sign",
                                Reason="BOUNCE")
    assert code == "BadRequestException" and "no @" in message


def test_list_suppressed_destinations_filters_and_pages(acme: Any) -> None:
    put_at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    for i in range(7):
        acme.put_suppressed_destination(EmailAddress=f"page{i}@list.test",
                                        Reason="BOUNCE" if i % 2 else "COMPLAINT")
    whole = acme.list_suppressed_destinations(PageSize=1000)
    assert "NextToken" not in whole
    everything = [s["EmailAddress"] for s in whole["SuppressedDestinationSummaries"]]
    assert {f"page{i}@list.test" for i in range(7)} <= set(everything)
    paged, calls = all_pages(acme.list_suppressed_destinations,
                             "SuppressedDestinationSummaries", 3)
    assert [s["EmailAddress"] for s in paged] == everything == sorted(everything)
    assert calls == -(-len(everything) // 3)
    assert all(isinstance(s["LastUpdateTime"], datetime.datetime) for s in paged)
    bounces = acme.list_suppressed_destinations(Reasons=["BOUNCE"])[
        "SuppressedDestinationSummaries"]
    assert {s["EmailAddress"] for s in bounces if s["EmailAddress"].startswith("page")} == {
        "page1@list.test", "page3@list.test", "page5@list.test"}
    assert {s["Reason"] for s in bounces} == {"BOUNCE"}
    both = acme.list_suppressed_destinations(Reasons=["BOUNCE", "COMPLAINT"])
    assert len(both["SuppressedDestinationSummaries"]) == len(everything)
    # StartDate and EndDate: the time each address was last put.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    assert acme.list_suppressed_destinations(StartDate=later)[
        "SuppressedDestinationSummaries"] == []
    assert acme.list_suppressed_destinations(EndDate=put_at - datetime.timedelta(hours=1))[
        "SuppressedDestinationSummaries"] == []
    recent, _ = all_pages(acme.list_suppressed_destinations,
                          "SuppressedDestinationSummaries", 2, StartDate=put_at,
                          EndDate=later)
    assert {f"page{i}@list.test" for i in range(7)} <= {s["EmailAddress"] for s in recent}
    code, _, status = error_of(acme.list_suppressed_destinations, NextToken="not a token!")
    assert (code, status) == ("InvalidNextTokenException", 400)
    assert error_of(acme.list_suppressed_destinations, PageSize=0)[0] == "BadRequestException"


def test_a_suppression_put_through_the_api_stops_the_next_message(
        relay: DaemonProcess, acme: Any) -> None:
    acme.put_suppressed_destination(EmailAddress="blocked@example.net", Reason="BOUNCE")
    answer = acme.send_email(
        FromEmailAddress="app@example.com",
        Destination={"ToAddresses": ["blocked@example.net", "fine@example.net"]},
        Content={"Simple": {"Subject": {"Data": "hi"}, "Body": {"Text": {"Data": "x"}}}},
        ConfigurationSetName="marketing")
    with closing(sqlite3.connect(relay.config.spool_path)) as conn:
        states = conn.execute("SELECT address, state FROM recipients WHERE message_id = ?"
                              " ORDER BY idx", (answer["MessageId"],)).fetchall()
    assert states == [("blocked@example.net", "suppressed"), ("fine@example.net", "queued")]


# ------------------------------------------------------------------ configuration sets


def test_configuration_sets_are_the_accounts_own(relay: DaemonProcess, acme: Any) -> None:
    assert acme.list_configuration_sets()["ConfigurationSets"] == [
        "everyone", "marketing", "transactional"]
    paged, calls = all_pages(acme.list_configuration_sets, "ConfigurationSets", 1)
    assert (paged, calls) == (["everyone", "marketing", "transactional"], 3)
    found = acme.get_configuration_set(ConfigurationSetName="transactional")
    assert found["ConfigurationSetName"] == "transactional"
    assert found["TrackingOptions"] == {"CustomRedirectDomain": HOST, "HttpsPolicy": "REQUIRE"}
    assert found["DeliveryOptions"] == {"TlsPolicy": "REQUIRE"}
    assert found["ReputationOptions"] == {"ReputationMetricsEnabled": True}
    assert found["SendingOptions"] == {"SendingEnabled": True}
    assert found["SuppressionOptions"] == {"SuppressedReasons": ["BOUNCE"]}
    assert found["Tags"] == []
    plain = acme.get_configuration_set(ConfigurationSetName="marketing")
    assert "TrackingOptions" not in plain
    assert plain["DeliveryOptions"] == {"TlsPolicy": "OPTIONAL"}
    assert plain["SuppressionOptions"] == {"SuppressedReasons": ["BOUNCE", "COMPLAINT"]}
    assert error_of(acme.get_configuration_set, ConfigurationSetName="nope") == (
        "NotFoundException", "Configuration set <nope> does not exist.", 404)
    relay.cli("sets", "pause", "marketing", "--reason", "test")
    try:
        wait_sending(acme, "marketing", False)
    finally:
        relay.cli("sets", "resume", "marketing")
    wait_sending(acme, "marketing", True)  # and later tests may send with it


def wait_sending(ses: Any, name: str, enabled: bool) -> None:
    deadline = time.monotonic() + 10  # within the daemon's pause refresh
    while ses.get_configuration_set(ConfigurationSetName=name)[
            "SendingOptions"]["SendingEnabled"] is not enabled:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_creating_or_deleting_configuration_is_an_unknown_operation(acme: Any) -> None:
    for call, kwargs in ((acme.create_configuration_set, {"ConfigurationSetName": "new"}),
                         (acme.delete_configuration_set,
                          {"ConfigurationSetName": "marketing"}),
                         (acme.create_contact_list, {"ContactListName": "more"}),
                         (acme.delete_contact_list, {"ContactListName": "news"})):
        code, message, status = error_of(call, **kwargs)
        assert (code, status) == ("UnknownOperationException", 404), call
        assert "/v2/email/" in message
    # Nothing was deleted.
    assert "marketing" in acme.list_configuration_sets()["ConfigurationSets"]
    assert acme.get_contact_list(ContactListName="news")["ContactListName"] == "news"


# ----------------------------------------------------------------------- contact lists


def test_contacts_round_trip_in_ses_shapes(acme: Any) -> None:
    assert acme.list_contact_lists()["ContactLists"] == [{"ContactListName": "news"}]
    news = acme.get_contact_list(ContactListName="news")
    assert news["Description"] == "Example news" and news["Tags"] == []
    assert [t["TopicName"] for t in news["Topics"]] == ["sports", "daily"]
    assert news["Topics"][0] == {"TopicName": "sports", "DisplayName": "Sports news",
                                 "Description": "Scores.",
                                 "DefaultSubscriptionStatus": "OPT_IN"}
    acme.create_contact(ContactListName="news", EmailAddress="Ann@Example.NET",
                        TopicPreferences=[{"TopicName": "daily",
                                           "SubscriptionStatus": "OPT_IN"}],
                        AttributesData='{"name": "Ann"}')
    code, _, status = error_of(acme.create_contact, ContactListName="news",
                               EmailAddress="Ann@example.net")
    assert (code, status) == ("AlreadyExistsException", 400)
    ann = acme.get_contact(ContactListName="news", EmailAddress="Ann@example.net")
    assert ann["EmailAddress"] == "Ann@example.net" and ann["UnsubscribeAll"] is False
    assert ann["TopicPreferences"] == [{"TopicName": "daily", "SubscriptionStatus": "OPT_IN"}]
    assert ann["TopicDefaultPreferences"] == [
        {"TopicName": "sports", "SubscriptionStatus": "OPT_IN"},
        {"TopicName": "daily", "SubscriptionStatus": "OPT_OUT"}]
    assert ann["AttributesData"] == '{"name": "Ann"}'
    assert isinstance(ann["CreatedTimestamp"], datetime.datetime)
    acme.update_contact(ContactListName="news", EmailAddress="Ann@example.net",
                        TopicPreferences=[{"TopicName": "sports",
                                           "SubscriptionStatus": "OPT_OUT"}],
                        UnsubscribeAll=True)
    ann = acme.get_contact(ContactListName="news", EmailAddress="Ann@example.net")
    # The given preferences are the contact's only ones, as SES's UpdateContact.
    assert ann["TopicPreferences"] == [{"TopicName": "sports", "SubscriptionStatus": "OPT_OUT"}]
    assert ann["UnsubscribeAll"] is True and ann["AttributesData"] == '{"name": "Ann"}'
    listed = acme.list_contacts(ContactListName="news", Filter={"FilteredStatus": "OPT_OUT"})
    assert [c["EmailAddress"] for c in listed["Contacts"]] == ["Ann@example.net"]
    assert set(listed["Contacts"][0]) == {"EmailAddress", "TopicPreferences",
                                          "TopicDefaultPreferences", "UnsubscribeAll",
                                          "LastUpdatedTimestamp"}
    acme.delete_contact(ContactListName="news", EmailAddress="Ann@example.net")
    assert error_of(acme.get_contact, ContactListName="news",
                    EmailAddress="Ann@example.net")[::2] == ("NotFoundException", 404)
    assert error_of(acme.delete_contact, ContactListName="news",
                    EmailAddress="Ann@example.net")[0] == "NotFoundException"
    assert error_of(acme.update_contact, ContactListName="news",
                    EmailAddress="Ann@example.net", UnsubscribeAll=False)[0] == \
        "NotFoundException"
    # The operations' own refusals, in SES's codes.
    code, message, status = error_of(
        acme.create_contact, ContactListName="news", EmailAddress="b@example.net",
        TopicPreferences=[{"TopicName": "chess", "SubscriptionStatus": "OPT_IN"}])
    assert (code, status) == ("NotFoundException", 404) and "chess" in message
    code, message, _ = error_of(acme.create_contact, ContactListName="news",
                                EmailAddress="b@example.net", AttributesData="[1]")
    assert code == "BadRequestException" and message.startswith("AttributesData:")
    assert error_of(acme.create_contact, ContactListName="news",
                    EmailAddress="not an address")[0] == "BadRequestException"
    assert error_of(acme.list_contacts, ContactListName="news",
                    Filter={"TopicFilter": {"TopicName": "chess"}})[0] == "NotFoundException"
    assert error_of(acme.get_contact_list, ContactListName="nope")[::2] == (
        "NotFoundException", 404)


def test_list_contacts_pages_and_filters_by_topic(acme: Any) -> None:
    for i in range(5):
        acme.create_contact(ContactListName="news", EmailAddress=f"p{i}@paging.test",
                            TopicPreferences=[{"TopicName": "sports",
                                               "SubscriptionStatus": "OPT_OUT"}]
                            if i % 2 else [])
    try:
        paged, calls = all_pages(acme.list_contacts, "Contacts", 2, ContactListName="news")
        addresses = [c["EmailAddress"] for c in paged]
        assert addresses == sorted(addresses) and len(set(addresses)) == len(addresses)
        assert {f"p{i}@paging.test" for i in range(5)} <= set(addresses)
        assert calls == -(-len(addresses) // 2)
        explicit = acme.list_contacts(ContactListName="news", Filter={
            "FilteredStatus": "OPT_OUT", "TopicFilter": {"TopicName": "sports"}})["Contacts"]
        assert [c["EmailAddress"] for c in explicit] == ["p1@paging.test", "p3@paging.test"]
        with_default = acme.list_contacts(ContactListName="news", Filter={
            "FilteredStatus": "OPT_IN", "TopicFilter": {
                "TopicName": "sports", "UseDefaultIfPreferenceUnavailable": True}})
        assert {"p0@paging.test", "p2@paging.test", "p4@paging.test"} <= {
            c["EmailAddress"] for c in with_default["Contacts"]}
        assert error_of(acme.list_contacts, ContactListName="news",
                        NextToken="%%%")[0] == "BadRequestException"
    finally:
        for i in range(5):
            acme.delete_contact(ContactListName="news", EmailAddress=f"p{i}@paging.test")


# ------------------------------------------------------------------- tenant isolation


def test_another_account_neither_sees_nor_changes_acmes_data(acme: Any, other: Any) -> None:
    acme.put_suppressed_destination(EmailAddress="mine@example.net", Reason="BOUNCE")
    acme.create_contact(ContactListName="news", EmailAddress="mine@example.net")
    try:
        # Suppression: other's list is its own.
        assert error_of(other.get_suppressed_destination,
                        EmailAddress="mine@example.net")[0] == "NotFoundException"
        assert error_of(other.delete_suppressed_destination,
                        EmailAddress="mine@example.net")[0] == "NotFoundException"
        assert other.list_suppressed_destinations()["SuppressedDestinationSummaries"] == []
        other.put_suppressed_destination(EmailAddress="theirs@example.net", Reason="BOUNCE")
        assert error_of(acme.get_suppressed_destination,
                        EmailAddress="theirs@example.net")[0] == "NotFoundException"
        assert acme.get_suppressed_destination(EmailAddress="mine@example.net")[
            "SuppressedDestination"]["Reason"] == "BOUNCE"
        # Sets: acme's are answered as sets that do not exist, in the same words.
        assert other.list_configuration_sets()["ConfigurationSets"] == ["everyone", "theirs"]
        assert error_of(other.get_configuration_set, ConfigurationSetName="transactional") \
            == ("NotFoundException", "Configuration set <transactional> does not exist.", 404)
        assert error_of(acme.get_configuration_set, ConfigurationSetName="theirs")[0] == \
            "NotFoundException"
        # Lists and contacts: acme's list does not exist for other.
        assert other.list_contact_lists()["ContactLists"] == [{"ContactListName": "theirs"}]
        unknown = error_of(other.get_contact_list, ContactListName="no-such-list")
        assert error_of(other.get_contact_list, ContactListName="news") == (
            unknown[0], unknown[1].replace("no-such-list", "news"), unknown[2])
        for call, kwargs in (
                (other.get_contact, {"EmailAddress": "mine@example.net"}),
                (other.update_contact, {"EmailAddress": "mine@example.net",
                                        "UnsubscribeAll": True}),
                (other.delete_contact, {"EmailAddress": "mine@example.net"}),
                (other.create_contact, {"EmailAddress": "new@example.net"}),
                (other.list_contacts, {})):
            assert error_of(call, ContactListName="news", **kwargs)[::2] == (
                "NotFoundException", 404), call
        mine = acme.get_contact(ContactListName="news", EmailAddress="mine@example.net")
        assert mine["UnsubscribeAll"] is False
        assert error_of(acme.get_contact, ContactListName="news",
                        EmailAddress="new@example.net")[0] == "NotFoundException"
    finally:
        acme.delete_contact(ContactListName="news", EmailAddress="mine@example.net")


def test_unsigned_requests_are_refused_before_any_data(relay: DaemonProcess) -> None:
    import urllib.error
    import urllib.request
    url = f"http://127.0.0.1:{relay.ports['http']}/v2/email/suppression/addresses"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 403
    assert refused.value.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"


def test_workers_answer_the_account_operations(tmp_path: Path) -> None:
    """With server.workers each worker answers them on its own stores: what one puts,
    the others (and the supervisor's pipeline) see."""
    daemon = DaemonProcess(tmp_path, **relay_config(
        server={"workers": 2, "transform_workers": 0})).start()
    try:
        ses = client(daemon, api_key(daemon))
        ses.put_suppressed_destination(EmailAddress="w@example.net", Reason="BOUNCE")
        for _ in range(4):  # spread over the workers
            assert ses.get_suppressed_destination(EmailAddress="w@example.net")[
                "SuppressedDestination"]["Reason"] == "BOUNCE"
            assert ses.list_contact_lists()["ContactLists"] == [{"ContactListName": "news"}]
        assert ses.get_configuration_set(ConfigurationSetName="marketing")[
            "SendingOptions"] == {"SendingEnabled": True}
        with pytest.raises(ClientError) as unknown:
            ses.create_configuration_set(ConfigurationSetName="x")
        assert unknown.value.response["Error"]["Code"] == "UnknownOperationException"
    finally:
        daemon.stop()
