"""Every SMTP reply the server sends, in one place: SES texts (SPEC section 7) where SES has one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # enhanced status code first, as RFC 2034 asks

    def render(self) -> bytes:
        lines = self.text.split("\n")
        out = [f"{self.code}-{line}" for line in lines[:-1]]
        out.append(f"{self.code} {lines[-1]}")
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    @property
    def is_success(self) -> bool:
        return self.code < 400


def accepted(message_id: str) -> Reply:
    return Reply(250, f"2.0.0 Ok {message_id}")


def greeting(hostname: str) -> Reply:
    return Reply(220, f"{hostname} ESMTP smtprelay")


def data_line_too_long(limit: int) -> Reply:
    return Reply(554, f"5.6.0 Message rejected: a line is longer than {limit} octets "
                      "(RFC 5321 4.5.3.1.6)")


def malformed_header(detail: str) -> Reply:
    return Reply(554, f"5.6.0 Message rejected: malformed header section ({detail})")


def blocked_attachment(filename: str, extension: str) -> Reply:
    # The name comes from the message: escaped to ASCII so the reply line stays 7-bit.
    filename = filename.encode("ascii", "backslashreplace").decode("ascii")
    return Reply(554, f"5.6.1 Message rejected: attachment '{filename}' has a file extension "
                      f"that is not allowed ({extension})")


def duplicate_header(name: str) -> Reply:
    return Reply(554, f"5.6.0 Message rejected: duplicate header {name!r}; it may appear "
                      "only once")


def not_verified(identities: list[str]) -> Reply:
    shown = ", ".join(identities[:5]) + (", ..." if len(identities) > 5 else "")
    return Reply(554, "5.7.1 Message rejected: Email address is not verified. "
                      f"The following identities failed the check: {shown}")


AUTH_OK = Reply(235, "2.7.0 Authentication successful")
OK = Reply(250, "2.0.0 Ok")
RCPT_OK = Reply(250, "2.1.5 Ok")
MAIL_OK = Reply(250, "2.1.0 Ok")
BYE = Reply(221, "2.0.0 Bye")
READY_TLS = Reply(220, "2.0.0 Ready to start TLS")
START_DATA = Reply(354, "End data with <CR><LF>.<CR><LF>")
VRFY = Reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0 See https://www.rfc-editor.org/rfc/rfc5321")

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0 Too many concurrent SMTP connections")
TOO_MANY_ERRORS = Reply(421, "4.7.0 Too many errors, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2 Service shutting down, try again later")
SERVICE_UNAVAILABLE = Reply(421, "4.3.0 Service temporarily unavailable, try again later")
LOCAL_ERROR = Reply(451, "4.3.0 Temporary service failure")
TIMEOUT = Reply(451, "4.4.2 Timeout waiting for data from client")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3 Too many recipients")
STORAGE_FULL = Reply(452, "4.3.1 Insufficient system storage")
AUTH_TEMP_FAILURE = Reply(454, "4.7.0 Temporary authentication failure")
AUTH_LOCKED = Reply(454, "4.7.0 Too many failed authentication attempts, try again later")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0 TLS not available due to temporary reason")

UNRECOGNIZED = Reply(500, "5.5.2 Error: command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2 Error: line too long")
NUL_IN_COMMAND = Reply(500, "5.5.2 Error: NUL character in command")
SYNTAX_PARAMS = Reply(501, "5.5.4 Error: this command takes no parameters")
HELO_SYNTAX = Reply(501, "5.5.4 Syntax: HELO hostname")
EHLO_SYNTAX = Reply(501, "5.5.4 Syntax: EHLO hostname")
MAIL_SYNTAX = Reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(501, "5.5.4 Syntax: RCPT TO:<address>")
AUTH_CANCELLED = Reply(501, "5.0.0 Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2 Cannot decode response")
AUTH_SYNTAX = Reply(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
NOT_IMPLEMENTED = Reply(502, "5.5.1 Error: command not implemented")
NEED_HELO = Reply(503, "5.5.1 Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1 Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1 Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1 Error: need RCPT command")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1 Error: already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1 Error: AUTH not allowed during a mail transaction")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1 Error: TLS already active")
STARTTLS_NOT_OFFERED = Reply(502, "5.5.1 Error: STARTTLS not offered on this listener")
AUTH_NOT_OFFERED = Reply(503, "5.5.1 Error: authentication not enabled on this listener")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4 Unrecognized authentication type")
AUTH_REQUIRED = Reply(530, "5.7.0 Authentication required")
TLS_REQUIRED = Reply(530, "5.7.0 Must issue a STARTTLS command first")
AUTH_INVALID = Reply(535, "5.7.8 Authentication Credentials Invalid")
TOO_BIG = Reply(552, "5.3.4 Message is too long.")
PARAM_UNKNOWN = Reply(555, "5.5.4 Unsupported option")
BODY_UNKNOWN = Reply(501, "5.5.4 Error: BODY must be 7BIT or 8BITMIME")
SIZE_SYNTAX = Reply(501, "5.5.4 Error: SIZE takes a number of octets")
NEEDS_SMTPUTF8 = Reply(
    553, "5.6.7 Error: a non-ASCII address needs the SMTPUTF8 parameter on MAIL FROM")
BARE_LINE_ENDING = Reply(
    554, "5.6.0 Message rejected: bare CR or LF in message data; lines must end with CRLF"
)
NUL_IN_DATA = Reply(
    554, "5.6.0 Message rejected: NUL character in message data; encode binary content "
    "(base64)")
NO_FROM = Reply(554, "5.6.0 Message rejected: the message has no From header")
SET_PAUSED = Reply(554, "5.7.1 Sending paused for this configuration set")
ACCOUNT_PAUSED = Reply(554, "5.7.1 Sending paused for this account")
SET_UNKNOWN = Reply(554, "5.3.0 Configuration set does not exist")


def nested_too_deep(field: str, limit: int) -> Reply:
    return Reply(554, f"5.6.0 Message rejected: comments nest more than {limit} levels "
                      f"deep in the {field} header")


def access_denied(user: str, arn: str) -> Reply:
    """SES's refusal of a cross-account send the identity's policy does not allow."""
    shown = "".join(c if " " <= c < "\x7f" else "?" for c in arn)[:200]
    return Reply(554, f"5.7.1 Access denied: User {user} is not authorized to perform "
                      f"ses:SendRawEmail on resource {shown}")


def mail_from_not_verified(domain: str) -> Reply:
    """SES's MailFromDomainNotVerified: the identity's custom MAIL FROM domain has no
    MX record and its behavior on MX failure is to reject."""
    return Reply(554, f"5.7.1 Message rejected: MailFromDomainNotVerified: the MAIL FROM "
                      f"domain {domain} has no MX record")


def contact_list_unknown(name: str) -> Reply:
    """X-SES-LIST-MANAGEMENT-OPTIONS names a list the sending account does not have (SES
    documents no SMTP text; its API says NotFoundException). A list of another account
    gets the same answer, so nothing is learnt about other accounts."""
    return Reply(554, f"5.3.0 Message rejected: Contact list {name} does not exist")


def topic_unknown(contact_list: str, topic: str) -> Reply:
    return Reply(554, f"5.3.0 Message rejected: Topic {topic} does not exist in contact "
                      f"list {contact_list}")


def bad_list_management(detail: str) -> Reply:
    # The detail quotes the header's value: escaped to ASCII so the reply stays 7-bit.
    detail = detail.encode("ascii", "backslashreplace").decode("ascii")[:300]
    return Reply(554, "5.6.0 Message rejected: X-SES-LIST-MANAGEMENT-OPTIONS must be "
                      f"'<list>; topic=<topic>' (topic optional): {detail}")


RATE_EXCEEDED = Reply(454, "4.7.0 Throttling failure: Maximum sending rate exceeded")
DAILY_QUOTA_EXCEEDED = Reply(454, "4.7.0 Throttling failure: Daily message quota exceeded")
DUPLICATE_OPEN_TRACKER = Reply(
    554, "5.6.0 Message rejected: more than one {{ses:openTracker}} placeholder; use at most one")
BAD_MIME = Reply(554, "5.6.0 Message rejected: the MIME structure cannot be parsed")
