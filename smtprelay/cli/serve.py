"""`smtprelay serve` (the daemon in the foreground) and `smtprelay check-config`."""

from __future__ import annotations

import argparse
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError
from smtprelay.config import load_config
from smtprelay.db.migrations import SchemaTooNew


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    sub.add_parser("serve", parents=[common], help="run the daemon in the foreground") \
        .set_defaults(func=cmd_serve)
    sub.add_parser("check-config", parents=[common],
                   help="validate the configuration; print every problem") \
        .set_defaults(func=cmd_check_config)


def cmd_serve(args: argparse.Namespace) -> int:
    from smtprelay.app import daemon
    from smtprelay.app.datadir import DataDirError
    from smtprelay.app.workers import WorkersNotListening
    from smtprelay.delivery.smtp_transport import SmarthostPasswordError
    from smtprelay.infra import logs
    from smtprelay.infra.tls import TLSSetupError
    from smtprelay.spool.store import SpoolError
    from smtprelay.transform.dkim import DKIMKeyError
    from smtprelay.transform.tokens import KeyRingError

    loaded = load_config(args.config)  # daemon.run runs the preflight
    config = loaded.config
    logs.setup(config.logging.level, config.logging.format)
    try:
        daemon.run(config, str(loaded.path), loaded.text)
    except (TLSSetupError, SpoolError, SchemaTooNew, SmarthostPasswordError, DKIMKeyError,
            KeyRingError, DataDirError, WorkersNotListening) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(exc.strerror or str(exc)) from None
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from smtprelay.app import preflight

    loaded = preflight.load_checked(args.config)
    cfg = loaded.config
    print(f"{loaded.path}: ok ({len(cfg.listeners)} listeners, {len(cfg.accounts)} accounts)")
    return EXIT_OK
