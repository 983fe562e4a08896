"""Long CLI work shows its progress on the operator's terminal (standard error a pty)
and prints exactly what it printed before to a pipe."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.support import DaemonProcess, submit_to_daemon


def on_terminal(daemon: DaemonProcess, *args: str, stdin: str | None = None
                ) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the CLI with standard error on a terminal: (the run, what the terminal got)."""
    terminal, stderr = pty.openpty()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "smtprelay", *args, "-c", str(daemon.config_path)],
            input=stdin, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=120,
            check=False)
        os.close(stderr)
        said = b""
        while True:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                break
            if not chunk:
                break
            said += chunk
    finally:
        os.close(terminal)
    return run, said.decode(errors="replace")


def test_suppression_import_and_export_show_progress_on_a_terminal(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path)
    rows = tmp_path / "bounced.csv"
    rows.write_text("".join(f"user{i}@example.com,BOUNCE\n" for i in range(60_000)))
    run, said = on_terminal(daemon, "suppression", "import", str(rows), "--account", "acme")
    assert run.returncode == 0, said
    assert run.stdout == "imported 60000, updated 0, skipped 0 bad rows, 0 duplicates\n"
    assert f"import: reading {rows}..." in said
    assert "import: checking the rows of" in said
    assert "/60,000 addresses (" in said
    out = tmp_path / "out.csv"
    run, said = on_terminal(daemon, "suppression", "export", "--account", "acme",
                            "--output", str(out))
    assert run.returncode == 0, said
    assert "export: 1,000 entries" in said
    assert f"exported 60000 entries to {out}" in said
    assert len(out.read_text().splitlines()) == 60_001
    # To a pipe: no progress at all, the same summary.
    piped = daemon.cli("suppression", "import", str(rows), "--account", "acme")
    assert piped.stderr == ""
    assert piped.stdout == "imported 0, updated 60000, skipped 0 bad rows, 0 duplicates\n"


def test_queue_delete_reads_ids_from_stdin_and_counts_on_a_terminal(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path).start()
    try:
        ids = [submit_to_daemon(daemon, [f"r{n}@example.net"]) for n in range(5)]
    finally:
        daemon.stop()
    run, said = on_terminal(daemon, "queue", "delete", "-", stdin="\n".join(ids[:3]) + "\n")
    assert run.returncode == 0, said
    assert run.stdout == "deleted 3 messages\n"
    left = json.loads(daemon.cli("queue", "list", "--json").stdout)
    assert sorted(m["id"] for m in left) == sorted(ids[3:])
    piped = subprocess.run(
        [sys.executable, "-m", "smtprelay", "queue", "delete", "-", "-c",
         str(daemon.config_path)], input=ids[3] + "\n", capture_output=True, text=True,
        timeout=60, check=False)
    assert (piped.returncode, piped.stdout) == (0, f"{ids[3]}: deleted\n")
