"""What every command group shares: loading the config, exit codes, output helpers."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from smtprelay.config import Config, load_config
from smtprelay.operations.errors import (
    CONFIG_KEYS,
    ContactListNotFound,
    NotConfigured,
    OperationError,
)

if TYPE_CHECKING:  # only for a hint: every command imports this module
    from smtprelay.operations.suppression_files import ImportTally

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
    import smtprelay.auth.api_keys
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


# A stored credential or API key changed by its key: (run(args, change, done), where
# change(store, key) says whether there was such a key).
Change = Callable[[Any, str], bool]
SWITCHES: tuple[tuple[str, str, Change, str], ...] = (
    ("disable", "refuse it from now on", lambda store, key: store.set_disabled(key, True),
     "disabled"),
    ("enable", "accept it again", lambda store, key: store.set_disabled(key, False),
     "enabled"),
    ("delete", "remove it for good", lambda store, key: store.delete(key), "deleted"),
)


def register_switches(group: Any, common: argparse.ArgumentParser, argument: str,
                      run: Callable[..., int]) -> None:
    """`disable`, `enable` and `delete` KEY: each calls run(args, change=, done=)."""
    for action, text, change, done in SWITCHES:
        p = group.add_parser(action, parents=[common], help=text)
        p.add_argument(argument)
        p.set_defaults(func=functools.partial(run, change=change, done=done))


def report_change(key: str, changed: bool, done: str, missing: str) -> int:
    """A stored secret disabled, enabled or deleted by its key: said, or refused when
    there is no such key (`missing` says so before the key: "no API key with id")."""
    if not changed:
        raise CommandError(f"{missing} {key}")
    print(f"{key}: {done}")
    return EXIT_OK


def print_table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[str]]) -> None:
    """Rows under headings, each column as wide as its number (the last one free)."""
    for row in ([name for name, _ in columns], *rows):
        print(" ".join(f"{cell:<{width}}" for cell, (_, width) in zip(
            row[:-1], columns[:-1], strict=True)) + " " + row[-1])


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


def report_problems(name: str, tally: ImportTally) -> None:
    """An import file's bad rows on stderr, as many as were kept, and how many more."""
    for line in tally.problems:
        print(line, file=sys.stderr)
    if tally.bad > len(tally.problems):
        print(f"{name}: {tally.bad - len(tally.problems)} more bad rows not shown",
              file=sys.stderr)


@contextlib.contextmanager
def export_target(output: str | None) -> Iterator[IO[str]]:
    """Where an export is written: `output`, or stdout without one. A file is opened
    before the command switches to data_dir's owner (run as root, that user may not
    create files where root can, so no temporary name and rename either), and removed
    again when the export fails: half an export under the name a script expects is
    worse than none."""
    if not output:
        yield sys.stdout
        sys.stdout.flush()
        return
    try:
        out = open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
    ok = False
    try:
        yield out
        out.flush()
        ok = True
    finally:
        out.close()
        if not ok:
            with contextlib.suppress(OSError):
                os.unlink(output)
