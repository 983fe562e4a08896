"""What every command group shares: loading the config, exit codes, output helpers."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

from smtprelay.config import Config, load_config
from smtprelay.operations.errors import (
    CONFIG_KEYS,
    ContactListNotFound,
    NotConfigured,
    OperationError,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """An expected failure: printed as one line, no traceback."""


def refusal(exc: OperationError) -> str:
    """How the CLI says an operation's refusal, where a command has no words of its own."""
    if isinstance(exc, NotConfigured):
        what, listed = ("configuration set", "sets") if exc.scope == "set" else (
            "account", "accounts")
        return (f"{CONFIG_KEYS[exc.scope]}.{exc.name}: no such {what} in the configuration "
                f"({listed}: {', '.join(exc.known) or 'none'})")
    if isinstance(exc, ContactListNotFound):
        return (f"contact_lists.{exc.name}: no such contact list in the configuration "
                f"(lists: {', '.join(exc.known) or 'none'})")
    return str(exc)


def config_from(args: argparse.Namespace) -> Config:
    return load_config(args.config).config


def state_config(args: argparse.Namespace) -> Config:
    """The config for a command that opens the daemon's databases.

    Run as root, such a command first becomes the owner of data_dir (the service
    user), so the files SQLite creates beside the databases stay writable by the
    daemon instead of turning up owned by root.
    """
    # Import what the commands use while still able to read any install location.
    import smtprelay.auth.credentials
    import smtprelay.infra.passwords
    import smtprelay.policy.pauses
    import smtprelay.spool.set_stats
    import smtprelay.spool.store  # noqa: F401

    config = config_from(args)
    data_dir = config.server.data_dir
    if os.geteuid() == 0 and data_dir.is_dir():
        owner = data_dir.stat()
        if owner.st_uid != 0:
            try:
                os.setgroups([])
                os.setgid(owner.st_gid)
                os.setuid(owner.st_uid)
            except OSError as exc:
                raise CommandError(f"cannot switch to the owner of {data_dir} "
                                   f"(uid {owner.st_uid}): {exc}; run the command as "
                                   "that user") from None
    return config


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def format_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def read_input(path: str) -> tuple[str, str]:
    """A file an import reads, `-` for stdin: (text, display name). Bytes that are not
    UTF-8 survive as surrogates so that the rows holding them are reported one by one
    instead of failing the file."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
            name = "<stdin>"
        else:
            data = Path(path).read_bytes()
            name = path
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8-sig", errors="surrogateescape"), name
