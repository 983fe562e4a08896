"""`smtprelay status` and `smtprelay drain`: the running relay's processes, connections and
loop lag, and taking it out of service, over its control socket (app.control)."""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from smtprelay.app.control import control_path
from smtprelay.cli.common import EXIT_OK, CommandError, config_from, print_json
from smtprelay.config import Config
from smtprelay.operations.nodes import safe_to_stop

_TIMEOUT = 10.0


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    sub.add_parser("status", parents=[common, listing],
                   help="the running relay: its worker processes, connections, loop lag") \
        .set_defaults(func=cmd_status)
    p = sub.add_parser(
        "drain", parents=[common, listing],
        help="stop the running relay accepting (421, /readyz failing) and say when its "
             "queue is empty and it is safe to stop")
    p.add_argument("--wait", type=float, metavar="SECONDS", default=0.0,
                   help="wait up to this long for the queue to empty (exit 1 if it does "
                        "not)")
    p.add_argument("--cancel", action="store_true", help="accept again")
    p.set_defaults(func=cmd_drain)


def ask(path: str, request: str = "status") -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT)
        sock.connect(path)
        sock.sendall(request.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    found: dict[str, Any] = json.loads(answer)
    return found


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def ask_relay(args: argparse.Namespace, request: str = "status") -> dict[str, Any]:
    """The running relay's answer over its control socket; CommandError naming what to
    do when nothing answers."""
    config = config_from(args)
    answer = ask_relay_if_running(config, request)
    if answer is None:
        raise CommandError(f"no relay is running on server.data_dir {config.server.data_dir} "
                           f"(nothing answers on {control_path(config.server.data_dir)}); "
                           "start it with `smtprelay serve`")
    return answer


def ask_relay_if_running(config: Config, request: str) -> dict[str, Any] | None:
    """As ask_relay, but None when no relay is running (nothing answers)."""
    path = control_path(config.server.data_dir)
    try:
        return ask(str(path), request)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise CommandError(f"{path} is the relay user's only: run this as that user (or "
                           "root)") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"the relay did not answer on {path}: {exc}") from None


def cmd_status(args: argparse.Namespace) -> int:
    status = ask_relay(args)
    if args.json:
        print_json(status)
        return EXIT_OK
    started = status.get("started_at")
    up = f"up {time.time() - started:.0f} s" if started else ""
    state = ("draining" if status.get("draining") else
             "ready" if status["ready"] else "starting")
    print(f"relay pid {status['pid']} {up} {state}: "
          f"{status['connections']} SMTP connections, {status['queue_pending']} messages "
          f"queued, loop lag {_ms(status['loop_lag_ms'])} "
          f"(max {_ms(status['loop_lag_max_ms'])})")
    workers = status.get("workers") or []
    if workers:
        print(f"{'worker':>6} {'pid':>8} {'listening':>9} {'sessions':>8} {'loop lag':>10} "
              f"{'restarts':>8}")
        for worker in workers:
            sessions = worker["sessions"]
            print(f"{worker['index']:>6} {worker['pid']:>8} "
                  f"{'yes' if worker['listening'] else 'no':>9} "
                  f"{'-' if sessions is None else sessions:>8} "
                  f"{_ms(worker['loop_lag_ms']):>10} {worker['restarts']:>8}")
    else:
        print(f"one process (server.workers: 1), {status['sessions']} sessions open")
    return EXIT_OK


def cmd_drain(args: argparse.Namespace) -> int:
    if args.cancel:
        status = ask_relay(args, "undrain")
        if args.json:
            print_json(status)
        else:
            print("accepting again")
        return EXIT_OK
    status = ask_relay(args, "drain")
    deadline = time.monotonic() + max(0.0, args.wait)
    while not safe_to_stop(status) and time.monotonic() < deadline:
        time.sleep(0.2)
        status = ask_relay(args)
    if args.json:
        print_json({**status, "safe_to_stop": safe_to_stop(status)})
    elif safe_to_stop(status):
        print("draining: no connections, nothing queued or being delivered: safe to stop")
    else:
        print(f"draining: {status['connections']} SMTP connections, "
              f"{status['queue_pending']} messages queued, "
              f"{status.get('delivering', 0)} being delivered; not yet safe to stop "
              "(run again, or with --wait SECONDS)")
    return EXIT_OK if safe_to_stop(status) or not args.wait else 1
