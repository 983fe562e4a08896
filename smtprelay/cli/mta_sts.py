"""`smtprelay mta-sts list|forget`: the MTA-STS policies the relay keeps (in
data_dir/state.db, over restarts), and dropping one a recipient domain got wrong."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, format_time, print_json, state_config
from smtprelay.cli.status import ask_relay_if_running
from smtprelay.delivery.mta_sts import StsPolicyError, bare_name, parse_policy
from smtprelay.delivery.mta_sts_store import StoredPolicy, StsPolicyStore
from smtprelay.infra.logs import escape_controls


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    policies = sub.add_parser("mta-sts", help="the MTA-STS policies kept for recipient "
                                              "domains") \
        .add_subparsers(dest="action", required=True, metavar="ACTION")
    policies.add_parser("list", parents=[common, listing],
                        help="each domain's policy in force: mode, MX patterns, expiry") \
        .set_defaults(func=cmd_list)
    p = policies.add_parser("forget", parents=[common, listing],
                            help="drop a domain's policy (the running relay's too): the "
                                 "next message to it looks the policy up afresh")
    p.add_argument("domain")
    p.set_defaults(func=cmd_forget)


def policy_json(domain: str, stored: StoredPolicy) -> dict[str, Any]:
    try:
        policy = parse_policy(stored.text)
        mode, mx, max_age = policy.mode.value, list(policy.mx), policy.max_age
    except StsPolicyError:  # stored as fetched, so it parsed then: a damaged row
        mode, mx, max_age = "unreadable", [], None
    return {"domain": domain, "id": stored.policy_id, "mode": mode, "mx": mx,
            "max_age": max_age, "fetched_at": stored.fetched_at,
            "expires_at": stored.expires_at}


def cmd_list(args: argparse.Namespace) -> int:
    store = StsPolicyStore(state_config(args).state_path)
    try:
        found = [policy_json(domain, stored) for domain, stored in store.listing(time.time())]
    finally:
        store.close()
    if args.json:
        print_json(found)
        return EXIT_OK
    if not found:
        print("no MTA-STS policies kept")
        return EXIT_OK
    print(f"{'DOMAIN':<32} {'MODE':<8} {'FETCHED':<20} {'EXPIRES':<20} MX")
    for item in found:
        # The MX patterns are the policy host's words: no control characters reach the
        # terminal.
        print(f"{item['domain']:<32} {item['mode']:<8} {format_time(item['fetched_at']):<20} "
              f"{format_time(item['expires_at']):<20} "
              f"{escape_controls(', '.join(item['mx']))}")
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    config = state_config(args)
    domain = bare_name(args.domain)
    answer = ask_relay_if_running(
        config, json.dumps({"request": "mta-sts-forget", "domain": domain}))
    if answer is None:  # no relay running: the store is all there is
        store = StsPolicyStore(config.state_path)
        try:
            answer = {"domain": domain, "forgotten": store.forget(domain)}
        finally:
            store.close()
    if "error" in answer:
        raise CommandError(str(answer["error"]))
    if args.json:
        print_json(answer)
    elif answer["forgotten"]:
        print(f"MTA-STS policy of {domain} forgotten: the next message to it looks the "
              "policy up again")
    else:
        print(f"no MTA-STS policy of {domain} was kept")
    return EXIT_OK
