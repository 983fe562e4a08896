"""A full disk under load: the relay's data directory on a small tmpfs, filled while
clients send, then freed; every acknowledged message reconciled against the sink.

    .venv/bin/python bench/reliability/disk_full.py          # as root; ~30 s

Needs root (it mounts a tmpfs); otherwise, or when the mount is refused (a container
without CAP_SYS_ADMIN), it prints why and exits 0 without testing anything.

The relay (`smtprelay serve`, data_dir on a `--size` tmpfs) delivers to an aiosmtpd sink
through tests/dnsserver.py, as in crash_cycles.py. Phases, with `--sessions` clients
sending back to back throughout and going on after refusals:

    before  a few seconds of normal load: every message 250
    full    a file is written until the tmpfs is full (ENOSPC), then `--full-seconds`
            of load: refusals expected (452 4.3.1), and a 250 only for a message that
            is on disk; the relay must stay up and keep answering
    resume  the file is removed: the time until the next 250, with nobody restarting
            or signalling anything
    freed   a few seconds of load: every message 250
    killed  the disk is filled again under load, and the relay SIGKILLed while it is
            full; the file removed, the relay started again: what it acknowledged while
            full must have been on disk
    drain   no load until the queue is empty; then SIGTERM

and the books: each acknowledged message delivered exactly once (twice only across
the kill, at-least-once delivery); no refused message delivered; the relay exits 0 on
SIGTERM and logs no traceback. Exit status 1 if any of that fails. JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import smtplib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
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
from tests.support import DaemonProcess, client_context, fill, small_disk  # noqa: E402


def replies(load: Load) -> dict[str, int]:
    """How the relay answered: "250" and each refusal's code and enhanced status."""
    counted: Counter[str] = Counter({"250": len(load.acked)})
    for refusal in load.refusals:
        words = refusal.reply.decode(errors="replace").split()
        counted[f"{refusal.code} {words[0] if words else ''}".strip()] += 1
    return dict(counted)


def session_works(port: int, username: str, password: str) -> str:
    """A new client's STARTTLS, AUTH and NOOP: "ok" or what failed."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.starttls(context=client_context())
            smtp.login(username, password)
            code, text = smtp.noop()
            return "ok" if code == 250 else f"{code} {text!r}"
    except (smtplib.SMTPException, OSError) as exc:
        return repr(exc)


def run_phase(daemon: DaemonProcess, secret: dict[str, str], name: str, sessions: int,
              seconds: float, during: Any = None, kill: bool = False) -> Load:
    """`seconds` of load; `during()` is called once the sessions are in; with `kill`
    the relay is SIGKILLed under the load at the end."""
    load = Load(daemon.ports["submission"], secret["username"], secret["password"],
                sessions=sessions, prefix=name, keep_going=True)
    load.start()
    if during is not None:
        during()
    load.stop.wait(seconds)  # the phase's length: nothing to wait for but time
    if kill:
        daemon.stop(signal.SIGKILL)
    load.finish()
    return load


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="32m", help="the tmpfs's size (mount -o size=)")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--full-seconds", type=float, default=10.0)
    parser.add_argument("--resume-timeout", type=float, default=60.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED: mounting a tmpfs needs root; run as root to test a full disk")
        return 0
    exit_on_sigterm()

    root = temp_root("smtprelay-diskfull-")
    var = root / "var"  # DaemonProcess's data_dir
    world = SinkWorld(root)
    world.mark()
    problems: list[str] = []
    phases: dict[str, Load] = {}
    facts: dict[str, Any] = {"size": args.size}
    started = time.monotonic()
    try:
        with small_disk(var, args.size) as mounted:
            if not mounted:
                print(f"SKIPPED: mount -t tmpfs -o size={args.size} was refused here")
                return 0
            daemon = DaemonProcess(root, delivery=world.delivery)
            try:
                daemon.start(wait=True)
                secret = json.loads(daemon.cli("credentials", "create", "acme",
                                               "--json").stdout)
                port = daemon.ports["submission"]
                phases["before"] = run_phase(daemon, secret, "before", args.sessions, 3.0)

                filler: list[Path] = []

                def fill_now() -> None:
                    filler.append(fill(var))
                    usage = shutil.disk_usage(var)
                    facts["filled_bytes"] = filler[0].stat().st_size
                    facts["free_after_fill"] = usage.free

                phases["full"] = run_phase(daemon, secret, "full", args.sessions,
                                           args.full_seconds, fill_now)
                facts["relay_alive_while_full"] = daemon.proc.poll() is None
                facts["new_session_while_full"] = session_works(
                    port, secret["username"], secret["password"])

                filler[0].unlink()
                freed_at = time.monotonic()
                resume = Load(port, secret["username"], secret["password"], sessions=1,
                              prefix="resume", keep_going=True, refusal_pause=0.1)
                resume.start()
                while not resume.acked and time.monotonic() - freed_at < args.resume_timeout:
                    resume.stop.wait(0.05)
                resumed = bool(resume.acked)
                facts["seconds_to_first_250_after_free"] = round(
                    time.monotonic() - freed_at, 2) if resumed else None
                resume.finish()
                phases["resume"] = resume
                phases["freed"] = run_phase(daemon, secret, "freed", args.sessions, 3.0)

                filler.clear()
                phases["killed"] = run_phase(daemon, secret, "killed", args.sessions, 3.0,
                                             fill_now, kill=True)
                facts["killed_while_full"] = not shutil.disk_usage(var).free
                filler[0].unlink()
                world.mark()  # copies from here on are after the kill
                daemon.start(wait=True)

                drained, drain_seconds = wait_drained(daemon.config.spool_path, 120)
                facts["drained"] = drained
                facts["drain_seconds"] = round(drain_seconds, 1)
                facts["exit_code_on_sigterm"] = daemon.stop()
                log = daemon.log()
                facts["tracebacks_in_log"] = log.count("Traceback")
                facts["spool_full_refusals_logged"] = log.count("spool full, refused with 452")
                facts["results_held_in_memory_logged"] = log.count(
                    "delivery results not recorded")
                facts["claims_failed_logged"] = log.count("scheduler cannot claim mail")
            finally:
                daemon.stop()
    finally:
        world_copies = len(world.sink.transactions)
        world.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    acked = {mid: token for load in phases.values() for mid, token in load.acked.items()}
    attempted = {token for load in phases.values() for token in load.attempted}
    refused = {r.token for load in phases.values() for r in load.refusals}
    books = reconcile(world, acked, attempted, refused)

    if any(code != "250" for code in replies(phases["before"])):
        problems.append(f"refusals before the disk was full: {replies(phases['before'])}")
    for name in ("full", "killed"):
        if not any(code.startswith("452") for code in replies(phases[name])):
            problems.append(f"{name}: no 452 while the disk was full: was it full?")
        unexpected = {code for code in replies(phases[name])
                      if code != "250" and not code.startswith("4")}
        if unexpected:
            problems.append(f"{name}: permanent or odd replies on a full disk: {unexpected}")
    if not facts["killed_while_full"]:
        problems.append("the disk had room again when the relay was killed")
    if not facts["relay_alive_while_full"]:
        problems.append("the relay died on the full disk")
    if facts["seconds_to_first_250_after_free"] is None:
        problems.append(f"no 250 within {args.resume_timeout}s after freeing the disk")
    if any(code != "250" for code in replies(phases["freed"])):
        problems.append(f"refusals after the disk was freed: {replies(phases['freed'])}")
    if not facts["drained"]:
        problems.append("the queue did not drain")
    if facts["exit_code_on_sigterm"] != 0:
        problems.append(f"exit code {facts['exit_code_on_sigterm']} on SIGTERM")
    if facts["tracebacks_in_log"]:
        problems.append("tracebacks in the relay's log")
    if books.unexplained_duplicates:
        problems.append(f"delivered twice without a kill in between: "
                        f"{list(books.unexplained_duplicates)[:10]}")
    if not books.ok:
        problems.append(f"books do not balance: lost={books.lost[:10]} "
                        f"wrong_id={books.wrong_id[:10]} "
                        f"refused_delivered={books.refused_delivered[:10]} "
                        f"strangers={books.strangers}")

    wall = time.monotonic() - started
    print(f"tmpfs={args.size} sessions={args.sessions} wall={wall:.0f}s")
    for name, load in phases.items():
        print(f"{name:>7}: attempted={len(load.attempted)} replies={replies(load)} "
              f"in_doubt={len(load.in_doubt)}")
    for key, value in facts.items():
        print(f"{key}={value}")
    print(f"acknowledged={books.acknowledged} delivered={books.delivered} "
          f"lost={len(books.lost)} duplicated={len(books.duplicated)} "
          f"(without a kill between: {len(books.unexplained_duplicates)}) "
          f"refused_delivered={len(books.refused_delivered)} "
          f"in_doubt_delivered={books.unacknowledged_delivered} sink_copies={world_copies}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    result = write_result("disk-full", {
        "size": args.size, "sessions": args.sessions, "wall_seconds": round(wall, 1),
        "phases": {name: {"attempted": len(load.attempted), "replies": replies(load),
                          "in_doubt": len(load.in_doubt)} for name, load in phases.items()},
        "facts": facts, "acknowledged": books.acknowledged, "delivered": books.delivered,
        "lost": books.lost, "duplicated": books.duplicated,
        "refused_delivered": books.refused_delivered, "problems": problems})
    print(f"results: {result}")
    print("OK" if not problems else "FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
