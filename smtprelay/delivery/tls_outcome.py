"""What became of TLS on one outbound connection attempt, for TLS reporting (RFC 8460).

The SMTP transport makes one ``TLSOutcome`` per new connection to an MX host (a cached
session reused is not a new attempt) and hands it to ``on_tls_outcome`` when one is
set. An attempt that never reached TLS (refused, timed out, a 421 greeting) has no
outcome: nothing about TLS was learnt. Neither has a clear session under the
opportunistic policy with no MTA-STS or DANE policy for the domain: TLS was not
promised, so not having it is not a TLS failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PolicyType = Literal["sts", "tlsa", "no-policy-found"]


@dataclass(frozen=True, slots=True)
class TLSOutcome:
    policy_type: PolicyType
    policy_domain: str  # the recipient domain whose policy applied
    policy_strings: tuple[str, ...]  # the MTA-STS policy's lines, or the TLSA records
    mx_host: str
    receiving_ip: str
    sending_ip: str | None
    # RFC 8460 4.3 result type: "starttls-not-supported", "certificate-host-mismatch",
    # "certificate-expired", "certificate-not-trusted", "validation-failure",
    # "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
    # "sts-policy-invalid", "sts-webpki-invalid"; None: TLS worked as the policy asks.
    failure: str | None
