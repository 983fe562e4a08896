"""What one connection attempt to a receiving MX learnt about TLS, for TLS reporting.

One value per attempted session (RFC 8460 counts sessions): the policy that applied
to the recipient domain (MTA-STS "sts", DANE "tlsa", or "no-policy-found"), the MX
host and addresses involved, and the RFC 8460 result type when the session failed
(section 4.3: "starttls-not-supported", "certificate-expired", ...), None when TLS
was negotiated as the policy asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class TLSOutcome:
    policy_type: Literal["sts", "tlsa", "no-policy-found"]
    policy_domain: str
    policy_strings: tuple[str, ...]
    mx_host: str
    receiving_ip: str
    sending_ip: str | None
    failure: str | None
