"""`smtprelay credentials`: the SMTP credentials kept in the state database."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from smtprelay.cli.common import (
    EXIT_OK,
    Change,
    CommandError,
    format_time,
    print_json,
    print_table,
    register_switches,
    report_change,
    state_config,
)
from smtprelay.config import Config
from smtprelay.operations.errors import require_configured


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    creds = sub.add_parser("credentials", help="SMTP credentials").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = creds.add_parser("create", parents=[common, listing],
                         help="create a credential; the password is printed once")
    p.add_argument("account")
    p.add_argument("--name", help="a label, e.g. the application using it")
    p.set_defaults(func=cmd_create)
    p = creds.add_parser("list", parents=[common, listing], help="list credentials")
    p.add_argument("--account")
    p.set_defaults(func=cmd_list)
    register_switches(creds, common, "username", _change)
    creds.add_parser("hash",
                     help="hash a password (from stdin) for a static credential in the config") \
        .set_defaults(func=cmd_hash)


def _store(config: Config) -> Any:
    from smtprelay.auth.stores import credential_store

    store = credential_store(config)
    store.open()
    return store


def cmd_create(args: argparse.Namespace) -> int:
    config = state_config(args)
    require_configured(config, "account", args.account)
    secret = _store(config).create(args.account, args.name)
    if args.json:
        print_json({"username": secret.credential.username, "password": secret.password,
                     "account": args.account, "name": args.name})
    else:
        print(f"account:  {args.account}")
        print(f"username: {secret.credential.username}")
        print(f"password: {secret.password}")
        print("The password is shown only now; smtprelay keeps only a hash of it.")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    rows = [
        {"username": c.username, "account": c.account, "name": c.name, "source": "store",
         "created_at": c.created_at, "disabled": c.disabled}
        for c in _store(config).list(args.account)
    ]
    rows += [
        {"username": c.username, "account": name, "name": None, "source": "config",
         "created_at": None, "disabled": False}
        for name, acc in config.accounts.items() if args.account in (None, name)
        for c in acc.credentials
    ]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table([("USERNAME", 24), ("ACCOUNT", 16), ("SOURCE", 7), ("STATE", 9),
                 ("CREATED", 21), ("NAME", 0)],
                ([row["username"], row["account"], row["source"],
                  "disabled" if row["disabled"] else "active",
                  format_time(row["created_at"]), row["name"] or ""] for row in rows))
    return EXIT_OK


def _change(args: argparse.Namespace, change: Change, done: str) -> int:
    config = state_config(args)
    if any(c.username == args.username for a in config.accounts.values() for c in a.credentials):
        raise CommandError(f"{args.username} is a static credential from the configuration "
                           "file; edit accounts.<name>.credentials there")
    changed = change(_store(config), args.username)
    return report_change(args.username, changed, done, "no stored credential with username")


def cmd_hash(args: argparse.Namespace) -> int:
    from smtprelay.infra.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    print(hash_password(password))
    return EXIT_OK
