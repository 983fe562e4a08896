"""`smtprelay queue` (the spool, like mailq and postqueue) and `smtprelay captured`
(what `delivery.mode: capture` wrote instead of sending)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from smtprelay.cli.common import (
    EXIT_OK,
    CommandError,
    config_from,
    format_time,
    print_json,
    state_config,
)
from smtprelay.cli.progress import Progress
from smtprelay.config import Config
from smtprelay.operations import queue as ops
from smtprelay.operations.errors import MessageNotFound, NothingToRetry
from smtprelay.spool.model import FILTER_STATES
from smtprelay.spool.store import MessageFilter, open_for_cli


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    queue = sub.add_parser("queue", help="the spool, like mailq/postqueue").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = queue.add_parser("list", parents=[common, listing], help="list queued messages")
    p.add_argument("--limit", type=int, default=None, help="show at most N messages")
    p.add_argument("--account", help="only this account's messages")
    p.add_argument("--set", metavar="NAME",
                   help="only this configuration set's messages (\"\": those without one)")
    p.add_argument("--state", choices=FILTER_STATES,
                   help="pending, finished, held, or a recipient state some recipient is in")
    p.set_defaults(func=cmd_list)
    p = queue.add_parser("show", parents=[common, listing], help="one message in detail")
    p.add_argument("id")
    p.add_argument("--body", action="store_true", help="print the message bytes")
    p.set_defaults(func=cmd_show)
    p = queue.add_parser("delete", parents=[common], help="remove messages from the queue")
    p.add_argument("ids", nargs="+", metavar="ID",
                   help="message ids, or - to read them from standard input, one per line")
    p.set_defaults(func=cmd_delete)
    p = queue.add_parser("retry", parents=[common],
                         help="make a message's waiting recipients due now")
    p.add_argument("id", nargs="?")
    p.add_argument("--all", action="store_true", help="every waiting recipient (= flush)")
    p.set_defaults(func=cmd_retry)
    queue.add_parser("flush", parents=[common], help="make every waiting recipient due now") \
        .set_defaults(func=cmd_retry, all=True, id=None)
    p = queue.add_parser("hold", parents=[common],
                         help="keep a message from delivery until it is released")
    p.add_argument("id")
    p.set_defaults(func=cmd_hold)
    p = queue.add_parser("release", parents=[common],
                         help="make a held message's recipients due now")
    p.add_argument("id")
    p.set_defaults(func=cmd_release)

    captured = sub.add_parser(
        "captured", help="messages written by delivery.mode: capture").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    captured.add_parser("list", parents=[common, listing], help="list captured messages") \
        .set_defaults(func=cmd_captured_list)
    p = captured.add_parser("show", parents=[common],
                            help="print a captured message (by name or message id)")
    p.add_argument("name")
    p.set_defaults(func=cmd_captured_show)


def _queue(config: Config) -> ops.SpoolConnection:
    return ops.SpoolConnection(open_for_cli(config.spool_path))


def cmd_list(args: argparse.Namespace) -> int:
    messages = ops.listing(_queue(state_config(args)), MessageFilter(
        account=args.account, configuration_set=args.set, state=args.state), limit=args.limit)
    if args.json:
        print_json([m.as_json() for m in messages])
        return EXIT_OK
    for m in messages:
        print(f"{m.message_id}  {m.size:>9}  {format_time(m.received_at)}  <{m.mail_from}>  "
              f"account={m.account}")
        for r in m.recipients:
            extra = "  held" if r.held else (
                f"  next={format_time(r.next_attempt)}" if r.state.value == "deferred" else "")
            reply = f"  ({r.last_reply})" if r.last_reply else ""
            print(f"    {r.state.value:<10} {r.address}{extra}{reply}")
    print(f"-- {len(messages)} message(s)" + (" shown" if args.limit else ""))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    queue = _queue(state_config(args))
    if args.body:
        sys.stdout.buffer.write(ops.body(queue, args.id))
        return EXIT_OK
    message = ops.show(queue, args.id)
    data = message.as_json()
    if args.json:
        print_json(data)
        return EXIT_OK
    for key in ("id", "account", "configuration_set", "mail_from", "size", "client_ip",
                "auth_user", "listener"):
        print(f"{key:<18} {data[key]}")
    print(f"{'received_at':<18} {format_time(message.received_at)}")
    for r in message.recipients:
        print(f"recipient          {r.address} {r.state.value} attempts={r.attempts}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    queue = _queue(state_config(args))
    ids = args.ids
    if ids == ["-"]:  # `queue list --json | jq -r '.[].id' | smtprelay queue delete -`
        ids = [line.strip() for line in sys.stdin if line.strip()]
    missing = []
    with Progress("delete", len(ids), unit="messages") as progress:
        for done, message_id in enumerate(ids, 1):
            try:
                ops.delete(queue, message_id)
            except MessageNotFound:
                missing.append(message_id)
            else:
                if not progress.enabled:
                    print(f"{message_id}: deleted")
            progress.update(done)
    if progress.enabled:
        print(f"deleted {len(ids) - len(missing)} messages")
    if missing:
        raise CommandError(f"not in the queue: {', '.join(missing)}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    queue = _queue(state_config(args))
    if args.all:
        due = ops.retry_all(queue, time.time())
    else:
        if args.id is None:
            raise CommandError("name a message ID, or --all")
        try:
            due = ops.retry(queue, args.id, time.time())
        except NothingToRetry:
            due = 0  # the command has always answered with the count, none included
    print(f"{due} recipient(s) due now; the daemon picks them up within seconds")
    return EXIT_OK


def cmd_hold(args: argparse.Namespace) -> int:
    held = ops.hold(_queue(state_config(args)), args.id)
    print(f"{held} recipient(s) held; `smtprelay queue release {args.id}` lets them go")
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    released = ops.release(_queue(state_config(args)), args.id, time.time())
    print(f"{released} recipient(s) released, due now; the daemon picks them up within "
          "seconds")
    return EXIT_OK


# -- captured (delivery.mode: capture) ------------------------------------------------


def cmd_captured_list(args: argparse.Namespace) -> int:
    from smtprelay.delivery.capture import list_captured

    config = config_from(args)
    captured = list_captured(config.capture_dir)
    if args.json:
        print_json([{"name": c.name, "message_id": c.message_id, "domain": c.domain,
                      "mail_from": c.mail_from, "recipients": c.recipients,
                      "captured_at": c.captured_at, "size": c.size,
                      "file": str(config.capture_dir / c.eml)} for c in captured])
        return EXIT_OK
    for c in captured:
        print(f"{c.name}  {c.size:>9}  {format_time(c.captured_at)}  <{c.mail_from}>  "
              f"{', '.join(c.recipients)}")
    print(f"-- {len(captured)} captured message(s) in {config.capture_dir}")
    return EXIT_OK


def cmd_captured_show(args: argparse.Namespace) -> int:
    from smtprelay.delivery.capture import list_captured

    config = config_from(args)
    matches = [c for c in list_captured(config.capture_dir)
               if c.name == args.name or c.message_id == args.name]
    if not matches:
        raise CommandError(f"nothing captured as {args.name} in {config.capture_dir}")
    for c in matches:
        sys.stdout.buffer.write((config.capture_dir / c.eml).read_bytes())
    return EXIT_OK
