"""`smtprelay admin-token issue`: signed tokens for the admin API that expire."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, config_from, format_time, print_json


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    tokens = sub.add_parser("admin-token", help="tokens for the admin API").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = tokens.add_parser("issue", parents=[common, listing],
                          help="print a signed token that expires, made with the secret in "
                               "http.admin_token_env's variable")
    p.add_argument("--expires", required=True, metavar="DURATION",
                   help="how long it is valid: 30m, 1h, 7d...")
    p.set_defaults(func=cmd_issue)


def cmd_issue(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter, ValidationError

    from smtprelay.config import Duration
    from smtprelay.http import admin_auth

    try:
        seconds = float(TypeAdapter(Duration).validate_python(args.expires))
    except ValidationError:
        raise CommandError(f"--expires {args.expires}: expected a duration such as 30m, 1h "
                           "or 7d") from None
    config = config_from(args)
    env = config.http.admin_token_env
    if not env:
        raise CommandError("http.admin_token_env is not set in the configuration, so there "
                           "is no admin API; name an environment variable holding a secret "
                           "there")
    secret = admin_auth.secret_from_env(env)
    if secret is None:
        raise CommandError(f"the variable {env} (http.admin_token_env) is unset or empty "
                           "here; run this with the daemon's environment (the same secret)")
    expires_at = int(time.time() + seconds)
    token = admin_auth.issue(secret, expires_at)
    if args.json:
        print_json({"token": token, "expires_at": expires_at})
    else:
        print(token)
        print(f"valid until {format_time(expires_at)}; use it as Authorization: Bearer <token>",
              file=sys.stderr)
    return EXIT_OK
