"""SES v2 API load generator: N concurrent keep-alive HTTPS connections, each sending
SendEmail (Raw content) requests one after another, until a request count or a time
limit is reached.

Requests are signed (botocore's SigV4Auth, the SDKs' own signer) before the clock
starts, so the generator measures the relay, not the signing; signatures stay valid
for the relay's max_clock_skew (5 minutes), far longer than a run. HTTP/1.1 on raw
asyncio streams (uvloop when installed) keeps the generator light, as
bench/submit_load.py is for SMTP: it shares the machine's cores with the relay.

    python bench/ses_api_load.py --port 8443 --key-id SRAK... --secret ... --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import ssl
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from submit_load import make_message  # the same message as the SMTP load


@dataclass
class Stats:
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def signed_requests(args: argparse.Namespace, count: int) -> list[bytes]:
    """`count` SendEmail requests, each a whole HTTP/1.1 request ready to write."""
    credentials = Credentials(args.key_id, args.secret)
    host = f"127.0.0.1:{args.port}"
    url = f"https://{host}/v2/email/outbound-emails"
    found = []
    for _ in range(count):
        raw = make_message(args.size, args.sender, args.recipient)
        body = json.dumps({"Content": {"Raw": {"Data": base64.b64encode(raw).decode()}},
                           "Destination": {"ToAddresses": [args.recipient]},
                           "FromEmailAddress": args.sender}).encode()
        request = AWSRequest(method="POST", url=url, data=body,
                             headers={"Content-Type": "application/json", "Host": host})
        SigV4Auth(credentials, "ses", "eu-west-1").add_auth(request)
        head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
        found.append(f"POST /v2/email/outbound-emails HTTP/1.1\r\n{head}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return found


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def client(args: argparse.Namespace, requests: list[bytes], stats: Stats,
                 deadline: float, context: ssl.SSLContext) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port, ssl=context)
    try:
        while requests and time.monotonic() < deadline:
            request = requests.pop()
            started = time.perf_counter()
            writer.write(request)
            status, body = await read_response(reader)
            if status == 200:
                stats.accepted += 1
                stats.latencies.append(time.perf_counter() - started)
            else:
                stats.errors[f"{status} {json.loads(body).get('__type', '?')}"] += 1
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    requests = signed_requests(args, args.total)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the relay's self-signed certificate
    stats = Stats()
    started = time.perf_counter()
    deadline = time.monotonic() + args.duration
    await asyncio.gather(*(client(args, requests, stats, deadline, context)
                           for _ in range(args.clients)))
    elapsed = time.perf_counter() - started
    latencies = sorted(stats.latencies)

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 2)

    return {"accepted": stats.accepted, "seconds": round(elapsed, 3),
            "msgs_per_s": round(stats.accepted / elapsed, 1) if elapsed else 0.0,
            "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
            "errors": dict(stats.errors)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key-id", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--total", type=int, default=3000)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--sender", default="load@example.com")
    p.add_argument("--recipient", default="sink@example.net")
    args = p.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
