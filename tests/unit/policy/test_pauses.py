"""Run-time pauses of configuration sets: the durable store, the in-memory view, the refusal."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.config import Config
from smtprelay.mail import replies as R
from smtprelay.mail.headers import parse_header_section
from smtprelay.policy import configuration_sets
from smtprelay.policy.pauses import AlreadyPaused, PausedSets, PauseStore, SQLitePauseStore
from smtprelay.policy.pauses_redis import RedisPauseStore


@pytest.fixture(params=["sqlite", "redis"])
def two_stores(request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[tuple[PauseStore, PauseStore]]:
    """Two handles on one backend of store.backend, as the daemon and the CLI (or two
    nodes) have: the state database, and Redis (tests/redis_server.py)."""
    stores: list[PauseStore]
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        stores = [RedisPauseStore.from_url(url), RedisPauseStore.from_url(url)]
    else:
        stores = [SQLitePauseStore(tmp_path / "state.db"),
                  SQLitePauseStore(tmp_path / "state.db")]
    for s in stores:
        s.open()
    yield stores[0], stores[1]
    for s in stores:
        s.close()


@pytest.fixture
def store(two_stores: tuple[PauseStore, PauseStore]) -> PauseStore:
    return two_stores[0]


def test_pause_records_why_when_and_who(store: PauseStore) -> None:
    pause = store.pause("news", detail="list cleaning", by="cli", now=1000.0)
    assert (pause.reason, pause.detail, pause.since, pause.by) == (
        "manual", "list cleaning", 1000.0, "cli")
    assert store.get("news") == pause
    guard = store.pause("alerts", reason="reputation", by="reputation-guard",
                        detail="bounce rate 0.12 >= 0.10 over 24h (412 deliveries)")
    assert store.all() == {"alerts": guard, "news": pause}
    with pytest.raises(AlreadyPaused) as raised:
        store.pause("news", by="api 192.0.2.1")
    assert raised.value.pause == pause  # the pause in force is kept, not replaced
    with pytest.raises(ValueError):
        store.pause("x", reason="whim", by="cli")  # type: ignore[arg-type]
    assert store.resume("news", now=2000.0) == pause
    assert store.resume("news") is None
    assert list(store.all()) == ["alerts"]
    assert store.resumes() == {("set", "news"): 2000.0}
    account = store.pause("acme", by="cli", scope="account")
    assert store.all("account") == {"acme": account} and store.get("acme") is None


def test_the_view_sees_other_processes_changes_on_refresh(
        two_stores: tuple[PauseStore, PauseStore]) -> None:
    daemon, cli = two_stores  # another connection, as the CLI (or another node) has
    paused = PausedSets(daemon)
    paused.refresh()
    assert "news" not in paused and len(paused) == 0
    cli.pause("news", by="cli")
    assert "news" not in paused  # not until the next refresh
    paused.refresh()
    assert "news" in paused and paused["news"].by == "cli"
    cli.resume("news")
    paused.refresh()
    assert "news" not in paused
    # Through the view itself: at once, no refresh needed.
    paused.pause("alerts", by="api 127.0.0.1")
    assert "alerts" in paused and cli.get("alerts") is not None
    paused.resume("alerts")
    assert "alerts" not in paused and cli.get("alerts") is None


async def test_the_view_refreshes_itself_and_survives_a_broken_database(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SQLitePauseStore(tmp_path / "state.db")
    other = SQLitePauseStore(tmp_path / "state.db")
    paused = PausedSets(store)
    paused.pause("news", by="cli")
    task = asyncio.create_task(paused.run(interval=0.02))
    try:
        other.pause("alerts", by="cli")
        for _ in range(100):
            if "alerts" in paused:
                break
            await asyncio.sleep(0.02)
        assert "alerts" in paused
        store.close()
        (tmp_path / "a-file").write_text("")
        store.path = tmp_path / "a-file" / "state.db"  # cannot be opened: keep the list
        await asyncio.sleep(0.1)
        assert "news" in paused and "alerts" in paused
        assert "not re-read" in caplog.text
    finally:
        task.cancel()
        other.close()


def test_refresh_and_pause_from_threads_do_not_lose_a_pause(tmp_path: Path) -> None:
    paused = PausedSets(SQLitePauseStore(tmp_path / "state.db"))
    stop = threading.Event()

    def refresh() -> None:
        while not stop.is_set():
            paused.refresh()

    thread = threading.Thread(target=refresh)
    thread.start()
    try:
        for i in range(50):
            paused.pause(f"set{i}", by="api")
            assert f"set{i}" in paused
    finally:
        stop.set()
        thread.join()
    assert len(paused) == 50


def test_a_paused_set_is_refused_like_a_disabled_one() -> None:
    config = Config.model_validate({
        "listeners": [{"name": "s", "address": "127.0.0.1", "port": 0, "tls": "none"}],
        "accounts": {"acme": {"identities": ["example.com"],
                              "default_configuration_set": "news"}},
        "configuration_sets": {"news": {}, "alerts": {"accounts": ["acme"]},
                               "off": {"sending_enabled": False, "shared": True}},
    })

    def choose(header: str, paused: set[str]) -> object:
        fields = parse_header_section(f"{header}From: a@example.com\r\n\r\n".encode())
        return configuration_sets.choose(config, "acme", fields, paused)

    assert choose("", {"news"}) is R.SET_PAUSED  # the account's default set
    assert choose("X-SES-CONFIGURATION-SET: news\r\n", {"news"}) is R.SET_PAUSED
    assert isinstance(choose("X-SES-CONFIGURATION-SET: alerts\r\n", {"news"}),
                      configuration_sets.SetChoice)
    assert choose("X-SES-CONFIGURATION-SET: off\r\n", set()) is R.SET_PAUSED
    assert choose("X-SES-CONFIGURATION-SET: nope\r\n", {"nope"}) is R.SET_UNKNOWN
    assert (R.SET_PAUSED.code, R.SET_PAUSED.text) == (
        554, "5.7.1 Sending paused for this configuration set")
