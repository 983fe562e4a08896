"""Memory one big report costs on its way through the feedback side (issue 16).

A relay runs in this process (its own event loop in a thread, as the tests run it);
one report of --size bytes (default 9.5 MB) is sent over a real socket to the
feedback listener's fbl@ address, and the processor takes it from the inbox, parses
it and keeps it as unmatched. Measured, per report shape:

* the peak of Python's allocations (tracemalloc, every thread) above the idle relay's
  while the report is received and stored (until the 250, the processor held back
  meanwhile), then while it is processed (until the inbox is empty; whatever the
  relay still holds of the report then counts too), each as megabytes and as copies
  of the report;
* the process's peak RSS (VmHWM) growth over the run, which also counts SQLite's
  own buffers (tracemalloc does not see them). Each shape runs in a fresh process,
  so one shape's high-water mark does not hide the next one's.

Shapes: ``junk`` (a text/plain message of that size, what the issue saw) and
``dsn`` (a multipart/report whose returned original, message/rfc822, is that size).

    .venv/bin/python bench/feedback_memory.py [--size 9.5M] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = ("junk", "dsn")
FBL = "fbl@example.com"


def _report(shape: str, size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    filler = line * (size // len(line))
    if shape == "junk":
        return b"From: someone@else.test\r\nSubject: junk\r\n\r\n" + filler
    return (b"From: MAILER-DAEMON@mx.dest.test\r\nSubject: Undelivered Mail\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/report; "
            b"report-type=delivery-status; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nThe mail could not be delivered.\r\n"
            b"--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; mx.dest.test\r\n\r\n"
            b"Final-Recipient: rfc822; nobody@dest.test\r\nAction: failed\r\n"
            b"Status: 5.1.1\r\n\r\n"
            b"--b1\r\nContent-Type: message/rfc822\r\n\r\n"
            b"From: app@example.com\r\nTo: nobody@dest.test\r\nSubject: big\r\n\r\n"
            + filler + b"--b1--\r\n")


def _send(port: int, data: bytes) -> int:
    """Send `data` (CRLF line ends, no line starting with ".") as one report over a
    plain socket, with no copy of it on the client's side; the traced peak after 250."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        reader = sock.makefile("rb")

        def expect(prefix: bytes) -> None:
            while True:
                line = reader.readline()
                if not line.startswith(prefix):
                    raise RuntimeError(f"expected {prefix!r}, got {line!r}")
                if line[3:4] != b"-":
                    return

        expect(b"220")
        sock.sendall(b"EHLO mx.dest.test\r\n")
        expect(b"250")
        sock.sendall(f"MAIL FROM:<>\r\nRCPT TO:<{FBL}>\r\nDATA\r\n".encode())
        expect(b"250")
        expect(b"250")
        expect(b"354")
        sock.sendall(memoryview(data))
        sock.sendall(b".\r\n")
        expect(b"250")
        peak = tracemalloc.get_traced_memory()[1]
        sock.sendall(b"QUIT\r\n")
        return peak


async def _start(processor: Any) -> None:
    processor.start()


def _vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(shape: str, size: int) -> dict[str, Any]:
    """One shape, in this process: the relay, one report, the figures."""
    from smtprelay.config import load_config
    from tests.support import RunningRelay, base_config, write_config

    with tempfile.TemporaryDirectory(prefix="fbmem-") as tmp:
        top = base_config(Path(tmp) / "data", listeners=[
            {"name": "feedback", "address": "127.0.0.1", "port": 0, "tls": "none",
             "role": "feedback"}], feedback={"addresses": [FBL]},
            logging={"level": "warning"})
        config = load_config(write_config(Path(tmp) / "smtprelay.yaml", top)).config
        relay = RunningRelay(config).start()
        try:
            data = _report(shape, size)
            inbox = relay.relay.feedback_inbox
            assert inbox is not None
            processor = relay.relay.feedback_processor
            assert processor is not None
            # The processor waits until the report is stored, so the two phases are
            # measured apart (it would start as soon as the 250 is sent).
            relay.call(processor.stop())
            tracemalloc.start()
            hwm_before = _vm_hwm()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            receive_peak = _send(relay.port("feedback"), data) - base
            del data
            # The session (and the report it holds) ends after QUIT: wait for that,
            # or the processing's peak would hide under the session's bytes.
            smtp_server = relay.relay.smtp
            assert smtp_server is not None
            while smtp_server.session_count:
                time.sleep(0.01)
            gc.collect()
            # Measured from the same idle base: what the relay still holds of the
            # report while it processes it counts too.
            tracemalloc.reset_peak()
            pending = inbox.count()
            relay.call(_start(processor))
            deadline = time.monotonic() + 120
            while inbox.count() and time.monotonic() < deadline:
                time.sleep(0.05)
            process_peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            assert pending == 1 and inbox.count("unmatched") == 1, (pending, inbox.count())
            return {"shape": shape, "size": size,
                    "receive_peak_mb": round(receive_peak / 1e6, 1),
                    "receive_copies": round(receive_peak / size, 2),
                    "process_peak_mb": round(process_peak / 1e6, 1),
                    "process_copies": round(process_peak / size, 2),
                    "rss_growth_mb": round((_vm_hwm() - hwm_before) / 1e6, 1)}
        finally:
            relay.stop()


def _size(text: str) -> int:
    from smtprelay.config.values import _parse_size
    return int(_parse_size(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="9.5M")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = int(float(args.size[:-1]) * 1024 * 1024) if args.size[-1:] in "Mm" \
        else _size(args.size)
    if args.shape:  # the child: one shape, one line of JSON
        print(json.dumps(measure(args.shape, size)))
        return
    results = []
    for shape in SHAPES:
        out = subprocess.run([sys.executable, __file__, "--shape", shape, "--size",
                              str(size)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'shape':6} {'receive MB':>10} {'copies':>7} {'process MB':>10} {'copies':>7}"
          f" {'RSS +MB':>8}")
    for r in results:
        print(f"{r['shape']:6} {r['receive_peak_mb']:>10} {r['receive_copies']:>7} "
              f"{r['process_peak_mb']:>10} {r['process_copies']:>7} {r['rss_growth_mb']:>8}")


if __name__ == "__main__":
    main()
