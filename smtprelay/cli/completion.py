"""`smtprelay completion bash|zsh`: the shell completion script, made from the parser.

shtab writes it from the argparse parser itself, so every command and option added
later completes without anyone editing a script by hand; the script is static (no
Python runs at each TAB press, unlike argcomplete's hook, which starts the
interpreter and imports the whole CLI for every completion).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import shtab

SHELLS = ("bash", "zsh")

_INSTALL = {
    "bash": "smtprelay completion bash > ~/.local/share/bash-completion/completions/smtprelay",
    "zsh": "smtprelay completion zsh > ~/.zfunc/_smtprelay   # with fpath+=(~/.zfunc) "
           "before compinit in ~/.zshrc",
}


def register(sub: Any, root: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "completion", help="print the bash or zsh completion script",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print the shell completion script for smtprelay. Install it with:\n  "
        + "\n  ".join(_INSTALL.values())
        + "\nor try it in the running shell: source <(smtprelay completion bash)")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=lambda args: _print(root, args.shell))


def mark_file(action: argparse.Action) -> None:
    """Complete this option's value with file names."""
    action.complete = shtab.FILE  # type: ignore[attr-defined]


def _print(root: argparse.ArgumentParser, shell: str) -> int:
    sys.stdout.write(shtab.complete(root, shell=shell))
    return 0
