"""The `smtprelay` command: the daemon and the operator commands around it.

Each command group lives in its own module, which adds its subcommands to the
parser (`register`); this one puts the parser together and runs a command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smtprelay import __version__
from smtprelay.cli import (
    admin_tokens,
    api_keys,
    cluster,
    completion,
    contacts,
    credentials,
    dkim,
    dns_check,
    events,
    feedback,
    ip_pools,
    mta_sts,
    pauses,
    queue,
    send_probe,
    serve,
    stats,
    status,
    suppression,
    tls_report,
    tracking_keys,
)
from smtprelay.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CommandError, refusal
from smtprelay.config import ENV_CONFIG, ConfigError
from smtprelay.db.migrations import SchemaTooNew
from smtprelay.operations.errors import OperationError


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    completion.mark_file(common.add_argument(
        "-c", "--config", metavar="FILE", help=f"configuration file (default: ${ENV_CONFIG})"))
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="print JSON")

    parser = argparse.ArgumentParser(
        prog="smtprelay", description="A self-hosted sending relay (the sending side of SES).")
    parser.add_argument("--version", action="version", version=f"smtprelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order `smtprelay --help` lists them.
    for group in (serve, status, cluster, credentials, api_keys, queue, dkim, tracking_keys,
                  dns_check, suppression, contacts, feedback, stats, ip_pools, mta_sts,
                  pauses, tls_report, events):
        group.register(sub, common, listing)
    send_probe.register(sub, common)
    admin_tokens.register(sub, common, listing)
    completion.register(sub, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"smtprelay: configuration {exc.path} has {len(exc.problems)} problem(s):",
              file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
    except OperationError as exc:
        print(f"smtprelay: {refusal(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except (CommandError, SchemaTooNew) as exc:
        print(f"smtprelay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
