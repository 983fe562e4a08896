"""`smtprelay tracking-keys`: the keys that sign tracking links, and their rotation."""

from __future__ import annotations

import argparse
import time
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, format_time, print_json, state_config


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    keys = sub.add_parser("tracking-keys", help="the keys that sign tracking links"
                          ).add_subparsers(dest="action", required=True, metavar="ACTION")
    p = keys.add_parser("list", parents=[common, listing], help="list the signing keys")
    p.set_defaults(func=cmd_list)
    p = keys.add_parser("rotate", parents=[common],
                        help="start signing with a new key; old links keep working 60 days")
    p.set_defaults(func=cmd_rotate)


def _key_rows(ring: Any, now: float) -> list[dict[str, Any]]:
    from smtprelay.transform.tokens import RETIREMENT_GRACE

    return [{"id": key.id, "created_at": format_time(key.created_at),
             "state": "active" if key.retired_at is None else (
                 "retired" if now - key.retired_at <= RETIREMENT_GRACE else "expired"),
             "valid_until": "-" if key.retired_at is None
             else format_time(key.retired_at + RETIREMENT_GRACE)} for key in ring.keys]


def cmd_list(args: argparse.Namespace) -> int:
    from smtprelay.transform.tokens import KeyRing, KeyRingError

    config = state_config(args)
    try:
        ring = KeyRing.load(config.tracking_keys_path)
    except KeyRingError as exc:
        raise CommandError(str(exc)) from None
    rows = _key_rows(ring, time.time())
    if args.json:
        print_json(rows)
    else:
        print(f"{'ID':>4}  {'STATE':8}  {'CREATED':20}  TOKENS VALID UNTIL")
        for row in rows:
            print(f"{row['id']:>4}  {row['state']:8}  {row['created_at']:20}  "
                  f"{row['valid_until']}")
    return EXIT_OK


def cmd_rotate(args: argparse.Namespace) -> int:
    from smtprelay.transform.tokens import RETIREMENT_GRACE, KeyRing, KeyRingError

    config = state_config(args)
    path = config.tracking_keys_path
    now = time.time()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ring = KeyRing.open(path, now)
        gone = ring.prune(now)
        key = ring.rotate(now)
        ring.save(path)
    except (KeyRingError, OSError) as exc:
        raise CommandError(str(exc)) from None
    print(f"New tracking key {key.id} written to {path}.")
    print(f"Links already sent keep working until {format_time(now + RETIREMENT_GRACE)}; "
          f"{len(gone)} expired key(s) removed.")
    print("Reload the daemon (systemctl reload smtprelay, or SIGHUP) to sign with it.")
    return EXIT_OK
