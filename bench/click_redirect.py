"""Click redirects per second: smtprelay's /c/<token> against nginx's `return 302`.

Issue 6's figure: `wrk` (Debian package) against a real click token of a real
message, the Click event written to the outbox and published to an NDJSON file,
and in the same run the same machine's nginx answering `return 302` from memory as
the physical reference. Targets (issue 17): smtprelay >= 0.1x nginx, and >= 0.5x the
relay's own /healthz on the same server.

    /tmp/venv/bin/python bench/click_redirect.py --repeats 3     # ~2 min

How: a relay (subprocess, `smtprelay serve`, fsync on) with a configuration set that
tracks clicks and publishes every event to a file; one message submitted over SMTP;
its first click token read from the spool. nginx (`nginx -c` on a temp config,
worker_processes auto: one per core, plus a second nginx with one worker) on other
ports; and the relay's own /healthz, the ceiling of its HTTP stack. wrk (2 threads,
--connections, --duration) against each in turn, interleaved per repeat; medians.
Afterwards the Click events in the relay's NDJSON
file are counted: every redirect must have made one (the relay's own
smtprelay_http_requests_total{route="/c/{token}",status="302"} is checked too).
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import smtplib
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import (
    RelayProcess,
    exit_on_sigterm,
    free_port,
    median,
    raise_nofile,
    write_result,
)

TRACKING_DOMAIN = "links.example.com"
TARGET = "https://shop.example/item/42?utm_source=newsletter&utm_medium=email"
_TOKEN = re.compile(rb"https?://links\.example\.com/c/([A-Za-z0-9_-]+)")
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_BAD = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")


def relay_with_click_events(workers: int = 1) -> RelayProcess:
    relay = RelayProcess(log_level="warning", server={"workers": workers})
    config = yaml.safe_load(relay.config_path.read_text())
    config["configuration_sets"] = {"tracked": {
        "accounts": ["bench"],  # a set belongs to accounts (issue 16)
        "tracking": {"click": True, "open": True, "domain": TRACKING_DOMAIN},
        "event_destinations": [{"name": "clicks", "type": "file", "event_types": ["Click"],
                                "path": str(relay.root / "events.ndjson")}],
    }}
    config["tracking_domains"] = {TRACKING_DOMAIN: {}}
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return relay


def click_token(relay: RelayProcess) -> str:
    """Submit one tracked message and read its click token back from the spool."""
    user, password = relay.credential()
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    html = f'<html><body><a href="{TARGET.replace("&", "&amp;")}">Shop</a></body></html>'
    message = ("From: news@example.com\r\nTo: someone@example.net\r\nSubject: bench\r\n"
               "X-SES-CONFIGURATION-SET: tracked\r\nContent-Type: text/html; charset=utf-8"
               f"\r\n\r\n{html}\r\n")
    with smtplib.SMTP("127.0.0.1", relay.submission_port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.login(user, password)
        smtp.sendmail("news@example.com", ["someone@example.net"], message.encode())
    conn = sqlite3.connect(relay.spool_path)
    try:
        [(body,)] = conn.execute("SELECT data FROM bodies").fetchall()
    finally:
        conn.close()
    match = _TOKEN.search(bytes(body))
    if match is None:
        raise RuntimeError("the spooled message has no click link")
    return match.group(1).decode()


class Nginx:
    def __init__(self, workers: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="smtprelay-bench-nginx-", dir="/tmp"))
        self.port = free_port()
        (self.root / "logs").mkdir()
        (self.root / "nginx.conf").write_text(f"""
worker_processes {workers};
daemon off;
pid {self.root}/nginx.pid;
error_log {self.root}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.root}/body;
    proxy_temp_path {self.root}/proxy;
    fastcgi_temp_path {self.root}/fastcgi;
    uwsgi_temp_path {self.root}/uwsgi;
    scgi_temp_path {self.root}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        location /c/ {{
            add_header Cache-Control "no-store, private" always;
            return 302 "{TARGET}";
        }}
    }}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        self.proc = subprocess.Popen(["nginx", "-p", str(self.root), "-c",
                                      str(self.root / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
            except urllib.error.HTTPError:
                return self  # 404: it answers
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not start: {(self.root / 'logs/error.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def wrk(url: str, host: str, connections: int, duration: float) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration:g}s", "--latency",
         "-H", f"Host: {host}",
         "-H", "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 "
               "(KHTML, like Gecko) Chrome/126.0 Safari/537.36", url],
        capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    rate = _WRK_RATE.search(out)
    if rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    latency = {p: float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
               for p, v, unit in _WRK_LATENCY.findall(out)}
    bad = _WRK_BAD.search(out)
    errors = _WRK_ERRORS.search(out)
    total = _WRK_TOTAL.search(out)
    return {"rps": float(rate.group(1)), "p50_ms": latency.get("50"),
            "p99_ms": latency.get("99"), "non_3xx": int(bad.group(1)) if bad else 0,
            "socket_errors": sum(map(int, errors.groups())) if errors else 0,
            "requests": int(total.group(1)) if total else None}


def metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def count_clicks(path: Path, deadline: float) -> int:
    """Click events in the NDJSON file and its rotated parts, once the publisher has
    caught up."""
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = 0
        # The file rotates at max_size (100 MB, ~75,000 Click events): count them all.
        for part in sorted(path.parent.glob(path.name + "*")):
            with part.open("rb") as handle:
                count += sum(1 for line in handle if b'"eventType":"Click"' in line)
        if count != last:
            last, stable_since = count, time.monotonic()
        elif time.monotonic() - stable_since > 3:
            break
        time.sleep(0.5)
    return last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1,
                        help="the relay's server.workers (its HTTP listeners too)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    raise_nofile(65536)
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"click_redirect: {tool} is not installed (apt-get install wrk nginx-light)",
                  file=sys.stderr)
            return 2
    relay = relay_with_click_events(args.workers).start()
    nginx_auto = Nginx("auto").start()
    nginx_one = Nginx("1").start()
    runs: dict[str, list[dict[str, Any]]] = {"smtprelay": [], "nginx": [], "nginx-1": [],
                                             "healthz": []}
    try:
        token = click_token(relay)
        targets = {
            "smtprelay": f"http://127.0.0.1:{relay.http_port}/c/{token}",
            "nginx": f"http://127.0.0.1:{nginx_auto.port}/c/{token}",
            "nginx-1": f"http://127.0.0.1:{nginx_one.port}/c/{token}",
            # The ceiling of the relay's HTTP stack: aiohttp answering /healthz (no
            # token, no event) in the same process.
            "healthz": f"http://127.0.0.1:{relay.http_port}/healthz",
        }
        # One click by hand first: it must be a 302 to exactly the original URL.
        conn = http.client.HTTPConnection("127.0.0.1", relay.http_port, timeout=10)
        conn.request("GET", f"/c/{token}", headers={"Host": TRACKING_DOMAIN})
        answer = conn.getresponse()
        if answer.status != 302 or answer.getheader("Location") != TARGET:
            raise RuntimeError(f"the click answered {answer.status} "
                               f"{answer.getheader('Location')!r}")
        conn.close()
    except BaseException:
        relay.stop()
        nginx_auto.stop()
        nginx_one.stop()
        raise
    try:
        before = metric(relay.http_port, "smtprelay_http_requests_total",
                        route="/c/{token}", status="302")
        for repeat in range(1, args.repeats + 1):
            for name, url in targets.items():
                result = wrk(url, TRACKING_DOMAIN, args.connections, args.duration)
                runs[name].append(result)
                print(f"[{repeat}/{args.repeats}] {name:<9} {result['rps']:>9.0f} req/s "
                      f"p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
                      f"non-3xx {result['non_3xx']} socket errors {result['socket_errors']}",
                      flush=True)
        redirects = metric(relay.http_port, "smtprelay_http_requests_total",
                           route="/c/{token}", status="302") - before
        clicks = count_clicks(relay.root / "events.ndjson", time.monotonic() + 120)
        rss_kib = int(next(line.split()[1] for line in
                           Path(f"/proc/{relay.pid}/status").read_text().splitlines()
                           if line.startswith("VmHWM:")))
    finally:
        relay.stop()
        nginx_auto.stop()
        nginx_one.stop()

    summary = {name: {"rps": median([r["rps"] for r in results]),
                      "p50_ms": median([r["p50_ms"] for r in results]),
                      "p99_ms": median([r["p99_ms"] for r in results]),
                      "non_3xx": sum(r["non_3xx"] for r in results),
                      "socket_errors": sum(r["socket_errors"] for r in results)}
               for name, results in runs.items()}
    ours = summary["smtprelay"]["rps"] or 0.0
    ratio = ours / (summary["nginx"]["rps"] or 1.0)
    ratio_one = ours / (summary["nginx-1"]["rps"] or 1.0)
    print(f"\nmedians of {args.repeats} runs, wrk -t2 -c{args.connections} "
          f"-d{args.duration:g}s, GET /c/<token>")
    for name, row in summary.items():
        print(f"  {name:<9} {row['rps']:>9} req/s  p50 {row['p50_ms']} ms  "
              f"p99 {row['p99_ms']} ms  non-3xx {row['non_3xx']}")
    ceiling = (summary["healthz"]["rps"] or 0.0) / (summary["nginx"]["rps"] or 1.0)
    own = ours / (summary["healthz"]["rps"] or 1.0)
    met = ratio >= 0.1 and own >= 0.5
    print(f"ratio smtprelay/nginx (workers auto): {ratio:.3f} (target >= 0.1); against one "
          f"nginx worker: {ratio_one:.3f}")
    print(f"ratio smtprelay/its own /healthz: {own:.3f} (target >= 0.5); targets "
          f"{'met' if met else 'missed'}")
    print(f"the relay's /healthz (aiohttp, no token, no event) against nginx: {ceiling:.3f}")
    print(f"relay 302s counted by its metrics: {redirects:.0f}; Click events in the NDJSON "
          f"file: {clicks} (+1 from the warm-up request); relay peak RSS "
          f"{rss_kib / 1024:.1f} MiB")
    path = write_result("click-redirect", {
        "args": vars(args), "runs": runs, "summary": summary, "ratio": ratio,
        "healthz_ratio": ceiling, "ratio_own_healthz": own,
        "ratio_one_worker": ratio_one, "redirects": redirects, "click_events": clicks,
        "relay_peak_rss_kib": rss_kib})
    print(f"results: {path}")
    lost = redirects + 1 - clicks
    if lost > 0:
        print(f"click_redirect: {lost:.0f} redirects made no Click event", file=sys.stderr)
        return 1
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
