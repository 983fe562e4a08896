"""kill -9 under load, many times, then every acknowledged message reconciled against
what the remote end received.

    .venv/bin/python bench/reliability/crash_cycles.py --cycles 50

A real `smtprelay serve` delivers (mx mode, its DNS answered by tests/dnsserver.py)
to an aiosmtpd sink on 127.0.0.2; both run in threads of this script, so they outlive
the relay. Each cycle starts the relay on the same data directory, has `--sessions`
clients (STARTTLS, AUTH) send messages back to back, each with its own token, and
SIGKILLs the relay at a random moment within `--load-seconds` of their logging in.
After the last cycle the relay is started once more, without load, until its queue
has drained; then it is stopped with SIGTERM and the books are closed:

    acknowledged  messages the relay answered 250 (naming a queue id)
    delivered     of those, how many reached the sink
    lost          acknowledged and never delivered
    duplicated    acknowledged and delivered more than once

A duplicate is expected only when the kill fell between the sink's 250 and the
relay's record of it (at-least-once delivery): its copies are then in different cycles.
Copies within one cycle are reported as unexplained. Exit status 1 if anything was
lost, duplicated without a kill in between, delivered under another queue id, or
delivered though refused; 0 otherwise. Needs no root. Writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
# The relay and its CLI are child processes: they must import this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                         os.environ.get("PYTHONPATH")]))

from bench._common import exit_on_sigterm, write_result  # noqa: E402
from bench.reliability._world import (  # noqa: E402
    SinkWorld,
    reconcile,
    temp_root,
    wait_drained,
)
from tests.load import Load  # noqa: E402
from tests.support import DaemonProcess  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--load-seconds", type=float, default=3.0,
                        help="the kill falls uniformly within this long after login")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory (kept anyway after a failure)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    chance = random.Random(seed)
    exit_on_sigterm()

    root = temp_root("smtprelay-crash-")
    world = SinkWorld(root)
    daemon = DaemonProcess(root, delivery=world.delivery)
    started = time.monotonic()
    acked: dict[str, str] = {}
    attempted: set[str] = set()
    refused: set[str] = set()
    errors: list[str] = []
    per_cycle: list[dict[str, Any]] = []
    try:
        world.mark()
        daemon.start(wait=True)
        credential = daemon.cli("credentials", "create", "acme", "--json").stdout
        secret = json.loads(credential)
        for cycle in range(args.cycles):
            if cycle:
                world.mark()
                daemon.start(wait=True)
            load = Load(daemon.ports["submission"], secret["username"], secret["password"],
                        sessions=args.sessions, prefix=f"c{cycle}")
            load.start()
            # The random moment of the kill (a sleep is the point here, not a wait).
            kill_after = chance.uniform(0.0, args.load_seconds)
            time.sleep(kill_after)
            code = daemon.stop(signal.SIGKILL)
            if code != -signal.SIGKILL:
                errors.append(f"cycle {cycle}: the relay had already exited with {code}")
            load.finish()
            acked.update(load.acked)
            attempted.update(load.attempted)
            refused.update(r.token for r in load.refusals)
            errors.extend(f"cycle {cycle}: {e}" for e in load.errors)
            per_cycle.append({"cycle": cycle, "kill_after": round(kill_after, 3),
                              "acknowledged": len(load.acked),
                              "in_doubt": len(load.in_doubt),
                              "refused": len(load.refusals),
                              "delivered_so_far": len(world.sink.transactions)})
            print(f"cycle {cycle + 1}/{args.cycles}: killed after {kill_after:.2f}s, "
                  f"{len(load.acked)} acknowledged, {len(load.in_doubt)} in doubt, "
                  f"sink has {len(world.sink.transactions)}", flush=True)
        world.mark()  # the drain is a cycle of its own, ended by SIGTERM
        daemon.start(wait=True)
        drained, drain_seconds = wait_drained(daemon.config.spool_path, args.drain_timeout)
        exit_code = daemon.stop()
        if exit_code != 0:
            errors.append(f"the relay exited with {exit_code} on SIGTERM")
        if not drained:
            errors.append(f"the queue did not drain within {args.drain_timeout}s")
        log = daemon.log()
        if "Traceback" in log:
            errors.append("a traceback in the relay's log")
        books = reconcile(world, acked, attempted, refused)
    finally:
        daemon.stop(signal.SIGKILL)
        world.stop()
    wall = time.monotonic() - started
    failed = not books.ok or bool(errors)
    if args.keep or failed:
        print(f"kept for a look (the relay's log: {daemon.log_path}): {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)

    extra_copies = sum(len(cycles) - 1 for cycles in books.duplicated.values())
    print()
    print(f"cycles={args.cycles} sessions={args.sessions} load_seconds={args.load_seconds} "
          f"seed={seed} wall={wall:.0f}s drain={drain_seconds:.1f}s")
    print(f"acknowledged={books.acknowledged}")
    print(f"delivered={books.delivered}")
    print(f"lost={len(books.lost)}")
    print(f"duplicated={len(books.duplicated)}")
    print(f"  of which across a kill (at-least-once, allowed): "
          f"{len(books.duplicated) - len(books.unexplained_duplicates)}; "
          f"without a kill in between: {len(books.unexplained_duplicates)}; "
          f"extra copies: {extra_copies}")
    print(f"attempted={len(attempted)} in_doubt_delivered={books.unacknowledged_delivered} "
          f"refused={len(refused)} refused_delivered={len(books.refused_delivered)} "
          f"wrong_id={len(books.wrong_id)} strangers={books.strangers}")
    for name, items in (("lost", books.lost), ("duplicated", list(books.duplicated.items())),
                        ("unexplained duplicates", list(books.unexplained_duplicates.items())),
                        ("wrong id", books.wrong_id),
                        ("refused yet delivered", books.refused_delivered)):
        if items:
            print(f"{name} (first 10): {items[:10]}")
    for error in errors[:20]:
        print(f"error: {error}")
    result = write_result("crash-cycles", {
        "cycles": args.cycles, "sessions": args.sessions, "load_seconds": args.load_seconds,
        "seed": seed, "wall_seconds": round(wall, 1), "drain_seconds": round(drain_seconds, 1),
        "acknowledged": books.acknowledged, "delivered": books.delivered,
        "lost": books.lost, "duplicated": books.duplicated,
        "unexplained_duplicates": books.unexplained_duplicates,
        "attempted": len(attempted), "in_doubt_delivered": books.unacknowledged_delivered,
        "refused": len(refused), "refused_delivered": books.refused_delivered,
        "wrong_id": books.wrong_id, "strangers": books.strangers, "errors": errors,
        "per_cycle": per_cycle})
    print(f"results: {result}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
