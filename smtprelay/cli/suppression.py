"""`smtprelay suppression add|remove|list|import|export`: the suppression list from a shell.

Files in and out are CSV or JSON (smtprelay.operations.suppression_files says which
layouts, SES's among them). An import checks every row first and reports each bad
one with its line number; the good rows go in even when some are bad, in
transactions of 10,000 rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from smtprelay.cli.common import (
    CommandError,
    config_from,
    export_target,
    format_time,
    read_input,
    report_problems,
    state_config,
)

# Imported here, not inside the commands: a command run as root switches to the owner
# of data_dir before opening the database, and may then no longer read the install.
from smtprelay.cli.progress import Progress
from smtprelay.config import Config
from smtprelay.operations import suppression as ops
from smtprelay.operations.errors import NotSuppressed
from smtprelay.operations.suppression_files import (
    FORMATS,
    UnreadableFile,
    format_of,
    guess_format,
    parse_csv,
    parse_json,
)
from smtprelay.policy.stores import suppression_store
from smtprelay.policy.suppression import REASONS, SuppressionStore, normalise


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

    p = group.add_parser(
        "import", parents=[common],
        help="add addresses from a CSV or JSON file (- for stdin)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Add addresses to an account's suppression list. FILE may be:\n"
        "  a plain list       one address per line (with --reason)\n"
        "  CSV, no header     address,reason[,created_at]  (SES's bulk-import layout)\n"
        "  CSV with a header  address, reason, created_at in any order; SES's names\n"
        "                     (EmailAddress, Reason, LastUpdateTime) too\n"
        "  JSON / NDJSON      objects {\"emailAddress\": ..., \"reason\": ...}, one\n"
        "                     per line or in an array (what `export --format json`\n"
        "                     writes, and SES's list output)\n"
        "reason is BOUNCE or COMPLAINT; created_at an ISO 8601 time or Unix seconds.\n"
        "Bad rows are reported with their line numbers; the good ones go in.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--account", required=True)
    p.add_argument("--format", choices=FORMATS,
                   help="default: from the file name's extension, else from its content")
    p.add_argument("--reason", **{**reason, "help": "the reason of rows that give none "
                                  "(a plain list of addresses)"})
    p.set_defaults(func=cmd_import)

    p = group.add_parser("export", parents=[common],
                         help="write the list as CSV or JSON, in the form import reads")
    p.add_argument("--account")
    p.add_argument("--reason", **reason)
    p.add_argument("--format", choices=FORMATS,
                   help="default: from --output's extension, else csv")
    p.add_argument("--output", metavar="FILE", help="default: standard output")
    p.set_defaults(func=cmd_export)


@contextlib.contextmanager
def _store(args: argparse.Namespace) -> Iterator[tuple[SuppressionStore, Config]]:
    config = state_config(args)
    # Checked before the database is opened, so that a mistyped account creates nothing.
    ops.check_account(config, getattr(args, "account", None))
    store = suppression_store(config)
    store.open()
    try:
        yield store, config
    finally:
        store.close()


# -- add / remove / list ---------------------------------------------------------------


def cmd_add(args: argparse.Namespace) -> int:
    with _store(args) as (store, config):
        added = ops.add(store, config, args.account, args.address, args.reason)
    print(f"{added.entry.address}: {'added to' if added.created else 'updated on'} the "
          f"suppression list of {args.account} ({args.reason})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _store(args) as (store, config):
        try:
            address = ops.remove(store, config, args.account, args.address)
        except NotSuppressed:
            raise CommandError(f"{normalise(args.address)} is not on the suppression list "
                               f"of {args.account}") from None
    print(f"{address}: removed from the suppression list of {args.account}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise CommandError("--limit must be 0 or more")
    with _store(args) as (store, config):
        entries = ops.entries(store, config, args.account, reason=args.reason,
                              contains=args.contains, limit=args.limit)
        shown = 0
        out = sys.stdout
        if args.json:
            # Streamed, item by item, in the layout json.dump(indent=2) gives a list, so
            # a million entries do not have to be in memory at once.
            out.write("[")
            for entry in entries:
                item = json.dumps(entry.as_json(), indent=2, sort_keys=True)
                out.write(("\n" if shown == 0 else ",\n") + "\n".join(
                    "  " + line for line in item.splitlines()))
                shown += 1
            out.write("\n]\n" if shown else "]\n")
            return 0
        print(f"{'ADDRESS':<40} {'REASON':<9} {'LAST UPDATE':<21} ACCOUNT")
        for entry in entries:
            print(f"{entry.address:<40} {entry.reason:<9} {format_time(entry.created_at):<21} "
                  f"{entry.account}")
            shown += 1
        print(f"-- {shown} entr{'y' if shown == 1 else 'ies'}"
              + (" shown" if args.limit is not None else ""))
    return 0


# -- import / export ---------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    # Validate the account before reading a possibly large file, and read the file
    # before state_config: run as root, that drops to data_dir's owner, who may not
    # be able to read the operator's file.
    ops.check_account(config_from(args), args.account)
    with Progress("import") as progress:
        progress.note(f"reading {args.file}...")
        text, name = read_input(args.file)
        fmt = args.format or guess_format(None if args.file == "-" else args.file, text)
        try:
            progress.note(f"checking the rows of {name}...")
            result = (parse_csv if fmt == "csv" else parse_json)(
                text, name, args.account, default_reason=args.reason)
        except UnreadableFile as exc:
            raise CommandError(str(exc)) from None
    report_problems(name, result)
    with _store(args) as (store, config), \
            Progress("import", len(result.rows), unit="addresses") as progress:
        imported = ops.import_rows(store, config, args.account, result,
                                   progress=progress.update if progress.enabled else None)
    print(f"imported {imported.new}, updated {imported.updated}, skipped {result.bad} bad "
          f"rows, {result.duplicates} duplicates")
    if result.bad and not result.rows:
        # Not one good row: the wrong file or the wrong format; make a script notice.
        raise CommandError(f"{name}: no valid rows")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    ops.check_account(config_from(args), args.account)
    fmt = args.format or format_of(args.output) or "csv"
    # Opened before state_config for the same reason import reads its file first.
    with export_target(args.output) as out, _store(args) as (store, config), \
            Progress("export", unit="entries") as progress:
        count = ops.export(store, config, out, fmt, args.account, reason=args.reason,
                           counted=progress.counted if progress.enabled else None)
    if args.output:
        print(f"exported {count} entries to {args.output}", file=sys.stderr)
    return 0
