"""SigV4 verifications per second (smtprelay.auth.sigv4), on the SES API's hot path.

One SES v2 SendEmail-shaped request per body size (2 KB and 50 KB of JSON), signed by
botocore (SigV4Auth, service ``ses``, with the headers an SDK sends), then verified
in-process the way the HTTP layer will: ``parse`` (header, scope, clock) and
``verify`` (canonical request, string to sign, HMAC, constant-time compare). Cells:

- cached: the derived signing key comes from the LRU (every request of a client's day
  after its first);
- uncached: the four-HMAC key derivation on every request (``signing_key`` replaced by
  ``derive_signing_key``), what a cold cache or a flood of new keys costs;
- sha256 only: hashing the body once, the floor no verifier can go below.

Each run times `--count` verifications of one cell; the cells take turns run by run
(so drift in the machine's load hits them alike); `--runs` runs, medians reported.

    /tmp/venv/bin/python bench/sigv4_verify.py [--runs 5] [--count 20000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from smtprelay.auth import sigv4
from smtprelay.auth.sigv4 import Authorization, SignedRequest

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SIZES = {"2 KB": 2 * 1024, "50 KB": 50 * 1024}


def signed_request(size: int) -> SignedRequest:
    try:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
    except ImportError:
        sys.exit("botocore is needed to sign the requests (pip install boto3)")
    text = ("Hello, this is the body of a transactional message. " * (size // 50))[:size - 200]
    body = json.dumps({"FromEmailAddress": "sender@example.com",
                       "Destination": {"ToAddresses": ["to@example.com"]},
                       "Content": {"Simple": {"Subject": {"Data": "Your receipt"},
                                              "Body": {"Text": {"Data": text}}}}}).encode()
    url = "http://email.relay.test:8443/v2/email/outbound-emails"
    request = AWSRequest(method="POST", url=url, data=body, headers={
        "Content-Type": "application/json",
        "User-Agent": "Boto3/1.44 md/Botocore#1.44 ua/2.1 os/linux lang/python#3.11",
        "amz-sdk-invocation-id": "3f0a61a4-9b0e-4c8f-9d2e-6c3b0f0e5a11",
        "amz-sdk-request": "attempt=1; max=3",
    })
    SigV4Auth(Credentials("AKIDSMTPRELAYBENCH1", SECRET), "ses", "eu-west-1").add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    headers = [(k, v.decode() if isinstance(v, bytes) else v) for k, v in prepared.headers.items()]
    return SignedRequest(prepared.method, parts.path, parts.query,
                         [*headers, ("Host", parts.netloc)], prepared.body)


def verify_once(request: SignedRequest) -> None:
    authorization = sigv4.parse(request, now=time.time())
    assert isinstance(authorization, Authorization), authorization
    assert sigv4.verify(request, authorization, SECRET) is None


def timed(cell: Callable[[], None], count: int) -> float:
    """Calls per second of `cell` over `count` calls."""
    start = time.perf_counter()
    for _ in range(count):
        cell()
    return count / (time.perf_counter() - start)


def run(runs: int, count: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for label, size in SIZES.items():
        request = signed_request(size)
        verify_once(request)  # also warms the key cache

        def verify(request: SignedRequest = request) -> None:
            verify_once(request)

        def sha256_only(body: bytes = request.body) -> None:
            hashlib.sha256(body).hexdigest()

        # (function, whether the key cache is bypassed for the whole run)
        cells = {"cached": (verify, False), "uncached": (verify, True),
                 "sha256 only": (sha256_only, False)}
        rates: dict[str, list[float]] = {name: [] for name in cells}
        for round_ in range(runs + 1):  # round 0 warms up
            for name, (cell, bypass) in cells.items():
                with contextlib.ExitStack() as stack:
                    if bypass:
                        stack.enter_context(mock.patch.object(
                            sigv4, "signing_key", sigv4.derive_signing_key))
                    rate = timed(cell, count if round_ else count // 10)
                if round_:
                    rates[name].append(rate)
        results[label] = {name: round(statistics.median(values))
                          for name, values in rates.items()}
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell (>= 3)")
    parser.add_argument("--count", type=int, default=20000, help="verifications per run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    if args.runs < 3:
        parser.error("--runs must be at least 3: the figures are medians")
    results = run(args.runs, args.count)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"SigV4 parse + verify, verifications/s, median of {args.runs} runs "
          f"of {args.count} (Python {sys.version.split()[0]})")
    print(f"{'body':>6}  {'cached':>10}  {'uncached':>10}  {'sha256 only':>12}")
    for label, cells in results.items():
        print(f"{label:>6}  {cells['cached']:>10,}  {cells['uncached']:>10,}  "
              f"{cells['sha256 only']:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
