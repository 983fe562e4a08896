"""The suppression-list operations: the typed results and refusals both front ends use."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from smtprelay.config import Config
from smtprelay.operations import suppression as ops
from smtprelay.operations.errors import Invalid, NotConfigured, NotSuppressed
from smtprelay.operations.suppression_files import parse_csv, parse_json
from smtprelay.policy.suppression import SQLiteSuppressionStore


@pytest.fixture
def store(config: Config) -> Iterator[SQLiteSuppressionStore]:
    s = SQLiteSuppressionStore(config.state_path)
    s.open()
    yield s
    s.close()


def test_add_get_remove(store: SQLiteSuppressionStore, config: Config) -> None:
    added = ops.add(store, config, "acme", "Gone@Example.NET", "BOUNCE")
    assert added.created and added.entry.address == "Gone@example.net"
    again = ops.add(store, config, "acme", "Gone@example.net.", "COMPLAINT")
    assert not again.created and again.entry.reason == "COMPLAINT"
    assert ops.get(store, config, "acme", "Gone@EXAMPLE.net").reason == "COMPLAINT"
    assert ops.remove(store, config, "acme", "Gone@EXAMPLE.net") == "Gone@example.net"
    with pytest.raises(NotSuppressed) as missing:
        ops.remove(store, config, "acme", "Gone@EXAMPLE.net")
    assert str(missing.value) == "Gone@EXAMPLE.net is not on account acme's suppression list"
    with pytest.raises(NotSuppressed):
        ops.get(store, config, "acme", "Gone@example.net")


@pytest.mark.parametrize(("address", "reason", "message"), [
    ("no-at-sign", "BOUNCE", "'no-at-sign' is not an email address (no @)"),
    ("a b@x.test", "BOUNCE", "'a b@x.test' contains white space or control characters"),
    ("a@x.test", "SPAM", "reason must be BOUNCE or COMPLAINT"),
    ("a@x.test", None, "reason must be BOUNCE or COMPLAINT"),
])
def test_add_refuses_what_the_list_cannot_hold(store: SQLiteSuppressionStore, config: Config,
                                               address: str, reason: str | None,
                                               message: str) -> None:
    with pytest.raises(Invalid) as refused:
        ops.add(store, config, "acme", address, reason)
    assert str(refused.value) == message
    assert store.count() == 0


def test_every_call_wants_a_configured_account(store: SQLiteSuppressionStore,
                                               config: Config) -> None:
    for call in (lambda: ops.add(store, config, "nobody", "a@x.test", "BOUNCE"),
                 lambda: ops.remove(store, config, "nobody", "a@x.test"),
                 lambda: ops.get(store, config, "nobody", "a@x.test"),
                 lambda: ops.page(store, config, "nobody", limit=10),
                 lambda: list(ops.entries(store, config, "nobody"))):
        with pytest.raises(NotConfigured, match=r"^no account 'nobody' in the configuration"):
            call()
    assert list(ops.entries(store, config, None)) == []  # None: every account


def test_pages_entries_import_and_export(store: SQLiteSuppressionStore,
                                         config: Config) -> None:
    parsed = parse_csv("u1@list.test,BOUNCE\nu2@list.test,COMPLAINT\nbad\n"
                       "u3@list.test,BOUNCE\n", "f.csv", "acme")
    imported = ops.import_rows(store, config, "acme", parsed)
    assert (imported.new, imported.updated, parsed.bad) == (3, 0, 1)
    again = ops.import_rows(store, config, "acme", parse_csv("u1@list.test,BOUNCE\n",
                                                              "g.csv", "acme"))
    assert (again.new, again.updated) == (0, 1)
    ops.add(store, config, "other", "u9@list.test", "BOUNCE")

    first = ops.page(store, config, "acme", limit=2)
    assert [e.address for e in first.items] == ["u1@list.test", "u2@list.test"]
    rest = ops.page(store, config, "acme", limit=2, after=first.next_cursor)
    assert [e.address for e in rest.items] == ["u3@list.test"] and rest.next_cursor is None
    assert [e.address for e in ops.page(store, config, "acme", limit=9, prefix="U2@LIST",
                                        reason="COMPLAINT").items] == []
    assert [e.address for e in ops.entries(store, config, None, limit=2)] == [
        "u1@list.test", "u2@list.test"]
    assert [e.account for e in ops.entries(store, config, None, contains="U9")] == ["other"]

    out = io.StringIO()
    assert ops.export(store, config, out, "json", "acme", reason="BOUNCE") == 2
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["address"] for e in exported] == ["u1@list.test", "u3@list.test"]
    # What export writes, import reads back.
    assert len(parse_json(out.getvalue(), "e.json", "acme").rows) == 2
    out = io.StringIO()
    assert ops.export(store, config, out, "csv", None) == 4
    assert out.getvalue().splitlines()[0] == "address,reason,created_at,account"


def test_pages_by_time_read_a_bounded_part_of_the_list(store: SQLiteSuppressionStore,
                                                       config: Config,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """SES's StartDate and EndDate: entries last added within them; the store has no
    index by time, so a page reads at most a budget of entries and may be short."""
    for i in range(12):
        store.add("acme", f"u{i:02}@x.test", "BOUNCE", created_at=1000.0 + i)
    first = ops.page(store, config, "acme", limit=2, since=1003.0, until=1008.0)
    assert [e.address for e in first.items] == ["u03@x.test", "u04@x.test"]
    seen = list(first.items)
    cursor = first.next_cursor
    while cursor is not None:
        more = ops.page(store, config, "acme", limit=2, since=1003.0, until=1008.0,
                        after=cursor)
        seen += more.items
        cursor = more.next_cursor
    assert [e.created_at for e in seen] == [1003.0 + i for i in range(6)]
    assert ops.page(store, config, "acme", limit=5, since=2000.0).items == ()
    # A budget of 3 entries read: the page stops short, its cursor after what it read.
    monkeypatch.setattr(ops, "_PAGE", 3)
    short = ops.page(store, config, "acme", limit=1, since=1010.0)
    assert short.items == () and short.next_cursor == "u02@x.test"
    last = ops.page(store, config, "acme", limit=5, since=1010.0, after="u08@x.test")
    assert [e.address for e in last.items] == ["u10@x.test", "u11@x.test"]
    assert last.next_cursor is None
