"""`smtprelay stats`: per account, sent in 24 h against quota, suppression and spool;
per configuration set, sends, deliveries, bounces, complaints, opens and clicks; and
the reputation guard's verdict on each."""

from __future__ import annotations

import argparse
import time
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, format_time, print_json, state_config
from smtprelay.cli.ip_pools import print_pools
from smtprelay.operations import ip_pools as pool_ops
from smtprelay.operations import stats as ops
from smtprelay.operations.queue import SpoolConnection
from smtprelay.policy.reputation import Judgement
from smtprelay.policy.stores import pause_store, suppression_store
from smtprelay.spool import set_stats
from smtprelay.spool.cluster_stats import ClusterCounters
from smtprelay.spool.store import open_for_cli
from smtprelay.state.api import StateUnavailable


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    p = sub.add_parser("stats", parents=[common, listing],
                       help="per account: sent in 24 h against quota, suppression, spool; "
                            "per configuration set: sends, deliveries, bounces, complaints, "
                            "opens, clicks and rates")
    p.add_argument("--window", default="24h",
                   help="how far back the per-set figures go (e.g. 1h, 24h, 7d; at most "
                        "15d); default 24h")
    p.set_defaults(func=cmd_stats)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _reputation(verdict: Judgement) -> str:
    """"ok", "warning", "paused", or "-" without a representative volume."""
    return str(verdict.state) if verdict.representative else "-"


def _status(row: ops.SetFigures) -> str:
    target = row.target
    if target.pause is not None:
        return f"paused ({target.pause.reason})"
    if target.sending_enabled is False:
        return "disabled"
    if not target.configured and row.counts.key != set_stats.NO_SET:
        return "not configured"
    return "accepting"


def cmd_stats(args: argparse.Namespace) -> int:
    try:
        seconds = set_stats.parse_window(args.window)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    config = state_config(args)
    suppression = suppression_store(config)
    suppression.open()
    pauses = pause_store(config)
    spool = SpoolConnection(open_for_cli(config.spool_path))
    cluster = ClusterCounters.of(config)  # with store: redis, every node's counts
    try:
        found = ops.overview(config, spool, pauses, suppression, now=time.time(),
                             seconds=seconds, counters=cluster)
    finally:
        if cluster is not None:
            cluster.close()
        spool.close()
        pauses.close()
        suppression.close()
    window = found.window
    try:
        pools: list[dict[str, Any]] | str = [
            pool_ops.progress_json(p) for p in pool_ops.read_report(config, now=time.time())]
    except StateUnavailable as exc:
        pools = f"the warm-up counters cannot be read: {exc}"
    rows: list[dict[str, Any]] = [{
        "rates": {"bounce": a.counts.bounce_rate, "complaint": a.counts.complaint_rate},
        "reputation": a.reputation.as_json(),
        "paused": a.target.pause.as_json() if a.target.pause is not None else None,
        "account": a.name, "sandbox": a.sandbox, "sent_24h": a.sent_24h,
        "max_24h_send": a.quota.max_24h_send if a.quota else None,
        "max_send_rate": a.quota.max_send_rate if a.quota else None,
        "suppressed_addresses": a.suppressed, "spool_recipients": dict(a.spool),
    } for a in found.accounts]
    if args.json:
        print_json({"window": window.as_json(), "accounts": rows,
                     "configuration_sets": [{
                         "configuration_set": s.counts.configuration_set, "status": _status(s),
                         **s.counts.counts.as_json(), "reputation": s.reputation.as_json()}
                         for s in found.sets],
                     "ip_pools": pools if isinstance(pools, list) else {"error": pools}})
        return EXIT_OK
    print(f"{'ACCOUNT':<16} {'SENT 24H':>10} {'MAX 24H':>10} {'USED':>6} {'RATE/S':>7} "
          f"{'SUPPRESSED':>10} {'BOUNCE%':>7} {'COMPL%':>6} {'REPUTATION':<10}  SPOOL")
    for a, row in zip(found.accounts, rows, strict=True):
        limit = row["max_24h_send"]
        used = f"{100 * row['sent_24h'] / limit:.1f}%" if limit else "-"
        queued = ", ".join(f"{k}={v}" for k, v in sorted(row["spool_recipients"].items())) or "-"
        sandbox = " (sandbox)" if row["sandbox"] else ""
        paused = " PAUSED" if row["paused"] else ""
        print(f"{row['account']:<16} {row['sent_24h']:>10} {limit or 'unlimited':>10} "
              f"{used:>6} {row['max_send_rate'] or '-':>7} {row['suppressed_addresses']:>10} "
              f"{_rate(row['rates']['bounce']):>7} {_rate(row['rates']['complaint']):>6} "
              f"{_reputation(a.reputation):<10}  {queued}{sandbox}{paused}")
    print()
    print(f"Configuration sets, {format_time(window.since)} to {format_time(window.until)} "
          "(bounce rate: permanent bounces / (deliveries + permanent bounces))")
    print(f"{'SET':<20} {'SENT':>7} {'DELIVERED':>9} {'BOUNCED':>7} {'BOUNCE%':>7} "
          f"{'COMPLAINED':>10} {'COMPL%':>6} {'OPENS':>6} {'OPEN%':>6} {'CLICKS':>6} "
          f"{'CLICK%':>6} {'REPUTATION':<10}  STATUS")
    for s in found.sets:
        c = s.counts.counts
        label = set_stats.set_label(s.counts.key)
        print(f"{label:<20} {c['send']:>7} {c['delivery']:>9} {c['bounce']:>7} "
              f"{_rate(c.bounce_rate):>7} {c['complaint']:>10} {_rate(c.complaint_rate):>6} "
              f"{c['open']:>6} {_rate(c.open_rate):>6} {c['click']:>6} {_rate(c.click_rate):>6}"
              f" {_reputation(s.reputation):<10}  {_status(s)}")
    reputation_config = config.reputation
    print()
    print(f"Reputation over {reputation_config.window / 3600:g} h, from "
          f"{reputation_config.minimum_volume} deliveries + hard bounces: warning at "
          f"bounce {_rate(reputation_config.bounce.warning)} / complaint "
          f"{_rate(reputation_config.complaint.warning)}, paused at "
          f"{_rate(reputation_config.bounce.pause)} / "
          f"{_rate(reputation_config.complaint.pause)}"
          + ("" if reputation_config.enabled else " (the guard is disabled)"))
    _print_pools(pools)
    return EXIT_OK


def _print_pools(pools: list[dict[str, Any]] | str) -> None:
    if isinstance(pools, str):
        print()
        print(f"IP pools: {pools}")
    elif pools:
        print()
        print_pools(pools)
