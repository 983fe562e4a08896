"""What traffic shaping costs when no limit is reached, end to end, in one run.

    load generator --STARTTLS+AUTH--> smtprelay --MX lookup--> smtp-sink

Ten destination domains (d0..d9.example.net) spread over three simulated providers:
their MX hosts are mx.p1.test, mx.p2.test and mx.p3.test (all on one smtp-sink, as
three names of one machine), and an operator rules file (delivery.shaping.rules_file)
maps *.pN.test to providers p1..p3 with limits and rules that the load never reaches,
plus delivery.destinations rates for every domain, so every message goes through the
provider lookup, the provider's and the domain's windows and the rules on the way back.

Relays, side by side, interleaved cell by cell, --repeats times (default 3):

* shaped:    this checkout, shaping on with the rules file and per-domain rates;
* unshaped:  this checkout, `delivery.shaping.enabled: false` and no destinations;
* baseline:  with --baseline CHECKOUT, another checkout (today's main) as it is.

Per run: delivered msg/s (messages at the sink / (last arrival - load start)) and
p50/p99 from the relay's 250 to the sink's 250. Prints every run, the medians, and
shaped/unshaped (and shaped/baseline) two ways: the ratio of the medians, and the
median of each repeat's own ratio (the target, >= 0.95; exits 1 below it). The order
of the relays alternates from one repeat to the next (ABBA), and a repeat's cells run
back to back: on this kind of virtual machine the CPU's speed drifts by a quarter over
seconds (a fixed pure-Python loop, 12 times: 0.32-0.51 s), so only cells close in time
compare, and neither relay always goes first. Writes JSON to bench/results/. Needs
root for smtp-sink (-u postfix).

--instructions counts instead, under valgrind's callgrind, the instructions each relay
executes per delivered message (all its threads, from after a warm-up cell to the last
delivery of a run of --instructions-total messages over 5 sessions): what the
shaping costs in work, unmoved by the machine's speed (the same code gives the same
count within about 1 %). Slow (the relays run about 50x slower): a few minutes.

Source addresses: the shaped relay sends from an IP pool of two addresses
(POOL_ADDRESSES, already warm, so no warm-up cap applies), taking turns, so the
lanes are kept per provider and source address as in production: six lanes. The
unshaped relay sends from the host's default address with no pool, as before.

    /tmp/venv/bin/python bench/run_shaping.py                    # about 2 minutes
    /tmp/venv/bin/python bench/run_shaping.py --baseline /work/main --repeats 5
    /tmp/venv/bin/python bench/run_shaping.py --bookkeeping   # in-process, seconds
    /tmp/venv/bin/python bench/run_shaping.py --instructions  # callgrind, minutes

--bookkeeping measures, in this process and without sockets, the shaper's own work per
transaction as the transport does it (lane, suspension check, admission through three
domain windows and two provider windows, the reply check of a delivered result), the
same 10 domains and 3 providers: the cost the end-to-end figures must hide.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import RelayProcess, exit_on_sigterm, free_port, median, run_load, write_result
from bench.run_delivery import RelayTarget, Sink, pct, read_replies, wait_delivered
from tests.dnsserver import TestDNSServer

SINK_ADDRESS = "127.0.0.154"
POOL_ADDRESSES = ("127.0.1.50", "127.0.1.51")
DOMAINS = [f"d{i}.example.net" for i in range(10)]
PROVIDERS = ("p1", "p2", "p3")
TARGET_RATIO = 0.95


def provider_of(index: int) -> str:
    return PROVIDERS[index % len(PROVIDERS)]  # 4, 3 and 3 domains


def rules() -> dict[str, Any]:
    """Limits far above the load (it must not wait: this measures the bookkeeping), and
    a rule each that no reply matches."""
    return {"providers": {
        name: {"mx": [f"*.{name}.test"],
               "limits": {"connections": 200, "messages_per_connection": 1000,
                          "per_minute": 10_000_000, "per_hour": 100_000_000},
               "rules": [{"name": f"{name}-rate", "match": r"4\.7\.28|unusual rate",
                          "action": "suspend", "duration": "1h"},
                         {"name": f"{name}-busy", "match": "too many connections",
                          "action": "throttle", "duration": "10m"}]}
        for name in PROVIDERS}}


def delivery(dns: TestDNSServer, port: int, rules_file: Path | None) -> dict[str, Any]:
    section: dict[str, Any] = {
        "mode": "mx", "port": port, "dns": {"nameservers": [dns.nameserver]},
        "max_connections": 500, "max_connections_per_domain": 20,
    }
    if rules_file is not None:
        section["shaping"] = {"enabled": True, "rules_file": str(rules_file)}
        section["destinations"] = {d: delivery_limits() for d in DOMAINS}
    else:
        section["shaping"] = {"enabled": False}
    return section


def measure(target: RelayTarget, sink: Sink, args: argparse.Namespace,
            workdir: Path) -> dict[str, Any]:
    target.poll()
    sink.collect()
    replies = workdir / f"replies-{target.name}.tsv"
    replies.unlink(missing_ok=True)
    cpu_before = target.cpu_seconds()
    load = run_load(target.port, target.user, target.password, sessions=args.sessions,
                    size=args.size, messages_per_session=args.messages_per_session,
                    total=args.total, duration=args.duration,
                    recipients=tuple(f"rcpt@{d}" for d in DOMAINS), reply_log=replies)
    accepted = read_replies(replies)
    wait_delivered(target, set(accepted), args.drain_timeout)
    cpu = target.cpu_seconds() - cpu_before
    at_sink = sink.collect()
    done = [at_sink[i] for i in accepted if i in at_sink]
    lags = [at_sink[i] - t for i, t in accepted.items() if i in at_sink]
    span = max(done) - load["started_at"] if done else 0.0
    return {"target": target.name, "accepted": load["accepted"],
            "load_errors": load["errors"], "delivered": len(done),
            "undelivered": len(accepted) - len(done),
            "delivered_msgs_per_s": round(len(done) / span, 1) if span > 0 else None,
            "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99),
            # The relay's own CPU per message: what the bookkeeping costs, less moved by
            # the other processes on the machine than msg/s is.
            "cpu_ms_per_msg": round(cpu * 1000 / len(done), 3) if done else None}


def bookkeeping(transactions: int = 200_000) -> float:
    """Microseconds of the shaper's work per transaction (median of 5 rounds)."""
    import asyncio
    import statistics

    from smtprelay.config import DestinationConfig
    from smtprelay.delivery.model import RecipientResult, Verdict
    from smtprelay.delivery.providers import bundled, parse_providers
    from smtprelay.delivery.shaping import Shaper

    table = bundled().merged(parse_providers(rules(), "bench"))
    limits = delivery_limits()
    shaper = Shaper()
    shaper.configure(enabled=True, table=table, destinations={
        d: DestinationConfig(**limits) for d in DOMAINS})
    delivered = [RecipientResult("rcpt@d0.example.net", Verdict.DELIVERED, 250, "2.0.0",
                                 "smtp; 250 2.0.0 Ok")]
    hosts = [f"mx.{provider_of(i)}.test" for i in range(len(DOMAINS))]

    async def rounds() -> list[float]:
        took = []
        for _ in range(5):
            started = time.perf_counter()
            for n in range(transactions // 5):
                i = n % len(DOMAINS)
                lane = shaper.lane(hosts[i], None)
                shaper.suspended(lane)
                await shaper.admit(DOMAINS[i], lane)
                shaper.after(lane, delivered)
            took.append((time.perf_counter() - started) / (transactions // 5) * 1e6)
        return took

    return round(statistics.median(asyncio.run(rounds())), 2)


def delivery_limits() -> dict[str, int]:
    return {"per_second": 1_000_000, "per_minute": 10_000_000, "per_hour": 100_000_000}


def _per_source(http_port: int, expected: float) -> dict[str, float]:
    """Recipients each pool address sent today (smtprelay_warmup_sent_today, which the
    relay refreshes every 10 s): evidence that both addresses carried the load."""
    deadline = time.monotonic() + 15
    while True:
        exposition = urllib.request.urlopen(
            f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
        found = {address: 0.0 for address in POOL_ADDRESSES}
        for line in exposition.splitlines():
            if line.startswith("smtprelay_warmup_sent_today{"):
                for address in POOL_ADDRESSES:
                    if f'address="{address}"' in line:
                        found[address] += float(line.rsplit(" ", 1)[1])
        if sum(found.values()) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _sessions_opened(http_port: int) -> float:
    """Outbound SMTP sessions the relay opened (smtprelay_outbound_connects_total)."""
    exposition = urllib.request.urlopen(
        f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    prefix = 'smtprelay_outbound_connects_total{result="ok"} '
    return next((float(line[len(prefix):]) for line in exposition.splitlines()
                 if line.startswith(prefix)), 0.0)


def _counter(exposition: str, provider: str) -> float:
    prefix = f'smtprelay_provider_transactions_total{{provider="{provider}"}} '
    return next((float(line[len(prefix):]) for line in exposition.splitlines()
                 if line.startswith(prefix)), 0.0)


class CallgrindRelay(RelayProcess):
    """The relay under callgrind, counting nothing until told (callgrind_control -i)."""

    def __init__(self, out_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.out_dir = out_dir

    @property
    def command(self) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={self.out_dir}/callgrind-%p.out",
                sys.executable, *super().command]

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.pid)], check=True,
                       capture_output=True, timeout=120)

    def counted(self) -> int:
        """Instructions counted since the last --zero (dumps them)."""
        self.control("--dump=measured")
        dumps = sorted(self.out_dir.glob(f"callgrind-{self.pid}.out*"),
                       key=lambda path: path.stat().st_mtime)
        for line in dumps[-1].read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dumps[-1]}")


def setting() -> tuple[Path, Path, TestDNSServer, Sink]:
    """A work directory, the rules file in it, the DNS server (started) with the ten
    domains' MX records and the providers' hosts, and the sink (not started)."""
    workdir = Path(tempfile.mkdtemp(prefix="smtprelay-shaping-", dir="/tmp"))
    rules_file = workdir / "providers.yaml"
    rules_file.write_text(yaml.safe_dump(rules(), sort_keys=False))
    dns = TestDNSServer()
    dns.start()
    sink = Sink(SINK_ADDRESS, workdir / "sink.log")
    sink.port = free_port(SINK_ADDRESS)
    for index, domain in enumerate(DOMAINS):
        dns.add(domain, "MX", f"10 mx.{provider_of(index)}.test.", ttl=3600)
    for name in PROVIDERS:
        dns.add(f"mx.{name}.test", "A", SINK_ADDRESS, ttl=3600)
    return workdir, rules_file, dns, sink


def instructions(args: argparse.Namespace) -> int:
    """Instructions per delivered message of the shaped and the unshaped relay."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
    workdir, rules_file, dns, sink = setting()
    per_message: dict[str, float] = {}
    try:
        sink.start()
        for name, rules_path in (("unshaped", None), ("shaped", rules_file)):
            relay = CallgrindRelay(workdir, delivery=delivery(dns, sink.port, rules_path))
            configure(relay, name)
            relay.start(timeout=600)
            target = RelayTarget(relay, name)
            try:
                cell = argparse.Namespace(**{**vars(args), "sessions": 5, "total": 100,
                                             "duration": 600.0, "drain_timeout": 120.0})
                measure(target, sink, cell, workdir)  # warm-up, not counted
                relay.control("-i", "on")
                relay.control("--zero")
                result = measure(target, sink, argparse.Namespace(
                    **{**vars(cell), "total": args.instructions_total}), workdir)
                counted = relay.counted()
                relay.control("-i", "off")
            finally:
                target.close()
                relay.stop()
            per_message[name] = counted / result["delivered"]
            print(f"{name:9} {result['delivered']} delivered, {counted:,} instructions, "
                  f"{per_message[name]:,.0f} per message", flush=True)
    finally:
        sink.stop()
        dns.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = round(per_message["unshaped"] / per_message["shaped"], 3)
    print(f"unshaped/shaped instructions per message: {ratio} "
          f"(the shaped relay does {round(1 / ratio - 1, 3):+.1%} more work per message)")
    path = write_result("shaping-instructions", {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "total": args.instructions_total,
        "per_message": per_message, "ratio": ratio})
    print(f"results: {path}")
    return 0 if ratio >= TARGET_RATIO else 1


def configure(relay: RelayProcess, name: str) -> None:
    """The limits both relays share, and the shaped relay's IP pool."""
    config = yaml.safe_load(relay.config_path.read_text())
    config["limits"] = {"max_connections": 5000, "max_connections_per_ip": 5000}
    if name == "shaped":
        config["ip_pools"] = {"bench": {"addresses": [
            {"address": address, "helo": f"o{address.rsplit('.', 1)[1]}.bench.test",
             "warm": True} for address in POOL_ADDRESSES]}}
        config["delivery"]["ip_pool"] = "bench"
    relay.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--messages-per-session", type=int, default=5)
    p.add_argument("--total", type=int, default=3000, help="messages per run")
    p.add_argument("--duration", type=float, default=30.0, help="time bound per run")
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="give up waiting for deliveries after this long without progress")
    p.add_argument("--baseline", type=Path, default=None,
                   help="another smtprelay checkout (today's main) to run beside")
    p.add_argument("--bookkeeping", action="store_true",
                   help="only the shaper's own work per transaction, in-process")
    p.add_argument("--instructions", action="store_true",
                   help="instructions per delivered message under callgrind, instead")
    p.add_argument("--instructions-total", type=int, default=600,
                   help="messages counted per relay with --instructions")
    args = p.parse_args(argv)
    exit_on_sigterm()
    if args.bookkeeping:
        print(f"shaper bookkeeping: {bookkeeping()} us per transaction (median of 5 rounds)")
        return 0
    if args.instructions:
        return instructions(args)

    workdir, rules_file, dns, sink = setting()

    relays: dict[str, RelayProcess] = {
        "shaped": RelayProcess(delivery=delivery(dns, sink.port, rules_file)),
        "unshaped": RelayProcess(delivery=delivery(dns, sink.port, None)),
    }
    if args.baseline is not None:
        section = delivery(dns, sink.port, None)
        del section["shaping"]  # the baseline predates the key
        # One process, as RelayProcess gives this checkout (a baseline would get one
        # worker per core, and its deliveries less competition for the loop).
        relays["baseline"] = RelayProcess(delivery=section, source=args.baseline,
                                          server={"workers": 1})
    for name, relay in relays.items():
        configure(relay, name)
    runs: list[dict[str, Any]] = []
    targets: dict[str, RelayTarget] = {}
    try:
        sink.start()
        for name, relay in relays.items():
            relay.start()
            targets[name] = RelayTarget(relay, name)
        # Warm-up: the first AUTH's slow hash, DNS caches, first sessions to the sink.
        for target in targets.values():
            warm = argparse.Namespace(**{**vars(args), "total": 300})
            measure(target, sink, warm, workdir)
        for rep in range(args.repeats):
            order = list(targets.items())
            if rep % 2:
                order.reverse()
            for name, target in order:
                result = measure(target, sink, args, workdir)
                result["repeat"] = rep
                runs.append(result)
                print(f"[{rep + 1}/{args.repeats}] {name:9} "
                      f"{result['delivered_msgs_per_s']!s:>7} msg/s delivered "
                      f"({result['delivered']}/{result['accepted']}) p50 {result['p50_ms']} ms "
                      f"p99 {result['p99_ms']} ms CPU {result['cpu_ms_per_msg']} ms/msg "
                      f"errors {result['load_errors'] or '-'}",
                      flush=True)
        # Evidence that the shaped relay classified the load into the three providers.
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{relays['shaped'].http_port}/metrics", timeout=10).read()
        per_provider = {name: _counter(metrics.decode(), name) for name in PROVIDERS}
        per_address = _per_source(relays["shaped"].http_port, sum(per_provider.values()))
        sessions = {name: _sessions_opened(relay.http_port) for name, relay in relays.items()}
        log = (relays["shaped"].root / "serve.log").read_text(errors="replace")
        # A rule that tripped ("shaping provider=... suspended/throttled"), a deferral of
        # ours ("x-local; the rate limit of ...", "... is suspended for ...").
        held_back = sum(log.count(text) for text in (
            "shaping provider=", "the rate limit of", "is suspended for"))
    finally:
        for target in targets.values():
            target.close()
        for relay in relays.values():
            relay.stop()
        sink.stop()
        dns.stop()

    table = {name: {"delivered_msgs_per_s": median([r["delivered_msgs_per_s"] for r in runs
                                                    if r["target"] == name]),
                    "p50_ms": median([r["p50_ms"] for r in runs if r["target"] == name]),
                    "p99_ms": median([r["p99_ms"] for r in runs if r["target"] == name]),
                    "cpu_ms_per_msg": median([r["cpu_ms_per_msg"] for r in runs
                                              if r["target"] == name])}
             for name in relays}

    def ratio(over: str) -> float | None:
        a, b = table["shaped"]["delivered_msgs_per_s"], table[over]["delivered_msgs_per_s"]
        return round(a / b, 3) if a and b else None

    ratios = {other: ratio(other) for other in relays if other != "shaped"}

    def paired(over: str) -> list[float]:
        """Each repeat's shaped/`over` msg/s (cells run back to back)."""
        rate = {(r["target"], r["repeat"]): r["delivered_msgs_per_s"] for r in runs}
        return [round(rate["shaped", rep] / rate[over, rep], 3)
                for rep in range(args.repeats)
                if rate.get(("shaped", rep)) and rate.get((over, rep))]

    pairs = {other: paired(other) for other in relays if other != "shaped"}
    paired_ratios = {other: median(list(values)) if values else None
                     for other, values in pairs.items()}
    print(f"\nmedians of {args.repeats} runs, {args.sessions} sessions x {args.size // 1024} KB, "
          f"10 domains over 3 providers, shaped: {len(POOL_ADDRESSES)} pool addresses")
    print(f"{'relay':>9} | {'msg/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/msg':>10}")
    for name, row in table.items():
        print(f"{name:>9} | {row['delivered_msgs_per_s']!s:>7} {row['p50_ms']!s:>7} "
              f"{row['p99_ms']!s:>7} {row['cpu_ms_per_msg']!s:>10}")
    for other, value in ratios.items():
        cpu = table["shaped"]["cpu_ms_per_msg"], table[other]["cpu_ms_per_msg"]
        print(f"shaped/{other}: msg/s {value} (ratio of medians), "
              f"{paired_ratios[other]} (median of the repeats' ratios {pairs[other]}), "
              f"CPU per message {round(cpu[0] / cpu[1], 3) if cpu[0] and cpu[1] else None}")
    print(f"transactions per provider (shaped relay's metrics): {per_provider}")
    print(f"recipients per pool address today (shaped relay's metrics): {per_address}")
    print(f"outbound sessions opened over all runs: {sessions}")
    print(f"shaping rules or limits that acted during the load (relay log): {held_back}")
    ok = paired_ratios["unshaped"] is not None and paired_ratios["unshaped"] >= TARGET_RATIO
    print(f"target shaped/unshaped >= {TARGET_RATIO}: {'ok' if ok else 'BELOW TARGET'}")
    path = write_result("shaping", {"when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "args": {k: str(v) for k, v in vars(args).items()},
                                    "table": table, "ratios": ratios,
                                    "paired_ratios": paired_ratios, "pairs": pairs,
                                    "per_provider": per_provider,
                                    "per_address": per_address, "sessions": sessions,
                                    "runs": runs})
    print(f"results: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
