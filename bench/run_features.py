"""End to end with every feature on (issue 17): smtprelay against Postfix stacks, one run.

    load generator --STARTTLS+AUTH--> server --MX lookup (dnsmasq)--> smtp-sink

bench/run_delivery.py's machinery (dnsmasq in front of tests/dnsserver.py for the MX,
Postfix's smtp-sink keeping each message in tmpfs, submit_load.py, CPU of each server's
whole process tree, medians) with every feature of smtprelay on, and one ~15 KB HTML
newsletter (18 links, quoted-printable, multipart/alternative) to one recipient per
message. Four servers, interleaved cell by cell, the order rotated every repeat:

* `smtprelay`: `server.workers: 1`; a configuration set (named in the message's
  X-SES-CONFIGURATION-SET) with click and open tracking (https, links.example.com) and
  one-click unsubscribe, so each recipient gets a copy of its own; DKIM with an RSA
  2048 and an Ed25519 key for example.com; fsync (always on); MX delivery.
* `workers`: the same with `server.workers: 2` (--workers).
* `postfix`: the plain Postfix 3.7 relay run_delivery.py measures (STARTTLS, Cyrus
  SASL, smtpd_tls_auth_only, fsync as shipped), MX delivery.
* `opendkim`: that Postfix plus an OpenDKIM 2.11 milter signing rsa-sha256 (relaxed/
  relaxed, From oversigned), over a Unix socket (--milter-socket inet: TCP, where
  every message waits ~90 ms on small packets); the milter's CPU counts with
  Postfix's.

Per cell (sessions) and server: delivered msg/s, p50/p99 from the server's 250 to the
sink's 250, CPU ms per delivered message; then the ratios issue 17 sets targets for
(at 50 sessions: smtprelay >= 2.0x the OpenDKIM stack and >= 0.8x plain Postfix;
workers: 2 >= 1.3x workers: 1, with CPU per message not above workers: 1's), each
marked met or not. Every cell keeps a few of the messages that reached the sink and
checks that the features were on (smtprelay: an rsa-sha256 and an ed25519-sha256
DKIM-Signature, List-Unsubscribe + List-Unsubscribe-Post, every web link rewritten to
the tracking domain, the open pixel, no {{unsubscribe_url}} left; OpenDKIM stack: one
rsa-sha256 signature; plain Postfix: none); the warm-up checks the same and stops the
run early if they are off. At the end OpenDKIM in test mode verifies the signatures of
one kept message per server against the keys published in the test DNS. JSON goes to
bench/results/features-*.json.

Needs root (Postfix; resolv.conf in a private mount namespace, as run_delivery.py),
dnsmasq (Debian dnsmasq-base), postfix, sasl2-bin, libsasl2-modules and opendkim.

    .venv/bin/python bench/run_features.py                # the full run, about 5 minutes
    .venv/bin/python bench/run_features.py --repeats 1 --total 300 --sessions 50
"""

from __future__ import annotations

import argparse
import email
import email.policy
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import transform_cost
from bench._common import (
    RelayProcess,
    exit_on_sigterm,
    free_port,
    median,
    raise_nofile,
    stop_process,
    write_result,
)
from bench.run_delivery import (
    DNSMASQ,
    DOMAIN,
    MX_NAME,
    RECIPIENT,
    RESOLVER_ADDRESS,
    SINK_ADDRESS,
    CachingResolver,
    PostfixTarget,
    RelayTarget,
    Sink,
    Target,
    measure,
    postfix_relay,
    source_version,
    use_private_resolv_conf,
)
from smtprelay.transform import dkim
from tests.dnsserver import TestDNSServer
from tests.peers.postfix import BenchmarkPeer

OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
SENDER = "news@example.com"
SIGNING_DOMAIN = "example.com"
SET_NAME = "newsletter"
TRACKING_DOMAIN = transform_cost.TRACKING_DOMAIN
# Selectors: smtprelay's two keys, and the OpenDKIM milter's key.
RELAY_KEYS = {"rsa": "r2026", "ed25519": "e2026"}
MILTER_SELECTOR = "o2026"
ORDER = ("smtprelay", "workers", "postfix", "opendkim", "baseline")
LABELS = {"smtprelay": "smtprelay w1", "workers": "smtprelay wN", "postfix": "postfix",
          "opendkim": "pf+opendkim", "baseline": "baseline w1"}
# What the messages at the sink must show, per server.
EXPECTED_ALGORITHMS = {"smtprelay": ["ed25519-sha256", "rsa-sha256"],
                       "workers": ["ed25519-sha256", "rsa-sha256"],
                       "baseline": ["ed25519-sha256", "rsa-sha256"],
                       "postfix": [], "opendkim": ["rsa-sha256"]}
# Issue 17's targets, at TARGET_SESSIONS: (name, ratio key, lowest, highest).
TARGET_SESSIONS = 50
TARGETS = (
    ("smtprelay w1 / OpenDKIM stack >= 2.0", "w1_vs_opendkim", 2.0, None),
    ("smtprelay w1 / plain Postfix >= 0.8", "w1_vs_postfix", 0.8, None),
    ("smtprelay w2 / OpenDKIM stack >= 2.0", "w2_vs_opendkim", 2.0, None),
    ("smtprelay w2 / plain Postfix >= 0.8", "w2_vs_postfix", 0.8, None),
    ("workers: 2 / workers: 1 >= 1.3", "w2_vs_w1", 1.3, None),
    ("CPU ms/msg workers: 2 / workers: 1 <= 1.0", "cpu_w2_vs_w1", None, 1.0),
)


# ------------------------------------------------------------------ the message


def newsletter(path: Path, size: int, links: int) -> Path:
    """The newsletter every server gets: transform_cost's table layout, without Outlook's
    VML buttons so that about 20 links fit in 15 KB; names the tracked set (Postfix
    passes that header on untouched)."""
    head = (f"X-SES-CONFIGURATION-SET: {SET_NAME}\r\n"
            f"From: Example News <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
            "Subject: The November letter\r\nDate: Sun, 22 Nov 2026 17:47:41 +0000\r\n"
            "Message-ID: <letter-2026-11@example.com>\r\nMIME-Version: 1.0\r\n")
    path.write_bytes(transform_cost.sized_newsletter(head, size, links, vml=False))
    return path


def _html_parts(message: EmailMessage) -> list[str]:
    return [str(part.get_content()) for part in message.walk()
            if part.get_content_type() == "text/html"]


def web_links(raw: bytes) -> int:
    """http(s) links in the message's HTML: what click tracking must rewrite."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return sum(len(re.findall(r"href=\"https?://", html)) for html in _html_parts(message))


def features(raw: bytes) -> dict[str, Any]:
    """What a message as the sink kept it shows of DKIM, tracking and unsubscribe."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    signatures = [re.sub(r"\s+", "", str(v)) for v in message.get_all("DKIM-Signature", [])]
    algorithms = sorted(m[1] if (m := re.search(r"(?:^|;)a=([^;]+)", s)) else "?"
                        for s in signatures)
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    html = "".join(_html_parts(parsed))
    texts = "".join(str(part.get_content()) for part in parsed.walk()
                    if part.get_content_maintype() == "text")
    tracked = re.escape(TRACKING_DOMAIN)
    return {
        "dkim": algorithms,
        "list_unsubscribe": bool(re.search(rf"<https://{tracked}/u/",
                                           str(message.get("List-Unsubscribe", "")))),
        "one_click": str(message.get("List-Unsubscribe-Post", "")).strip()
        == "List-Unsubscribe=One-Click",
        "tracked_links": len(re.findall(rf"href=\"https?://{tracked}/c/", html)),
        "untracked_links": len(re.findall(r"href=\"https?://www\.example\.com", html)),
        "open_pixel": len(re.findall(rf"src=\"https?://{tracked}/o/", html)),
        "placeholders": texts.count("{{unsubscribe_url}}"),
    }


def problems(name: str, kept: list[bytes], links: int) -> list[str]:
    """Why the messages kept from a cell do not show `name`'s features; [] when they do."""
    if not kept:
        return ["no message kept at the sink"]
    found: list[str] = []
    for raw in kept:
        got = features(raw)
        wrong = []
        if got["dkim"] != EXPECTED_ALGORITHMS[name]:
            wrong.append(f"DKIM-Signature a= {got['dkim']}, expected "
                         f"{EXPECTED_ALGORITHMS[name]}")
        if name in ("smtprelay", "workers", "baseline"):
            if not (got["list_unsubscribe"] and got["one_click"]):
                wrong.append("no one-click List-Unsubscribe")
            if got["tracked_links"] != links or got["untracked_links"]:
                wrong.append(f"{got['tracked_links']} of {links} links tracked, "
                             f"{got['untracked_links']} left as they were")
            if got["open_pixel"] != 1 or got["placeholders"]:
                wrong.append(f"open pixels {got['open_pixel']}, {{{{unsubscribe_url}}}} "
                             f"left {got['placeholders']}")
        elif got["tracked_links"] or got["list_unsubscribe"]:
            wrong.append("tracking or unsubscribe where none belongs")
        found.extend(w for w in wrong if w not in found)
    return found


def verify_signatures(name: str, raw: bytes, authority: TestDNSServer,
                      workdir: Path) -> dict[str, str]:
    """OpenDKIM's verdict (test mode, keys from the test DNS) per algorithm and selector."""
    from tests import dkimpeers

    # smtp-sink writes LF line ends; the message travelled with CRLF.
    message = re.sub(rb"\r?\n", b"\r\n", raw)
    try:
        results = dkimpeers.opendkim(message, authority, workdir / f"verify-{name}")
    except BaseException as exc:  # pytest's skip/fail are BaseExceptions
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return {f"{r.algorithm} s={r.selector}": r.result for r in results
            if r.domain == SIGNING_DOMAIN}


# ------------------------------------------------------------------ the servers


def make_keys(directory: Path) -> dict[str, tuple[Path, dkim.PrivateKey]]:
    """The DKIM keys: smtprelay's RSA 2048 + Ed25519 and the milter's RSA 2048."""
    directory.mkdir()
    keys = {}
    for kind, selector in (("rsa", RELAY_KEYS["rsa"]), ("ed25519", RELAY_KEYS["ed25519"]),
                           ("rsa", MILTER_SELECTOR)):
        key = dkim.generate_key("rsa" if kind == "rsa" else "ed25519")
        path = directory / f"{SIGNING_DOMAIN}.{selector}.pem"
        dkim.write_key(path, key)
        keys[selector] = (path, key)
    return keys


def feature_relay(workers: int, sink: Sink, nameserver: str,
                  keys: dict[str, tuple[Path, dkim.PrivateKey]],
                  args: argparse.Namespace, source: Path | None = None) -> RelayProcess:
    """A RelayProcess (not started) with the tracked set, both DKIM keys and MX delivery;
    `source`: another checkout's smtprelay (--baseline)."""
    relay = RelayProcess(
        source=source,
        limits={"max_connections": 5000, "max_connections_per_ip": 5000},
        log_level=args.log_level, server={"workers": workers},
        delivery={"mode": "mx", "port": sink.port, "dns": {"nameservers": [nameserver]},
                  "max_connections_per_domain": args.dest_concurrency})
    config = yaml.safe_load(relay.config_path.read_text())
    # A set belongs to accounts (issue 16): this one is the bench account's.
    config["configuration_sets"] = {SET_NAME: {**transform_cost.TRACKED_SET,
                                               "accounts": ["bench"]}}
    config["tracking_domains"] = {TRACKING_DOMAIN: {}}
    config["identities"] = {SIGNING_DOMAIN: {"dkim": [
        {"selector": selector, "key_file": str(keys[selector][0])}
        for selector in RELAY_KEYS.values()]}}
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return relay


class OpenDKIMMilter:
    """OpenDKIM 2.11 in the foreground, signing rsa-sha256 for example.com (PEERS.md)."""

    def __init__(self, workdir: Path, key: Path, socket_kind: str = "inet") -> None:
        self.port = free_port()
        self.path = workdir / "opendkim.sock"
        # What Postfix's smtpd_milters names, and OpenDKIM's Socket for it.
        if socket_kind == "inet":
            self.postfix_socket = f"inet:127.0.0.1:{self.port}"
            socket_line = f"Socket inet:{self.port}@127.0.0.1\n"
        else:
            self.postfix_socket = f"unix:{self.path}"
            socket_line = f"Socket local:{self.path}\nUMask 000\n"  # cleanup runs as postfix
        self.conf = workdir / "opendkim.conf"
        self.log = workdir / "opendkim.log"
        self.conf.write_text(
            "Mode s\n"
            f"Domain {SIGNING_DOMAIN}\nSelector {MILTER_SELECTOR}\nKeyFile {key}\n"
            "RequireSafeKeys false\nCanonicalization relaxed/relaxed\n"
            "SignatureAlgorithm rsa-sha256\nOversignHeaders From\n"
            + socket_line + "Syslog no\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenDKIMMilter:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([OPENDKIM, "-f", "-x", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.postfix_socket.startswith("unix:"):
                    with socket.socket(socket.AF_UNIX) as sock:
                        sock.connect(str(self.path))
                    return self
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("opendkim does not listen: "
                                       + self.log.read_text(errors="replace")) from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, grace=10)


def opendkim_relay(sink: Sink, concurrency: int, milter: OpenDKIMMilter) -> BenchmarkPeer:
    """run_delivery's Postfix relay with the milter in front of cleanup."""
    peer = postfix_relay("mx", sink, concurrency)
    peer._main_cf.update({
        "smtpd_milters": milter.postfix_socket,
        "non_smtpd_milters": "$smtpd_milters",
        "milter_default_action": "tempfail",
    })
    return peer


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, nargs="+", default=[50, 10])
    p.add_argument("--servers", nargs="+", choices=ORDER, default=list(ORDER[:4]),
                   help="which servers to run (default all four)")
    p.add_argument("--workers", type=int, default=2,
                   help="server.workers of the second smtprelay (the first has 1)")
    p.add_argument("--message-size", type=int, default=15 * 1024,
                   help="about this many bytes (it comes out a little larger when the "
                        "links do not fit)")
    p.add_argument("--links", type=int, default=18, help="web links in the newsletter")
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--total", type=int, default=3000, help="messages per cell and run")
    p.add_argument("--duration", type=float, default=10.0,
                   help="time bound of the load per cell and run (the drain comes on top)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="give up waiting for deliveries after this long without one")
    p.add_argument("--dest-concurrency", type=int, default=20,
                   help="sessions at once to the destination, every server")
    p.add_argument("--milter-socket", choices=("inet", "unix"), default="unix",
                   help="how Postfix reaches OpenDKIM: a Unix socket (Debian's default) "
                        "or TCP on loopback (as PEERS.md measured; each message then "
                        "waits ~90 ms on small packets, see bench/README.md)")
    p.add_argument("--keep", type=int, default=2,
                   help="messages per cell kept from the sink and checked for the features")
    p.add_argument("--log-level", default="info", help="smtprelay's logging.level")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout (an earlier commit) run as the server "
                        "'baseline', workers: 1, beside this one")
    args = p.parse_args(argv)
    if "baseline" in args.servers and args.baseline is None:
        p.error("the server baseline needs --baseline CHECKOUT")
    if DNSMASQ is None:
        p.error("needs dnsmasq (apt-get install dnsmasq-base)")
    if "opendkim" in args.servers and not Path(OPENDKIM).exists():
        p.error("needs opendkim (apt-get install opendkim)")
    exit_on_sigterm()
    raise_nofile(4096)

    workdir = Path(tempfile.mkdtemp(prefix="smtprelay-features-", dir="/tmp"))
    workdir.chmod(0o755)  # Postfix and smtp-sink run as postfix
    authority = TestDNSServer()
    resolver: CachingResolver | None = None
    sink: Sink | None = None
    relays: list[RelayProcess] = []
    peers: list[BenchmarkPeer] = []
    milter: OpenDKIMMilter | None = None
    targets: list[Target] = []
    runs: list[dict[str, Any]] = []
    checks: dict[str, list[str]] = {}
    verified: dict[str, dict[str, str]] = {}
    samples: dict[str, bytes] = {}
    message = newsletter(workdir / "newsletter.eml", args.message_size, args.links)
    size = message.stat().st_size
    links = web_links(message.read_bytes())
    try:
        use_private_resolv_conf(RESOLVER_ADDRESS, workdir)  # before any thread starts
        authority.start()
        authority.add(DOMAIN, "MX", f"10 {MX_NAME}.")
        authority.add(MX_NAME, "A", SINK_ADDRESS)
        keys = make_keys(workdir / "dkim")
        for selector, (_, key) in keys.items():  # for the verification at the end
            authority.add(f"{selector}._domainkey.{SIGNING_DOMAIN}", "TXT",
                          dkim.txt_strings(dkim.public_record(key)))
        resolver = CachingResolver(authority.address, workdir / "dnsmasq.log").start()
        nameserver = f"{RESOLVER_ADDRESS}:53"
        sink = Sink(SINK_ADDRESS, workdir / "smtp-sink.log").start()
        sink.keep = args.keep
        for name in args.servers:
            if name in ("smtprelay", "workers", "baseline"):
                relay = feature_relay(args.workers if name == "workers" else 1, sink,
                                      nameserver, keys, args,
                                      args.baseline if name == "baseline" else None)
                relays.append(relay)
                relay.start()
                targets.append(RelayTarget(relay, name))
            elif name == "postfix":
                peer = postfix_relay("mx", sink, args.dest_concurrency)
                peers.append(peer)
                peer.start()
                targets.append(PostfixTarget(peer))
            else:
                milter = OpenDKIMMilter(workdir, keys[MILTER_SELECTOR][0],
                                        args.milter_socket).start()
                assert milter.proc is not None
                peer = opendkim_relay(sink, args.dest_concurrency, milter)
                peers.append(peer)
                peer.start()
                targets.append(PostfixTarget(peer, "opendkim", helpers=(milter.proc,)))
        # Warm-up, as run_delivery; and a check that the features are on before
        # spending minutes on a run that would measure something else.
        for target in targets:
            warm = measure(target, sink, 10, size, args, workdir, total=300,
                           message=message, sender=SENDER)
            wrong = problems(target.name, sink.kept, links)
            if not warm["delivered"] or wrong:
                raise RuntimeError(f"{target.name} in the warm-up: delivered "
                                   f"{warm['delivered']}/{warm['accepted']}, "
                                   f"{'; '.join(wrong) or 'features as expected'}; "
                                   f"errors {warm['load_errors']} {warm['failures']}")
        for rep in range(args.repeats):
            for sessions in args.sessions:
                shift = rep % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    result = measure(target, sink, sessions, size, args, workdir,
                                     message=message, sender=SENDER)
                    wrong = problems(target.name, sink.kept, links)
                    if wrong:
                        checks.setdefault(target.name, []).extend(
                            w for w in wrong if w not in checks.get(target.name, []))
                    elif sink.kept:
                        samples[target.name] = sink.kept[0]
                    result.update(repeat=rep, features_ok=not wrong)
                    runs.append(result)
                    print(f"[{rep + 1}/{args.repeats}] {LABELS[target.name]:12} "
                          f"{sessions:3} sessions: accepted {result['accept_msgs_per_s']:6} "
                          f"msg/s, delivered {result['delivered_msgs_per_s']} msg/s "
                          f"({result['delivered']}/{result['accepted']}), 250->250 p50 "
                          f"{result['p50_ms']} ms p99 {result['p99_ms']} ms, machine "
                          f"{result['machine_busy']:.0%} busy, drain {result['drain_s']} s, "
                          f"cpu {result['cpu_ms_per_msg']} ms/msg, features "
                          f"{wrong or 'ok'} "
                          f"{result['failures'] or ''}{result['load_errors'] or ''}",
                          flush=True)
        for name, raw in samples.items():
            if name != "postfix":
                verified[name] = verify_signatures(name, raw, authority, workdir)
    finally:
        for target in targets:
            target.close()
        for relay in relays:
            relay.stop()
        for peer in peers:
            peer.stop()
        if milter is not None:
            milter.stop()
        if sink is not None:
            sink.stop()
        if resolver is not None:
            resolver.stop()
        authority.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    table = summarise(runs, args.sessions, [t.name for t in targets])
    verdicts = judge(table)
    features_ok = not checks and all(
        verdicts_of_signatures(name, got) for name, got in verified.items())
    print_report(table, verdicts, checks, verified, args, size, links)
    path = write_result("features", {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "smtprelay": source_version(),
        "args": vars(args), "message_bytes": size, "links": links,
        "table": table, "targets": verdicts, "feature_problems": checks,
        "signatures_verified": verified, "features_ok": features_ok, "runs": runs})
    print(f"results: {path}")
    return 0 if features_ok else 1


def verdicts_of_signatures(name: str, got: dict[str, str]) -> bool:
    """Every signature the server should make passes OpenDKIM's verification."""
    wanted = ({f"rsa-sha256 s={RELAY_KEYS['rsa']}", f"ed25519-sha256 s={RELAY_KEYS['ed25519']}"}
              if name in ("smtprelay", "workers") else {f"rsa-sha256 s={MILTER_SELECTOR}"})
    return all(got.get(key) == "pass" for key in wanted)


def summarise(runs: list[dict[str, Any]], sessions_list: list[int],
              names: list[str]) -> list[dict[str, Any]]:
    table = []
    for sessions in sessions_list:
        row: dict[str, Any] = {"sessions": sessions}
        for name in names:
            cell = [r for r in runs if r["target"] == name and r["sessions"] == sessions]
            if cell:
                row[name] = {key: median([r[key] for r in cell]) for key in (
                    "accept_msgs_per_s", "delivered_msgs_per_s", "p50_ms", "p99_ms",
                    "drain_s", "cpu_ms_per_msg", "machine_busy")}
                row[name]["undelivered"] = sum(r["undelivered"] for r in cell)
                row[name]["features_ok"] = all(r["features_ok"] for r in cell)

        ratios = {}
        for key, top, bottom, field in (
                ("w1_vs_opendkim", "smtprelay", "opendkim", "delivered_msgs_per_s"),
                ("w1_vs_postfix", "smtprelay", "postfix", "delivered_msgs_per_s"),
                ("w2_vs_opendkim", "workers", "opendkim", "delivered_msgs_per_s"),
                ("w2_vs_postfix", "workers", "postfix", "delivered_msgs_per_s"),
                ("w2_vs_w1", "workers", "smtprelay", "delivered_msgs_per_s"),
                ("cpu_w2_vs_w1", "workers", "smtprelay", "cpu_ms_per_msg"),
                ("w1_vs_baseline", "smtprelay", "baseline", "delivered_msgs_per_s"),
                ("cpu_w1_vs_baseline", "smtprelay", "baseline", "cpu_ms_per_msg"),
                ("opendkim_vs_postfix", "opendkim", "postfix", "delivered_msgs_per_s")):
            a, b = row.get(top, {}).get(field), row.get(bottom, {}).get(field)
            if a and b:
                ratios[key] = round(a / b, 2)
        row["ratios"] = ratios
        table.append(row)
    return table


def judge(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    row = next((r for r in table if r["sessions"] == TARGET_SESSIONS), None)
    verdicts = []
    for text, key, low, high in TARGETS:
        value = row["ratios"].get(key) if row is not None else None
        met = None if value is None else (
            (low is None or value >= low) and (high is None or value <= high))
        verdicts.append({"target": text, "ratio": key, "value": value, "met": met})
    return verdicts


def print_report(table: list[dict[str, Any]], verdicts: list[dict[str, Any]],
                 checks: dict[str, list[str]], verified: dict[str, dict[str, str]],
                 args: argparse.Namespace, size: int, links: int) -> None:
    print(f"\nsmtprelay {source_version()}; medians of {args.repeats} runs; newsletter "
          f"{size} bytes, {links} links, 1 recipient/message, "
          f"{args.messages_per_session} messages/session, STARTTLS + AUTH PLAIN in, MX "
          f"delivery to smtp-sink out, destination concurrency {args.dest_concurrency}; "
          f"smtprelay wN: server.workers {args.workers}")
    print(f"{'sessions':>8}  {'server':12} {'delivered/s':>11} {'accepted/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'cpu ms/msg':>10} {'busy':>5}  features")
    for row in table:
        for name in ORDER:
            r = row.get(name)
            if r is None:
                continue
            print(f"{row['sessions']:>8}  {LABELS[name]:12} "
                  f"{r['delivered_msgs_per_s']!s:>11} {r['accept_msgs_per_s']!s:>10} "
                  f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {r['cpu_ms_per_msg']!s:>10} "
                  f"{r['machine_busy']!s:>5}  {'ok' if r['features_ok'] else 'NOT OK'}"
                  f"{' undelivered ' + str(r['undelivered']) if r['undelivered'] else ''}")
        print(f"{'':>8}  ratios: " + ", ".join(f"{k} {v}" for k, v in row["ratios"].items()))
    print(f"\nissue 17's targets, {TARGET_SESSIONS} sessions, medians of the same run:")
    for v in verdicts:
        state = {True: "met", False: "NOT met", None: "not measured"}[v["met"]]
        print(f"  {v['target']:45} {v['value']!s:>6}  {state}")
    print("\nfeatures at the sink: " + ("as expected in every cell" if not checks else
                                         "; ".join(f"{n}: {', '.join(w)}"
                                                   for n, w in checks.items())))
    for name, got in verified.items():
        print(f"  OpenDKIM verifies a {LABELS[name]} message: "
              + ", ".join(f"{k} {v}" for k, v in got.items()))


if __name__ == "__main__":
    sys.exit(main())
