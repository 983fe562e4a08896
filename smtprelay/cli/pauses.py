"""`smtprelay sets` and `smtprelay accounts`: pause and resume sending, and list
what is paused (why, since when, by whom). One set of commands for both, as the
rules (smtprelay.operations.pauses) are one."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError, format_time, print_json, state_config
from smtprelay.config import Config
from smtprelay.operations import pauses as ops
from smtprelay.operations.errors import AlreadyPaused, NotConfigured, NotPaused, TooLong
from smtprelay.policy.pauses import PauseStore, Scope
from smtprelay.policy.stores import pause_store


@dataclass(frozen=True, slots=True)
class _Group:
    """What the two command groups say differently; what they do is the same."""

    command: str
    help: str
    list_help: str
    pause_help: str
    resume_help: str
    refused: str  # whose new mail a pause refuses
    not_paused: str  # with {name}


_GROUPS: dict[Scope, _Group] = {
    "set": _Group("sets", "configuration sets: pause and resume sending",
                  "every set: accepting, paused (why, since when, by whom)",
                  "refuse the set's new mail with 554 5.7.1 until resumed",
                  "lift a pause (manual or reputation)",
                  "New mail for it is", "{name} is not paused"),
    "account": _Group("accounts", "accounts: pause and resume sending",
                      "every account: accepting or paused (why, since, by whom)",
                      "refuse all the account's new mail with 554 5.7.1",
                      "lift an account's pause (manual or reputation)",
                      "Its new mail is", "account {name} is not paused"),
}


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    for scope, words in _GROUPS.items():
        group = sub.add_parser(words.command, help=words.help).add_subparsers(
            dest="action", required=True, metavar="ACTION")
        group.add_parser("list", parents=[common, listing], help=words.list_help) \
            .set_defaults(func=cmd_list, scope=scope)
        p = group.add_parser("pause", parents=[common], help=words.pause_help)
        p.add_argument("name", metavar="NAME")
        p.add_argument("--reason", metavar="TEXT", help="why, kept with the pause")
        p.set_defaults(func=cmd_pause, scope=scope)
        p = group.add_parser("resume", parents=[common], help=words.resume_help)
        p.add_argument("name", metavar="NAME")
        p.set_defaults(func=cmd_resume, scope=scope)


@contextlib.contextmanager
def _store(config: Config) -> Iterator[PauseStore]:
    store = pause_store(config)
    store.open()
    try:
        yield store
    finally:
        store.close()


def cmd_list(args: argparse.Namespace) -> int:
    config = state_config(args)
    with _store(config) as store:
        targets = ops.listing(store, config, args.scope)
    if args.json:
        # Target.as_json is what the admin API shows too; an account's row here has
        # always also said whether the configuration still has it.
        print_json([t.as_json() if t.scope == "set" else {**t.as_json(),
                                                          "configured": t.configured}
                    for t in targets])
        return EXIT_OK
    title = "SET" if args.scope == "set" else "ACCOUNT"
    print(f"{title:<24} {'STATE':<20} {'SINCE':<21} {'BY':<20} DETAIL")
    for t in targets:
        pause = t.pause
        print(f"{t.name:<24} {_state(t):<20} "
              f"{format_time(pause.since) if pause else '-':<21} "
              f"{pause.by if pause else '-':<20} {pause.detail if pause else ''}")
    if args.scope == "set" and any(not t.configured for t in targets):
        print("* no longer in the configuration; `smtprelay sets resume NAME` forgets it")
    return EXIT_OK


def _state(target: ops.Target) -> str:
    if target.pause is not None:
        text = f"paused ({target.pause.reason})"
    elif target.sending_enabled is False:
        text = "disabled in config"
    else:
        text = "accepting"
    return text if target.configured or target.scope == "account" else text + " *"


def cmd_pause(args: argparse.Namespace) -> int:
    config = state_config(args)
    with _store(config) as store:
        try:
            ops.pause(store, config, args.scope, args.name, detail=args.reason or "",
                      by="cli")
        except TooLong as exc:
            raise CommandError(f"--reason is longer than {exc.limit} characters") from None
        except AlreadyPaused as exc:
            raise CommandError(f"{exc}; `smtprelay {_GROUPS[args.scope].command} resume "
                               f"{args.name}` first") from None
    print(f"{args.name}: paused. {_GROUPS[args.scope].refused} refused with 554 5.7.1 (a "
          "running daemon notices within a second); queued mail still goes.")
    return EXIT_OK


def cmd_resume(args: argparse.Namespace) -> int:
    config = state_config(args)
    name = args.name
    with _store(config) as store:
        try:
            lifted = ops.resume(store, config, args.scope, name).lifted
        except NotPaused as exc:
            if exc.disabled:
                raise CommandError(f"{name} is not paused; it refuses mail because "
                                   f"configuration_sets.{name}.sending_enabled is false "
                                   "(change the file and reload)") from None
            raise CommandError(_GROUPS[args.scope].not_paused.format(name=name)) from None
        except NotConfigured:
            # Neither configured nor paused: to the operator, simply not paused.
            raise CommandError(_GROUPS[args.scope].not_paused.format(name=name)) from None
    print(f"{name}: resumed (was paused since {format_time(lifted.since)} by {lifted.by}).")
    return EXIT_OK
