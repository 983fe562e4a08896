"""Mail addresses: one way to split and compare them, and RFC 5321 path syntax for MAIL
FROM and RCPT TO, strict enough to refuse what would hurt us."""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtprelay.mail import replies as R
from smtprelay.mail.replies import Reply

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_ADDRESS = 254  # RFC 5321 4.5.3.1.3: 256 for the path, angle brackets included
MAX_DOMAIN = 253

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_QUOTED_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"')
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_U = r"\u0080-\U0010ffff"
_LABEL_UTF8 = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9{_U}-]{{0,61}}[A-Za-z0-9{_U}])?"
_DOMAIN_UTF8 = re.compile(rf"{_LABEL_UTF8}(?:\.{_LABEL_UTF8})*")
_IPV4_LITERAL = re.compile(r"\[(?:\d{1,3}\.){3}\d{1,3}\]")
_IPV6_LITERAL = re.compile(r"\[IPv6:[0-9A-Fa-f:.]+\]", re.IGNORECASE)
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?")


@dataclass(frozen=True, slots=True)
class Address:
    """An address split at its last "@", the way every stage reads one.

    The domain is normalised: DNS names compare case-insensitively and may carry the
    root's trailing dot. The local part stays as written: RFC 5321 leaves its case to
    the receiving system, so whoever compares local parts says how.
    """

    local: str
    domain: str  # lower case, without a trailing dot; "" when there was no "@"

    @classmethod
    def parse(cls, text: str) -> Address:
        local, _, domain = text.rpartition("@")
        return cls(local, normal_domain(domain))

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normal_domain(domain: str) -> str:
    """How a domain is compared: lower case, without the root's trailing dot."""
    return domain.lower().rstrip(".")


def domain_of(address: str) -> str:
    """The normalised domain of `address` ("" without an "@")."""
    return normal_domain(address.rpartition("@")[2])


def local_of(address: str) -> str:
    """The local part of `address` as written ("" without an "@")."""
    return address.rpartition("@")[0]


class AddressError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class PathArgument:
    address: str  # "" for the null reverse-path <>
    params: dict[str, str | None]


def _split_path(text: str, syntax: Reply) -> tuple[str, str]:
    """Split '<path> params' into the path between the brackets and the rest.

    A path without brackets ("MAIL FROM: sender@example.com", as the SES guide's own
    command-line session types it) is its first word, as Postfix takes it by default
    (strict_rfc821_envelopes = no); the address rules that follow are the same.
    """
    if not text.startswith("<"):
        word, _, rest = text.partition(" ")
        if not word or "<" in word or ">" in word:
            raise AddressError(syntax)
        return word, rest.strip()
    i = 1
    in_quotes = False
    while i < len(text):
        ch = text[i]
        if in_quotes and ch == "\\":
            i += 2
            continue
        if ch == '"':
            in_quotes = not in_quotes
        elif ch == ">" and not in_quotes:
            rest = text[i + 1 :]
            if rest and not rest.startswith(" "):
                raise AddressError(syntax)
            return text[1:i], rest.strip()
        i += 1
    raise AddressError(syntax)


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _PARAM.fullmatch(word)
        if not match:
            raise ValueError(word)
        params[match.group(1).upper()] = match.group(2)
    return params


def parse_path(argument: str, *, keyword: str, sender: bool, smtputf8: bool | None = None
               ) -> PathArgument:
    """Parse the argument of MAIL (keyword FROM) or RCPT (keyword TO).

    `smtputf8` None means "decide from this command's own parameters" (MAIL);
    RCPT passes the transaction's setting.
    """
    syntax = R.MAIL_SYNTAX if sender else R.RCPT_SYNTAX
    bad = "5.1.7 Bad sender address syntax" if sender else "5.1.3 Bad recipient address syntax"
    head, sep, tail = argument.partition(":")
    if not sep or head.strip().upper() != keyword:
        raise AddressError(syntax)
    path, rest = _split_path(tail.lstrip(" "), syntax)
    try:
        params = _parse_params(rest)
    except ValueError as exc:
        raise AddressError(Reply(501, f"5.5.4 Error: bad parameter syntax {exc}")) from None
    utf8 = ("SMTPUTF8" in params) if smtputf8 is None else smtputf8
    if path == "":
        if sender:
            return PathArgument("", params)
        raise AddressError(Reply(501, f"{bad}: the recipient is empty"))
    if path.startswith("@"):
        raise AddressError(Reply(501, f"{bad}: source routes are not accepted"))
    if not path.isascii() and not utf8:
        raise AddressError(R.NEEDS_SMTPUTF8)
    if len(path.encode("utf-8")) > MAX_ADDRESS:
        raise AddressError(Reply(501, f"{bad}: the address is longer than {MAX_ADDRESS} octets"))
    local, at, domain = path.rpartition("@")
    if not at or not local or not domain:
        raise AddressError(Reply(501, f"{bad}: expected local-part@domain"))
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(
            Reply(501, f"{bad}: the local part is longer than {MAX_LOCAL_PART} octets"))
    dot_string, quoted = (_DOT_STRING_UTF8, _QUOTED_UTF8) if utf8 else (_DOT_STRING, _QUOTED)
    if not (dot_string.fullmatch(local) or quoted.fullmatch(local)):
        raise AddressError(Reply(501, f"{bad}: invalid local part"))
    if domain.startswith("["):
        if not (_IPV4_LITERAL.fullmatch(domain) or _IPV6_LITERAL.fullmatch(domain)):
            raise AddressError(Reply(501, f"{bad}: invalid address literal"))
    elif len(domain) > MAX_DOMAIN or not (_DOMAIN_UTF8 if utf8 else _DOMAIN).fullmatch(domain):
        raise AddressError(Reply(501, f"{bad}: invalid domain"))
    return PathArgument(f"{local}@{domain.lower()}", params)
