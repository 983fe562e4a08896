"""Guessing which opens and clicks no person made: scanners, privacy proxies, HEAD requests.

Why guess at all: mail security gateways (Barracuda, Mimecast, Proofpoint...) follow
every link of a message seconds after delivery, and privacy proxies (Apple Mail
Privacy Protection, Gmail's image proxy) download every image whether or not anyone
reads the mail. Counted as people, they make every message look opened and clicked.
SES users filter these out downstream, so the relay flags them and drops nothing: the
event carries ``machine: true`` and the rule that matched, and the reader decides.

The rules are data (``http.machine_detection``, see config/smtprelay.example.yaml),
checked in this order, first match wins:

1. ``head-request``: a HEAD request (browsers GET; link checkers HEAD).
2. ``image-proxy:<name>``: an open from a privacy proxy (user agent or network).
3. ``no-user-agent``: no User-Agent header at all.
4. ``scanner-user-agent:<rule>``: the user agent matches a scanner/bot rule.
5. ``too-fast:<seconds>s``: a click sooner after acceptance than ``too_fast``.

Unsubscribes are never flagged: an RFC 8058 one-click POST is sent by the mailbox
provider's servers on the recipient's command, so "a machine did it" is the normal
case and says nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from smtprelay.config import ImageProxyRule, MachineDetectionConfig

Kind = Literal["click", "open", "unsubscribe"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# Rules look at the start of the user agent only: enough for every real one, and it
# bounds the work a 8 KB header can cause an operator's regular expression.
_MAX_UA = 1024


@dataclass(frozen=True, slots=True)
class Verdict:
    machine: bool
    reason: str | None = None


PERSON = Verdict(False)


class _Matcher:
    """User-agent rules: plain entries are case-insensitive substrings, "/.../" regexes."""

    def __init__(self, rules: list[str]) -> None:
        self._substrings: list[tuple[str, str]] = []
        self._regexes: list[tuple[re.Pattern[str], str]] = []
        for rule in rules:
            if len(rule) >= 2 and rule.startswith("/") and rule.endswith("/"):
                self._regexes.append((re.compile(rule[1:-1], re.IGNORECASE), rule))
            else:
                self._substrings.append((rule.casefold(), rule))

    def first(self, user_agent: str) -> str | None:
        """The first rule (as written in the config) that matches, or None."""
        if not user_agent:
            return None
        folded = user_agent[:_MAX_UA].casefold()
        for needle, rule in self._substrings:
            if needle in folded:
                return rule
        head = user_agent[:_MAX_UA]
        for pattern, rule in self._regexes:
            if pattern.search(head):
                return rule
        return None


class _ImageProxy:
    def __init__(self, rule: ImageProxyRule) -> None:
        self.name = rule.name
        self._agents = _Matcher(rule.user_agents)
        self._networks = [ipaddress.ip_network(n) for n in rule.networks]

    def matches(self, user_agent: str, ip: IPAddress | None) -> bool:
        if self._agents.first(user_agent) is not None:
            return True
        return ip is not None and any(ip in network for network in self._networks)


class MachineDetector:
    """The configured rules, compiled once; `judge` is cheap enough for every request."""

    def __init__(self, config: MachineDetectionConfig) -> None:
        self._too_fast = config.too_fast
        self._empty = config.empty_user_agent
        self._scanners = _Matcher(config.user_agents)
        self._proxies = [_ImageProxy(rule) for rule in config.image_proxies]

    def judge(self, *, kind: Kind, method: str, user_agent: str, ip: IPAddress | None,
              elapsed: float) -> Verdict:
        """Our guess for one request; `elapsed` is seconds since the message was accepted."""
        if kind == "unsubscribe":
            return PERSON
        if method == "HEAD":
            return Verdict(True, "head-request")
        if kind == "open":
            for proxy in self._proxies:
                if proxy.matches(user_agent, ip):
                    return Verdict(True, f"image-proxy:{proxy.name}")
        if not user_agent.strip():
            return Verdict(True, "no-user-agent") if self._empty else PERSON
        rule = self._scanners.first(user_agent)
        if rule is not None:
            return Verdict(True, f"scanner-user-agent:{rule}")
        # issued_at is whole seconds, rounded down, so `elapsed` overstates the real
        # delay by up to 1 s: a rule of 2 s flags clicks under 1 to 2 s after acceptance.
        if kind == "click" and self._too_fast > 0 and elapsed < self._too_fast:
            return Verdict(True, f"too-fast:{max(elapsed, 0.0):.1f}s")
        return PERSON
