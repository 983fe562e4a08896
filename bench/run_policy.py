"""Cost of the policy checks at acceptance: quotas and a 1,000,000-entry suppression list.

Two smtprelay subprocesses run side by side on temp configs (fsync on, as run_submit):

* off: the account has no `quota` and its suppression list is empty;
* on:  the account has `quota: {max_send_rate: 100000, max_24h_send: 100000000}`
       (never throttles: this measures the cost of checking, not of throttling) and
       1,000,000 suppression entries, bulk-loaded into its state.db before start.

bench/submit_load.py drives each with 50 sessions x 2 KB, the servers interleaved
repeat by repeat; the load's recipient is not on the list. A third run against "on"
(on-10%) sends every 10th message to a suppressed address. Prints medians (msgs/s,
p50, p99) and the ratios on/off; §4.4 wants "not measurably slower": ratio >= 0.95.
Exits 1 when the msgs/s ratio is below that. Writes JSON to bench/results/.

    /tmp/venv/bin/python bench/run_policy.py          # about 2 minutes
    /tmp/venv/bin/python bench/run_policy.py --entries 10000 --repeats 1 --total 500  # dry run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    REPO,
    RelayProcess,
    exit_on_sigterm,
    median,
    write_result,
)
from bench._common import run_load as common_run_load
from smtprelay.policy.suppression import SQLiteSuppressionStore

ACCOUNT = "bench"
QUOTA = {"max_send_rate": 100_000, "max_24h_send": 100_000_000}
TARGET_RATIO = 0.95
CLEAN_RECIPIENT = "rcpt@example.net"


def listed(i: int) -> str:
    """The i-th suppressed address (1,000 domains, as a real list spreads over many)."""
    return f"user{i}@d{i % 1000}.example.com"


def configure(relay: RelayProcess, on: bool, entries: int) -> float:
    """Rewrite the relay's temp config for `on`/off and fill its list; seconds spent loading."""
    config = yaml.safe_load(relay.config_path.read_text())
    if on:
        config["accounts"][ACCOUNT]["quota"] = dict(QUOTA)
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    if not on:
        return 0.0
    store = SQLiteSuppressionStore(relay.root / "var" / "state.db")  # config.state_path
    started = time.perf_counter()
    try:
        new = store.import_entries(ACCOUNT, ((listed(i), "BOUNCE" if i % 5 else "COMPLAINT",
                                              None) for i in range(entries)))
        assert new == entries, (new, entries)
    finally:
        store.close()
    return time.perf_counter() - started


def run_load(port: int, user: str, password: str, recipients: list[str],
             args: argparse.Namespace, total: int | None = None) -> dict[str, Any]:
    return common_run_load(port, user, password, sessions=args.sessions, size=args.size,
                           messages_per_session=args.messages_per_session,
                           total=total or args.total, duration=args.duration,
                           recipients=tuple(recipients))


def pipeline_wired() -> dict[str, bool]:
    """Whether the pipeline calls quotas and the suppression list at all yet."""
    source = (REPO / "smtprelay" / "pipeline.py").read_text()
    return {"quota": "quota" in source, "suppression": "suppression" in source}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=1_000_000, help="suppressed addresses")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--total", type=int, default=3000, help="messages per run")
    p.add_argument("--duration", type=float, default=20.0, help="time bound per run")
    p.add_argument("--no-suppressed-variant", action="store_true",
                   help="skip the run with every 10th recipient suppressed")
    args = p.parse_args(argv)
    exit_on_sigterm()

    wired = pipeline_wired()
    if not all(wired.values()):
        missing = " and ".join(k for k, v in wired.items() if not v)
        print(f"note: smtprelay/submission/pipeline.py does not use {missing} yet: 'on' measures "
              "nothing new", flush=True)

    suppressed = listed(7)
    variants: dict[str, tuple[str, list[str]]] = {
        "off": ("off", [CLEAN_RECIPIENT]), "on": ("on", [CLEAN_RECIPIENT])}
    if not args.no_suppressed_variant:
        variants["on-10%"] = ("on", [CLEAN_RECIPIENT] * 9 + [suppressed])

    limits = {"max_connections": 5000, "max_connections_per_ip": 5000}
    relays = {"off": RelayProcess(limits=limits), "on": RelayProcess(limits=limits)}
    runs: list[dict[str, Any]] = []
    try:
        configure(relays["off"], on=False, entries=0)
        load_s = configure(relays["on"], on=True, entries=args.entries)
        db = relays["on"].root / "var" / "state.db"
        print(f"loaded {args.entries:,} suppression entries in {load_s:.1f} s "
              f"(state.db {db.stat().st_size / 2**20:.0f} MiB)", flush=True)
        creds: dict[str, tuple[int, str, str]] = {}
        for name, relay in relays.items():
            relay.start()
            user, password = relay.credential(ACCOUNT)
            creds[name] = (relay.submission_port, user, password)
        # Warm-up: the first AUTH costs a slow hash, the first writes grow the files,
        # the first lookups bring the list's upper B-tree pages into the cache.
        for name in relays:
            run_load(*creds[name], [CLEAN_RECIPIENT], args, total=300)
        for rep in range(args.repeats):
            for variant, (relay_name, recipients) in variants.items():
                result = run_load(*creds[relay_name], recipients, args)
                result.update(variant=variant, repeat=rep)
                runs.append(result)
                print(f"[{rep + 1}/{args.repeats}] {variant:7} {result['msgs_per_s']:7.1f} "
                      f"msg/s p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
                      f"errors {result['errors'] or '-'}", flush=True)
        # Evidence that the checks ran: the accept log line counts suppressed recipients.
        log = (relays["on"].root / "serve.log").read_text(errors="replace")
        suppressed_logged = log.count("suppressed=1")
    finally:
        for relay in relays.values():
            relay.stop()

    table: dict[str, dict[str, Any]] = {}
    for variant in variants:
        cell = [r for r in runs if r["variant"] == variant]
        table[variant] = {
            "msgs_per_s": median([r["msgs_per_s"] for r in cell]),
            "p50_ms": median([r["p50_ms"] for r in cell]),
            "p99_ms": median([r["p99_ms"] for r in cell]),
            "errors": sum(sum(r["errors"].values()) for r in cell),
        }
    off = table["off"]
    ratios: dict[str, dict[str, float | None]] = {}
    for variant in variants:
        if variant == "off":
            continue
        row = table[variant]
        ratios[variant] = {
            "msgs_per_s": round(row["msgs_per_s"] / off["msgs_per_s"], 3)
            if row["msgs_per_s"] and off["msgs_per_s"] else None,
            # >1 means slower; reported, the verdict is on throughput.
            "p99": round(row["p99_ms"] / off["p99_ms"], 3)
            if row["p99_ms"] and off["p99_ms"] else None,
        }

    print(f"\nmedians of {args.repeats} runs, {args.sessions} sessions x "
          f"{args.size // 1024} KB, {args.messages_per_session} messages/session, "
          f"STARTTLS + AUTH PLAIN, fsync on; on = quota + {args.entries:,} suppressed")
    print(f"{'variant':>8} | {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} | "
          f"{'ratio msg/s':>11} {'ratio p99':>9}")
    for variant, row in table.items():
        r = ratios.get(variant, {})
        print(f"{variant:>8} | {row['msgs_per_s']:>7} {row['p50_ms']:>7} {row['p99_ms']:>7} "
              f"{row['errors']:>6} | {r.get('msgs_per_s', '-')!s:>11} {r.get('p99', '-')!s:>9}")
    if "on-10%" in variants:
        print(f"messages accepted with a suppressed recipient (relay log): {suppressed_logged}")
    ratio = ratios["on"]["msgs_per_s"]
    ok = ratio is not None and ratio >= TARGET_RATIO
    print(f"on/off throughput ratio {ratio} (target >= {TARGET_RATIO}): "
          f"{'ok' if ok else 'BELOW TARGET'}"
          + ("" if all(wired.values()) else " -- pipeline not wired, nothing measured"))
    path = write_result("policy", {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args), "wired": wired,
        "load_s": round(load_s, 2), "table": table, "ratios": ratios,
        "suppressed_logged": suppressed_logged, "runs": runs})
    print(f"results: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
