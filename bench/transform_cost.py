"""What tracking, one-click unsubscribe and DKIM cost per message, in microseconds.

Runs, in-process and exactly as smtprelay.submission.pipeline does after the hygiene stage, on
three messages (2 KB text/plain; a 50 KB table-heavy HTML newsletter with 40 links,
quoted-printable; 1 MB of the same HTML with 250 links):

- transform off: `Transformer.apply` with a configuration set without tracking or
  unsubscribe (the fast path; a quoted-printable part is still decoded and searched
  for ``ses:*`` attributes and the open-tracker placeholder, which are removed);
- transform on: open + click tracking (https) and one-click unsubscribe;
- DKIM: `dkim.signatures` with an RSA 2048 and an Ed25519 key (dual signing, as
  bench/dkim_cost.py), the fields put in front of the message;
- transform off/on followed by DKIM, back to back in one thread;
- the pipeline's way (transform.finisher.Finisher, as the pipeline calls it): without
  workers the transform inline below 256 KiB (in a thread above) and DKIM through
  `asyncio.to_thread`; with workers both in one trip to a worker process. Timed on an
  event loop: wall time per message and the CPU time of the event-loop thread, the
  one the relay's sessions share.

Each cell: warm-up runs, then N timed runs, the cells of a message taking turns (one
call each per round, so drift in the machine's load hits them alike); median and p95
(nearest rank) of wall time, or with --clock cpu of the thread's CPU time (time spent
waiting for a core left out; in a VM, time stolen by the host still counts).

With --instructions: instructions per message instead of time, counted by valgrind's
callgrind (the same code gives the same count within about 0.1 %, whatever else the
machine does), for run_features.py's newsletter (15 KB, 18 links, the issue-17
message): transform on, DKIM (RSA 2048 + Ed25519) of the message as submitted, and
transform on + DKIM. Each cell is its own process under callgrind, counting from
after its warm-up calls to the end of its timed ones; --repeats of each (default 3),
median. --baseline CHECKOUT counts another checkout's smtprelay the same way and
prints the ratios.

    /tmp/venv/bin/python bench/transform_cost.py [--runs 51] [--clock wall|cpu] [--json]
    /tmp/venv/bin/python bench/transform_cost.py --instructions [--baseline DIR] [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import functools
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The smtprelay measured: this checkout's, or (--instructions --baseline) another's.
sys.path.insert(0, os.environ.get("TRANSFORM_COST_TREE")
                or str(Path(__file__).resolve().parent.parent))

from smtprelay.config import ConfigurationSetConfig
from smtprelay.mail.headers import parse_header_section
from smtprelay.spool.model import new_message_id
from smtprelay.transform import dkim, hygiene, tracking
from smtprelay.transform.finisher import Finisher
from smtprelay.transform.pool import TransformPool
from smtprelay.transform.tokens import KeyRing

TRACKING_DOMAIN = "links.example.com"
# The configuration sets: what config/smtprelay.example.yaml shows, and nothing.
TRACKED_SET: dict[str, Any] = {
    "tracking": {"open": True, "click": True, "domain": TRACKING_DOMAIN, "https": True},
    "unsubscribe": {"one_click": True},
}
PLAIN_SET: dict[str, Any] = {}

KINDS = ("2k-text", "50k-html", "1m-html")
LABELS = {"2k-text": "2 KB text/plain", "50k-html": "50 KB HTML, 40 links, QP",
          "1m-html": "1 MB HTML, 250 links, QP"}

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "then",
          "some", "more", "words", "to", "make", "lines", "of", "ordinary", "prose",
          "café", "naïve", "\u2013", "€"]
_SLUGS = ["launch", "update", "guide", "story", "offer", "recap"]
_TOPICS = ["pricing", "release-notes", "webinar", "case-study", "careers", "security",
           "roadmap", "community", "events", "tips"]


def _sentence(rnd: random.Random, words: int) -> str:
    text = " ".join(rnd.choice(_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def _article_url(rnd: random.Random, index: int) -> str:
    """A typical marketing link: path, an id and utm parameters (~140 characters)."""
    topic = rnd.choice(_TOPICS)
    return (f"https://www.example.com/{topic}/2026/{index:03d}-{rnd.choice(_SLUGS)}"
            f"?utm_source=newsletter&amp;utm_medium=email&amp;utm_campaign=nov-2026"
            f"&amp;utm_content=link-{index}&amp;ref={rnd.getrandbits(32):08x}")


def newsletter_html(rnd: random.Random, size: int, links: int, vml: bool = True) -> str:
    """A table-based newsletter of about `size` bytes (UTF-8) with `links` web links.

    The usual shape of what mailing tools send: a doctype, a <style> block, Outlook
    conditional comments around a bulletproof button, nested layout tables with inline
    styles, one "read more" link per article plus header and footer links, a mailto:
    and a #top anchor (never tracked), and the {{unsubscribe_url}} placeholder.
    `vml=False` leaves out the Outlook buttons (smaller articles: more links per KB).
    """
    head = ("<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\" "
            "\"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd\">\n"
            "<html xmlns=\"http://www.w3.org/1999/xhtml\">\n<head>\n"
            "<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\" />\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1.0\" />\n"
            "<title>The November letter</title>\n<style type=\"text/css\">\n"
            "  body { margin: 0; padding: 0; background: #f4f4f4; }\n"
            "  table, td { border-collapse: collapse; mso-table-lspace: 0pt; }\n"
            "  .content { font-family: Helvetica, Arial, sans-serif; font-size: 15px; }\n"
            "  @media only screen and (max-width: 600px) { .wrap { width: 100% !important; } }\n"
            "</style>\n</head>\n<body style=\"margin:0;padding:0;\">\n"
            "<a name=\"top\"></a>\n"
            "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" "
            "border=\"0\" bgcolor=\"#f4f4f4\">\n<tr>\n<td align=\"center\">\n"
            "<table class=\"wrap\" role=\"presentation\" width=\"600\" cellpadding=\"0\" "
            "cellspacing=\"0\" border=\"0\" bgcolor=\"#ffffff\">\n")
    fixed_links = 4  # view online, logo, and two social links in the footer
    articles = max(1, links - fixed_links)
    rows = [
        "<tr>\n  <td class=\"content\" style=\"padding:8px 24px;font-size:12px;color:#888;\">"
        f"Trouble reading? <a href=\"{_article_url(rnd, 0)}\" style=\"color:#888;\">"
        "View it online</a></td>\n</tr>\n",
        "<tr>\n  <td style=\"padding:24px;\"><a href=\"https://www.example.com/?utm_source="
        "newsletter&amp;utm_medium=email\"><img src=\"https://cdn.example.com/logo.png\" "
        "width=\"160\" height=\"40\" alt=\"Example\" style=\"display:block;border:0;\" />"
        "</a></td>\n</tr>\n",
    ]
    footer = (
        "<tr>\n  <td class=\"content\" style=\"padding:24px;font-size:12px;color:#888;\">\n"
        f"    <a href=\"{_article_url(rnd, links - 2)}\">Twitter</a> |\n"
        f"    <a href=\"{_article_url(rnd, links - 1)}\">LinkedIn</a> |\n"
        "    <a href=\"mailto:news@example.com?subject=Hello\">Write to us</a> |\n"
        "    <a href=\"#top\">Back to top</a><br />\n"
        "    Example Ltd, 1 Example Street, Exampletown.\n"
        "    <a href=\"{{unsubscribe_url}}\" style=\"color:#888;\">Unsubscribe</a>\n"
        "  </td>\n</tr>\n</table>\n</td>\n</tr>\n</table>\n</body>\n</html>\n")
    fixed = len(head) + sum(map(len, rows)) + len(footer)
    per_article = max(400, (size - fixed) // articles)
    for index in range(1, articles + 1):
        url = _article_url(rnd, index)
        article = [
            "<tr>\n  <td class=\"content\" style=\"padding:16px 24px 0 24px;\">\n"
            "    <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" "
            "cellspacing=\"0\" border=\"0\">\n"
            f"      <tr><td style=\"font-size:20px;font-weight:bold;color:#222;\">"
            f"{_sentence(rnd, 6)}</td></tr>\n"
            "      <tr><td style=\"padding-top:8px;line-height:22px;color:#444;\">\n"]
        outlook = (
            "        <!--[if mso]><v:roundrect xmlns:v=\"urn:schemas-microsoft-com:vml\" "
            "style=\"height:36px;width:160px;\" arcsize=\"10%\" fillcolor=\"#1a73e8\" "
            "stroke=\"f\"><center style=\"color:#ffffff;\">Read more</center>"
            "</v:roundrect><![endif]-->\n") if vml else ""
        button = (
            "      <tr><td style=\"padding:12px 0 16px 0;\">\n" + outlook +
            f"        <a href=\"{url}\" style=\"background:#1a73e8;color:#ffffff;"
            "display:inline-block;padding:8px 20px;border-radius:4px;"
            "text-decoration:none;\">Read more&nbsp;&rarr;</a>\n"
            "      </td></tr>\n    </table>\n  </td>\n</tr>\n")
        used = sum(map(len, article)) + len(button) + 22
        while used < per_article:
            line = "        " + _sentence(rnd, rnd.randint(8, 16)) + "<br />\n"
            article.append(line)
            used += len(line)
        article.append("      </td></tr>\n")
        rows.append("".join(article) + button)
    return head + "".join(rows) + footer


def _qp(text: str) -> bytes:
    """UTF-8, quoted-printable with CRLF lines, the way mailing tools encode HTML
    (Python's binascii encoder, not the relay's own)."""
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def raw_message(kind: str, *, configuration_set: str | None = None,
                sender: str = "news@example.com",
                recipient: str = "someone@example.net") -> bytes:
    """The message as a client submits it (CRLF lines, not dot-stuffed)."""
    rnd = random.Random(2026)
    head = (f"From: Example News <{sender}>\r\nTo: <{recipient}>\r\n"
            "Subject: The November letter\r\n"
            "MIME-Version: 1.0\r\n")
    if configuration_set is not None:
        head = f"X-SES-CONFIGURATION-SET: {configuration_set}\r\n" + head
    if kind == "2k-text":
        body = []
        used = len(head) + 120
        while used < 2048 - 80:
            line = _sentence(rnd, rnd.randint(8, 12))
            body.append(line)
            used += len(line.encode()) + 2
        body.append("Your account: https://app.example.com/account?id=12345&tab=billing")
        body.append("Unsubscribe: {{unsubscribe_url}}")
        text = "\r\n".join(body) + "\r\n"
        return (head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + text).encode()
    if kind == "50k-html":
        target, count = 50 * 1024, 40
    elif kind == "1m-html":
        target, count = 1024 * 1024, 250
    else:
        raise ValueError(f"unknown message kind {kind!r}; one of {', '.join(KINDS)}")
    return sized_newsletter(head, target, count)


def sized_newsletter(head: str, target: int, links: int, vml: bool = True) -> bytes:
    """`head` (header fields, CRLF-ended) and a multipart/alternative newsletter (text and
    quoted-printable HTML with `links` web links) of about `target` bytes in all."""
    # Quoted-printable makes HTML ~20 % longer ("=3D" for every "="): size the HTML so
    # that the whole message comes out at about `target` bytes.
    size = target
    for _ in range(3):
        message = _newsletter_message(random.Random(2026), head, size, links, vml)
        size = int(size * target / len(message))
    return message


def _newsletter_message(rnd: random.Random, head: str, size: int, links: int,
                        vml: bool = True) -> bytes:
    html = newsletter_html(rnd, size, links, vml)
    plain = ("The November letter. Read it online: https://www.example.com/news/2026-11\r\n"
             + "\r\n".join(_sentence(rnd, 12) for _ in range(20))
             + "\r\nUnsubscribe: {{unsubscribe_url}}\r\n")
    boundary = "=_b1_2026_newsletter"
    return (head.encode()
            + f"Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
              f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
            + _qp(plain.replace("\r\n", "\n"))
            + f"\r\n--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n"
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode()
            + _qp(html) + f"\r\n--{boundary}--\r\n".encode())


def normalised(raw: bytes, message_id: str, received_at: float) -> bytes:
    """What the pipeline hands to the transform: the message after the hygiene stage."""
    return hygiene.normalise(raw, parse_header_section(raw), info=hygiene.ReceivedInfo(
        hostname="relay.bench.test", client_helo="app.example.com", client_ip="127.0.0.1",
        tls_version="TLSv1.3", tls_cipher="TLS_AES_256_GCM_SHA384", authenticated=True,
        message_id=message_id, recipient="someone@example.net", received_at=received_at))


def timings(cells: dict[str, Callable[[], Any]], runs: int,
            clock: Callable[[], float] = time.perf_counter,
            warmup: int = 3) -> dict[str, dict[str, float]]:
    """Per cell: median and p95 (nearest rank) of `runs` timed calls, in µs.

    The cells take turns, one call each per round (after `warmup` rounds), so a change
    in the machine's load during the run hits every cell alike.
    """
    for _ in range(warmup):
        for func in cells.values():
            func()
    times: dict[str, list[float]] = {name: [] for name in cells}
    for _ in range(runs):
        for name, func in cells.items():
            started = clock()
            func()
            times[name].append(clock() - started)
    result = {}
    for name, values in times.items():
        values.sort()
        p95 = values[max(0, math.ceil(0.95 * len(values)) - 1)]
        result[name] = {"median_us": round(statistics.median(values) * 1e6, 1),
                        "p95_us": round(p95 * 1e6, 1)}
    return result


class Stage:
    """The transform and DKIM steps of smtprelay.submission.pipeline.Pipeline, for one message."""

    def __init__(self, data: bytes, message_id: str, received_at: float,
                 settings: ConfigurationSetConfig, transformer: tracking.Transformer,
                 keys: list[dkim.SigningKey], pool: TransformPool | None = None) -> None:
        self.data = data
        self.keys = keys
        self.transform = functools.partial(
            transformer.apply, data, message_id=message_id, recipient_count=1,
            issued_at=received_at, settings=settings)
        self.finisher = Finisher(pool)
        self.pipeline_finish = functools.partial(
            self.finisher.finish, data, tracking.plan_of(settings), transformer.keyring, keys,
            message_id=message_id, recipient=0, issued_at=received_at)

    def sign(self, data: bytes) -> bytes:
        return b"".join(dkim.signatures(data, self.keys)) + data  # as Pipeline._sign

    def both(self) -> bytes:
        return self.sign(self.transform().data)

    async def pipelined(self) -> bytes:
        done = await self.pipeline_finish()
        return done.signatures + done.result.data


async def _loop_cost(stages: dict[str, Stage], runs: int) -> dict[str, dict[str, float]]:
    """Per stage, event-loop thread CPU and wall time per message, the pipeline's way
    (µs); the stages take turns, one message each per round."""
    for _ in range(3):
        for stage in stages.values():
            await stage.pipelined()
    cpu = dict.fromkeys(stages, 0.0)
    process = dict.fromkeys(stages, 0.0)
    wall = dict.fromkeys(stages, 0.0)
    for _ in range(runs):
        for name, stage in stages.items():
            cpu_start, wall_start = time.thread_time(), time.perf_counter()
            process_start = time.process_time()  # this process's threads, not the workers
            await stage.pipelined()
            cpu[name] += time.thread_time() - cpu_start
            process[name] += time.process_time() - process_start
            wall[name] += time.perf_counter() - wall_start
    return {name: {"loop_cpu_us": round(cpu[name] / runs * 1e6, 1),
                   "process_cpu_us": round(process[name] / runs * 1e6, 1),
                   "wall_us": round(wall[name] / runs * 1e6, 1)} for name in stages}


def signing_keys() -> list[dkim.SigningKey]:
    """RSA 2048 + Ed25519 for example.com, as bench/dkim_cost.py signs."""
    return [dkim.SigningKey("example.com", "r2026", "rsa-sha256", dkim.generate_key("rsa"),
                            Path("-")),
            dkim.SigningKey("example.com", "e2026", "ed25519-sha256",
                            dkim.generate_key("ed25519"), Path("-"))]


def measure(runs: int, clock: Callable[[], float] = time.perf_counter) -> list[dict[str, Any]]:
    transformer = tracking.Transformer(KeyRing.generate())
    keys = signing_keys()
    sets = {"off": ConfigurationSetConfig.model_validate(PLAIN_SET),
            "on": ConfigurationSetConfig.model_validate(TRACKED_SET)}
    rows: list[dict[str, Any]] = []
    for kind in KINDS:
        received_at = time.time()
        message_id = new_message_id(received_at)
        data = normalised(raw_message(kind, configuration_set="bench"), message_id,
                          received_at)
        n = runs if len(data) < 100_000 else max(7, runs // 5)
        stages = {name: Stage(data, message_id, received_at, settings, transformer, keys)
                  for name, settings in sets.items()}
        on = stages["on"].transform()
        row: dict[str, Any] = {
            "message": kind, "label": LABELS[kind], "bytes": len(data),
            "bytes_tracked": len(on.data), "links_tracked": on.link_count,
            "opens_tracked": on.opens_tracked, "unsubscribe": on.unsubscribe_url is not None,
            "problems": on.problems, "runs": n,
            **timings({"transform_off": stages["off"].transform,
                       "transform_on": stages["on"].transform,
                       "dkim": functools.partial(stages["off"].sign, data),
                       "transform_off_dkim": stages["off"].both,
                       "transform_on_dkim": stages["on"].both}, n, clock),
        }

        async def pipelined(data: bytes = data, message_id: str = message_id,
                            received_at: float = received_at, n: int = n,
                            stages: dict[str, Stage] = stages) -> dict[str, dict[str, float]]:
            pool = TransformPool(2)  # its workers belong to this event loop
            try:
                workers = Stage(data, message_id, received_at, sets["on"], transformer, keys,
                                pool)
                return await _loop_cost({**stages, "workers": workers}, n)
            finally:
                await pool.close()

        for name, cost in asyncio.run(pipelined()).items():
            row[f"pipeline_{name}"] = cost
        rows.append(row)
    return rows


_COLUMNS = (("transform_off", "transform off"), ("transform_on", "transform on"),
            ("dkim", "DKIM rsa+ed25519"), ("transform_off_dkim", "off + DKIM"),
            ("transform_on_dkim", "on + DKIM"))


def print_table(rows: list[dict[str, Any]], clock: str) -> None:
    print(f"µs per message ({clock} time), median / p95, one thread, back to back")
    print(f"{'message':<28} {'bytes':>9} " + " ".join(f"{title:>17}" for _, title in _COLUMNS))
    for row in rows:
        cells = " ".join(f"{row[key]['median_us']:>8.0f} /{row[key]['p95_us']:>7.0f}"
                         for key, _ in _COLUMNS)
        print(f"{row['label']:<28} {row['bytes']:>9} {cells}")
    print()
    print("the pipeline's way, µs/message: DKIM in a thread and the transform inline "
          "below 256 KiB, else in a thread (off, on); or both in 2 worker processes "
          "(workers)")
    print(f"{'message':<28} {'':>5} {'loop CPU':>9} {'process CPU':>12} {'wall':>7}")
    for row in rows:
        for name in ("off", "on", "workers"):
            cost = row[f"pipeline_{name}"]
            print(f"{row['label'] if name == 'off' else '':<28} {name:>7} "
                  f"{cost['loop_cpu_us']:>9.0f} {cost['process_cpu_us']:>12.0f} "
                  f"{cost['wall_us']:>7.0f}")
    print("(process CPU: the relay process's threads, the workers' CPU not included)")
    for row in rows:
        if row["problems"]:
            print(f"{row['label']}: {'; '.join(row['problems'])}")


# ------------------------------------------------------------ instructions (callgrind)

_TREE_ENV = "TRANSFORM_COST_TREE"  # read at the top, before the imports
INSTRUCTION_CELLS = ("transform_on", "dkim", "transform_on_dkim")
_FEATURES_HEAD = ("X-SES-CONFIGURATION-SET: newsletter\r\n"
                  "From: Example News <news@example.com>\r\nTo: <rcpt@example.net>\r\n"
                  "Subject: The November letter\r\nDate: Sun, 22 Nov 2026 17:47:41 +0000\r\n"
                  "Message-ID: <letter-2026-11@example.com>\r\nMIME-Version: 1.0\r\n")


def _features_stage() -> Stage:
    """run_features.py's newsletter, as the pipeline hands it to the transform."""
    raw = sized_newsletter(_FEATURES_HEAD, 15 * 1024, 18, vml=False)
    received_at = time.time()
    message_id = new_message_id(received_at)
    data = normalised(raw, message_id, received_at)
    return Stage(data, message_id, received_at,
                 ConfigurationSetConfig.model_validate(TRACKED_SET),
                 tracking.Transformer(KeyRing.generate()), signing_keys())


def _callgrind(state: str) -> None:
    """Instrumentation on or off in this process, which runs under callgrind. Not
    subprocess.run: valgrind takes the command only while this process runs code."""
    control = subprocess.Popen(["callgrind_control", "-i", state, str(os.getpid())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while control.poll() is None:
        pass


def counted_cell(cell: str, runs: int) -> None:
    """The child's side: `runs` calls of `cell`, with instrumentation on around them."""
    stage = _features_stage()
    call: Callable[[], Any] = {
        "transform_on": stage.transform, "dkim": functools.partial(stage.sign, stage.data),
        "transform_on_dkim": stage.both}[cell]
    for _ in range(5):
        call()
    _callgrind("on")
    for _ in range(runs):
        call()
    _callgrind("off")


def count_instructions(cell: str, runs: int, tree: Path | None) -> float:
    """Instructions per call of `cell`, with `tree`'s smtprelay (None: this one's)."""
    with tempfile.TemporaryDirectory(prefix="transform-cost-") as directory:
        out = Path(directory) / "callgrind.out"
        env = {**os.environ, _TREE_ENV: str(tree) if tree else ""}
        subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                        f"--callgrind-out-file={out}", sys.executable, __file__,
                        "--count-cell", cell, "--runs", str(runs)],
                       check=True, env=env, capture_output=True, timeout=1800)
        for line in out.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1]) / runs
    raise RuntimeError(f"callgrind wrote no totals for {cell}")


def measure_instructions(runs: int, repeats: int, baseline: Path | None
                         ) -> dict[str, dict[str, Any]]:
    """Per tree and cell: every repeat's instructions per message and their median;
    the trees and cells take turns, so nothing but the code differs between them."""
    trees: dict[str, Path | None] = {"smtprelay": None}
    if baseline is not None:
        trees["baseline"] = baseline.resolve()
    counts: dict[str, dict[str, list[float]]] = {
        name: {cell: [] for cell in INSTRUCTION_CELLS} for name in trees}
    for _ in range(repeats):
        for cell in INSTRUCTION_CELLS:
            for name, tree in trees.items():
                counts[name][cell].append(count_instructions(cell, runs, tree))
    return {name: {cell: {"runs": values, "median": statistics.median(values)}
                   for cell, values in cells.items()} for name, cells in counts.items()}


def print_instructions(result: dict[str, dict[str, Any]]) -> None:
    print("instructions per message (callgrind), run_features.py's newsletter: 15 KB, "
          "18 links")
    names = list(result)
    print(f"{'cell':<20} " + " ".join(f"{name:>14}" for name in names)
          + ("   ratio smtprelay/baseline" if "baseline" in result else ""))
    for cell in INSTRUCTION_CELLS:
        medians = [result[name][cell]["median"] for name in names]
        line = f"{cell:<20} " + " ".join(f"{m:>14,.0f}" for m in medians)
        if "baseline" in result:
            line += f"   {medians[0] / medians[1]:.3f}"
        print(line)
    for name in names:
        for cell in INSTRUCTION_CELLS:
            runs = ", ".join(f"{v:,.0f}" for v in result[name][cell]["runs"])
            print(f"  {name} {cell}: {runs}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=51,
                        help="timed runs per cell (1 MB: a fifth, at least 7)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time the cells by the wall clock or the thread's CPU time")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per message under callgrind instead")
    parser.add_argument("--repeats", type=int, default=3,
                        help="--instructions: processes per cell (median)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="--instructions: another checkout to count the same way")
    parser.add_argument("--count-cell", choices=INSTRUCTION_CELLS, help=argparse.SUPPRESS)
    parser.add_argument("--write-message", nargs=2, metavar=("KIND", "PATH"),
                        help=f"write one of the messages ({', '.join(KINDS)}) as a client "
                             "would submit it, and exit")
    args = parser.parse_args()
    if args.write_message:
        kind, path = args.write_message
        Path(path).write_bytes(raw_message(kind))
        return 0
    if args.count_cell:
        counted_cell(args.count_cell, args.runs)
        return 0
    if args.instructions:
        if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
            print("--instructions needs valgrind (apt install valgrind)", file=sys.stderr)
            return 2
        runs = args.runs if args.runs != 51 else 50
        result = measure_instructions(runs, max(3, args.repeats), args.baseline)
        if args.json:
            json.dump({"runs": runs, "instructions": result}, sys.stdout, indent=2)
            print()
        else:
            print_instructions(result)
        return 0
    rows = measure(args.runs, time.thread_time if args.clock == "cpu" else time.perf_counter)
    if args.json:
        json.dump({"runs": args.runs, "clock": args.clock, "rows": rows}, sys.stdout, indent=2)
        print()
    else:
        print_table(rows, args.clock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
