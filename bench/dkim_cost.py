"""What DKIM signing costs per message, in microseconds (medians of several runs).

Signs, with smtprelay.transform.dkim exactly as the pipeline does (relaxed/relaxed, the h= list,
the DKIM-Signature fields): a 2 KB text message, a 50 KB HTML message, a 1 MB message
(HTML part plus a base64 attachment, the usual shape of a big mail) and a 1 MB
whitespace-heavy text message (the worst case for relaxed body canonicalisation),
each with an RSA 2048 key, an Ed25519 key, and both (dual signing, what the relay does
with the example configuration). For comparison it also times dkimpy's own
`dkim.sign` (pure-Python RSA), and, behind the pipeline's choice of signing in a
thread: the CPU time the event-loop thread spends per dual-signed message when it
signs inline and when it hands the work to `asyncio.to_thread` (OpenSSL's RSA and
hashlib release the GIL, so the signing itself runs on another core), with the wall
time per message either way.

    /tmp/venv/bin/python bench/dkim_cost.py [--runs 21] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim as dkimpy

from smtprelay.transform import dkim

_HEADER = ("From: News <news@example.com>\r\nTo: someone@example.net\r\n"
           "Subject: The November letter\r\nDate: Sun, 22 Nov 2026 17:47:41 +0000\r\n"
           "Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n"
           "List-Unsubscribe: <https://links.example.com/u/abc>\r\n"
           "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then",
          "some", "more", "words", "to", "make", "lines", "of", "ordinary", "prose"]


def _prose(rnd: random.Random, size: int, extra_space: bool = False) -> str:
    lines: list[str] = []
    total = 0
    while total < size:
        words = [rnd.choice(_WORDS) for _ in range(rnd.randint(6, 12))]
        line = ("  " if extra_space else " ").join(words) + (" \t" if extra_space else "")
        lines.append(line)
        total += len(line) + 2
    return "\r\n".join(lines) + "\r\n"


def messages() -> dict[str, bytes]:
    rnd = random.Random(2026)
    text = (_HEADER + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + _prose(rnd, 2048 - len(_HEADER) - 45)).encode()
    html_rows = "".join(f"<tr>\r\n  <td class=\"c\">{line}</td>\r\n</tr>\r\n"
                        for line in _prose(rnd, 40_000).splitlines())
    html = (_HEADER + "Content-Type: text/html; charset=utf-8\r\n\r\n"
            "<html><body>\r\n<table>\r\n" + html_rows + "</table>\r\n</body></html>\r\n")
    html = html[:50 * 1024 - 30] + "\r\n</table></body></html>\r\n"
    attachment = base64.encodebytes(rnd.randbytes(740_000)).decode().replace("\n", "\r\n")
    big = (_HEADER + "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html_rows[:40_000]
           + "\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64"
           "\r\n\r\n" + attachment + "--b1--\r\n")
    worst = (_HEADER + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
             + _prose(rnd, 1024 * 1024, extra_space=True))
    return {"2 KB text": text, "50 KB HTML": html.encode(),
            "1 MB HTML + attachment": big.encode(),
            "1 MB text, runs of spaces": worst.encode()}


def median_us(func: Callable[[], Any], runs: int) -> float:
    func()  # warm up
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def _loop_cost(data: bytes, keys: list[dkim.SigningKey], runs: int) -> dict[str, float]:
    """Loop-thread CPU and wall time per message, inline and through to_thread (µs)."""
    await asyncio.to_thread(dkim.signatures, data, keys)
    result: dict[str, float] = {}
    for how in ("inline", "to_thread"):
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(runs):
            if how == "inline":
                dkim.signatures(data, keys)
            else:
                await asyncio.to_thread(dkim.signatures, data, keys)
        result[f"{how}_loop_cpu"] = round((time.thread_time() - cpu) / runs * 1e6, 1)
        result[f"{how}_wall"] = round((time.perf_counter() - wall) / runs * 1e6, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21, help="runs per cell (median)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    rsa_key = dkim.generate_key("rsa")
    ed_key = dkim.generate_key("ed25519")
    keys = {
        "rsa": [dkim.SigningKey("example.com", "r2026", "rsa-sha256", rsa_key, Path("-"))],
        "ed25519": [dkim.SigningKey("example.com", "e2026", "ed25519-sha256", ed_key,
                                    Path("-"))],
    }
    keys["both"] = keys["rsa"] + keys["ed25519"]
    rows: list[dict[str, Any]] = []
    for name, data in messages().items():
        runs = args.runs if len(data) < 100_000 else max(5, args.runs // 3)
        row: dict[str, Any] = {"message": name, "bytes": len(data)}
        for label, chosen in keys.items():
            row[label] = round(median_us(lambda d=data, k=chosen: dkim.signatures(d, k),
                                         runs), 1)
        rows.append(row)
    small = messages()["2 KB text"]
    pem = dkim.key_pem(rsa_key)
    dkimpy_rsa = median_us(lambda: dkimpy.sign(small, b"r2026", b"example.com", pem,
                                               canonicalize=(b"relaxed", b"relaxed")),
                           args.runs)
    loop = {name: asyncio.run(_loop_cost(data, keys["both"],
                                         args.runs * 10 if len(data) < 100_000 else args.runs))
            for name, data in messages().items()}
    if args.json:
        json.dump({"rows": rows, "dkimpy_rsa_2kb_us": round(dkimpy_rsa, 1), "loop": loop},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"{'message':<28} {'bytes':>9} {'rsa µs':>10} {'ed25519 µs':>11} {'both µs':>10}")
    for row in rows:
        print(f"{row['message']:<28} {row['bytes']:>9} {row['rsa']:>10.0f} "
              f"{row['ed25519']:>11.0f} {row['both']:>10.0f}")
    print(f"dkimpy's own dkim.sign, RSA 2048, 2 KB text: {dkimpy_rsa:.0f} µs")
    print()
    print("both keys; µs per message    loop CPU inline  loop CPU to_thread  wall inline  "
          "wall to_thread")
    for name, cost in loop.items():
        print(f"{name:<28} {cost['inline_loop_cpu']:>15.0f} {cost['to_thread_loop_cpu']:>19.0f} "
              f"{cost['inline_wall']:>12.0f} {cost['to_thread_wall']:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
