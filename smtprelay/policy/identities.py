"""Which sender addresses an account may use: its identities (domains and addresses)."""

from __future__ import annotations

from collections.abc import Iterable

from smtprelay.mail.address import Address


def split_address(address: str) -> tuple[str, str]:
    parsed = Address.parse(address)
    return parsed.local, parsed.domain


def covers(identity: str, address: str) -> bool:
    """True when `identity` allows sending as `address`.

    A domain covers itself and its subdomains; an address covers itself and its
    plus-labels (news@example.org covers news+may@example.org). Domains compare
    case-insensitively; local parts too, since every receiving system we relay to
    treats them so and a case slip should not bounce an application's mail.
    """
    local, domain = split_address(address)
    if not domain:
        return False
    if "@" not in identity:
        return domain == identity or domain.endswith("." + identity)
    id_local, id_domain = split_address(identity)
    if domain != id_domain:
        return False
    local = local.lower()
    id_local = id_local.lower()
    return local == id_local or local.startswith(id_local + "+")


def failing(identities: Iterable[str], addresses: Iterable[str]) -> list[str]:
    """The addresses no identity covers, in order, without repeats."""
    allowed = tuple(identities)
    result: list[str] = []
    for address in addresses:
        if address not in result and not any(covers(i, address) for i in allowed):
            result.append(address)
    return result
