"""Bounce classification: an SMTP failure (reply code, enhanced status, text) -> SES type.

The rules are data, not code (as in KumoMTA's bounce classifier): an ordered table of
regexes on the enhanced status code, the diagnostic text and the three-digit reply
code, first match wins. The same table classifies synchronous failures (a 5xx on RCPT
or DATA, a message that expired in the queue) and asynchronous ones (a DSN that came
back to the feedback listener), so a recipient bounces the same way whichever road the
failure took. Operators put their own rules in front of the defaults.

Reading of the SES Developer Guide (seed 004, "Bounce types", lines ~6530-6560 and
~10730-10745), which the defaults follow:

* SES knows exactly ten (type, subtype) pairs, listed in ``SES_BOUNCE_TYPES``.
  ``MailboxFull``, ``MessageTooLarge``, ``ContentRejected`` and ``AttachmentRejected``
  exist only as *Transient* subtypes: each describes something the sender or the
  recipient can fix ("you might be able to send ... if you reduce the size / change
  the content / when the mailbox is no longer full"). So a 552 5.2.2 "over quota"
  from Gmail is Transient/MailboxFull and a 552 5.3.4 is Transient/MessageTooLarge,
  even though the reply is a final 5xx: the message is not retried (5xx is final),
  but the *address* is not bad. This matters downstream: only Permanent bounces make
  suppression entries and count towards the reputation bounce rate.
* By the same reasoning, rejections aimed at the sending IP or domain rather than at
  the address (block lists, rate limits, SPF/DKIM/DMARC failures, Microsoft's banned
  IP range 5.7.606-649) are Transient/General: suppressing a good address because our
  IP was listed would lose the recipient for good.
* NoEmail is "the address doesn't exist": 5.1.1 (bad mailbox), 5.1.2 (bad domain,
  e.g. NXDOMAIN), 5.1.3 (bad syntax), 5.1.6 (moved, no forwarding), 5.1.10 (null MX,
  RFC 7505, and Microsoft's RecipientNotFound), and the "user unknown" wordings of
  replies that carry no or only a generic enhanced code.
* Suppressed / OnAccountSuppressionList are our own verdicts (SES never sees them in a
  remote reply); they are matched on the diagnostic the relay writes for them.
* Any other 5xx is Permanent/General (the guide's own example: "smtp; 550 user
  unknown" with status 5.0.0 is Permanent/General), any other 4xx (a message that
  expired after retries) is Transient/General, and only a failure with no class at all
  is Undetermined/Undetermined.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

PERMANENT = "Permanent"
TRANSIENT = "Transient"
UNDETERMINED = "Undetermined"

# Every (bounceType, bounceSubType) pair SES publishes; events consumers switch on these,
# so an operator rule naming anything else is refused rather than passed on.
SES_BOUNCE_TYPES: frozenset[tuple[str, str]] = frozenset({
    (UNDETERMINED, "Undetermined"),
    (PERMANENT, "General"),
    (PERMANENT, "NoEmail"),
    (PERMANENT, "Suppressed"),
    (PERMANENT, "OnAccountSuppressionList"),
    (TRANSIENT, "General"),
    (TRANSIENT, "MailboxFull"),
    (TRANSIENT, "MessageTooLarge"),
    (TRANSIENT, "ContentRejected"),
    (TRANSIENT, "AttachmentRejected"),
})

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
# An enhanced code right after the reply code ("550-5.1.1", "smtp; 552 5.2.2") is the
# reliable one; anywhere else in the text it is a fallback. The look-arounds keep
# pieces of IPv4 addresses ("[5.1.2.3]") from passing for a status.
_REPLY_STATUS = re.compile(r"\b[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_ANY_STATUS = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_REPLY_CODE = re.compile(r"(?:^|;)\s*([245]\d\d)(?=[ -]|:|$)")  # "554: delivery error" (Yahoo)


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the table: all given patterns must match (searched, not anchored).

    status: regex on the enhanced status code ("5.1.1"); text: case-insensitive regex
    on the diagnostic; code: regex on the three-digit reply code ("550"). A rule with
    none of them matches everything (only sensible as the last row).
    """

    bounce_type: str
    bounce_subtype: str
    status: str | None = None
    text: str | None = None
    code: str | None = None
    # Compiled once here: a bad pattern fails when the rule is built, not mid-delivery.
    _compiled: tuple[re.Pattern[str] | None, re.Pattern[str] | None, re.Pattern[str] | None] = (
        field(init=False, repr=False, compare=False))

    def __post_init__(self) -> None:
        compiled = (
            None if self.status is None else re.compile(self.status),
            None if self.text is None else re.compile(self.text, re.IGNORECASE),
            None if self.code is None else re.compile(self.code),
        )
        object.__setattr__(self, "_compiled", compiled)

    def matches(self, code: str, status: str, diagnostic: str) -> bool:
        status_re, text_re, code_re = self._compiled
        return ((status_re is None or status_re.search(status) is not None)
                and (text_re is None or text_re.search(diagnostic) is not None)
                and (code_re is None or code_re.search(code) is not None))


def _p(subtype: str, **patterns: str) -> Rule:
    return Rule(PERMANENT, subtype, **patterns)


def _t(subtype: str, **patterns: str) -> Rule:
    return Rule(TRANSIENT, subtype, **patterns)


# Statuses of the permanent class that still mean "the address is unknown" when the
# wording says so: 5.0.0 (generic, or derived from a bare 550), 5.1.x, and 5.5.x
# (Microsoft's "550 5.5.0 Requested action not taken: mailbox unavailable"). 5.7.x is
# left out: "554 5.7.1 Recipient address rejected: Access denied" is policy.
_UNKNOWN_CLASS = r"^5\.[015]\.\d+$"
_ANY_FAILURE = r"^[45]\."

_USER_UNKNOWN = (
    r"user unknown|unknown user|no such (user|mailbox|recipient|address|account)"
    r"|mailbox unavailable|mailbox not found|recipient not found|unknown recipient"
    r"|recipient address rejected|invalid (recipient|mailbox|address)"
    r"|(address|account|mailbox|user) (does not|doesn't|doesn.t) exist"
    r"|does not exist|doesn't have an? [\w.-]+ account|not a valid (mailbox|recipient)"
    r"|unrouteable address|no mailbox here|addressee unknown|undeliverable address"
)
_MAILBOX_FULL = (
    r"over ?quota|quota exceeded|exceeded (its |the )?(storage )?quota"
    r"|mailbox (is )?full|inbox (is )?full|mailbox.{0,20}exceeded|full mailbox"
    r"|out of storage space|insufficient (mailbox )?storage for (the )?(user|recipient)"
    r"|exceeded storage allocation|user is over"
)
_TOO_LARGE = (
    r"too (large|big)|size (limit|exceed)|exceeds? .{0,40}(size|limit)|message size"
    r"|message length exceeds|maximum (message )?size"
)
_ATTACHMENT = (
    r"attachment|file ?type|file extension|executable|prohibited file|banned file"
    r"|\.(exe|scr|bat|js|vbs)\b"
)
_CONTENT = (
    r"spam|unsolicited|junk|content|policy|phish|virus|malware|suspicious|bulk mail"
    r"|blocked message|message (was )?(blocked|rejected)"
)
# Aimed at the sending IP or domain, not the address.
_IP_BLOCK = (
    r"block ?list|black ?list|deny ?list|blocked using|listed (in|on|at|by)"
    r"|spamhaus|spamcop|barracuda|sorbs|\brbl\b|dnsbl|banned sending ip"
    r"|client host .{0,80}(blocked|rejected)|poor reputation|\(S3\d{3}\)"
)
_RATE = (
    r"unusual rate|rate limit|rate-limit|too many (messages|connections|recipients)"
    r"|temporarily (deferred|rate limited)|\[TS[S]?\d+\]|throttl|try again later"
)
_AUTH = r"unauthenticated|spf|dkim|dmarc|authentication (check )?fail"

DEFAULT_RULES: tuple[Rule, ...] = (
    # Our own verdicts first: the spool records an account-suppressed recipient with
    # status 5.1.1, which would otherwise read as NoEmail.
    _p("OnAccountSuppressionList",
       text=r"account-level suppression list|suppression list for your account"
            r"|on ?account ?suppression ?list|recipient unsubscribed from"),
    _p("Suppressed",
       text=r"global suppression list|recent history of bouncing"),
    # Specific enhanced codes, regardless of wording.
    _t("MailboxFull", status=r"^[45]\.2\.2$"),  # SES: mailbox full is Transient, 4xx or 5xx
    _t("MessageTooLarge", status=r"^[45]\.(3\.4|2\.3)$"),
    _p("NoEmail", status=r"^5\.1\.(1|2|3|6|10)$"),
    _p("NoEmail", status=r"^5\.4\.4$",
       text=r"not found|nxdomain|no such domain|domain (does not|doesn't) exist"),
    # Microsoft 5.7.606-5.7.649: "Access denied, banned sending IP".
    _t("General", status=r"^5\.7\.6(0[6-9]|[1-4]\d)$"),
    # 5.7.20-5.7.29: SPF/DKIM/DMARC/reverse DNS of the sender (Gmail 5.7.26 etc).
    _t("General", status=r"^5\.7\.2\d$"),
    # Wording, within a failure class.
    _t("General", status=_ANY_FAILURE, text=_IP_BLOCK),
    _t("General", status=_ANY_FAILURE, text=_RATE),
    _t("AttachmentRejected", status=_ANY_FAILURE, text=_ATTACHMENT),
    _t("MailboxFull", status=_ANY_FAILURE, text=_MAILBOX_FULL),
    _t("MessageTooLarge", status=_ANY_FAILURE, text=_TOO_LARGE),
    # A bare 552 without better evidence: size (RFC 5321 "exceeded storage allocation"
    # is read as quota above, when it says so).
    _t("MessageTooLarge", code=r"^552$", status=r"^5\.[03]\.\d+$"),
    _p("NoEmail", status=_UNKNOWN_CLASS, text=_USER_UNKNOWN),
    _t("ContentRejected", status=r"^[45]\.[07]\.\d+$", text=_CONTENT),
    _t("General", status=r"^5\.7\.\d+$", text=_AUTH),
    # Whatever is left, by class; Undetermined only without any class at all.
    _p("General", status=r"^5\."),
    _t("General", status=r"^4\."),
    Rule(UNDETERMINED, "Undetermined"),
)


def effective_code_and_status(code: int | None, status: str, diagnostic: str) -> tuple[str, str]:
    """The reply code and enhanced status the rules see, filling gaps from the text.

    An asynchronous DSN may carry no reply code, and a remote that answers "550 no such
    user" carries no enhanced code; both are then taken from the diagnostic, and the
    status falls back to the class of the reply code ("5.0.0"), as RFC 3463 allows.
    """
    code_text = "" if code is None else str(code)
    if not code_text:
        found = _REPLY_CODE.search(diagnostic)
        code_text = found.group(1) if found else ""
    status = status.strip()
    if _STATUS.match(status):
        # Exim and others write "Status: 5.0.0" above "Diagnostic-Code: smtp; 550 5.1.1
        # ...": the remote's own, more specific code of the same class is the better one.
        if status.endswith(".0.0"):
            found = _REPLY_STATUS.search(diagnostic)
            if found and found.group(1)[0] == status[0]:
                return code_text, found.group(1)
        return code_text, status
    found = _REPLY_STATUS.search(diagnostic) or _ANY_STATUS.search(diagnostic)
    if found:
        return code_text, found.group(1)
    if code_text[:1] in ("4", "5"):
        return code_text, f"{code_text[0]}.0.0"
    return code_text, ""


def classify(code: int | None, status: str, diagnostic: str,
             rules: Sequence[Rule] = DEFAULT_RULES) -> tuple[str, str]:
    """(bounceType, bounceSubType) of a failure; the first matching rule decides."""
    code_text, effective = effective_code_and_status(code, status, diagnostic)
    # Multi-line replies arrive with CRLFs; wording rules should not care.
    text = " ".join(diagnostic.split())
    for rule in rules:
        if rule.matches(code_text, effective, text):
            return rule.bounce_type, rule.bounce_subtype
    # A custom table without a catch-all row.
    return UNDETERMINED, "Undetermined"


_CONFIG_KEYS = frozenset({"bounce_type", "bounce_subtype", "status", "text", "code"})


def rules_from_config(items: list[dict[str, str]]) -> tuple[Rule, ...]:
    """Operator rules from the configuration, checked; the caller puts them before
    DEFAULT_RULES. ValueError names the rule's index for any problem."""
    rules: list[Rule] = []
    for index, item in enumerate(items):
        where = f"bounce rule {index}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(item).__name__}")
        unknown = set(item) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        bounce_type = item.get("bounce_type")
        subtype = item.get("bounce_subtype")
        if (bounce_type, subtype) not in SES_BOUNCE_TYPES:
            known = ", ".join(f"{t}/{s}" for t, s in sorted(SES_BOUNCE_TYPES))
            raise ValueError(f"{where}: {bounce_type}/{subtype} is not an SES bounce type "
                             f"(one of {known})")
        patterns: dict[str, str] = {}
        for key in ("status", "text", "code"):
            value = item.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"{where}: {key} must be a string")
            patterns[key] = value
        if not patterns:
            # A catch-all in front of the defaults would swallow every bounce.
            raise ValueError(f"{where}: needs at least one of status, text, code")
        try:
            rules.append(Rule(str(bounce_type), str(subtype), **patterns))
        except re.error as exc:
            raise ValueError(f"{where}: bad regex: {exc}") from None
    return tuple(rules)
