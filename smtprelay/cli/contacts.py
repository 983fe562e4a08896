"""`smtprelay contacts lists|list|get|add|update|delete|import|export`: the contacts of the
contact lists (SES's list management) from a shell.

The commands work on the contacts' store (the state database, or Redis with `store:
{backend: redis}`), with or without the daemon running, as `smtprelay suppression`
does; the daemon reads a list's contacts for every message that names the list, so a
change holds from the next message on. The lists themselves are `contact_lists:` in
the configuration. A change made here is the operator's and makes no Subscription
event (SES makes one only when the recipient changes their preferences:
smtprelay.operations.contacts).

Files in and out are SES's contact import layout, CSV or JSON
(smtprelay.operations.contact_files). An import checks every row first and reports
each bad one with its line number; the good rows go in even when some are bad.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

# Imported here, not inside the commands: a command run as root switches to the owner
# of data_dir before opening the database, and may then no longer read the install.
from smtprelay.cli.common import (
    EXIT_OK,
    CommandError,
    config_from,
    export_target,
    format_time,
    print_json,
    read_input,
    report_problems,
    state_config,
)
from smtprelay.config import Config, ContactListConfig
from smtprelay.operations import contacts as ops
from smtprelay.operations.contact_files import UnreadableFile
from smtprelay.operations.errors import BadContact, ContactExists, ContactNotFound, TopicNotFound
from smtprelay.operations.suppression_files import FORMATS, format_of, guess_format
from smtprelay.policy.contacts import Contact, ContactStore
from smtprelay.policy.stores import contact_store

# What the operations call SES's fields, as these commands take them.
_FLAGS = {"EmailAddress": "ADDRESS", "TopicPreferences": "--topic",
          "AttributesData": "--attributes", "FilteredStatus": "--status"}


def _preference(allowed: tuple[str, ...]) -> Callable[[str], tuple[str, str | None]]:
    """--topic TOPIC=STATUS as (topic, status); DEFAULT (where allowed) is None."""

    def parse(text: str) -> tuple[str, str | None]:
        topic, eq, status = text.partition("=")
        status = status.strip().upper()
        if not eq or not topic.strip() or not status or (
                status == "DEFAULT" and status not in allowed):
            raise argparse.ArgumentTypeError(f"{text!r}: expected TOPIC={'|'.join(allowed)}")
        return topic.strip(), None if status == "DEFAULT" else status

    return parse


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    """Add the `contacts` command group to the top-level subparsers."""
    group = sub.add_parser("contacts", help="the contacts of the contact lists").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    status = {"type": str.upper, "choices": ops.STATUSES, "metavar": "OPT_IN|OPT_OUT"}

    p = group.add_parser("lists", parents=[common, listing],
                         help="the contact lists of the configuration and their topics")
    p.set_defaults(func=cmd_lists)

    p = group.add_parser("list", parents=[common, listing],
                         help="a list's contacts, filtered as SES's ListContacts")
    p.add_argument("list", metavar="LIST")
    p.add_argument("--status", help="without --topic: OPT_OUT lists those unsubscribed from "
                                    "the whole list; with it, the status for that topic",
                   **status)
    p.add_argument("--topic", metavar="TOPIC", help="only contacts with a preference for "
                                                    "TOPIC (all of them with --use-default)")
    p.add_argument("--use-default", action="store_true",
                   help="with --topic: a contact without a preference for it counts with "
                        "the topic's default status")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N contacts")
    p.set_defaults(func=cmd_list)

    p = group.add_parser("get", parents=[common, listing], help="one contact")
    p.add_argument("list", metavar="LIST")
    p.add_argument("address", metavar="ADDRESS")
    p.set_defaults(func=cmd_get)

    p = group.add_parser("add", parents=[common, listing],
                         help="add a contact to a list (SES CreateContact)")
    p.add_argument("list", metavar="LIST")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC=OPT_IN|OPT_OUT",
                   type=_preference(ops.STATUSES),
                   help="a preference for a topic of the list (repeat for more); other "
                        "topics follow their default")
    p.add_argument("--unsubscribe-all", action="store_true",
                   help="the contact gets no mail of the list")
    p.add_argument("--attributes", metavar="JSON", help="a JSON object about the contact")
    p.set_defaults(func=cmd_add)

    p = group.add_parser("update", parents=[common, listing],
                         help="change a contact's preferences or attributes")
    p.add_argument("list", metavar="LIST")
    p.add_argument("address", metavar="ADDRESS")
    p.add_argument("--topic", action="append", default=[],
                   metavar="TOPIC=OPT_IN|OPT_OUT|DEFAULT", type=_preference(
                       (*ops.STATUSES, "DEFAULT")),
                   help="set the preference for a topic (DEFAULT: none, the topic's default "
                        "applies); other topics keep theirs")
    p.add_argument("--unsubscribe-all", action=argparse.BooleanOptionalAction, default=None,
                   help="--unsubscribe-all: no mail of the list; --no-unsubscribe-all: the "
                        "topics' preferences apply again")
    p.add_argument("--attributes", metavar="JSON", help="replace the attributes: a JSON object")
    p.set_defaults(func=cmd_update)

    p = group.add_parser("delete", parents=[common, listing],
                         help="take a contact off a list (its preferences go with it)")
    p.add_argument("list", metavar="LIST")
    p.add_argument("address", metavar="ADDRESS")
    p.set_defaults(func=cmd_delete)

    p = group.add_parser("import", parents=[common, listing],
                         help="add or change contacts from a CSV or JSON file in SES's import "
                              "layout (- for stdin)")
    p.add_argument("list", metavar="LIST")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--format", choices=FORMATS,
                   help="default: from the file name's extension, else from its content")
    p.set_defaults(func=cmd_import)

    p = group.add_parser("export", parents=[common],
                         help="write a list's contacts as CSV or JSON, in the layout import "
                              "reads")
    p.add_argument("list", metavar="LIST")
    p.add_argument("--format", choices=FORMATS,
                   help="default: from --output's extension, else csv")
    p.add_argument("--output", metavar="FILE", help="default: standard output")
    p.set_defaults(func=cmd_export)


@contextlib.contextmanager
def _store(args: argparse.Namespace
           ) -> Iterator[tuple[ContactStore, Config, ContactListConfig]]:
    config = state_config(args)
    # Checked before the store is opened, so that a mistyped list creates nothing.
    settings = ops.find_list(config, args.list)
    store = contact_store(config)
    store.open()
    try:
        with _refusals(args):
            yield store, config, settings
    finally:
        store.close()


@contextlib.contextmanager
def _refusals(args: argparse.Namespace) -> Iterator[None]:
    """The operations' refusals in the words of these commands, with what to do."""
    try:
        yield
    except ContactNotFound as exc:
        raise CommandError(f"{exc}; add it with: smtprelay contacts add {exc.contact_list} "
                           f"{exc.address}") from None
    except ContactExists as exc:
        raise CommandError(f"{exc}; change it with: smtprelay contacts update "
                           f"{exc.contact_list} {exc.address} ...") from None
    except BadContact as exc:
        raise CommandError(f"{_FLAGS.get(exc.field, exc.field)}: {exc}") from None
    except TopicNotFound as exc:
        raise CommandError(f"--topic {exc.topic}: {exc}") from None


# -- showing contacts -------------------------------------------------------------------------


def _show(contact: Contact, settings: ContactListConfig) -> None:
    print(f"  unsubscribed from the whole list: {'yes' if contact.unsubscribe_all else 'no'}")
    for topic in settings.topics:
        explicit = contact.topics.get(topic.name)
        shown = explicit or f"{topic.default_subscription_status} (default)"
        print(f"  topic {topic.name:<24} {shown}")
    print(f"  attributes: {contact.attributes}")
    print(f"  created {format_time(contact.created_at)}, last updated "
          f"{format_time(contact.updated_at)}")


def _result(args: argparse.Namespace, contact: Contact, settings: ContactListConfig,
            headline: str) -> int:
    if args.json:
        print_json(ops.contact_json(contact, settings))
    else:
        print(headline)
        _show(contact, settings)
    return EXIT_OK


def cmd_lists(args: argparse.Namespace) -> int:
    found = ops.lists(config_from(args))
    if args.json:
        print_json([item.as_json() for item in found])
        return EXIT_OK
    print(f"{'LIST':<24} {'ACCOUNT':<20} TOPICS (default status)")
    for item in found:
        topics = ", ".join(f"{t.name} ({t.default_subscription_status})"
                           for t in item.settings.topics)
        print(f"{item.name:<24} {item.settings.account:<20} {topics or '-'}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise CommandError("--limit must be 0 or more")
    if args.use_default and args.topic is None:
        raise CommandError("--use-default applies to a topic: give --topic TOPIC too")
    with _store(args) as (store, config, settings):
        where = ops.make_filter(config, args.list, status=args.status, topic=args.topic,
                                use_default=args.use_default)
        found: Iterator[Contact] = ops.contacts(store, config, args.list, where=where)
        shown = 0
        out = sys.stdout
        if args.json:
            # Streamed, item by item, in the layout json.dump(indent=2) gives a list, so
            # a million contacts do not have to be in memory at once.
            out.write("[")
            for contact in found:
                if args.limit is not None and shown >= args.limit:
                    break
                item = json.dumps(ops.contact_json(contact, settings), indent=2, sort_keys=True)
                out.write(("\n" if shown == 0 else ",\n") + "\n".join(
                    "  " + line for line in item.splitlines()))
                shown += 1
            out.write("\n]\n" if shown else "]\n")
            return EXIT_OK
        print(f"{'ADDRESS':<40} {'ALL':<4} {'LAST UPDATE':<21} PREFERENCES")
        for contact in found:
            if args.limit is not None and shown >= args.limit:
                break
            chosen = " ".join(f"{name}={status}"
                              for name, status in ops.preferences(contact, settings).items())
            print(f"{contact.address:<40} {'out' if contact.unsubscribe_all else 'in':<4} "
                  f"{format_time(contact.updated_at):<21} {chosen or '-'}")
            shown += 1
        print(f"-- {shown} contact{'' if shown == 1 else 's'}"
              + (" shown" if args.limit is not None else ""))
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    with _store(args) as (store, config, settings):
        contact = ops.get(store, config, args.list, args.address)
    return _result(args, contact, settings, f"{contact.address} on contact list {args.list}")


def cmd_add(args: argparse.Namespace) -> int:
    with _store(args) as (store, config, settings):
        made = ops.create(store, config, args.list, args.address, topics=args.topic,
                          unsubscribe_all=args.unsubscribe_all, attributes=args.attributes)
    return _result(args, made, settings, f"{made.address}: added to contact list {args.list}")


def cmd_update(args: argparse.Namespace) -> int:
    if not args.topic and args.unsubscribe_all is None and args.attributes is None:
        raise CommandError("nothing to change: give --topic, --unsubscribe-all, "
                           "--no-unsubscribe-all or --attributes")
    with _store(args) as (store, config, settings):
        changed = ops.update(store, config, args.list, args.address, topics=args.topic,
                             unsubscribe_all=args.unsubscribe_all,
                             attributes=args.attributes)
    return _result(args, changed, settings,
                   f"{changed.address}: changed on contact list {args.list}")


def cmd_delete(args: argparse.Namespace) -> int:
    with _store(args) as (store, config, _settings):
        address = ops.delete(store, config, args.list, args.address)
    if args.json:
        print_json({"ContactListName": args.list, "EmailAddress": address, "Deleted": True})
    else:
        print(f"{address}: deleted from contact list {args.list}")
    return EXIT_OK


# -- import / export ---------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    # Check the list before reading a possibly large file, and read the file before
    # state_config: run as root, that drops to data_dir's owner, who may not be able
    # to read the operator's file.
    config = config_from(args)
    ops.find_list(config, args.list)
    text, name = read_input(args.file)
    fmt = args.format or guess_format(None if args.file == "-" else args.file, text)
    try:
        checked = ops.read_file(config, args.list, text, name, fmt)
    except UnreadableFile as exc:
        raise CommandError(str(exc)) from None
    report_problems(name, checked)
    with _store(args) as (store, config, _settings):
        imported = ops.import_plan(store, config, args.list, checked)
    if args.json:
        print_json({"imported": imported.new, "updated": imported.updated,
                    "skipped": checked.bad, "duplicates": checked.duplicates})
    else:
        print(f"imported {imported.new}, updated {imported.updated}, skipped {checked.bad} "
              f"bad rows, {checked.duplicates} duplicates")
    if checked.bad and not checked.changes:
        # Not one good row: the wrong file, list or format; make a script notice.
        raise CommandError(f"{name}: no valid rows")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    ops.find_list(config_from(args), args.list)
    fmt = args.format or format_of(args.output) or "csv"
    # Opened before state_config for the same reason import reads its file first.
    with export_target(args.output) as out, _store(args) as (store, config, _settings):
        count = ops.export(store, config, args.list, out, fmt)
    if args.output:
        print(f"exported {count} contacts to {args.output}", file=sys.stderr)
    return EXIT_OK
