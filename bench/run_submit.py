"""Submission benchmark, smtprelay against Postfix, in one run on this machine.

Starts smtprelay (subprocess, temp config, fsync always on) and a private Postfix
submission peer (STARTTLS + Cyrus SASL, accepted mail held), then runs
bench/submit_load.py against each at 10 and 50 sessions x 2 KB and 50 KB, R times,
interleaving the two servers so drift hits both alike. Prints medians (msgs/s, p50,
p99), the ratio smtprelay/Postfix and smtprelay's peak RSS; writes JSON to
bench/results/.

With --transforms [MESSAGE] it compares smtprelay with itself instead: MESSAGE (a kind
from bench/transform_cost.py, 2k-text, 50k-html (the default) or 1m-html, or a file
of CRLF lines whose From is @example.com) is submitted with X-SES-CONFIGURATION-SET
naming a set with open + click tracking and one-click unsubscribe ("tracked") or a
set without them ("plain"), to two relays side by side, one without DKIM keys and one
dual-signing (RSA 2048 + Ed25519) example.com's mail. Cells alternate tracked/plain
within each repeat; prints medians, the relay's CPU per message and the ratios
tracked/plain.

    /tmp/venv/bin/python bench/run_submit.py            # about 5 minutes
    /tmp/venv/bin/python bench/run_submit.py --transforms [50k-html] [--sessions 10 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import transform_cost
from bench._common import (
    RelayProcess,
    exit_on_sigterm,
    median,
    proc_status,
    python_env,
    write_result,
)
from bench._common import run_load as common_run_load
from smtprelay.transform import dkim
from tests.peers.postfix import benchmark_peer
from tests.redis_server import RedisServer


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
    p.add_argument("--workers", type=int, metavar="N",
                   help="also run this smtprelay with server.workers N, beside the one-process "
                        "one, interleaved (the table's workers/smtprelay column)")
    p.add_argument("--redis", action="store_true",
                   help="also run a smtprelay with store: redis (a redis-server started "
                        "here), interleaved; both relays then give the account a quota "
                        "high enough to refuse nothing, so both run the whole check")
    p.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                   help="also run the smtprelay in CHECKOUT (an older commit, e.g. from "
                        "`git worktree add`), interleaved, and print this/baseline")
    p.add_argument("--transforms", nargs="?", const="50k-html", metavar="MESSAGE",
                   help="smtprelay only: MESSAGE (2k-text, 50k-html, 1m-html or a file) "
                        "through a set with tracking + unsubscribe against a set without, "
                        "with and without DKIM keys (default message: 50k-html)")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.transforms:
        return transforms_main(args)

    cells = [(s, z) for z in args.sizes for s in args.sessions]
    runs: list[dict[str, Any]] = []
    relay = RelayProcess(limits={"max_connections": 5000, "max_connections_per_ip": 5000})
    peer = None if args.no_postfix else benchmark_peer("bench", secrets.token_hex(12))
    baseline = None if args.baseline is None else RelayProcess(
        limits={"max_connections": 5000, "max_connections_per_ip": 5000},
        source=args.baseline.resolve())
    workers = None if args.workers is None else RelayProcess(
        limits={"max_connections": 5000, "max_connections_per_ip": 5000},
        server={"workers": args.workers})
    redis_server = RedisServer().start() if args.redis else None
    on_redis = None
    if redis_server is not None:
        on_redis = RelayProcess(limits={"max_connections": 5000,
                                        "max_connections_per_ip": 5000})
        for target, store in ((relay, None), (on_redis, {
                "backend": "redis", "url": redis_server.url, "node": "bench"})):
            config = yaml.safe_load(target.config_path.read_text())
            config["accounts"]["bench"]["quota"] = HIGH_QUOTA
            if store is not None:
                config["store"] = store
            target.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    redis_calls: list[float] = []
    try:
        relay.start()
        relay_user, relay_password = relay.credential()
        targets: dict[str, tuple[int, str, str]] = {
            "smtprelay": (relay.submission_port, relay_user, relay_password)}
        if baseline is not None:
            baseline.start()
            targets["baseline"] = (baseline.submission_port, *baseline.credential())
        if workers is not None:
            workers.start()
            targets["workers"] = (workers.submission_port, *workers.credential())
        if on_redis is not None:
            on_redis.start()
            targets["redis"] = (on_redis.submission_port, *on_redis.credential())
        if peer is not None:
            peer.start()
            targets["postfix"] = (peer.port, peer.username, peer.password)
        # Warm-up: the first AUTH costs a slow hash, the first writes grow the files.
        for port, user, password in targets.values():
            run_load(port, user, password, 10, 2048, args, total=300)
        for rep in range(args.repeats):
            for sessions, size in cells:
                for name, (port, user, password) in targets.items():
                    calls = redis_commands(redis_server) if name == "redis" else 0
                    result = run_load(port, user, password, sessions, size, args)
                    result.update(target=name, repeat=rep)
                    runs.append(result)
                    if name == "redis" and result.get("accepted"):
                        per_message = (redis_commands(redis_server) - calls) / result["accepted"]
                        redis_calls.append(per_message)
                        result["redis_commands_per_msg"] = round(per_message, 2)
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
        if baseline is not None:
            baseline.stop()
        if workers is not None:
            workers.stop()
        if on_redis is not None:
            on_redis.stop()
        if redis_server is not None:
            redis_server.stop()
        if peer is not None:
            peer.stop()

    table = []
    for sessions, size in cells:
        row: dict[str, Any] = {"sessions": sessions, "size": size}
        for name in ("smtprelay", "baseline", "workers", "redis", "postfix"):
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
        if "baseline" in row and row["baseline"]["msgs_per_s"]:
            row["vs_baseline"] = round(
                row["smtprelay"]["msgs_per_s"] / row["baseline"]["msgs_per_s"], 2)
        if "redis" in row and row["smtprelay"]["msgs_per_s"]:
            row["redis_vs_local"] = round(
                row["redis"]["msgs_per_s"] / row["smtprelay"]["msgs_per_s"], 2)
        if "workers" in row and row["smtprelay"]["msgs_per_s"]:
            row["workers_vs_one"] = round(
                row["workers"]["msgs_per_s"] / row["smtprelay"]["msgs_per_s"], 2)
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
        if "baseline" in row:
            base = row["baseline"]
            print(f"{'':>8} {'':>6} | baseline {base['msgs_per_s']:>6} {base['p50_ms']:>7} "
                  f"{base['p99_ms']:>7} | this/baseline {row['vs_baseline']}")
        if "workers" in row:
            many = row["workers"]
            print(f"{'':>8} {'':>6} | workers={args.workers} {many['msgs_per_s']:>6} "
                  f"{many['p50_ms']:>7} {many['p99_ms']:>7} | workers/one "
                  f"{row['workers_vs_one']}")
        if "redis" in row:
            shared = row["redis"]
            print(f"{'':>8} {'':>6} | store redis {shared['msgs_per_s']:>6} "
                  f"{shared['p50_ms']:>7} {shared['p99_ms']:>7} | redis/local "
                  f"{row['redis_vs_local']} (issue 18: >= 0.9)")
    if redis_calls:
        print(f"Redis commands per accepted message (INFO commandstats, median): "
              f"{median(redis_calls):.2f}")
    print(f"smtprelay peak RSS (VmHWM): {peak_rss_kib / 1024:.1f} MiB")
    path = write_result("submit", {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "args": {k: str(v) if isinstance(v, Path) else v
                                            for k, v in vars(args).items()},
                                   "table": table,
                                   "smtprelay_peak_rss_kib": peak_rss_kib, "runs": runs})
    print(f"results: {path}")
    return 0


# --- --redis ---------------------------------------------------------------------------

# Far above what the load sends: nothing is refused, but every message is checked.
HIGH_QUOTA = {"max_send_rate": 1_000_000, "burst": 1_000_000, "max_24h_send": 1_000_000_000}


def redis_commands(server: RedisServer | None) -> float:
    """Commands the Redis server has run so far (INFO commandstats, INFO itself left
    out)."""
    if server is None:
        return 0.0
    total = 0.0
    for line in server.cli("INFO", "commandstats").stdout.splitlines():
        if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:"):
            total += float(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


# --- --transforms: tracking + unsubscribe on against off, through the real daemon ------

SETS = {"tracked": transform_cost.TRACKED_SET, "plain": transform_cost.PLAIN_SET}
TRANSFORM_TARGET = 0.7  # issue 5: tracked/plain msgs/s for the 50 KB HTML case
# submit_load.py's generator with its message replaced by a prepared file (argv[1]).
_GENERATOR = ("import sys; from pathlib import Path; import bench.submit_load as load; "
              "body = Path(sys.argv.pop(1)).read_bytes(); "
              "load.make_message = lambda size, sender, recipient: body; "
              "sys.exit(load.main(sys.argv[1:]))")


def transform_relay(signing: bool) -> RelayProcess:
    """A RelayProcess with both configuration sets, the tracking domain and, when
    `signing`, an RSA 2048 and an Ed25519 DKIM key for example.com."""
    relay = RelayProcess(limits={"max_connections": 5000, "max_connections_per_ip": 5000})
    config = yaml.safe_load(relay.config_path.read_text())
    # A set belongs to accounts (issue 16): both are the bench account's.
    config["configuration_sets"] = {name: {**settings, "accounts": ["bench"]}
                                    for name, settings in SETS.items()}
    config["tracking_domains"] = {transform_cost.TRACKING_DOMAIN: {}}
    if signing:
        keys = relay.root / "dkim"
        keys.mkdir()
        entries = []
        for selector, key in (("r2026", dkim.generate_key("rsa")),
                              ("e2026", dkim.generate_key("ed25519"))):
            path = keys / f"example.com.{selector}.pem"
            dkim.write_key(path, key)
            entries.append({"selector": selector, "key_file": str(path)})
        config["identities"] = {"example.com": {"dkim": entries}}
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return relay


def transform_message(spec: str, set_name: str) -> bytes:
    """The DATA to send, dot-stuffed: a transform_cost kind or a file, naming `set_name`."""
    if spec in transform_cost.KINDS:
        data = transform_cost.raw_message(spec, configuration_set=set_name,
                                          sender="news@example.com",
                                          recipient="rcpt@example.net")
    else:
        text = re.sub(rb"\r?\n", b"\r\n", Path(spec).read_bytes())
        head, blank, body = text.partition(b"\r\n\r\n")
        kept = [line for line in head.split(b"\r\n")
                if not line.lower().startswith(b"x-ses-configuration-set:")]
        data = (f"X-SES-CONFIGURATION-SET: {set_name}\r\n".encode()
                + b"\r\n".join(kept) + blank + body)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return re.sub(rb"(?m)^\.", b"..", data)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_message_load(relay: RelayProcess, user: str, password: str, message: Path,
                     sessions: int, args: argparse.Namespace,
                     total: int | None = None) -> dict[str, Any]:
    """submit_load.py with `message` as every message; its JSON summary plus the
    relay's CPU seconds per accepted message."""
    total = total or args.total
    cmd = [sys.executable, "-c", _GENERATOR, str(message), "--json",
           f"--port={relay.submission_port}", f"--user={user}", f"--password={password}",
           f"--sessions={sessions}", f"--messages-per-session={args.messages_per_session}",
           f"--total={total}", f"--duration={args.duration}", "--sender=news@example.com"]
    cpu = cpu_seconds(relay.pid)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 120,
                         env=python_env(), check=False)
    if not out.stdout.strip():
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    result = dict(json.loads(out.stdout))
    used = cpu_seconds(relay.pid) - cpu
    result["cpu_ms_per_msg"] = round(used / result["accepted"] * 1000, 2) \
        if result["accepted"] else None
    return result


def transforms_main(args: argparse.Namespace) -> int:
    relays = {"no DKIM": transform_relay(signing=False), "DKIM": transform_relay(signing=True)}
    runs: list[dict[str, Any]] = []
    try:
        messages: dict[str, Path] = {}
        for set_name in SETS:
            path = relays["no DKIM"].root / f"{set_name}.eml"
            path.write_bytes(transform_message(args.transforms, set_name))
            messages[set_name] = path
        size = messages["plain"].stat().st_size
        credentials = {}
        for name, relay in relays.items():
            relay.start()
            credentials[name] = relay.credential()
            for path in messages.values():  # warm-up, as main()
                run_message_load(relay, *credentials[name], path, 10, args, total=300)
        for rep in range(args.repeats):
            for sessions in args.sessions:
                for name, relay in relays.items():
                    # Alternate which set goes first, so drift hits both alike.
                    order = ["plain", "tracked"] if rep % 2 == 0 else ["tracked", "plain"]
                    for set_name in order:
                        result = run_message_load(relay, *credentials[name],
                                                  messages[set_name], sessions, args)
                        result.update(relay=name, set=set_name, repeat=rep)
                        runs.append(result)
                        print(f"[{rep + 1}/{args.repeats}] {name:7} {set_name:7} "
                              f"{sessions:3} sessions: {result['msgs_per_s']:7.1f} msg/s "
                              f"p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
                              f"CPU {result['cpu_ms_per_msg']} ms/msg "
                              f"errors {result['errors'] or '-'}", flush=True)
        peak_rss_kib = {name: proc_status(relay.pid, "VmHWM") for name, relay in relays.items()}
    finally:
        for relay in relays.values():
            relay.stop()

    table = []
    for sessions in args.sessions:
        for name in relays:
            row: dict[str, Any] = {"sessions": sessions, "relay": name}
            for set_name in SETS:
                cell = [r for r in runs if r["relay"] == name and r["set"] == set_name
                        and r["sessions"] == sessions]
                row[set_name] = {
                    "msgs_per_s": median([r["msgs_per_s"] for r in cell]),
                    "p50_ms": median([r["p50_ms"] for r in cell]),
                    "p99_ms": median([r["p99_ms"] for r in cell]),
                    "cpu_ms_per_msg": median([r["cpu_ms_per_msg"] for r in cell]),
                    "errors": sum(sum(r["errors"].values()) for r in cell),
                }
            if row["plain"]["msgs_per_s"]:
                row["ratio"] = round((row["tracked"]["msgs_per_s"] or 0)
                                     / row["plain"]["msgs_per_s"], 2)
            # Each repeat's own ratio (its two cells ran back to back), then the median:
            # steadier than the ratio of medians when the machine's load drifts.
            pairs = {(r["repeat"], r["set"]): r["msgs_per_s"] for r in runs
                     if r["relay"] == name and r["sessions"] == sessions}
            row["ratio_paired"] = median([pairs[(rep, "tracked")] / pairs[(rep, "plain")]
                                          for rep in range(args.repeats)
                                          if pairs.get((rep, "plain"))])
            table.append(row)

    print(f"\n{args.transforms} ({size} bytes as sent), medians of {args.repeats} runs, "
          f"{args.messages_per_session} messages/session, STARTTLS + AUTH PLAIN, fsync on")
    print(f"{'sessions':>8} {'relay':>7} | {'plain msg/s':>11} {'p50':>7} {'p99':>7} "
          f"{'CPU ms':>6} | {'tracked msg/s':>13} {'p50':>7} {'p99':>7} {'CPU ms':>6} | "
          f"{'ratio':>5} {'paired':>6}")
    for row in table:
        plain, tracked = row["plain"], row["tracked"]
        print(f"{row['sessions']:>8} {row['relay']:>7} | {plain['msgs_per_s']:>11} "
              f"{plain['p50_ms']:>7} {plain['p99_ms']:>7} {plain['cpu_ms_per_msg']:>6} | "
              f"{tracked['msgs_per_s']:>13} {tracked['p50_ms']:>7} {tracked['p99_ms']:>7} "
              f"{tracked['cpu_ms_per_msg']:>6} | {row.get('ratio', '-'):>5} "
              f"{row['ratio_paired'] if row['ratio_paired'] is not None else '-':>6}")
    ratios = [row["ratio"] for row in table if "ratio" in row]
    if ratios:
        print(f"target tracked/plain >= {TRANSFORM_TARGET} (issue 5, 50 KB HTML): "
              f"{'met' if min(ratios) >= TRANSFORM_TARGET else 'missed'} "
              f"(lowest {min(ratios)})")
    print("peak RSS (VmHWM): " + ", ".join(f"{name} {kib / 1024:.1f} MiB"
                                           for name, kib in peak_rss_kib.items()))
    path = write_result("submit-transforms", {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "args": vars(args), "message_bytes": size,
        "table": table, "peak_rss_kib": peak_rss_kib, "runs": runs})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
