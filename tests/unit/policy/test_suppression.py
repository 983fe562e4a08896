"""The suppression list on real SQLite: normalisation, upserts, paging, bulk import, and
lookup latency with a million entries; plus the import-file parsers."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprelay.operations.suppression_files import (
    UnreadableFile,
    parse_created_at,
    parse_csv,
    parse_json,
)
from smtprelay.policy.suppression import (
    SQLiteSuppressionStore,
    SuppressionStore,
    address_problem,
    normalise,
    parse_reason,
)
from smtprelay.policy.suppression_redis import RedisSuppressionStore
from tests.redis_server import RedisServer, on_backend


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SuppressionStore]:
    """Each backend of store.backend: the state database, and Redis (a real server,
    tests/redis_server.py) for a cluster of nodes."""
    yield from on_backend(request, lambda: SQLiteSuppressionStore(tmp_path / "state.db"),
                          RedisSuppressionStore.from_url)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteSuppressionStore]:
    s = SQLiteSuppressionStore(tmp_path / "state.db")
    s.open()
    yield s
    s.close()


def test_is_a_suppression_store(store: SuppressionStore) -> None:
    typed: SuppressionStore = store  # mypy checks the protocol; this keeps it used
    assert typed.count() == 0


def test_normalise() -> None:
    assert normalise("A@Example.COM") == "A@example.com"
    assert normalise("A@example.com.") == "A@example.com"
    assert normalise("  Bob.Smith+tag@Mail.Example.ORG ") == "Bob.Smith+tag@mail.example.org"
    assert normalise('"a@b"@Example.com') == '"a@b"@example.com'  # the last @ splits
    assert normalise("postmaster") == "postmaster"


def test_address_problem() -> None:
    assert address_problem("a@example.com") is None
    assert address_problem("example.com") == "'example.com' is not an email address (no @)"
    assert address_problem("@example.com") == "'@example.com' has an empty local part"
    assert address_problem("a@") == "'a@' has an empty domain"
    assert address_problem("a b@example.com") is not None
    assert parse_reason(" bounce ") == "BOUNCE"
    assert parse_reason("Complaint") == "COMPLAINT"
    assert parse_reason("spam") is None


def test_domain_case_is_one_entry_local_part_case_is_two(
        store: SuppressionStore) -> None:
    assert store.add("acme", "A@Example.COM", "BOUNCE") is True
    assert store.add("acme", "A@example.com", "COMPLAINT") is False  # the same entry
    assert store.add("acme", "a@example.com", "BOUNCE") is True  # another local part
    assert store.count("acme") == 2
    entry = store.get("acme", "A@EXAMPLE.com.")
    assert entry is not None
    assert (entry.address, entry.reason) == ("A@example.com", "COMPLAINT")


def test_lookup_keys_are_the_addresses_as_passed(store: SuppressionStore) -> None:
    store.add("acme", "A@Example.COM", "BOUNCE", source_message_id="m1")
    store.add("acme", "c@example.net", "COMPLAINT")
    store.add("other", "x@example.com", "BOUNCE")
    asked = ["A@EXAMPLE.COM", "a@example.com", "A@example.com.", "c@Example.NET",
             "x@example.com", "nobody@example.com", "postmaster"]
    found = store.lookup("acme", asked)
    assert set(found) == {"A@EXAMPLE.COM", "A@example.com.", "c@Example.NET"}
    assert found["A@EXAMPLE.COM"].address == "A@example.com"
    assert found["A@EXAMPLE.COM"].source_message_id == "m1"
    assert found["c@Example.NET"].reason == "COMPLAINT"
    assert store.lookup("acme", []) == {}
    # Per account: other's entry does not suppress acme's mail, and the reverse.
    assert set(store.lookup("other", asked)) == {"x@example.com"}
    # A tuple, as the pipeline passes the envelope's recipients; more than one IN chunk.
    many = (*(f"r{i}@example.com" for i in range(1200)), "c@example.net")
    assert list(store.lookup("acme", many)) == ["c@example.net"]


def test_lookups_on_the_loop_answer_as_lookup_each_its_own(store: SuppressionStore) -> None:
    """The acceptance path's look-up: on Redis many messages' look-ups go in one
    pipeline (state.redis.Pipelined); each gets its own account's answer."""
    store.add("acme", "a@Example.COM", "BOUNCE", source_message_id="m1")
    store.add("other", "x@example.com", "COMPLAINT")
    asks = [("acme", ["a@example.com", "x@example.com"]), ("other", ["x@EXAMPLE.com"]),
            ("acme", []), ("nobody", ["a@example.com"])] * 25

    async def ask() -> list[dict[str, str]]:
        try:
            found = await asyncio.gather(*(store.lookup_on_loop(account, addresses)
                                           for account, addresses in asks))
        finally:
            await store.close_on_loop()
        return [{a: e.reason for a, e in f.items()} for f in found]

    answers = asyncio.run(ask())
    assert answers == [{a: e.reason for a, e in store.lookup(account, addresses).items()}
                       for account, addresses in asks]
    assert answers[:4] == [{"a@example.com": "BOUNCE"}, {"x@EXAMPLE.com": "COMPLAINT"}, {},
                           {}]


def test_add_updates_reason_time_and_source(store: SuppressionStore) -> None:
    assert store.add("acme", "a@example.com", "BOUNCE", created_at=100.0,
                     source_message_id="m1")
    assert not store.add("acme", "a@example.com", "COMPLAINT", created_at=200.0)
    entry = store.get("acme", "a@example.com")
    assert entry is not None
    assert (entry.reason, entry.created_at, entry.source_message_id) == ("COMPLAINT", 200.0,
                                                                          None)
    before = time.time()
    store.add("acme", "b@example.com", "BOUNCE")
    added = store.get("acme", "b@example.com")
    assert added is not None and before <= added.created_at <= time.time()


def test_add_refuses_bad_input(store: SuppressionStore) -> None:
    with pytest.raises(ValueError, match="no @"):
        store.add("acme", "example.com", "BOUNCE")
    with pytest.raises(ValueError, match="BOUNCE or COMPLAINT"):
        store.add("acme", "a@example.com", "SPAM")  # type: ignore[arg-type]
    assert store.count() == 0


def test_remove(store: SuppressionStore) -> None:
    store.add("acme", "a@example.com", "BOUNCE")
    store.add("other", "a@example.com", "BOUNCE")
    assert store.remove("acme", "a@EXAMPLE.com") is True
    assert store.remove("acme", "a@example.com") is False
    assert store.get("acme", "a@example.com") is None
    assert store.get("other", "a@example.com") is not None
    assert (store.count("acme"), store.count("other"), store.count()) == (0, 1, 1)


def test_list_filters_and_keyset_pagination(store: SuppressionStore) -> None:
    for i in range(25):
        store.add("acme", f"u{i:02d}@example.com", "BOUNCE" if i % 2 else "COMPLAINT")
    for i in range(5):
        store.add("other", f"u{i:02d}@Other.TEST", "BOUNCE")
    everything = store.list()
    assert [(e.account, e.address) for e in everything] == sorted(
        (e.account, e.address) for e in everything)
    assert len(everything) == 30

    pages: list[list[str]] = []
    after: tuple[str, str] | None = None
    while True:
        page = store.list("acme", limit=10, after=after)
        if not page:
            break
        pages.append([e.address for e in page])
        after = (page[-1].account, page[-1].address)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [a for p in pages for a in p] == [f"u{i:02d}@example.com" for i in range(25)]

    # Paging across accounts continues into the next account.
    tail = store.list(after=("acme", "u24@example.com"))
    assert [e.account for e in tail] == ["other"] * 5

    assert {e.reason for e in store.list("acme", reason="BOUNCE")} == {"BOUNCE"}
    assert len(store.list("acme", reason="BOUNCE")) == 12
    assert [e.address for e in store.list(contains="U03@")] == ["u03@example.com",
                                                                 "u03@other.test"]
    assert [e.address for e in store.list("other", contains="other.test", limit=2)] == [
        "u00@other.test", "u01@other.test"]
    assert store.list(contains="%") == []  # not a LIKE wildcard
    assert len(list(store.iterate("acme", page=7))) == 25


def test_import_entries_counts_new_and_updates(store: SuppressionStore) -> None:
    store.add("acme", "old@example.com", "BOUNCE", created_at=1.0)
    new = store.import_entries("acme", [
        ("old@EXAMPLE.com", "COMPLAINT", 50.0),
        ("n1@example.com", "BOUNCE", None),
        ("n2@example.com", "COMPLAINT", 60.0),
        ("N2@example.com", "COMPLAINT", 60.0),  # another local part: another entry
    ])
    assert new == 3
    old = store.get("acme", "old@example.com")
    assert old is not None and (old.reason, old.created_at) == ("COMPLAINT", 50.0)
    assert store.count("acme") == 4
    with pytest.raises(ValueError):
        store.import_entries("acme", [("nope", "BOUNCE", None)])


def test_import_spans_several_transactions(store: SuppressionStore,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smtprelay.policy.suppression.IMPORT_BATCH", 100)
    # Listings read a Redis index in chunks too: several of them here.
    monkeypatch.setattr("smtprelay.policy.redis_entries.SCAN_CHUNK", 100)
    rows = [(f"u{i}@example.com", "BOUNCE", None) for i in range(1050)]
    assert store.import_entries("acme", rows) == 1050  # type: ignore[arg-type]
    assert store.import_entries("acme", rows[:500]) == 0  # type: ignore[arg-type]
    assert store.count("acme") == 1050
    assert len(store.list("acme")) == 1050
    assert len(store.list("acme", limit=250, after=("acme", "u1@example.com"))) == 250


def test_two_connections_see_each_other(tmp_path: Path) -> None:
    """The daemon's store sees what the CLI (another connection) adds, and the reverse."""
    daemon = SQLiteSuppressionStore(tmp_path / "state.db")
    cli = SQLiteSuppressionStore(tmp_path / "state.db")
    try:
        cli.add("acme", "a@example.com", "BOUNCE")
        assert "a@example.com" in daemon.lookup("acme", ["a@example.com"])
        daemon.add("acme", "b@example.com", "COMPLAINT")
        assert cli.count("acme") == 2
        mode = sqlite3.connect(tmp_path / "state.db").execute("PRAGMA journal_mode").fetchone()
        assert mode[0] == "wal"
    finally:
        daemon.close()
        cli.close()


def test_two_nodes_on_one_redis_see_each_other(redis_url: str) -> None:
    """store: redis: what one node (or its CLI) adds, every node's next lookup sees."""
    first = RedisSuppressionStore.from_url(redis_url)
    second = RedisSuppressionStore.from_url(redis_url)
    try:
        first.add("acme", "a@example.com", "BOUNCE", diagnostic="550 5.1.1 no such user")
        found = second.lookup("acme", ["a@EXAMPLE.com"])
        assert found["a@EXAMPLE.com"].diagnostic == "550 5.1.1 no such user"
        assert second.remove("acme", "a@example.com")
        assert first.lookup("acme", ["a@example.com"]) == {}
        assert not first.remove("acme", "a@example.com")
    finally:
        first.close()
        second.close()


def test_entries_survive_a_redis_crash_with_the_documented_persistence() -> None:
    """Issue 18: suppression entries must not be lost with Redis (appendonly yes,
    appendfsync always, as docs/operations.md says): kill -9 and start again."""
    server = RedisServer(durable=True).start()
    try:
        store = RedisSuppressionStore.from_url(server.url)
        store.add("acme", "a@example.com", "BOUNCE", diagnostic="550 5.1.1")
        assert store.import_entries("acme", ((f"u{i}@example.com", "COMPLAINT", None)
                                             for i in range(500))) == 500
        store.close()
        server.crash()
        server.start()
        store = RedisSuppressionStore.from_url(server.url)
        assert store.count("acme") == 501
        assert store.get("acme", "a@example.com").diagnostic == "550 5.1.1"  # type: ignore[union-attr]
        assert [e.address for e in store.list("acme", limit=2)] == [
            "a@example.com", "u0@example.com"]
        store.close()
    finally:
        server.stop()


def test_lookups_from_threads(store: SuppressionStore) -> None:
    """The pipeline calls lookup from worker threads on one store."""
    store.import_entries("acme", ((f"u{i}@example.com", "BOUNCE", None) for i in range(1000)))
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                i = rng.randrange(2000)
                found = store.lookup("acme", [f"u{i}@EXAMPLE.com"])
                assert bool(found) == (i < 1000)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_million_entries_import_and_lookup_latency(
        sqlite_store: SQLiteSuppressionStore) -> None:
    """§4.4: a million suppressed addresses must not slow acceptance measurably."""
    store = sqlite_store
    n = 1_000_000
    started = time.perf_counter()
    new = store.import_entries("acme", ((f"user{i}@d{i % 997}.example.com",
                                         "BOUNCE" if i % 3 else "COMPLAINT", None)
                                        for i in range(n)))
    import_s = time.perf_counter() - started
    assert new == n
    assert store.count("acme") == n

    rng = random.Random(1)
    latencies = []
    hits = 0
    for _ in range(5000):
        # A message of 5 recipients, each listed with a chance of 1 in 2, some with
        # the domain in upper case as clients send it.
        rcpts = []
        for _ in range(5):
            i = rng.randrange(2 * n)
            domain = f"d{i % 997}.example.com"
            rcpts.append(f"user{i}@{domain.upper() if i % 2 else domain}")
        t0 = time.perf_counter()
        found = store.lookup("acme", rcpts)
        latencies.append(time.perf_counter() - t0)
        hits += len(found)
        assert all(int(r[4:r.index("@")]) < n for r in found)
    latencies.sort()
    p50 = statistics.median(latencies) * 1e6
    p99 = latencies[int(len(latencies) * 0.99)] * 1e6
    print(f"\nimport of {n:,} entries: {import_s:.1f} s ({n / import_s:,.0f} rows/s); "
          f"lookup of 5 recipients with {n:,} listed: p50 {p50:.0f} us, p99 {p99:.0f} us, "
          f"{hits} hits")
    assert 10_000 < hits < 15_000  # about half of 25,000
    # A message's acceptance takes milliseconds (fsync); the check must be a small
    # fraction of that even on a slow CI machine.
    assert p99 < 5000


# -- the CLI's import parsers ----------------------------------------------------------


def test_parse_csv_with_header_and_bad_rows() -> None:
    text = ("address,reason,created_at\n"
            "a@example.com,BOUNCE,2024-01-02T03:04:05Z\n"
            "\n"
            "no-at-sign,BOUNCE,\n"
            "b@example.com,SPAM,\n"
            "c@example.com,complaint,not a date\n"
            "d@example.com,bounce\n"
            "a@EXAMPLE.COM,complaint,1700000000\n"
            '"e@example.com",Complaint,\n')
    result = parse_csv(text, "f.csv", "acme")
    assert result.problems == [
        "f.csv:4: 'no-at-sign' is not an email address (no @)",
        "f.csv:5: bad reason 'SPAM' (BOUNCE or COMPLAINT)",
        "f.csv:6: unparseable date 'not a date' (ISO 8601 or epoch seconds)",
        "f.csv:7: 2 columns, the header has 3",
    ]
    assert (result.bad, result.duplicates) == (4, 1)
    assert result.rows == {"a@example.com": ("a@EXAMPLE.COM", "COMPLAINT", 1700000000.0),
                           "e@example.com": ("e@example.com", "COMPLAINT", None)}


def test_parse_csv_ses_layout_without_header() -> None:
    # The seed's bulk-import example: no header, a space after the comma.
    result = parse_csv("recipient1@example.com, BOUNCE\r\nrecipient2@example.com, COMPLAINT\r\n",
                       "ses.csv", "acme")
    assert result.problems == []
    assert [(r[0], r[1]) for r in result.rows.values()] == [
        ("recipient1@example.com", "BOUNCE"), ("recipient2@example.com", "COMPLAINT")]
    # A bad first row is a bad row, not a header.
    result = parse_csv("oops,BOUNCE\nok@example.com,BOUNCE,5,6\n", "x.csv", "acme")
    assert result.problems == ["x.csv:1: 'oops' is not an email address (no @)",
                               "x.csv:2: 4 columns, expected address[,reason[,created_at]]"]


def test_parse_csv_header_variants() -> None:
    result = parse_csv("Reason,EmailAddress\nBOUNCE,a@example.com\n", "f", "acme")
    assert list(result.rows) == ["a@example.com"]
    with pytest.raises(UnreadableFile, match=r"f:1: unknown column 'colour'"):
        parse_csv("address,reason,colour\n", "f", "acme")
    with pytest.raises(UnreadableFile, match="no address column"):
        parse_csv("reason,created_at\n", "f", "acme")
    # A header without a reason column: each row needs the reason given with --reason.
    result = parse_csv("address,created_at\na@x.test,\n", "f", "acme")
    assert result.problems == ["f:2: no reason: give one in the row (BOUNCE or COMPLAINT), "
                               "or --reason for every row that has none"]
    result = parse_csv("address,created_at\na@x.test,\n", "f", "acme",
                       default_reason="BOUNCE")
    assert result.rows == {"a@x.test": ("a@x.test", "BOUNCE", None)}
    # An export of every account: rows of another account are not mixed in.
    result = parse_csv("address,reason,created_at,account\na@x.test,BOUNCE,,acme\n"
                       "b@x.test,BOUNCE,,other\n", "all.csv", "acme")
    assert list(result.rows) == ["a@x.test"]
    assert result.problems == ["all.csv:3: row of account 'other', importing into 'acme'"]


def test_parse_csv_not_utf8_row() -> None:
    text = b"a@example.com,BOUNCE\nb\xff@example.com,BOUNCE\n".decode(
        "utf-8", errors="surrogateescape")
    result = parse_csv(text, "f", "acme")
    assert result.problems == ["f:2: address is not UTF-8"]
    assert list(result.rows) == ["a@example.com"]


def test_parse_json_list_and_ndjson() -> None:
    listing = ('[\n  {"address": "a@example.com", "reason": "BOUNCE"},\n'
               '  {"address": "b@example.com",\n   "reason": "nope"},\n'
               '  {"emailAddress": "c@example.com", "reason": "complaint",'
               ' "created_at": 12.5},\n  "text",\n'
               '  {"address": "A@Example.com", "reason": "COMPLAINT"}\n]\n')
    result = parse_json(listing, "l.json", "acme")
    assert result.problems == ["l.json:3: bad reason 'nope' (BOUNCE or COMPLAINT)",
                               "l.json:6: not a JSON object"]
    assert result.rows["c@example.com"] == ("c@example.com", "COMPLAINT", 12.5)
    assert result.rows["A@example.com"][1] == "COMPLAINT"
    assert result.duplicates == 0  # A@ and a@ are different local parts

    # SES's NDJSON bulk format and SES's list output keys.
    nd = ('{"emailAddress": "r1@example.com", "reason": "BOUNCE"}\n'
          '{"EmailAddress": "r2@example.com", "Reason": "COMPLAINT",'
          ' "LastUpdateTime": 1586552585.077}\n'
          '{"emailAddress": "r3@example.com", "reason": \n'
          '\n'
          '{"emailAddress": "r1@EXAMPLE.COM", "reason": "COMPLAINT"}\n')
    result = parse_json(nd, "n.json", "acme")
    assert result.problems == ["n.json:3: invalid JSON (Expecting value)"]
    assert result.rows == {
        "r1@example.com": ("r1@EXAMPLE.COM", "COMPLAINT", None),
        "r2@example.com": ("r2@example.com", "COMPLAINT", 1586552585.077)}
    assert result.duplicates == 1


def test_parse_json_broken_list_keeps_items_before_the_error() -> None:
    text = '[{"address": "a@example.com", "reason": "BOUNCE"},\n {"address": "b@ex'
    result = parse_json(text, "b.json", "acme")
    assert list(result.rows) == ["a@example.com"]
    assert result.bad == 1
    assert result.problems[0].startswith("b.json:2: invalid JSON (")


def test_parse_created_at() -> None:
    assert parse_created_at("") is None
    assert parse_created_at(None) is None
    assert parse_created_at("1700000000.5") == 1700000000.5
    assert parse_created_at(1700000000) == 1700000000.0
    assert parse_created_at("1970-01-02T00:00:00Z") == 86400.0
    assert parse_created_at("1970-01-02T00:00:00") == 86400.0  # no zone: UTC
    assert parse_created_at("1970-01-02T01:00:00+01:00") == 86400.0
    for bad in ("nan", "inf", "-5", "1e20", "1960-01-01", "tomorrow", True):
        with pytest.raises(ValueError):
            parse_created_at(bad)
