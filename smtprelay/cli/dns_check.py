"""`smtprelay dns-check`: whether a sending domain's DNS says what the relay needs."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from smtprelay.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, print_json
from smtprelay.config import ENV_CONFIG, load_config


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dns-check", parents=[common, listing],
                       help="check a sending domain's DKIM, SPF, DMARC, MAIL FROM, "
                            "tracking records and the IP pools' PTR records; exit 1 if any "
                            "needs action")
    p.add_argument("domain", metavar="DOMAIN", help="a domain under identities or an "
                                                    "account's identities; without a "
                                                    "configuration file, any domain (SPF, "
                                                    "DMARC; DKIM keys are then unknown)")
    p.add_argument("--ip", action="append", metavar="ADDR",
                   help="an outbound address of the relay that SPF must authorise "
                        "(repeat; default: the addresses of server.hostname)")
    p.add_argument("--nameserver", action="append", metavar="HOST[:PORT]",
                   help="ask this DNS server (repeat; default: delivery.dns.nameservers, "
                        "else the system resolver)")
    p.set_defaults(func=cmd_dns_check)


def cmd_dns_check(args: argparse.Namespace) -> int:
    from smtprelay.operations import dns_check

    try:
        if args.config is None and not os.environ.get(ENV_CONFIG):
            # No configuration: what DNS says of the domain alone (SPF, DMARC, records).
            checks = dns_check.plan_without_config(args.domain, ips=args.ip or (),
                                                   nameservers=args.nameserver or ())
        else:
            # Key files are read by the DKIM check itself, which reports an unusable
            # one as a finding instead of refusing to check anything else.
            config = load_config(args.config).config
            checks = dns_check.plan(config, args.domain, ips=args.ip or (),
                                    nameservers=args.nameserver or ())
        lookups = dns_check.Lookups(checks.nameservers, checks.timeout)
    except dns_check.UsageError as exc:
        print(f"smtprelay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if sys.stderr.isatty():
        # The checks run together but each may wait its whole timeout: say so at once
        # rather than sit silent.
        print(f"checking {checks.domain} with {', '.join(lookups.servers)} "
              f"(each lookup waits up to {checks.timeout:g}s)...", file=sys.stderr)
    findings = asyncio.run(dns_check.run(checks, lookups))
    if args.json:
        print_json([finding.as_json() for finding in findings])
    else:
        print(dns_check.render(findings))
    return EXIT_OK if all(finding.ok for finding in findings) else EXIT_FAILURE
