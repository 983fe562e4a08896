"""The pause rules shared by `smtprelay sets|accounts` and the admin API, on both of
the books they run on: the CLI's store and the daemon's in-memory copy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from smtprelay.config import Config
from smtprelay.operations import pauses as ops
from smtprelay.operations.errors import (
    AlreadyPaused,
    NotConfigured,
    NotPaused,
    TooLong,
)
from smtprelay.policy import pauses
from smtprelay.policy.pauses import MAX_DETAIL, PausedSets, SQLitePauseStore


@pytest.fixture(params=["store", "daemon"])
def book(request: pytest.FixtureRequest, config: Config) -> Iterator[ops.PauseBook]:
    store = SQLitePauseStore(config.state_path)
    store.open()
    yield store if request.param == "store" else PausedSets(store)
    store.close()


def test_a_set_pause_is_listed_with_its_set_and_refused_twice(book: ops.PauseBook,
                                                              config: Config) -> None:
    paused = ops.pause(book, config, "set", "news", detail="list cleaning", by="cli")
    assert not paused.accepting and paused.configured and paused.pause is not None
    assert paused.as_json()["paused"] == {
        "configuration_set": "news", "reason": "manual", "detail": "list cleaning",
        "since": paused.pause.since, "by": "cli"}
    with pytest.raises(AlreadyPaused) as again:
        ops.pause(book, config, "set", "news", detail="", by="api 192.0.2.1")
    assert str(again.value) == "configuration set 'news' is already paused (manual, by cli)"
    assert isinstance(again.value, pauses.AlreadyPaused)  # what the store raises, too
    listed = {t.name: t for t in ops.listing(book, config, "set")}
    assert list(listed) == ["alerts", "news", "off"]
    assert listed["alerts"].accepting and not listed["news"].accepting
    assert not listed["off"].accepting and listed["off"].pause is None


def test_an_account_pause_names_the_account(book: ops.PauseBook, config: Config) -> None:
    paused = ops.pause(book, config, "account", "acme", detail="leak", by="cli")
    json = paused.as_json()
    assert json["paused"]["account"] == "acme"
    assert "configuration_set" not in json["paused"]
    assert ops.find(book, config, "account", "acme").pause == paused.pause
    with pytest.raises(AlreadyPaused, match=r"^account 'acme' is already paused"):
        ops.pause(book, config, "account", "acme", detail="", by="cli")


def test_only_configured_names_can_be_paused_and_long_reasons_are_refused(
        book: ops.PauseBook, config: Config) -> None:
    with pytest.raises(NotConfigured) as unknown:
        ops.pause(book, config, "set", "nope", detail="", by="cli")
    assert (unknown.value.scope, unknown.value.name, unknown.value.known) == (
        "set", "nope", ("alerts", "news", "off"))
    assert str(unknown.value) == ("no configuration set 'nope' in the configuration "
                                  "(configuration_sets.nope)")
    with pytest.raises(NotConfigured, match=r"\(accounts\.nobody\)"):
        ops.pause(book, config, "account", "nobody", detail="", by="cli")
    with pytest.raises(TooLong) as long:
        ops.pause(book, config, "set", "news", detail="x" * (MAX_DETAIL + 1), by="cli")
    assert (long.value.field, long.value.limit) == ("reason", MAX_DETAIL)
    assert book.all("set") == {}


def test_resume_lifts_the_pause_and_says_why_it_cannot(book: ops.PauseBook,
                                                       config: Config) -> None:
    ops.pause(book, config, "set", "news", detail="", by="cli")
    resumed = ops.resume(book, config, "set", "news")
    assert resumed.lifted.by == "cli" and resumed.target.accepting
    with pytest.raises(NotPaused) as twice:
        ops.resume(book, config, "set", "news")
    assert not twice.value.disabled
    with pytest.raises(NotPaused) as disabled:
        ops.resume(book, config, "set", "off")
    assert disabled.value.disabled and "sending_enabled: false" in str(disabled.value)
    with pytest.raises(NotConfigured):
        ops.resume(book, config, "set", "nope")
    with pytest.raises(NotPaused, match=r"^account 'acme' is not paused$"):
        ops.resume(book, config, "account", "acme")


def test_a_pause_outlives_its_set_leaving_the_configuration(book: ops.PauseBook,
                                                            config: Config) -> None:
    book.pause("gone", by="reputation-guard", reason="reputation")
    gone = ops.find(book, config, "set", "gone")
    assert not gone.configured and not gone.accepting and gone.sending_enabled is None
    assert "gone" in [t.name for t in ops.listing(book, config, "set")]
    assert ops.resume(book, config, "set", "gone").lifted.reason == "reputation"
    with pytest.raises(NotConfigured):
        ops.find(book, config, "set", "gone")
