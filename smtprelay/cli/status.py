"""`smtprelay status`: the running relay's processes, connections and loop lag, asked over
its control socket (app.control)."""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, config_from, print_json

_TIMEOUT = 10.0


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    sub.add_parser("status", parents=[common, listing],
                   help="the running relay: its worker processes, connections, loop lag") \
        .set_defaults(func=cmd_status)


def ask(path: str) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_TIMEOUT)
        sock.connect(path)
        sock.sendall(b"status\n")
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


def cmd_status(args: argparse.Namespace) -> int:
    from smtprelay.app.control import control_path

    config = config_from(args)
    path = control_path(config.server.data_dir)
    try:
        status = ask(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        raise CommandError(f"no relay is running on server.data_dir {config.server.data_dir} "
                           f"(nothing answers on {path}); start it with `smtprelay serve`") \
            from None
    except PermissionError:
        raise CommandError(f"{path} is the relay user's only: run this as that user (or "
                           "root)") from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"the relay did not answer on {path}: {exc}") from None
    if args.json:
        print_json(status)
        return EXIT_OK
    started = status.get("started_at")
    up = f"up {time.time() - started:.0f} s" if started else ""
    print(f"relay pid {status['pid']} {up} {'ready' if status['ready'] else 'starting'}: "
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
