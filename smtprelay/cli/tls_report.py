"""`smtprelay tls-report`: TLS reports (RFC 8460, delivery.tls_reporting). `send` asks
the running relay for a reporting round now; `list` shows what is counted and not yet
reported, and the reports filed with where each went."""

from __future__ import annotations

import argparse
from typing import Any

from smtprelay.cli.common import EXIT_FAILURE, EXIT_OK, config_from, format_time, print_json
from smtprelay.cli.status import ask_relay
from smtprelay.delivery.tls_report import TLSReportStore, database_path


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    group = sub.add_parser("tls-report", help="TLS reports (RFC 8460) to recipient "
                                              "domains").add_subparsers(
        dest="tls_report_command", required=True, metavar="ACTION")
    p = group.add_parser(
        "send", parents=[common, listing],
        help="report every finished day now, whatever send_at says, and retry every "
             "pending delivery (the running relay does it)")
    p.add_argument("--include-today", action="store_true",
                   help="also report today so far (the rest of today goes in a later "
                        "report that starts where this one ends)")
    p.set_defaults(func=cmd_send)
    p = group.add_parser("list", parents=[common, listing],
                         help="counted sessions not yet reported, and the reports filed")
    p.add_argument("--limit", type=int, default=50, help="reports to show (default 50)")
    p.set_defaults(func=cmd_list)


def cmd_send(args: argparse.Namespace) -> int:
    answer = ask_relay(args, "tls-report-send-today" if args.include_today
                       else "tls-report-send")
    if args.json:
        print_json(answer)
        return EXIT_FAILURE if "error" in answer else EXIT_OK
    if "error" in answer:
        print(f"smtprelay: {answer['error']}")
        return EXIT_FAILURE
    if answer.get("running"):
        print("the relay is still at it (DNS lookups, deliveries); see `smtprelay "
              "tls-report list` in a moment")
        return EXIT_OK
    for domain, report_id in answer["filed"]:
        print(f"filed {report_id} for {domain}")
    for domain in answer["without_record"]:
        print(f"no report for {domain}: it publishes no usable _smtp._tls record")
    for domain in answer["lookup_failed"]:
        print(f"waiting for {domain}: its _smtp._tls record could not be looked up")
    for report_id, uri in answer["delivered"]:
        print(f"sent {report_id} to {uri}")
    for report_id, uri, why in answer["failed"]:
        print(f"not sent {report_id} to {uri}: {why}")
    if not any(answer[k] for k in ("filed", "without_record", "lookup_failed", "delivered",
                                   "failed")):
        print("nothing to report")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    config = config_from(args)
    path = database_path(config.server.data_dir)
    if not path.exists():
        pending, filed = [], []
    else:
        store = TLSReportStore(path)
        try:
            pending = store.pending()
            filed = store.reports(args.limit)
        finally:
            store.close()
    if args.json:
        print_json({
            "pending": [{"day": p.day, "policy_domain": p.policy_domain,
                         "successful_sessions": p.successes, "failed_sessions": p.failures}
                        for p in pending],
            "reports": [{"report_id": r.report_id, "policy_domain": r.policy_domain,
                         "start": r.start, "end": r.end, "filed_at": r.created_at,
                         "destinations": [{"uri": uri, "state": state, "attempts": attempts,
                                           "last_error": error}
                                          for uri, state, attempts, error in r.destinations]}
                        for r in filed]})
        return EXIT_OK
    print(f"counted, not yet reported: {len(pending)} domain-days")
    for p in pending:
        print(f"  {p.day} {p.policy_domain}: {p.successes} successful, {p.failures} failed "
              "sessions")
    print(f"reports filed (newest first, at most {args.limit}):")
    for r in filed:
        print(f"  {r.report_id} {r.policy_domain} {format_time(r.start)} - "
              f"{format_time(r.end)}")
        for uri, state, attempts, error in r.destinations:
            print(f"    {state:<7} {uri} ({attempts} attempts){': ' + error if error else ''}")
    return EXIT_OK
