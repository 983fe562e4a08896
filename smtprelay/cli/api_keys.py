"""`smtprelay api-keys`: the access keys that sign requests to the SES-compatible API,
and the rotation of the key that encrypts their secrets (api.key_file)."""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
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

Command = Callable[[argparse.Namespace], int]


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("api-keys", help="access keys for the SES-compatible API"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = keys.add_parser("create", parents=[common, listing],
                        help="create an access key; its secret is printed once")
    p.add_argument("account")
    p.add_argument("--description", help="a label, e.g. the application using it")
    p.set_defaults(func=cmd_create)
    p = keys.add_parser("list", parents=[common, listing],
                        help="list access keys (never their secrets)")
    p.add_argument("--account")
    p.set_defaults(func=cmd_list)
    register_switches(keys, common, "access_key_id", _change)
    p = keys.add_parser("rotate-key", parents=[common],
                        help="re-encrypt every secret under a new api.key_file, keeping "
                             "the old one as <key_file>.old")
    p.add_argument("--new-key-file", metavar="PATH",
                   help="the new key: read from PATH if it exists (one you gave every "
                        "node), else generated there (default: <key_file>.new); "
                        "api.key_file itself: it is in place already, with the previous "
                        "key as <key_file>.old, so only re-encrypt")
    p.set_defaults(func=cmd_rotate_key)


def _expected(command: Command) -> Command:
    """The API keys' expected failures (the key file) as one line, not a traceback."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from smtprelay.auth.api_keys import ApiKeyError

        try:
            return command(args)
        except ApiKeyError as exc:
            raise CommandError(str(exc)) from None
    return run


def _store(config: Config) -> Any:
    from smtprelay.auth.stores import api_key_store

    store = api_key_store(config)
    store.open()
    return store


@_expected
def cmd_create(args: argparse.Namespace) -> int:
    from smtprelay.auth.api_keys import ensure_key_file

    config = state_config(args)
    require_configured(config, "account", args.account)
    store = _store(config)
    path = config.api_key_path
    if not os.path.lexists(path) and (sealed := sum(store.sealed_with().values())):
        # A new key file would open none of them: more likely the file is not mounted
        # or api.key_file names the wrong place than lost.
        raise CommandError(
            f"api.key_file: {path} does not exist, and {sealed} API key(s) are sealed with "
            "a key from it; put that file back (or point api.key_file at it) first. If "
            "it is lost for good, delete those keys (`smtprelay api-keys list`) and "
            "create them anew")
    ensure_key_file(path)
    key, secret = store.create(args.account, args.description)
    if args.json:
        print_json({"access_key_id": key.access_key_id, "secret_access_key": secret,
                    "account": key.account, "description": key.description,
                    "created_at": key.created_at})
        return EXIT_OK
    listen = config.http.listen
    endpoint = config.http.public_url or (f"http://{listen[0]}" if listen
                                          else "https://<this relay>")
    print(f"account:           {key.account}")
    print(f"access key id:     {key.access_key_id}")
    print(f"secret access key: {secret}")
    print("The secret is shown only now; smtprelay keeps it encrypted with api.key_file "
          f"({config.api_key_path}).")
    print("Give them to the application as AWS credentials, with this relay as the "
          "endpoint:")
    print("  aws configure  (AWS Access Key ID, AWS Secret Access Key), then "
          f"aws sesv2 --endpoint-url {endpoint} ...")
    print(f'  boto3.client("sesv2", endpoint_url="{endpoint}", '
          'aws_access_key_id=..., aws_secret_access_key=...)')
    if not (config.api.sesv2 or config.api.sesv1):
        print("api.sesv2 and api.sesv1 are both off in the configuration: turn one on "
              "to serve the API.")
    return EXIT_OK


@_expected
def cmd_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    rows = [{"access_key_id": k.access_key_id, "account": k.account,
             "description": k.description, "created_at": k.created_at,
             "disabled": k.disabled} for k in _store(config).list(args.account)]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print_table([("ACCESS KEY ID", 22), ("ACCOUNT", 16), ("STATE", 9), ("CREATED", 21),
                 ("DESCRIPTION", 0)],
                ([row["access_key_id"], row["account"],
                  "disabled" if row["disabled"] else "active",
                  format_time(row["created_at"]), row["description"] or ""] for row in rows))
    return EXIT_OK


def _change(args: argparse.Namespace, change: Change, done: str) -> int:
    changed = change(_store(state_config(args)), args.access_key_id)
    return report_change(args.access_key_id, changed, done,
                         "no API key with access key id")


@_expected
def cmd_rotate_key(args: argparse.Namespace) -> int:
    """Steps that each leave every secret readable by a node that has api.key_file and
    the .old and .new beside it, so a rotation stopped anywhere is finished by running
    the command again, and a node that already has the new key (a cluster's other
    nodes) only swaps its files."""
    from smtprelay.auth.api_keys import (
        companion,
        create_key_file,
        read_key_file,
        replace_key_file,
    )

    config = state_config(args)
    path = config.api_key_path
    staged, old_path = companion(path, ".new"), companion(path, ".old")
    # --new-key-file naming api.key_file itself: the new key is already in place (a
    # read-only secrets mount, with the previous key mounted as .old): re-encrypt only.
    source = Path(args.new_key_file).absolute() if args.new_key_file else staged
    current = read_key_file(path)
    # Written before anything changes: a rotation stopped part way resumes with it.
    target = read_key_file(source) if os.path.lexists(source) else create_key_file(source)
    previous = read_key_file(old_path) if os.path.lexists(old_path) else None
    store = _store(config)
    in_use = store.sealed_with()
    known = {current.id, target.id} | ({previous.id} if previous else set())
    strangers = sum(count for kek_id, count in in_use.items() if kek_id not in known)
    if strangers:
        raise CommandError(
            f"{strangers} API key(s) are sealed with a key that is in none of {path}, "
            f"{old_path} and {source}; nothing was changed. Put the key file they were "
            "made with back as api.key_file, or delete those keys (`smtprelay api-keys "
            "list`; they cannot sign requests anyway)")
    moved = 0
    if previous is not None and previous.id != current.id and in_use.get(previous.id):
        # Left by a rotation that stopped after the swap: finish it before .old goes.
        moved = store.rekey(previous.key, current.key)
    if target.id == current.id:
        if source == staged:
            staged.unlink(missing_ok=True)
        if not moved and source != path:
            raise CommandError(f"{path} already holds the key in {source} ({current.id}); "
                               "nothing to rotate")
        print(f"{moved} secret(s) re-encrypted from {old_path} with the key in {path} "
              f"({current.id}); every secret is sealed with it now.")
        return EXIT_OK
    replace_key_file(old_path, current)
    replace_key_file(path, target)
    moved = store.rekey(current.key, target.key)
    if source == staged:
        staged.unlink(missing_ok=True)
    print(f"api.key_file {path} now holds key {target.id}; {moved} secret(s) re-encrypted "
          "with it.")
    print(f"The previous key ({current.id}) is kept as {old_path}: delete it once every "
          "node has the new file and its backup is made (docs/ses-api.md).")
    if config.store.backend == "redis":
        print("store: redis: every node needs the new key: copy it to each other node "
              "as <key_file>.new and run this command there too (docs/ses-api.md).")
    return EXIT_OK
