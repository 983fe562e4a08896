"""`smtprelay suppression add|remove|list|import|export`: the suppression list from a shell.

Files in and out are CSV or JSON. Import reads what export writes and also SES's own
bulk-import formats (seed: "Adding email addresses in bulk to the account-level
suppression list"): CSV rows `recipient@example.com, BOUNCE` without a header, and
NDJSON objects `{"emailAddress": ..., "reason": ...}`; SES's list output
(`EmailAddress`, `Reason`, `LastUpdateTime`) is read too.

An import checks every row first and reports each bad one with its line number;
the good rows go in even when some are bad, in transactions of 10,000 rows.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Imported here, not inside the commands: a command run as root switches to the owner
# of data_dir before opening the database, and may then no longer read the install.
from smtprelay.cli.common import CommandError, config_from, format_time, state_config
from smtprelay.policy.suppression import (
    REASONS,
    Reason,
    SQLiteSuppressionStore,
    SuppressionEntry,
    address_problem,
    normalise,
    parse_reason,
)

# Past this many, bad rows are counted but no longer printed one by one: a file in the
# wrong format would otherwise print a line for each of its million rows.
MAX_REPORTED = 1000

_FORMATS = ("csv", "json")
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


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    """Add the `suppression` command group to the top-level subparsers."""
    group = sub.add_parser("suppression", help="the per-account suppression list").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    reason = {"type": str.upper, "choices": REASONS, "metavar": "BOUNCE|COMPLAINT"}

    p = group.add_parser("add", parents=[common],
                         help="suppress an address (re-adding updates reason and time)")
    p.add_argument("address")
    p.add_argument("--account", required=True)
    p.add_argument("--reason", required=True, **reason)
    p.set_defaults(func=cmd_add)

    p = group.add_parser("remove", parents=[common], help="take an address off the list")
    p.add_argument("address")
    p.add_argument("--account", required=True)
    p.set_defaults(func=cmd_remove)

    p = group.add_parser("list", parents=[common, listing], help="list suppressed addresses")
    p.add_argument("--account")
    p.add_argument("--reason", **reason)
    p.add_argument("--contains", metavar="TEXT",
                   help="only addresses containing TEXT (case-insensitive)")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N entries")
    p.set_defaults(func=cmd_list)

    p = group.add_parser("import", parents=[common],
                         help="add addresses from a CSV or JSON file (- for stdin)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--account", required=True)
    p.add_argument("--format", choices=_FORMATS,
                   help="default: from the file name's extension, else from its content")
    p.set_defaults(func=cmd_import)

    p = group.add_parser("export", parents=[common],
                         help="write the list as CSV or JSON, in the form import reads")
    p.add_argument("--account")
    p.add_argument("--reason", **reason)
    p.add_argument("--format", choices=_FORMATS,
                   help="default: from --output's extension, else csv")
    p.add_argument("--output", metavar="FILE", help="default: standard output")
    p.set_defaults(func=cmd_export)


# -- helpers ---------------------------------------------------------------------------


def _check_account(config: Any, account: str | None) -> None:

    if account is not None and account not in config.accounts:
        known = ", ".join(sorted(config.accounts)) or "none"
        raise CommandError(f"accounts.{account}: no such account in the configuration "
                           f"(accounts: {known})")


def _open_store(args: argparse.Namespace) -> SQLiteSuppressionStore:

    config = state_config(args)
    _check_account(config, getattr(args, "account", None))
    store = SQLiteSuppressionStore(config.state_path)
    store.open()
    return store


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _entry_json(entry: SuppressionEntry) -> dict[str, Any]:
    return {"account": entry.account, "address": entry.address, "reason": entry.reason,
            "created_at": entry.created_at, "source_message_id": entry.source_message_id}


# -- add / remove / list ---------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:

    problem = address_problem(args.address)
    if problem is not None:
        raise CommandError(problem)
    store = _open_store(args)
    try:
        new = store.add(args.account, args.address, args.reason)
    finally:
        store.close()
    print(f"{normalise(args.address)}: {'added to' if new else 'updated on'} the suppression "
          f"list of {args.account} ({args.reason})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:

    store = _open_store(args)
    try:
        removed = store.remove(args.account, args.address)
    finally:
        store.close()
    if not removed:
        raise CommandError(f"{normalise(args.address)} is not on the suppression list of "
                           f"{args.account}")
    print(f"{normalise(args.address)}: removed from the suppression list of {args.account}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:

    if args.limit is not None and args.limit < 0:
        raise CommandError("--limit must be 0 or more")
    store = _open_store(args)
    try:
        page = 5000 if args.limit is None else max(1, min(args.limit, 5000))
        entries = store.iterate(args.account, reason=args.reason, contains=args.contains,
                                page=page)
        shown = 0
        out = sys.stdout
        if args.json:
            # Streamed, item by item, in the layout json.dump(indent=2) gives a list, so
            # a million entries do not have to be in memory at once.
            out.write("[")
            for entry in entries:
                if args.limit is not None and shown >= args.limit:
                    break
                item = json.dumps(_entry_json(entry), indent=2, sort_keys=True)
                out.write(("\n" if shown == 0 else ",\n") + "\n".join(
                    "  " + line for line in item.splitlines()))
                shown += 1
            out.write("\n]\n" if shown else "]\n")
            return 0
        print(f"{'ADDRESS':<40} {'REASON':<9} {'LAST UPDATE':<21} ACCOUNT")
        for entry in entries:
            if args.limit is not None and shown >= args.limit:
                break
            print(f"{entry.address:<40} {entry.reason:<9} {format_time(entry.created_at):<21} "
                  f"{entry.account}")
            shown += 1
        print(f"-- {shown} entr{'y' if shown == 1 else 'ies'}"
              + (" shown" if args.limit is not None else ""))
    finally:
        store.close()
    return 0


# -- import ------------------------------------------------------------------------------


@dataclass
class ParseResult:
    """The good rows of an import file, by normalised address (last one wins)."""

    rows: dict[str, tuple[str, Reason, float | None]] = field(default_factory=dict)
    bad: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, where: str, text: str) -> None:
        self.bad += 1
        if len(self.problems) < MAX_REPORTED:
            self.problems.append(f"{where}: {text}")

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


def _check_row(result: ParseResult, where: str, fields: dict[str, Any], account: str) -> None:
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
    reason = parse_reason(raw_reason) if isinstance(raw_reason, str) else None
    if reason is None:
        shown = "no reason" if raw_reason in (None, "") else f"bad reason {raw_reason!r}"
        result.problem(where, f"{shown} (BOUNCE or COMPLAINT)")
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


def parse_csv(text: str, name: str, account: str) -> ParseResult:
    """CSV with a header (`address,reason[,created_at]`, any order, SES's column names
    too) or without one (SES's bulk-import layout: address, reason[, created_at])."""
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
            if len(row) not in (2, 3):
                result.problem(f"{name}:{line}",
                               f"{_columns(len(row))}, expected address,reason[,created_at]")
                continue
            fields = dict(zip(("address", "reason", "created_at"), row, strict=False))
        _check_row(result, f"{name}:{line}", fields, account)
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
    for needed in ("address", "reason"):
        if needed not in columns:
            raise UnreadableFile(f"{name}:{line}: the header has no {needed} column")
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


def parse_json(text: str, name: str, account: str) -> ParseResult:
    """A JSON list of objects, or NDJSON (one object per line, SES's bulk format)."""
    result = ParseResult()
    stripped = text.lstrip()
    if stripped.startswith("["):
        for line, value in _json_array_items(text, name, result):
            _json_item(result, f"{name}:{line}", value, account)
        return result
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            result.problem(f"{name}:{number}", f"invalid JSON ({exc.msg})")
            continue
        _json_item(result, f"{name}:{number}", value, account)
    return result


def _json_item(result: ParseResult, where: str, value: Any, account: str) -> None:
    fields = _json_fields(value)
    if fields is None:
        result.problem(where, "not a JSON object")
        return
    _check_row(result, where, fields, account)


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


def _read_input(path: str) -> tuple[str, str]:
    """(text, display name). Bytes that are not UTF-8 survive as surrogates so that
    the rows holding them are reported one by one instead of failing the file."""

    try:
        if path == "-":
            data = sys.stdin.buffer.read()
            name = "<stdin>"
        else:
            data = Path(path).read_bytes()
            name = path
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8-sig", errors="surrogateescape"), name


def _input_format(path: str, text: str, given: str | None) -> str:
    if given:
        return given
    fmt = _EXTENSIONS.get(Path(path).suffix.lower()) if path != "-" else None
    if fmt:
        return fmt
    # stdin or an unknown extension: JSON starts with [ or {, a CSV row cannot.
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def cmd_import(args: argparse.Namespace) -> int:

    # Validate the account before reading a possibly large file, and read the file
    # before _state_config: run as root, that drops to data_dir's owner, who may not
    # be able to read the operator's file.
    _check_account(config_from(args), args.account)
    text, name = _read_input(args.file)
    fmt = _input_format(args.file, text, args.format)
    try:
        result = (parse_csv if fmt == "csv" else parse_json)(text, name, args.account)
    except UnreadableFile as exc:
        raise CommandError(str(exc)) from None
    for line in result.problems:
        print(line, file=sys.stderr)
    if result.bad > len(result.problems):
        print(f"{name}: {result.bad - len(result.problems)} more bad rows not shown",
              file=sys.stderr)
    store = _open_store(args)
    try:
        new = store.import_entries(args.account, result.rows.values())
    finally:
        store.close()
    updated = len(result.rows) - new
    print(f"imported {new}, updated {updated}, skipped {result.bad} bad rows, "
          f"{result.duplicates} duplicates")
    if result.bad and not result.rows:
        # Not one good row: the wrong file or the wrong format; make a script notice.
        raise CommandError(f"{name}: no valid rows")
    return 0


# -- export ------------------------------------------------------------------------------


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
        out.write(json.dumps(_entry_json(entry), sort_keys=True) + "\n")
        count += 1
    return count


def cmd_export(args: argparse.Namespace) -> int:

    _check_account(config_from(args), args.account)
    fmt = args.format or (_EXTENSIONS.get(Path(args.output).suffix.lower()) if args.output
                          else None) or "csv"
    # Opened before _state_config for the same reason import reads its file first:
    # run as root, the command becomes data_dir's owner, who may not be allowed to
    # create files where root can (so no temporary name and rename either).
    if args.output:
        try:
            out: IO[str] = open(args.output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    else:
        out = sys.stdout
    ok = False
    try:
        store = _open_store(args)
        try:
            entries = store.iterate(args.account, reason=args.reason)
            count = (write_csv(out, entries, with_account=args.account is None) if fmt == "csv"
                     else write_ndjson(out, entries))
        finally:
            store.close()
        out.flush()
        ok = True
    finally:
        if args.output:
            out.close()
            if not ok:
                # Half an export under the name a script expects is worse than none.
                with contextlib.suppress(OSError):
                    os.unlink(args.output)
    if args.output:
        print(f"exported {count} entries to {args.output}", file=sys.stderr)
    return 0
