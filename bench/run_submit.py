"""Submission benchmark, smtprelay against Postfix, in one run on this machine.

Starts smtprelay (subprocess, temp config, fsync always on) and a private Postfix
submission peer (STARTTLS + Cyrus SASL, accepted mail held), then runs
bench/submit_load.py against each at 10 and 50 sessions x 2 KB and 50 KB, R times,
interleaving the two servers so drift hits both alike. Prints medians (msgs/s, p50,
p99), the ratio smtprelay/Postfix and smtprelay's peak RSS; writes JSON to
bench/results/.

    /tmp/venv/bin/python bench/run_submit.py            # about 5 minutes
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    RelayProcess,
    exit_on_sigterm,
    median,
    proc_status,
    write_result,
)
from bench._common import run_load as common_run_load
from tests.peers.postfix import benchmark_peer


def run_load(port: int, user: str, password: str, sessions: int, size: int,
             args: argparse.Namespace, total: int | None = None) -> dict[str, Any]:
    return common_run_load(port, user, password, sessions=sessions, size=size,
                           messages_per_session=args.messages_per_session,
                           total=total or args.total, duration=args.duration)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, nargs="+", default=[10, 50])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 51200])
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--total", type=int, default=3000, help="messages per cell and run")
    p.add_argument("--duration", type=float, default=20.0, help="time bound per cell and run")
    p.add_argument("--no-postfix", action="store_true", help="measure smtprelay only")
    args = p.parse_args(argv)
    exit_on_sigterm()

    cells = [(s, z) for z in args.sizes for s in args.sessions]
    runs: list[dict[str, Any]] = []
    relay = RelayProcess(limits={"max_connections": 5000, "max_connections_per_ip": 5000})
    peer = None if args.no_postfix else benchmark_peer("bench", secrets.token_hex(12))
    try:
        relay.start()
        relay_user, relay_password = relay.credential()
        targets: dict[str, tuple[int, str, str]] = {
            "smtprelay": (relay.submission_port, relay_user, relay_password)}
        if peer is not None:
            peer.start()
            targets["postfix"] = (peer.port, peer.username, peer.password)
        # Warm-up: the first AUTH costs a slow hash, the first writes grow the files.
        for port, user, password in targets.values():
            run_load(port, user, password, 10, 2048, args, total=300)
        for rep in range(args.repeats):
            for sessions, size in cells:
                for name, (port, user, password) in targets.items():
                    result = run_load(port, user, password, sessions, size, args)
                    result.update(target=name, repeat=rep)
                    runs.append(result)
                    print(f"[{rep + 1}/{args.repeats}] {name:9} {sessions:3} sessions "
                          f"{size // 1024:3} KB: {result['msgs_per_s']:7.1f} msg/s "
                          f"p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
                          f"errors {result['errors'] or '-'}", flush=True)
                    if name == "postfix" and peer is not None:
                        # Keep the hold queue small, as the relay's spool stays one file.
                        peer.delete_all("hold")
        peak_rss_kib = proc_status(relay.pid, "VmHWM")
    finally:
        relay.stop()
        if peer is not None:
            peer.stop()

    table = []
    for sessions, size in cells:
        row: dict[str, Any] = {"sessions": sessions, "size": size}
        for name in ("smtprelay", "postfix"):
            cell = [r for r in runs if r["target"] == name and r["sessions"] == sessions
                    and r["size"] == size]
            if cell:
                row[name] = {
                    "msgs_per_s": median([r["msgs_per_s"] for r in cell]),
                    "p50_ms": median([r["p50_ms"] for r in cell]),
                    "p99_ms": median([r["p99_ms"] for r in cell]),
                    "errors": sum(sum(r["errors"].values()) for r in cell),
                }
        if "postfix" in row and row["postfix"]["msgs_per_s"]:
            row["ratio"] = round(row["smtprelay"]["msgs_per_s"] / row["postfix"]["msgs_per_s"],
                                 2)
        table.append(row)

    print(f"\nmedians of {args.repeats} runs, {args.messages_per_session} messages/session, "
          "STARTTLS + AUTH PLAIN, fsync on")
    print(f"{'sessions':>8} {'size':>6} | {'smtprelay msg/s':>15} {'p50':>7} {'p99':>7} | "
          f"{'postfix msg/s':>13} {'p50':>7} {'p99':>7} | {'ratio':>5}")
    for row in table:
        relay_row = row["smtprelay"]
        pf = row.get("postfix", {})
        print(f"{row['sessions']:>8} {row['size'] // 1024:>4}KB | "
              f"{relay_row['msgs_per_s']:>15} {relay_row['p50_ms']:>7} {relay_row['p99_ms']:>7} | "
              f"{pf.get('msgs_per_s', '-'):>13} {pf.get('p50_ms', '-'):>7} "
              f"{pf.get('p99_ms', '-'):>7} | {row.get('ratio', '-'):>5}")
    print(f"smtprelay peak RSS (VmHWM): {peak_rss_kib / 1024:.1f} MiB")
    path = write_result("submit", {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "args": vars(args), "table": table,
                                   "smtprelay_peak_rss_kib": peak_rss_kib, "runs": runs})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
