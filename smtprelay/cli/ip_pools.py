"""`smtprelay ip-pools list|warmup`: each pool address's warm-up, and putting an address
on a given day of it (SES's "edit warm up") through the running relay, whose counters
are the ones in use."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, print_json, state_config
from smtprelay.cli.status import ask_relay
from smtprelay.config.ip_pools import MAX_WARMUP_DAYS
from smtprelay.operations import ip_pools as pool_ops
from smtprelay.state.api import StateUnavailable


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    pools = sub.add_parser("ip-pools", help="IP pools: each address's warm-up") \
        .add_subparsers(dest="action", required=True, metavar="ACTION")
    pools.add_parser("list", parents=[common, listing],
                     help="each address's warm-up today: day, percentage, sent against "
                          "the day's caps") \
        .set_defaults(func=cmd_list)
    p = pools.add_parser("warmup", parents=[common, listing],
                         help="put an address on a day of its warm-up (1 restarts it, "
                              "days + 1 ends it), through the running relay")
    p.add_argument("pool", help="ip_pools.<pool>")
    p.add_argument("address", help="one of the pool's addresses")
    p.add_argument("--day", type=int, required=True,
                   help=f"1 to {MAX_WARMUP_DAYS + 1}, counted from today")
    p.set_defaults(func=cmd_warmup)


def cmd_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    try:
        found = pool_ops.read_report(config, now=time.time())
    except StateUnavailable as exc:
        raise CommandError(f"the warm-up counters cannot be read: {exc}") from None
    pools = [pool_ops.progress_json(item) for item in found]
    if args.json:
        print_json(pools)
    elif not pools:
        print("no IP pools (ip_pools) in the configuration")
    else:
        print_pools(pools)
    return EXIT_OK


def cmd_warmup(args: argparse.Namespace) -> int:
    answer = ask_relay(args, json.dumps({"request": "warmup-day", "pool": args.pool,
                                         "address": args.address, "day": args.day}))
    if "error" in answer:
        raise CommandError(str(answer["error"]))
    if args.json:
        print_json(answer)
    else:
        print(f"{answer['PoolName']} {answer['Ip']}: warm-up day {answer['day']}, "
              f"{answer['WarmupPercentage']}% ({answer['WarmupStatus']}); caps today "
              + (f"{answer['caps']['total']} in all, {answer['caps']['per_provider']} per "
                 "mailbox provider" if answer["caps"] else "none"))
    return EXIT_OK


def print_pools(pools: list[dict[str, Any]]) -> None:
    """Each pool address's warm-up: day, percentage, and today's sends against caps."""
    print("IP pools, warm-up today (UTC): sent against the day's cap, in all and per "
          "mailbox provider")
    print(f"{'POOL':<14} {'ADDRESS':<26} {'DAY':>4} {'WARMUP%':>7} {'STATUS':<11} "
          f"{'SENT':>8} {'CAP':>8} {'PER PROVIDER':>12}  BY PROVIDER")
    for item in pools:
        caps = item["caps"]
        sent = item["sent_today"]
        by_provider = ", ".join(f"{p}={n}" for p, n in sent["by_provider"].items()) or "-"
        print(f"{item['PoolName']:<14} {item['Ip']:<26} {item['day']:>4} "
              f"{item['WarmupPercentage']:>6}% {item['WarmupStatus']:<11} "
              f"{sent['total']:>8} {caps['total'] if caps else '-':>8} "
              f"{caps['per_provider'] if caps else '-':>12}  {by_provider}")
