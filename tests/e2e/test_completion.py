"""`smtprelay completion bash|zsh`: the scripts complete commands and options in the
real shells (bash runs the completion function as readline would; zsh completes a
line typed on a terminal, through a pty)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.support import need_program


def script(shell: str) -> str:
    run = subprocess.run([sys.executable, "-m", "smtprelay", "completion", shell],
                         capture_output=True, text=True, timeout=60, check=True)
    return run.stdout


def bash_complete(completion: Path, *words: str) -> list[str]:
    """What bash's completion function offers for the last of `words`."""
    line = " ".join(words)
    current = words[-1] or "''"
    program = (f"source {completion}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
               f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; "
               f"_shtab_smtprelay smtprelay {current} {words[-2]}; "
               'printf "%s\\n" "${COMPREPLY[@]}"')
    run = subprocess.run([need_program("bash"), "-c", program], capture_output=True,
                         text=True, timeout=30, check=True)
    return run.stdout.split()


def test_bash_completes_commands_subcommands_options_and_choices(tmp_path: Path) -> None:
    completion = tmp_path / "smtprelay.bash"
    completion.write_text(script("bash"))
    assert bash_complete(completion, "smtprelay", "sup") == ["suppression"]
    assert "queue" in bash_complete(completion, "smtprelay", "")
    assert bash_complete(completion, "smtprelay", "suppression", "im") == ["import"]
    assert {"--account", "--reason", "--format", "--config"} <= set(
        bash_complete(completion, "smtprelay", "suppression", "import", "--"))
    assert bash_complete(completion, "smtprelay", "completion", "z") == ["zsh"]


def _read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not in the terminal output: {bytes(seen)[-400:]!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"zsh ended; output: {bytes(seen)[-400:]!r}"
            seen += chunk


def test_zsh_completes_a_line_typed_at_the_prompt(tmp_path: Path) -> None:
    zsh = need_program("zsh")
    functions = tmp_path / "zfunc"
    functions.mkdir()
    (functions / "_smtprelay").write_text(script("zsh"))
    bin_dir = Path(sys.executable).parent  # where the smtprelay command is installed
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive zsh without the user's rc files
        os.environ.update(PATH=f"{bin_dir}:{os.environ['PATH']}", TERM="dumb",
                          HOME=str(tmp_path))
        os.execv(zsh, [zsh, "-f", "-i"])  # noqa: S606 (the shell is what is tested)
    try:
        seen = bytearray()
        os.write(fd, f"fpath=({functions} $fpath); autoload -Uz compinit; "
                     "compinit -u -D; print CONFIGURED-$((6*7))\n".encode())
        _read_until(fd, b"CONFIGURED-42", seen)
        os.write(fd, b"smtprelay suppression im\t")
        _read_until(fd, b"smtprelay suppression import", seen)
        os.write(fd, b"\x15smtprelay dns-ch\t")  # ^U clears the line first
        _read_until(fd, b"smtprelay dns-check", seen)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
