"""Sending authorization, SES's cross-account sending: an identity's owner lets other
accounts send as it (``identities.<domain>.sending_authorization``), and a delegate's
message names the identity with SES's headers, ``X-SES-SOURCE-ARN`` (the envelope
sender, and From unless ``X-SES-FROM-ARN`` says otherwise), ``X-SES-FROM-ARN`` (the
From header) and ``X-SES-RETURN-PATH-ARN`` (the Return-Path); the first of each
counts, as in SES. The headers never leave the relay (hygiene removes every X-SES-*).

An ARN is read for its last part, ``identity/<domain or address>``: the partition,
region and account id of an AWS ARN mean nothing here and are not checked, so an
application moving from SES keeps the ARNs it has.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from smtprelay.config import Config, IdentityConfig
from smtprelay.mail import replies as R
from smtprelay.mail.headers import HeaderField
from smtprelay.mail.replies import Reply
from smtprelay.policy.identities import covers

SOURCE_ARN = "x-ses-source-arn"
FROM_ARN = "x-ses-from-arn"
RETURN_PATH_ARN = "x-ses-return-path-arn"


@dataclass(frozen=True, slots=True)
class Grant:
    """The identities a message may use beyond its account's own, by what they cover."""

    sender: tuple[str, ...] = ()  # the envelope sender
    from_header: tuple[str, ...] = ()  # From and Sender
    return_path: tuple[str, ...] = ()  # the Return-Path header
    # The From identity, when another account's policy (not the account's own identity)
    # grants it: its conditions (from_addresses) apply to the From header.
    delegated_from: str | None = None
    from_arn: str = ""


def identity_of(arn: str) -> str | None:
    """The identity an SES identity ARN names (lower case), or None if it names none."""
    _, found, identity = arn.strip().rpartition(":identity/")
    if not found or not identity or "/" in identity or " " in identity:
        return None
    return identity.lower().rstrip(".")


def delegates_of(config: Config, account: str) -> list[str]:
    """The identities that let `account` send as them (for MAIL FROM: the message's
    headers must then name the one it uses)."""
    return [domain for domain, identity in config.identities.items()
            if identity.sending_authorization is not None
            and account in identity.sending_authorization.accounts]


def grant(config: Config, account: str, caller: str,
          fields: Iterable[HeaderField]) -> Grant | Reply:
    """What the message's ARN headers let `account` use, or SES's 554 Access denied
    for an identity it does not own and that does not authorize it."""
    arns: dict[str, str] = {}
    for field in fields:
        if field.key in (SOURCE_ARN, FROM_ARN, RETURN_PATH_ARN):
            arns.setdefault(field.key, field.value.strip())
    if not arns:
        return Grant()
    own = config.accounts[account].identities
    granted: dict[str, str] = {}
    delegated: set[str] = set()
    for key, arn in arns.items():
        identity = identity_of(arn)
        if identity is None:
            return R.access_denied(caller, arn)
        granted[key] = identity
        if any(covers(mine, identity) if "@" in identity else _same_or_under(identity, mine)
               for mine in own):
            continue
        settings = _identity_settings(config, identity)
        authorization = settings.sending_authorization if settings is not None else None
        if authorization is None or account not in authorization.accounts:
            return R.access_denied(caller, arn)
        delegated.add(key)
    source = granted.get(SOURCE_ARN)
    from_key = FROM_ARN if FROM_ARN in granted else SOURCE_ARN
    from_header = granted.get(from_key)
    return_path = granted.get(RETURN_PATH_ARN, source)
    return Grant(sender=(source,) if source else (),
                 from_header=(from_header,) if from_header else (),
                 return_path=(return_path,) if return_path else (),
                 delegated_from=from_header if from_key in delegated else None,
                 from_arn=arns.get(from_key, ""))


def from_allowed(config: Config, identity: str, addresses: Iterable[str]) -> list[str]:
    """The From addresses an identity's condition (sending_authorization.from_addresses)
    does not allow a delegate to use."""
    settings = _identity_settings(config, identity)
    allowed = (settings.sending_authorization.from_addresses
               if settings is not None and settings.sending_authorization is not None else [])
    if not allowed:
        return []
    return [a for a in addresses if not any(covers(i, a) for i in allowed)]


def _identity_settings(config: Config, identity: str) -> IdentityConfig | None:
    """The identities.<domain> entry for an identity (a domain, or an address's domain)."""
    domain = identity.rpartition("@")[2]
    return config.identities.get(domain)


def _same_or_under(domain: str, identity: str) -> bool:
    return "@" not in identity and (domain == identity or domain.endswith("." + identity))
