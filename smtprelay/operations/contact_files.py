"""Contact files: the CSV and JSON an export writes and an import reads, in SES's
bulk-import layout (seed 004, "Bulk importing contacts to your contact list", the
CreateImportJob format):

- CSV with a header line: ``emailAddress,unsubscribeAll,attributesData,`` then one
  ``topicPreferences.<topic>`` column per topic ("the topicPreferences object needs
  to be flattened"), each cell OPT_IN, OPT_OUT or empty;
- JSON: one object per contact, ``{"emailAddress": ..., "unsubscribeAll": false,
  "attributesData": "{...}", "topicPreferences": [{"topicName": ...,
  "subscriptionStatus": "OPT_IN"}]}``. SES says newline-delimited, and its own example
  spreads each object over several lines: both are read, one object after another,
  and so is a JSON list of them.

Only emailAddress is required. What a row leaves out (an empty cell, a missing key)
is not changed on a contact that exists, and is the default on a new one. Names are
compared without case, ``_`` or ``-`` (``EmailAddress`` and ``email_address`` work
too); a topic name is exact.

This module reads a file's shape into `RawRow`s; smtprelay.operations.contacts
checks their values against the list, so that every bad row is reported with its
line and the good ones go in.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from smtprelay.operations.suppression_files import UnreadableFile

__all__ = ["CSV_COLUMNS", "RawRow", "UnreadableFile", "read_csv", "read_json", "write_csv",
           "write_ndjson"]

CSV_COLUMNS = ("emailAddress", "unsubscribeAll", "attributesData")
_TOPIC_PREFIX = "topicpreferences."
_KEYS = {"emailaddress": "address", "unsubscribeall": "unsubscribe_all",
         "attributesdata": "attributes", "topicpreferences": "topics"}
_JSON_KEYS = "emailAddress, unsubscribeAll, attributesData, topicPreferences"
_PREFERENCES = ('topicPreferences must be a list of {"topicName": ..., "subscriptionStatus": '
                '"OPT_IN" | "OPT_OUT"}')


@dataclass
class RawRow:
    """One contact as the file gives it: `where` is FILE:LINE; None is "not given".
    `problem`: what makes the row unusable whatever the list (its shape)."""

    where: str
    address: str | None = None
    unsubscribe_all: bool | None = None
    attributes: str | None = None
    topics: list[tuple[str, str]] = field(default_factory=list)
    problem: str | None = None


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


# -- CSV -------------------------------------------------------------------------------


def read_csv(text: str, name: str, topics: Collection[str]) -> Iterator[RawRow]:
    """The rows of a CSV file with SES's header; UnreadableFile (before any row) for a
    header that is not one, or that names a topic the list (`topics`) does not have."""
    reader = csv.reader(io.StringIO(text))
    columns: list[tuple[str, str]] | None = None  # (kind, topic name or "")
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if columns is None:
                raise UnreadableFile(f"{name}:{line}: unreadable CSV ({exc})") from None
            yield RawRow(f"{name}:{line}", problem=f"unreadable CSV ({exc})")
            continue
        if not any(cell.strip() for cell in row):
            continue  # blank lines are not rows
        if columns is None:
            columns = _csv_header(row, f"{name}:{line}", topics)
            continue
        where = f"{name}:{line}"
        if len(row) != len(columns):
            yield RawRow(where, problem=f"{len(row)} column{'' if len(row) == 1 else 's'}, "
                                        f"the header has {len(columns)}")
            continue
        yield _csv_row(where, columns, row)
    if columns is None and text.strip():
        raise UnreadableFile(f"{name}: no header line")


def _csv_header(row: list[str], where: str, topics: Collection[str]) -> list[tuple[str, str]]:
    columns: list[tuple[str, str]] = []
    for cell in row:
        cell = cell.strip()
        canonical = _canonical(cell)
        if canonical.startswith(_TOPIC_PREFIX):
            topic = cell[len(_TOPIC_PREFIX):]
            if topic not in topics:
                raise UnreadableFile(
                    f"{where}: column {cell!r}: the list has no topic {topic!r} (its topics: "
                    f"{', '.join(topics) or 'none'})")
            columns.append(("topic", topic))
        elif canonical in _KEYS and canonical != "topicpreferences":
            columns.append((_KEYS[canonical], ""))
        else:
            raise UnreadableFile(
                f"{where}: unknown column {cell!r} in the header (expected emailAddress, "
                "unsubscribeAll, attributesData and topicPreferences.<topic> columns; the "
                "first line must be the header)")
    if ("address", "") not in columns:
        raise UnreadableFile(f"{where}: the header has no emailAddress column (the first "
                             "line must be the header)")
    seen = set()
    for column in columns:
        if column in seen:
            shown = f"topicPreferences.{column[1]}" if column[0] == "topic" else column[0]
            raise UnreadableFile(f"{where}: the column {shown} is there twice")
        seen.add(column)
    return columns


def _csv_row(where: str, columns: list[tuple[str, str]], cells: list[str]) -> RawRow:
    row = RawRow(where)
    for (kind, topic), raw in zip(columns, cells, strict=True):
        value = raw.strip()
        if kind == "address":
            row.address = value or None
        elif kind == "unsubscribe_all":
            if value:
                flag = value.lower()
                if flag not in ("true", "false"):
                    row.problem = f"unsubscribeAll is {value!r}, not true or false"
                    return row
                row.unsubscribe_all = flag == "true"
        elif kind == "attributes":
            row.attributes = value or None
        elif value:
            row.topics.append((topic, value.upper()))
    return row


# -- JSON ------------------------------------------------------------------------------


def read_json(text: str, name: str) -> Iterator[RawRow]:
    """The objects of a JSON file: one after another (NDJSON, or spread over lines as
    in SES's example), or a JSON list of them. After a syntax error, reading goes on
    at the next line that starts a value (see _next_object_line)."""
    decoder = json.JSONDecoder()
    pos = _skip_space(text, 0)
    in_list = text.startswith("[", pos)
    if in_list:
        pos = _skip_space(text, pos + 1)
    expect_comma = False
    while pos < len(text):
        where = f"{name}:{text.count(chr(10), 0, pos) + 1}"
        if in_list:
            if text[pos] == "]":
                if text[pos + 1:].strip():
                    yield RawRow(where, problem="invalid JSON (text after the closing ])")
                return
            if expect_comma:
                if text[pos] != ",":
                    yield RawRow(where, problem="invalid JSON (expected , or ]); the rest "
                                                "of the file is skipped")
                    return
                pos = _skip_space(text, pos + 1)
                expect_comma = False
                continue
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield RawRow(f"{name}:{exc.lineno}", problem=f"invalid JSON ({exc.msg})")
            if in_list:
                return
            pos = _next_object_line(text, exc.pos)
            continue
        except RecursionError:
            yield RawRow(where, problem="invalid JSON (nested too deeply)")
            if in_list:
                return
            pos = _next_object_line(text, pos + 1)
            continue
        yield _json_row(where, value)
        pos = _skip_space(text, end)
        expect_comma = in_list
    if in_list:
        yield RawRow(f"{name}:{text.count(chr(10)) + 1}",
                     problem="invalid JSON (the list is not closed with ])")


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _next_object_line(text: str, pos: int) -> int:
    """The start of the next line after `pos` that can start a value: not indented
    (the inside of an object spread over lines is) and not a closing bracket;
    len(text) when there is none."""
    while True:
        newline = text.find("\n", pos)
        if newline < 0:
            return len(text)
        pos = newline + 1
        if pos < len(text) and text[pos] not in " \t\r\n}]":
            return pos


def _json_row(where: str, value: Any) -> RawRow:
    row = RawRow(where)
    if not isinstance(value, dict):
        row.problem = "not a JSON object"
        return row
    for key, item in value.items():
        kind = _KEYS.get(_canonical(str(key)))
        if kind is None:
            row.problem = f"unknown key {key!r} (expected {_JSON_KEYS})"
            return row
        problem = _json_field(row, kind, item)
        if problem is not None:
            row.problem = problem
            return row
    return row


def _json_field(row: RawRow, kind: str, item: Any) -> str | None:
    """Put one key's value on `row`; what is wrong with it, if something is."""
    if item is None:
        return None  # null: not given
    if kind == "address":
        if not isinstance(item, str):
            return "emailAddress must be a string"
        row.address = item.strip() or None
    elif kind == "unsubscribe_all":
        if not isinstance(item, bool):
            return "unsubscribeAll must be true or false"
        row.unsubscribe_all = item
    elif kind == "attributes":
        # SES's attributesData is a string holding a JSON object; an object itself is
        # taken too.
        if isinstance(item, dict):
            row.attributes = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        elif isinstance(item, str):
            row.attributes = item.strip() or None
        else:
            return "attributesData must be a string holding a JSON object"
    else:
        if not isinstance(item, list):
            return _PREFERENCES
        for preference in item:
            names = ({_canonical(str(k)): v for k, v in preference.items()}
                     if isinstance(preference, dict) else {})
            topic, status = names.get("topicname"), names.get("subscriptionstatus")
            if set(names) != {"topicname", "subscriptionstatus"} or not isinstance(
                    topic, str) or not isinstance(status, str):
                return _PREFERENCES
            row.topics.append((topic, status))
    return None


# -- writing ---------------------------------------------------------------------------


def write_csv(out: IO[str], contacts: Iterable[tuple[str, bool, str, dict[str, str]]],
              topics: list[str]) -> int:
    """(address, unsubscribe_all, attributes, explicit preferences) rows under SES's
    header, a column per topic of the list; how many."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"topicPreferences.{topic}" for topic in topics)])
    count = 0
    for address, unsubscribe_all, attributes, preferences in contacts:
        writer.writerow([address, "true" if unsubscribe_all else "false", attributes,
                         *(preferences.get(topic, "") for topic in topics)])
        count += 1
    return count


def write_ndjson(out: IO[str], contacts: Iterable[tuple[str, bool, str, dict[str, str]]],
                 topics: list[str]) -> int:
    count = 0
    for address, unsubscribe_all, attributes, preferences in contacts:
        out.write(json.dumps({
            "emailAddress": address, "unsubscribeAll": unsubscribe_all,
            "attributesData": attributes,
            "topicPreferences": [{"topicName": topic, "subscriptionStatus": preferences[topic]}
                                 for topic in topics if topic in preferences]},
            ensure_ascii=False) + "\n")
        count += 1
    return count
