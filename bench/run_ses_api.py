"""SendEmail through the SES v2 API against SMTP submission, in one run on this machine.

One relay (server.workers: 1, delivery mode hold, a quota that refuses nothing) with
`api: {sesv2: true}` on an HTTPS listener. Per cell (message size), interleaved, N
times: bench/submit_load.py's SMTP sessions (STARTTLS + AUTH PLAIN, 5 messages per
session) and bench/ses_api_load.py's API clients (keep-alive HTTPS, SendEmail with Raw
content of the same message, signed by botocore), both with the same concurrency.
Prints medians and the ratio API/SMTP (issue 19's target: at least 1.0).

    python bench/run_ses_api.py [--repeats 3] [--clients 50] [--sizes 2048 51200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    SMTPRELAY,
    RelayProcess,
    free_port,
    median,
    python_env,
    run_load,
    wait_for_banner,
    write_result,
)

HIGH_QUOTA = {"max_send_rate": 1_000_000, "burst": 1_000_000, "max_24h_send": 100_000_000}
API_LOAD = str(Path(__file__).resolve().parent / "ses_api_load.py")


def api_load(port: int, key: dict[str, str], clients: int, size: int, total: int,
             duration: float) -> dict[str, Any]:
    cmd = [sys.executable, API_LOAD, f"--port={port}", f"--key-id={key['access_key_id']}",
           f"--secret={key['secret_access_key']}", f"--clients={clients}",
           f"--size={size}", f"--total={total}", f"--duration={duration}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                         env=python_env(), check=False)
    if not out.stdout.strip():
        raise RuntimeError(f"API load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout))


def pin(relay_pid: int) -> None:
    """Every thread of the relay on CPU 0; this process (so the generators it starts)
    on the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    for task in Path(f"/proc/{relay_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpus[0]})
    os.sched_setaffinity(0, set(cpus[1:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 51200])
    p.add_argument("--total", type=int, default=3000, help="messages per cell and run")
    p.add_argument("--duration", type=float, default=30.0, help="time bound per cell and run")
    p.add_argument("--pin", action="store_true",
                   help="the relay on CPU 0 and the load generators on the others, so "
                        "that they do not take the relay's core (needs 2 or more)")
    args = p.parse_args(argv)
    relay = RelayProcess(limits={"max_connections": 5000, "max_connections_per_ip": 5000})
    tls_port = free_port()
    config = yaml.safe_load(relay.config_path.read_text())
    config["accounts"]["bench"]["quota"] = HIGH_QUOTA
    config["api"] = {"sesv2": True}
    config["http"]["tls_listen"] = [f"127.0.0.1:{tls_port}"]
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    rows: list[dict[str, Any]] = []
    try:
        relay.start()
        wait_for_banner(tls_port, plain=False)
        if args.pin:
            pin(relay.pid)
        user, password = relay.credential()
        made = subprocess.run([SMTPRELAY, "api-keys", "create", "bench", "--json", "-c",
                               str(relay.config_path)], capture_output=True, text=True,
                              check=True)
        key = json.loads(made.stdout)
        # Warm-up: the first AUTH costs a slow hash, the first writes grow the files.
        run_load(relay.submission_port, user, password, sessions=5, size=2048,
                 messages_per_session=5, total=200, duration=10)
        api_load(tls_port, key, 5, 2048, 200, 10)
        for size in args.sizes:
            runs: dict[str, list[dict[str, Any]]] = {"smtp": [], "api": []}
            for n in range(args.repeats):
                smtp = run_load(relay.submission_port, user, password, sessions=args.clients,
                                size=size, messages_per_session=5, total=args.total,
                                duration=args.duration)
                api = api_load(tls_port, key, args.clients, size, args.total, args.duration)
                runs["smtp"].append(smtp)
                runs["api"].append(api)
                for name, result in (("smtp", smtp), ("api", api)):
                    print(f"[{n + 1}/{args.repeats}] {name:<5} {size // 1024:>3} KB: "
                          f"{result['msgs_per_s']:>8} msg/s p50 {result['p50_ms']} ms "
                          f"p99 {result['p99_ms']} ms errors {result.get('errors') or '-'}",
                          flush=True)
            row = {"size": size, "clients": args.clients}
            for name, results in runs.items():
                row[name] = {k: median([r.get(k) for r in results])
                             for k in ("msgs_per_s", "p50_ms", "p99_ms")}
            smtp_rate = row["smtp"]["msgs_per_s"]
            row["api_vs_smtp"] = round(row["api"]["msgs_per_s"] / smtp_rate, 2) \
                if smtp_rate else None
            rows.append(row)
    finally:
        relay.stop()
    print(f"\nmedians of {args.repeats} runs, {args.clients} concurrent clients; SMTP: "
          "STARTTLS + AUTH PLAIN, 5 messages/session; API: keep-alive HTTPS, SendEmail Raw")
    print(f"{'size':>6} | {'smtp msg/s':>10} {'p50':>7} | {'api msg/s':>9} {'p50':>7} | "
          "api/smtp (issue 19: >= 1.0)")
    for row in rows:
        print(f"{row['size'] // 1024:>4}KB | {row['smtp']['msgs_per_s']:>10} "
              f"{row['smtp']['p50_ms']:>7} | {row['api']['msgs_per_s']:>9} "
              f"{row['api']['p50_ms']:>7} | {row['api_vs_smtp']}")
    print(f"results: {write_result('ses-api', {'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
