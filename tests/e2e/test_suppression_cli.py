"""`smtprelay suppression ...` as an operator runs it: a subprocess on the daemon's state,
with and without the daemon running."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.support import DaemonProcess


def test_add_list_remove(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    run = d.cli("suppression", "add", "Bob@Example.COM", "--account", "acme", "--reason",
                "bounce")
    assert run.stdout == "Bob@example.com: added to the suppression list of acme (BOUNCE)\n"
    run = d.cli("suppression", "add", "Bob@example.com.", "--account", "acme", "--reason",
                "COMPLAINT")
    assert run.stdout == ("Bob@example.com: updated on the suppression list of acme "
                          "(COMPLAINT)\n")
    d.cli("suppression", "add", "bob@example.com", "--account", "acme", "--reason", "BOUNCE")
    d.cli("suppression", "add", "x@other.test", "--account", "other", "--reason", "BOUNCE")

    listing = json.loads(d.cli("suppression", "list", "--json").stdout)
    assert [(e["account"], e["address"], e["reason"]) for e in listing] == [
        ("acme", "Bob@example.com", "COMPLAINT"), ("acme", "bob@example.com", "BOUNCE"),
        ("other", "x@other.test", "BOUNCE")]
    assert set(listing[0]) == {"account", "address", "reason", "created_at",
                               "source_message_id", "diagnostic"}
    assert listing[0]["diagnostic"] is None  # added by hand, not by a bounce
    assert abs(listing[0]["created_at"] - time.time()) < 60
    assert json.loads(d.cli("suppression", "list", "--json", "--account", "other",
                            "--reason", "complaint").stdout) == []
    assert len(json.loads(d.cli("suppression", "list", "--json", "--limit", "1").stdout)) == 1
    assert [e["address"] for e in json.loads(d.cli(
        "suppression", "list", "--json", "--contains", "BOB@").stdout)] == [
        "Bob@example.com", "bob@example.com"]

    text = d.cli("suppression", "list", "--account", "acme").stdout.splitlines()
    assert text[0].split() == ["ADDRESS", "REASON", "LAST", "UPDATE", "ACCOUNT"]
    assert text[1].split()[:2] == ["Bob@example.com", "COMPLAINT"]
    assert text[-1] == "-- 2 entries"

    run = d.cli("suppression", "remove", "Bob@EXAMPLE.com", "--account", "acme")
    assert run.stdout == "Bob@example.com: removed from the suppression list of acme\n"
    run = d.cli("suppression", "remove", "Bob@example.com", "--account", "acme", check=False)
    assert run.returncode == 1
    assert run.stderr == "smtprelay: Bob@example.com is not on the suppression list of acme\n"
    assert [e["address"] for e in json.loads(
        d.cli("suppression", "list", "--json", "--account", "acme").stdout)] == [
        "bob@example.com"]


def test_unknown_account_and_bad_input(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    for args in (["add", "a@example.com", "--account", "nope", "--reason", "BOUNCE"],
                 ["remove", "a@example.com", "--account", "nope"],
                 ["list", "--account", "nope"],
                 ["export", "--account", "nope"],
                 ["import", str(tmp_path / "missing.csv"), "--account", "nope"]):
        run = d.cli("suppression", *args, check=False)
        assert run.returncode == 1, args
        assert run.stderr == ("smtprelay: accounts.nope: no such account in the "
                              "configuration (accounts: acme, other)\n"), args
    run = d.cli("suppression", "add", "example.com", "--account", "acme", "--reason",
                "BOUNCE", check=False)
    assert (run.returncode, run.stderr) == (
        1, "smtprelay: 'example.com' is not an email address (no @)\n")
    run = d.cli("suppression", "add", "a@example.com", "--account", "acme", "--reason",
                "SPAM", check=False)
    assert run.returncode == 2 and "invalid choice: 'SPAM'" in run.stderr
    run = d.cli("suppression", "import", str(tmp_path / "missing.csv"), "--account", "acme",
                check=False)
    assert (run.returncode, run.stderr) == (
        1, f"smtprelay: cannot read {tmp_path / 'missing.csv'}: No such file or directory\n")
    header = tmp_path / "header.csv"
    header.write_text("address,why\na@example.com,BOUNCE\n")
    run = d.cli("suppression", "import", str(header), "--account", "acme", check=False)
    assert (run.returncode, run.stderr, run.stdout) == (
        1, f"smtprelay: {header}:1: unknown column 'why' in the header "
           "(expected address, reason, created_at)\n", "")


def test_import_reports_bad_rows_by_line_and_keeps_the_good(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    d.cli("suppression", "add", "old@example.com", "--account", "acme", "--reason", "BOUNCE")
    path = tmp_path / "list.csv"
    path.write_text(
        "address,reason,created_at\n"                     # 1
        "good1@example.com,BOUNCE,2024-05-01T12:00:00Z\n"  # 2
        "no-at-sign.example.com,BOUNCE,\n"                # 3
        "good2@example.com,Complaint,\n"                  # 4
        "bad-reason@example.com,SPAM,\n"                  # 5
        "\n"                                              # 6 blank: not a row
        "bad-date@example.com,BOUNCE,last tuesday\n"      # 7
        "too-many@example.com,BOUNCE,,extra\n"            # 8
        "Good1@Example.COM,complaint,1700000000\n"        # 9 another local part: new
        "good1@EXAMPLE.com,COMPLAINT,1700000000\n"        # 10 duplicate of 2, wins
        '"old@example.com",complaint,\n'                  # 11 already listed: update
        "good2@example.com.,BOUNCE,\n")                   # 12 duplicate of 4, wins
    run = d.cli("suppression", "import", str(path), "--account", "acme", check=False)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        f"{path}:3: 'no-at-sign.example.com' is not an email address (no @)",
        f"{path}:5: bad reason 'SPAM' (BOUNCE or COMPLAINT)",
        f"{path}:7: unparseable date 'last tuesday' (ISO 8601 or epoch seconds)",
        f"{path}:8: 4 columns, the header has 3",
    ]
    assert run.stdout == "imported 3, updated 1, skipped 4 bad rows, 2 duplicates\n"
    entries = {e["address"]: e for e in json.loads(
        d.cli("suppression", "list", "--json", "--account", "acme").stdout)}
    assert {a: (e["reason"]) for a, e in entries.items()} == {
        "Good1@example.com": "COMPLAINT", "good1@example.com": "COMPLAINT",
        "good2@example.com": "BOUNCE", "old@example.com": "COMPLAINT"}
    assert entries["good1@example.com"]["created_at"] == 1700000000.0

    # Nothing good in the file: the summary, and a failure a script notices.
    junk = tmp_path / "junk.csv"
    junk.write_text("what,BOUNCE\n")
    run = d.cli("suppression", "import", str(junk), "--account", "acme", check=False)
    assert run.returncode == 1
    assert run.stdout == "imported 0, updated 0, skipped 1 bad rows, 0 duplicates\n"
    assert run.stderr.splitlines() == [f"{junk}:1: 'what' is not an email address (no @)",
                                       f"smtprelay: {junk}: no valid rows"]


def test_import_ses_formats_and_stdin(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    ses_csv = tmp_path / "ses.csv"  # the seed's bulk-import example, no header
    ses_csv.write_text("recipient1@example.com, BOUNCE\nrecipient2@example.com, COMPLAINT\n")
    assert d.cli("suppression", "import", str(ses_csv), "--account", "acme").stdout == \
        "imported 2, updated 0, skipped 0 bad rows, 0 duplicates\n"
    ses_json = tmp_path / "ses.ndjson"
    ses_json.write_text('{"emailAddress": "recipient1@example.com", "reason": "BOUNCE"}\n'
                        '{"emailAddress": "recipient3@example.com", "reason": "COMPLAINT"}\n'
                        '{"emailAddress": "recipient4@example.com", "reason": ""}\n')
    run = d.cli("suppression", "import", str(ses_json), "--account", "acme")
    assert run.stdout == "imported 1, updated 1, skipped 1 bad rows, 0 duplicates\n"
    assert run.stderr == (f"{ses_json}:3: no reason: give one in the row (BOUNCE or "
                          "COMPLAINT), or --reason for every row that has none\n")

    # stdin, format from the content.
    run = subprocess.run(
        [sys.executable, "-m", "smtprelay", "suppression", "import", "-", "--account", "other",
         "-c", str(d.config_path)],
        input='[{"address": "a@other.test", "reason": "bounce"}]', capture_output=True,
        text=True, timeout=60, check=False)
    assert (run.returncode, run.stdout) == (
        0, "imported 1, updated 0, skipped 0 bad rows, 0 duplicates\n"), run.stderr
    assert d.cli("suppression", "list", "--account", "other").stdout.splitlines()[-1] == \
        "-- 1 entry"


def test_import_a_plain_list_of_addresses(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    plain = tmp_path / "bounced.txt"
    plain.write_text("one@example.com\n\ntwo@example.com\nnot an address\n")
    refused = d.cli("suppression", "import", str(plain), "--account", "acme", check=False)
    assert refused.returncode != 0
    assert f"{plain}:1: no reason: give one in the row (BOUNCE or COMPLAINT), or --reason " \
        "for every row that has none" in refused.stderr
    run = d.cli("suppression", "import", str(plain), "--account", "acme",
                "--reason", "complaint")
    assert run.stdout == "imported 2, updated 0, skipped 1 bad rows, 0 duplicates\n"
    assert run.stderr.startswith(f"{plain}:4: ")
    listed = d.cli("suppression", "list", "--account", "acme", "--json").stdout
    assert {(e["address"], e["reason"]) for e in json.loads(listed)} == {
        ("one@example.com", "COMPLAINT"), ("two@example.com", "COMPLAINT")}
    # A row's own reason wins over --reason.
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("three@example.com,BOUNCE\nfour@example.com\n")
    d.cli("suppression", "import", str(mixed), "--account", "acme", "--reason", "COMPLAINT")
    listed = d.cli("suppression", "list", "--account", "acme", "--json").stdout
    reasons = {e["address"]: e["reason"] for e in json.loads(listed)}
    assert (reasons["three@example.com"], reasons["four@example.com"]) == ("BOUNCE", "COMPLAINT")
    assert "a plain list" in d.cli("suppression", "import", "--help").stdout


def test_export_import_round_trip(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    d.cli("suppression", "add", "a@example.com", "--account", "acme", "--reason", "BOUNCE")
    d.cli("suppression", "add", 'we,ird"@example.com', "--account", "acme", "--reason",
          "COMPLAINT")
    d.cli("suppression", "add", "Ünï@exämple.com", "--account", "acme", "--reason",
          "COMPLAINT")
    d.cli("suppression", "add", "x@other.test", "--account", "other", "--reason", "BOUNCE")
    before = json.loads(d.cli("suppression", "list", "--json", "--account", "acme").stdout)

    for fmt in ("csv", "json"):
        out = tmp_path / f"acme.{fmt}"
        run = d.cli("suppression", "export", "--account", "acme", "--output", str(out))
        assert run.stderr == f"exported 3 entries to {out}\n"
        for e in before:
            d.cli("suppression", "remove", e["address"], "--account", "acme")
        assert d.cli("suppression", "import", str(out), "--account", "acme").stdout == \
            "imported 3, updated 0, skipped 0 bad rows, 0 duplicates\n"
        after = json.loads(d.cli("suppression", "list", "--json", "--account", "acme").stdout)
        assert [(e["address"], e["reason"]) for e in after] == [
            (e["address"], e["reason"]) for e in before]
        # CSV carries milliseconds (ISO 8601), NDJSON the float as stored.
        for b, a in zip(before, after, strict=True):
            assert abs(a["created_at"] - b["created_at"]) < (0.001 if fmt == "csv" else 1e-6)
        before = after

    # To stdout, every account: an account column, so the file says whose rows they are.
    rows = list(csv.reader(d.cli("suppression", "export").stdout.splitlines()))
    assert rows[0] == ["address", "reason", "created_at", "account"]
    assert sorted((r[0], r[3]) for r in rows[1:]) == sorted(
        [(e["address"], "acme") for e in before] + [("x@other.test", "other")])
    lines = d.cli("suppression", "export", "--format", "json", "--reason", "BOUNCE").stdout
    assert [json.loads(line)["address"] for line in lines.splitlines()] == [
        "a@example.com", "x@other.test"]


def test_import_100k_rows(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path)
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("address,reason\n")
        for i in range(100_000):
            f.write(f"user{i}@d{i % 311}.example.com,{'BOUNCE' if i % 4 else 'COMPLAINT'}\n")
    started = time.perf_counter()
    run = d.cli("suppression", "import", str(path), "--account", "acme")
    elapsed = time.perf_counter() - started
    assert run.stdout == "imported 100000, updated 0, skipped 0 bad rows, 0 duplicates\n"
    started = time.perf_counter()
    run = d.cli("suppression", "import", str(path), "--account", "acme")
    again = time.perf_counter() - started
    assert run.stdout == "imported 0, updated 100000, skipped 0 bad rows, 0 duplicates\n"
    print(f"\nCLI import of 100,000 rows (process start included): {elapsed:.2f} s new, "
          f"{again:.2f} s as updates")
    assert elapsed < 30  # "a few seconds"; loose for slow CI machines
    out = d.cli("suppression", "list", "--account", "acme", "--contains", "user99999@")
    assert out.stdout.splitlines()[1].split()[:2] == ["user99999@d168.example.com", "BOUNCE"]


def test_import_while_the_daemon_runs(tmp_path: Path) -> None:
    """The CLI writes the daemon's state database while the daemon holds it open."""
    d = DaemonProcess(tmp_path).start()
    try:
        path = tmp_path / "list.ndjson"
        path.write_text("".join(f'{{"address": "u{i}@example.com", "reason": "BOUNCE"}}\n'
                                for i in range(20_000)))
        run = d.cli("suppression", "import", str(path), "--account", "acme")
        assert run.stdout == "imported 20000, updated 0, skipped 0 bad rows, 0 duplicates\n"
        d.cli("suppression", "remove", "u7@example.com", "--account", "acme")
        count = d.cli("suppression", "list", "--account", "acme", "--contains", "u7@")
        assert count.stdout.splitlines()[-1] == "-- 0 entries"
    finally:
        assert d.stop() == 0
