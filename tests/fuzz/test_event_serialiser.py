"""Fuzz target: the event serialiser, the way a record travels (smtprelay/events/
records.py -> the spool's outbox -> events/ses.py -> events/notifications.py, as
events/publisher.py renders it for a file or a webhook).

Records are made by the functions every stage calls (accepted, attempt, make) for a
message whose mail record holds any header section (the corpus's deep comments
included) and any tags; they go through a real outbox (SQLite, as the spool writes
and reads it) and out through each destination format. Rendering never fails (an
Unrenderable would set the record aside: issue 16), each line and body is JSON, the
event format matches docs/events.schema.json, a notification is SES's for exactly
Bounce, Complaint and Delivery, and a record read back from the outbox renders as the
same event rendered straight from its detail.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from smtprelay.config import EventDestinationConfig
from smtprelay.events import records
from smtprelay.events.model import (
    BOUNCE_TYPES,
    Click,
    Complaint,
    ComplaintSubType,
    DelayType,
    Detail,
    Event,
    Open,
    Reject,
    Subscription,
    SubscriptionStatus,
    TopicPreferences,
    TopicStatus,
)
from smtprelay.events.notifications import Renderer
from smtprelay.events.ses import iso_timestamp, stored_to_ses, to_json
from smtprelay.spool.model import EventRecord, Outcome, accepted_at
from smtprelay.spool.outbox import MailInfo, events_after, insert_events
from smtprelay.spool.store import open_for_cli
from tests.fuzz import corpus
from tests.support import EVENTS_SCHEMA

MESSAGE_ID = "018bd0e1a2b3-0123456789abcdef"
VALIDATOR = jsonschema.Draft202012Validator(EVENTS_SCHEMA)
RENDERERS = [Renderer(EventDestinationConfig(name="d", type="file", path=Path("/dev/null"),
                                             format=kind),
                      topic_arn="arn:smtprelay:sns:relay.test:set-d", hostname="relay.test")
             for kind in ("event", "notification")]

# What a client can put in a string we keep: anything, lone surrogates included
# (header values keep undecodable octets as surrogate escapes).
_ANY = st.text(st.characters(exclude_categories=()), max_size=30)
_CLEAN = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
_FLOAT = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.floats(0, 4_102_444_800))
# When a stage makes a record: its own clock, never a client's (a client's times, such
# as a complaint's dates, are in the details, as _FLOAT).
_CLOCK = st.floats(0, 4_102_444_800)
_LINE = st.one_of(
    st.builds(lambda name, value: name + b": " + value,
              st.sampled_from([b"From", b"To", b"Cc", b"Bcc", b"Reply-To", b"Subject", b"Date",
                               b"Message-ID", b"Return-Path", b"Sender", b"X-Other"]),
              st.one_of(st.binary(max_size=50), st.sampled_from([
                  b"=?utf-8?b?w6k=?= <a@b.example>", b"a@b.example, (c) d@e.example",
                  b'"x, y" <z@w.example>', b"undisclosed-recipients:;", b"<>",
                  corpus.DEEP_COMMENT.encode(), corpus.OPEN_COMMENTS.encode()]))),
    st.builds(lambda value: b" " + value, st.binary(max_size=30)),
    st.just(b"X-Big: " + b"x" * 11000),
)
_SECTION = st.one_of(
    st.lists(_LINE, max_size=8).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n"),
    st.sampled_from(sorted(corpus.HEADER_SECTIONS.values())),
    st.binary(max_size=200),
)
_MAIL = st.builds(
    lambda section, source, account, destination, tags, at: MailInfo(
        message_id=MESSAGE_ID, timestamp=at, source=source, source_ip="192.0.2.1",
        sending_account_id=account, caller_identity=account, destination=destination,
        header_section=section, tags=tags),
    _SECTION, _CLEAN, _CLEAN, st.lists(_CLEAN, max_size=3).map(tuple),
    st.dictionaries(_ANY, st.lists(_ANY, max_size=2), max_size=3),
    st.floats(0, 4_102_444_800))

_OUTCOME = st.builds(
    lambda kind, bounce, status, diagnostic, remote, delay, ip: Outcome(
        MESSAGE_ID, 0, kind, 1_700_000_000.0, bounce_type=bounce[0], bounce_subtype=bounce[1],
        status=status, diagnostic=diagnostic, remote_mta=remote, delay_type=delay,
        outgoing_ip=ip),
    st.sampled_from(["delivery", "bounce", "delay", "other"]),
    # The pairs classification gives (bounces.classification), or none at all.
    st.sampled_from([(None, None), *sorted((str(t), str(s)) for t, s in BOUNCE_TYPES)]),
    st.none() | _CLEAN, st.none() | _ANY,
    st.none() | st.sampled_from(["mx1.example.net [192.0.2.1]", "mx [2001:db8::1]", "x ["]),
    st.none() | st.sampled_from([str(t) for t in DelayType]),
    st.none() | st.sampled_from(["192.0.2.7", "2001:db8::7"]))
_PREFERENCES = st.builds(TopicPreferences, st.booleans(), st.lists(st.builds(
    TopicStatus, _ANY, st.sampled_from(SubscriptionStatus)), max_size=2).map(tuple))
_DETAIL = st.one_of(
    st.builds(Reject, _ANY),
    st.builds(Open, _ANY, _FLOAT, _ANY, st.booleans(), st.none() | _ANY),
    st.builds(Click, _ANY, _FLOAT, _ANY, _ANY,
              st.dictionaries(_ANY, st.lists(_ANY, max_size=2), max_size=2), st.booleans(),
              st.none() | _ANY),
    st.builds(Complaint, st.lists(_ANY, max_size=3).map(tuple), _FLOAT, _ANY,
              st.none() | st.sampled_from(ComplaintSubType), st.none() | _ANY,
              st.none() | _ANY, st.none() | _FLOAT),
    st.builds(Subscription, _ANY, _FLOAT, _ANY, _PREFERENCES, _PREFERENCES),
)


@st.composite
def _records(draw: st.DrawFn) -> tuple[list[EventRecord], list[Detail | None]]:
    """Records as the stages make them, each with the detail it was made from (None
    when a function made it from outcomes)."""
    made: list[EventRecord] = []
    details: list[Detail | None] = []
    configuration_set = draw(st.none() | _CLEAN)
    if draw(st.booleans()):
        for record in records.accepted(MESSAGE_ID, configuration_set, draw(_CLOCK),
                                       draw(st.dictionaries(_CLEAN, _ANY, max_size=2)),
                                       "relay.test"):
            made.append(record)
            details.append(None)
    if draw(st.booleans()):
        outcomes = draw(st.lists(st.tuples(_CLEAN, _OUTCOME), max_size=4))
        for record in records.attempt(MESSAGE_ID, configuration_set, draw(_CLOCK),
                                      draw(_CLOCK), outcomes, "relay.test"):
            made.append(record)
            details.append(None)
    for detail in draw(st.lists(_DETAIL, max_size=2)):
        made.append(records.make(MESSAGE_ID, configuration_set, draw(_CLOCK), detail,
                                 outgoing_ip=draw(st.none() | st.just("192.0.2.7"))))
        details.append(detail)
    return made, details


@pytest.fixture(scope="module")
def outbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite3.Connection]:
    conn = open_for_cli(tmp_path_factory.mktemp("outbox") / "spool.db")
    # The records' way through SQLite is under test here, not their durability: no fsync
    # per example.
    conn.execute("PRAGMA synchronous = OFF")
    yield conn
    conn.close()


def _store(conn: sqlite3.Connection, mail: MailInfo | None, made: list[EventRecord]) -> int:
    """The rows as the spool writes them (outbox.insert_mail_record's columns, from a
    MailInfo instead of a NewMessage); the id before the first."""
    last = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    conn.execute("DELETE FROM mail_records")
    if mail is not None:
        conn.execute(
            "INSERT INTO mail_records (message_id, created_at, account, configuration_set,"
            " source, source_ip, caller, destination, tags, header_section)"
            " VALUES (?,?,?,?,?,?,?,?,?,?)",
            (mail.message_id, mail.timestamp, mail.sending_account_id, None, mail.source,
             mail.source_ip, mail.caller_identity, json.dumps(list(mail.destination)),
             json.dumps(mail.tags, separators=(",", ":")), mail.header_section))
    insert_events(conn, made)
    return int(last)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(st.none() | _MAIL, _records())
@example(MailInfo(MESSAGE_ID, 1.0, "a@example.com", "192.0.2.1", "acme", "acme", ("a@b.example",),
                  corpus.HEADER_SECTIONS["deep-to-folded"]),
         ([records.make(MESSAGE_ID, "set", 2.0, Reject("x"))], [Reject("x")]))
def test_every_record_renders_for_every_destination(
        outbox: sqlite3.Connection, mail: MailInfo | None,
        made_details: tuple[list[EventRecord], list[Detail | None]]) -> None:
    made, details = made_details
    after = _store(outbox, mail, made)
    stored = events_after(outbox, after, 1000)
    assert [e.event_id for e in stored] == [r.event_id for r in made]
    for event, detail in zip(stored, details, strict=True):
        line, notification = (json.loads(r.line(event)) for r in RENDERERS)
        body = json.loads(RENDERERS[1].body(event))
        assert json.loads(RENDERERS[0].body(event)) == line
        if mail is not None:
            VALIDATOR.validate(line)
        else:
            VALIDATOR.validate(line)  # test_a_record_without_its_mail_record_...
            assert line["mail"]["messageId"] == MESSAGE_ID
        assert line["eventType"] == event.type
        if event.type in ("Bounce", "Complaint", "Delivery"):
            assert notification["notificationType"] == event.type
            assert "tags" not in notification["mail"]
            assert json.loads(body["Message"]) == notification
        else:
            assert notification == {}
        if detail is not None and mail is not None and not event.mail_tags:
            # The outbox's way and the direct way agree.
            assert stored_to_ses(event) == json.loads(to_json(Event.of(mail, detail)))


def test_replay_deep_header_sections() -> None:
    """Every corpus header section, as the mail record of a Delivery: one JSON line each,
    its headers all there, commonHeaders left out only where a value is unreadable."""
    for name, section in corpus.HEADER_SECTIONS.items():
        mail = MailInfo(MESSAGE_ID, 1.0, "a@example.com", "192.0.2.1", "acme", "acme",
                        ("a@b.example",), section)
        [record] = records.attempt(MESSAGE_ID, "set", 1.0, 2.0, [(
            "a@b.example", Outcome(MESSAGE_ID, 0, "delivery", 1.5, diagnostic="smtp; 250 ok"))],
            "relay.test")
        from smtprelay.spool.outbox import StoredEvent
        event = StoredEvent(1, record.event_id, MESSAGE_ID, record.type, "set", record.at,
                            json.loads(json.dumps(record.detail)), mail)
        line = json.loads(RENDERERS[0].line(event))
        VALIDATOR.validate(line)
        assert line["mail"]["headers"] or name in ("bare-lf-in-section",), name


def test_a_record_without_its_mail_record_matches_the_schema(
        outbox: sqlite3.Connection) -> None:
    """Found by this fuzzing: an event published after its message's mail record is
    gone (a late Click, a DSN for a purged message) lacked the mail object's required
    timestamp, source and sendingAccountId."""
    made = list(records.accepted(MESSAGE_ID, "set", 1_700_000_000.0, {}, "relay.test"))
    [event] = events_after(outbox, _store(outbox, None, made), 10)
    assert event.mail is None
    line = json.loads(RENDERERS[0].line(event))
    VALIDATOR.validate(line)
    assert line["mail"]["timestamp"] == iso_timestamp(accepted_at(MESSAGE_ID) or 0)
