"""`smtprelay feedback unmatched|show`: the reports the feedback listener could not act on.

Reports that could not be parsed or traced to a message this relay sent are kept in
data_dir/feedback.db with the reason (``feedback.unmatched_retention``, 30 days), so
that nothing that came back is silently lost: list them, read one as it arrived.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Imported here, not inside the commands: a command run as root switches to the owner
# of data_dir before opening the database, and may then no longer read the install.
from smtprelay.cli.common import CommandError, format_time, print_json, state_config
from smtprelay.feedback import inbox

_SHOWN_RECIPIENTS = 2


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    """Add the `feedback` command group to the top-level subparsers."""
    group = sub.add_parser(
        "feedback", help="reports from the feedback listener (bounces, complaints)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = group.add_parser("unmatched", parents=[common, listing],
                         help="reports kept because nothing could be done with them, and why")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N (oldest first)")
    p.set_defaults(func=cmd_unmatched)
    p = group.add_parser("show", parents=[common, listing],
                         help="one report as it arrived (--json: with its envelope and fate)")
    p.add_argument("id", type=int, metavar="ID")
    p.set_defaults(func=cmd_show)


def cmd_unmatched(args: argparse.Namespace) -> int:

    if args.limit is not None and args.limit < 0:
        raise CommandError("--limit must be 0 or more")
    conn = inbox.open_for_cli(inbox.inbox_path(state_config(args)))
    try:
        reports = inbox.listing(conn, inbox.UNMATCHED, limit=args.limit)
        pending = inbox.count(conn, inbox.PENDING)
    finally:
        conn.close()
    if args.json:
        print_json([report.as_json() for report in reports])
        return 0
    print(f"{'ID':>7} {'RECEIVED':<21} {'KIND':<16} {'FROM':<28} {'TO':<40} REASON")
    for report in reports:
        to = ",".join(report.recipients[:_SHOWN_RECIPIENTS]) + (
            ",..." if len(report.recipients) > _SHOWN_RECIPIENTS else "")
        print(f"{report.id:>7} {format_time(report.received_at):<21} {report.kind or '-':<16} "
              f"{_short(report.mail_from or '<>', 28):<28} {_short(to, 40):<40} "
              f"{report.reason or '-'}")
    print(f"-- {len(reports)} unmatched report{'' if len(reports) == 1 else 's'}"
          f"; {pending} waiting to be processed")
    return 0


def cmd_show(args: argparse.Namespace) -> int:

    path = inbox.inbox_path(state_config(args))
    if not path.exists():
        raise CommandError(f"no report {args.id}: {path} does not exist (no feedback "
                           "listener has run)")
    conn = inbox.open_for_cli(path)
    try:
        report = inbox.get(conn, args.id)
    finally:
        conn.close()
    if report is None:
        raise CommandError(f"no report {args.id} in {path} (processed reports that led to "
                           "events are not kept; see `smtprelay feedback unmatched`)")
    raw = report.raw or b""
    if args.json:
        print_json({**report.as_json(), "raw": raw.decode("utf-8", "replace")})
        return 0
    sys.stdout.flush()
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()
    return 0


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."
