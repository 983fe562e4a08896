"""Suppression-list files: the CSV and JSON an export writes and an import reads.

Import reads what export writes and also SES's own bulk-import formats (seed:
"Adding email addresses in bulk to the account-level suppression list"): CSV rows
`recipient@example.com, BOUNCE` without a header, and NDJSON objects
`{"emailAddress": ..., "reason": ...}`; SES's list output (`EmailAddress`, `Reason`,
`LastUpdateTime`) is read too.

Parsing checks every row and keeps each bad one's problem with its line number, so
that the good rows can go in and the bad ones be reported together.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import IO, Any

from smtprelay.policy.suppression import (
    Reason,
    SuppressionEntry,
    address_problem,
    normalise,
    parse_reason,
)

# Past this many, bad rows are counted but no longer printed one by one: a file in the
# wrong format would otherwise print a line for each of its million rows.
MAX_REPORTED = 1000

FORMATS = ("csv", "json")
_EXTENSIONS = {".csv": "csv", ".txt": "csv", ".json": "json", ".ndjson": "json",
               ".jsonl": "json"}

_YEAR_10000 = 253402300800.0

# Column names (CSV header) and keys (JSON), compared lower-cased without _ or -:
# ours, SES's bulk import (emailAddress) and SES's list output (EmailAddress,
# Reason, LastUpdateTime).
_FIELD_NAMES = {
    "address": "address", "emailaddress": "address", "email": "address",
    "reason": "reason",
    "createdat": "created_at", "lastupdatetime": "created_at",
    "account": "account",
    "sourcemessageid": "ignored",
}


def format_of(name: str | None) -> str | None:
    """The format a file name's extension says, if it says one."""
    return _EXTENSIONS.get(PurePath(name).suffix.lower()) if name else None


def guess_format(name: str | None, text: str) -> str:
    """The format of an import file: by its name's extension, else by its content."""
    # stdin or an unknown extension: JSON starts with [ or {, a CSV row cannot.
    return format_of(name) or ("json" if text.lstrip()[:1] in ("[", "{") else "csv")


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


# -- reading ----------------------------------------------------------------------


@dataclass
class ImportTally:
    """What an import file's reading found wrong: the bad rows (the first MAX_REPORTED
    of them described, "file:line: what") and the repeated addresses. Shared by the
    suppression and the contact imports."""

    bad: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, where: str, text: str) -> None:
        self.bad += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(f"{where}: {text}")


@dataclass
class ParseResult(ImportTally):
    """The good rows of an import file, by normalised address (last one wins)."""

    rows: dict[str, tuple[str, Reason, float | None]] = field(default_factory=dict)

    def good(self, address: str, reason: Reason, created_at: float | None) -> None:
        key = normalise(address)
        if key in self.rows:
            self.duplicates += 1
            del self.rows[key]  # re-inserted below: the dict keeps the file's last order
        self.rows[key] = (address.strip(), reason, created_at)


class UnreadableFile(Exception):
    """The file as a whole cannot be used (not its rows): nothing is imported."""


def parse_created_at(value: Any) -> float | None:
    """Epoch seconds or ISO 8601 (no zone = UTC); empty or null means now."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    problem = f"unparseable date {value!r} (ISO 8601 or epoch seconds)"
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            try:
                when = datetime.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(problem) from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            number = when.timestamp()
    # 1970 to 9999: what listings and exports can print back as a date.
    if not (math.isfinite(number) and 0 <= number < _YEAR_10000):
        raise ValueError(problem)
    return number


def _check_row(result: ParseResult, where: str, fields: dict[str, Any], account: str,
               default_reason: Reason | None = None) -> None:
    """Validate one row's fields (by canonical name); record it as good or bad."""
    address = fields.get("address")
    if not isinstance(address, str) or not address.strip():
        result.problem(where, "no address")
        return
    if any("\udc80" <= c <= "\udcff" for c in address):
        result.problem(where, "address is not UTF-8")
        return
    problem = address_problem(address)
    if problem is not None:
        result.problem(where, problem)
        return
    raw_reason = fields.get("reason")
    if raw_reason in (None, "") and default_reason is not None:
        raw_reason = default_reason
    reason = parse_reason(raw_reason) if isinstance(raw_reason, str) else None
    if reason is None:
        if raw_reason in (None, ""):
            result.problem(where, "no reason: give one in the row (BOUNCE or COMPLAINT), "
                                  "or --reason for every row that has none")
        else:
            result.problem(where, f"bad reason {raw_reason!r} (BOUNCE or COMPLAINT)")
        return
    try:
        created_at = parse_created_at(fields.get("created_at"))
    except ValueError as exc:
        result.problem(where, str(exc))
        return
    other = fields.get("account")
    if other not in (None, "", account):
        # An export of several accounts holds an account column: import only the rows
        # of the account named on the command line rather than mixing lists.
        result.problem(where, f"row of account {other!r}, importing into {account!r}")
        return
    result.good(address, reason, created_at)


def parse_csv(text: str, name: str, account: str, *,
              default_reason: Reason | None = None) -> ParseResult:
    """CSV with a header (`address,reason[,created_at]`, any order, SES's column names
    too) or without one (SES's bulk-import layout: address, reason[, created_at]), or
    a plain list of addresses, one per line. `default_reason` is the reason of rows
    that give none (a plain list needs it)."""
    result = ParseResult()
    reader = csv.reader(io.StringIO(text), skipinitialspace=True)
    columns: list[str] | None = None
    first = True
    line = 1
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            result.problem(f"{name}:{line}", f"unreadable CSV ({exc})")
            continue
        row = [cell.strip() for cell in row]
        if not any(row):
            continue  # blank lines are not rows
        if first:
            first = False
            # A header names at least one known column; SES's layout has none, and a
            # first data row that is bad is reported as a row, not taken for a header.
            if any(_canonical(cell) is not None for cell in row):
                columns = _csv_header(row, name, line)
                continue
        if columns is not None:
            if len(row) != len(columns):
                result.problem(f"{name}:{line}",
                               f"{_columns(len(row))}, the header has {len(columns)}")
                continue
            fields = dict(zip(columns, row, strict=True))
        else:
            if len(row) not in (1, 2, 3):
                result.problem(f"{name}:{line}",
                               f"{_columns(len(row))}, expected address[,reason[,created_at]]")
                continue
            fields = dict(zip(("address", "reason", "created_at"), row, strict=False))
        _check_row(result, f"{name}:{line}", fields, account, default_reason)
    return result


def _columns(n: int) -> str:
    return f"{n} column{'' if n == 1 else 's'}"


def _canonical(name: str) -> str | None:
    return _FIELD_NAMES.get(name.strip().lower().replace("_", "").replace("-", ""))


def _csv_header(row: list[str], name: str, line: int) -> list[str]:
    columns = []
    for cell in row:
        canonical = _canonical(cell)
        if canonical is None:
            raise UnreadableFile(f"{name}:{line}: unknown column {cell!r} in the header "
                                 "(expected address, reason, created_at)")
        columns.append(canonical)
    if "address" not in columns:
        raise UnreadableFile(f"{name}:{line}: the header has no address column")
    return columns


def _json_fields(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    fields: dict[str, Any] = {}
    for key, item in value.items():
        canonical = _canonical(str(key))
        if canonical is not None:
            fields[canonical] = item
    return fields


def parse_json(text: str, name: str, account: str, *,
               default_reason: Reason | None = None) -> ParseResult:
    """A JSON list of objects, or NDJSON (one object per line, SES's bulk format)."""
    result = ParseResult()
    stripped = text.lstrip()
    if stripped.startswith("["):
        for line, value in _json_array_items(text, name, result):
            _json_item(result, f"{name}:{line}", value, account, default_reason)
        return result
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            result.problem(f"{name}:{number}", f"invalid JSON ({exc.msg})")
            continue
        _json_item(result, f"{name}:{number}", value, account, default_reason)
    return result


def _json_item(result: ParseResult, where: str, value: Any, account: str,
               default_reason: Reason | None) -> None:
    fields = _json_fields(value)
    if fields is None:
        result.problem(where, "not a JSON object")
        return
    _check_row(result, where, fields, account, default_reason)


def _json_array_items(text: str, name: str, result: ParseResult) -> Iterator[tuple[int, Any]]:
    """The items of a top-level JSON array with the line each starts on.

    Decoded one item at a time so that each can be reported by line; a syntax error
    ends the array there (the items before it are kept, the error is one bad row).
    """
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip()) + 1  # after the [
    line = text.count("\n", 0, pos) + 1
    counted = pos
    expect_item = True
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            result.problem(f"{name}:{line}", "invalid JSON (the list is not closed with ])")
            return
        if text[pos] == "]":
            trailing = text[pos + 1:].strip()
            if trailing:
                result.problem(f"{name}:{line}", "invalid JSON (text after the closing ])")
            return
        if not expect_item:
            if text[pos] != ",":
                result.problem(f"{name}:{line}", "invalid JSON (expected , or ]); "
                               "the rest of the file is skipped")
                return
            pos += 1
            expect_item = True
            continue
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            result.problem(f"{name}:{exc.lineno}", f"invalid JSON ({exc.msg}); "
                           "the rest of the file is skipped")
            return
        yield line, value
        pos = end
        expect_item = False


# -- writing ----------------------------------------------------------------------


def write_csv(out: IO[str], entries: Iterator[SuppressionEntry], with_account: bool) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["address", "reason", "created_at"] + (["account"] if with_account else []))
    count = 0
    for entry in entries:
        writer.writerow([entry.address, entry.reason, _iso(entry.created_at)]
                        + ([entry.account] if with_account else []))
        count += 1
    return count


def write_ndjson(out: IO[str], entries: Iterator[SuppressionEntry]) -> int:
    # NDJSON rather than one list: streamable, and the JSON layout SES's bulk import
    # takes; our import reads both.
    count = 0
    for entry in entries:
        out.write(json.dumps(entry.as_json(), sort_keys=True) + "\n")
        count += 1
    return count
