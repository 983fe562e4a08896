"""The values the sections are made of, and the checks that parse them.

Durations (30s, 5m), sizes (10M), host:port, domains, DKIM selectors, tracking hosts,
addresses, nameservers, user-agent rules and networks: each check returns the value
normalised or raises ValueError with the message the reader of the file will see.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Annotated, Any

import dns.nameserver
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from smtprelay.mail.address import Address


# The base of every section: unknown keys are refused, loaded objects are frozen.
class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
}


def _parse_duration(value: Any) -> Any:
    """Accept 30, 30s, 5m, 1h, 5d, 250ms; a bare number counts as seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 1h or 5d")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError("expected a duration such as 30s, 5m, 1h or 5d")


def _parse_size(value: Any) -> Any:
    """Accept 10485760, 10M, 10MiB, 10MB (decimal), 512k."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 10485760, 512k or 10M")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return int(match.group(1)) * _SIZE_UNITS[unit]
    raise ValueError("expected a size such as 10485760, 512k or 10M")


Duration = Annotated[float, BeforeValidator(_parse_duration), Field(gt=0)]
Size = Annotated[int, BeforeValidator(_parse_size), Field(gt=0)]
# A duration that may be 0 (which turns a rule off).
DurationOrZero = Annotated[float, BeforeValidator(_parse_duration), Field(ge=0)]


def parse_host_port(value: str) -> tuple[str, int]:
    """Split "127.0.0.1:8080" or "[::1]:8080" into host and port."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not host:port (IPv6 as [::1]:8080)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is out of range")
    return host, port


# RFC 6376 3.1: a selector is one or more DNS labels.
_SELECTOR_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def check_domain(value: str) -> str:
    """A domain name, lower-cased, without a final dot; ValueError otherwise."""
    value = value.strip()
    if "@" in value or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?", value):
        raise ValueError(f"{value!r} is not a domain name")
    return value.lower().rstrip(".")


def check_selector(value: str) -> str:
    if not _SELECTOR_RE.fullmatch(value):
        raise ValueError(f"{value!r} is not a DKIM selector (DNS labels: letters, digits, "
                         "hyphens, dots between labels)")
    return value


def check_tracking_host(value: str) -> str:
    """A tracking domain, lower-cased; ":port" allowed for tests and non-standard ports."""
    host, sep, port = value.strip().partition(":")
    host = check_domain(host)
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r}: the port after ':' must be 1-65535")
        return f"{host}:{int(port)}"
    return host


def normalise_identity(value: str) -> str:
    value = value.strip()
    if "@" in value:
        address = Address.parse(value)
        if not address.local or not address.domain:
            raise ValueError(f"{value!r} is neither a domain nor an address")
        return str(address)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?", value):
        raise ValueError(f"{value!r} is neither a domain nor an address")
    return value.lower().rstrip(".")


def plain_address(value: str) -> str:
    """local@domain with nothing that would need quoting in a URL or a header."""
    value = value.strip()
    local, at, domain = value.rpartition("@")
    if not at or not local or re.search(r"[\s<>?&%\"]", local):
        raise ValueError(f"{value!r} is not a plain mail address")
    return f"{local}@{check_domain(domain)}"


MailtoSetting = bool | str | None


def check_mailto(value: MailtoSetting) -> MailtoSetting:
    """An unsubscribe ``mailto`` setting: true/false/null, a domain (the signed
    per-recipient addresses go there), or an address (the older fixed form)."""
    if value is None or isinstance(value, bool):
        return value or None
    if "@" in value:
        return plain_address(value)
    try:
        return check_domain(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither true/false, a domain (where the signed "
                         "unsubscribe addresses go, such as unsubscribe.example.com) nor "
                         "an address") from None


def mailto_target(value: MailtoSetting, host: str | None) -> str | None:
    """Where a message's mailto unsubscribe goes: a domain (u-TAG@domain), an address
    (the fixed form) or None; true means `host`, the unsubscribe link's host, without
    its port."""
    if value is True:
        return None if host is None else host.partition(":")[0]
    return value or None


def parse_nameserver(text: str) -> dns.nameserver.Do53Nameserver:
    """``"127.0.0.1:5353"``, ``"[::1]:5353"``, ``"::1"`` or ``"127.0.0.1"`` (port 53)."""
    spec = text.strip()
    port = 53
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad nameserver {text!r}: expected [address]:port")
            port = int(rest[1:])
    elif spec.count(":") == 1:  # host:port; several colons is a bare IPv6 address
        host, _, port_text = spec.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad nameserver {text!r}: expected address:port")
        port = int(port_text)
    else:
        host = spec
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bad nameserver {text!r}: not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad nameserver {text!r}: port out of range")
    return dns.nameserver.Do53Nameserver(str(address), port)


def _check_pattern(value: Any) -> Any:
    """A user-agent rule: a non-empty substring, or "/regex/" that compiles."""
    if not isinstance(value, str):
        return value  # the str type check reports it
    if not value.strip():
        raise ValueError("an empty user-agent rule would match everything")
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        try:
            re.compile(value[1:-1], re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"{value!r}: not a regular expression ({exc})") from None
    return value


def _check_network(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP network (CIDR such as 10.0.0.0/8)") from None


UserAgentRule = Annotated[str, BeforeValidator(_check_pattern)]
Network = Annotated[str, BeforeValidator(_check_network)]


def repeated(values: Iterable[str]) -> list[str]:
    """The values that occur more than once, sorted: a config list whose names (or
    addresses, selectors) must be unique reports each repeated one."""
    seen: set[str] = set()
    twice: set[str] = set()
    for value in values:
        (twice if value in seen else seen).add(value)
    return sorted(twice)
