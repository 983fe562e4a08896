"""The SES API's refusals: AWS error codes and HTTP statuses, so that each SDK raises
the exception its users catch (botocore maps the code to `client.exceptions.<Code>`).

The pipeline answers with SMTP replies (smtprelay.mail.replies); `refusal` turns one
into the error SES's API gives for the same case. SES v2 (REST-JSON) and v1 (Query)
name some of them differently: the v1 names are SES's classic ones
(`ConfigurationSetDoesNotExist`, `Throttling`...), the v2 ones come from the SESv2
model (`NotFoundException`, `TooManyRequestsException`...).
"""

from __future__ import annotations

from dataclasses import dataclass

from smtprelay.auth.aws_errors import Protocol
from smtprelay.mail import replies as R
from smtprelay.mail.replies import Reply

V2: Protocol = "json"  # SES v2, REST-JSON
V1: Protocol = "query"  # SES v1, the Query protocol with XML answers


@dataclass(frozen=True, slots=True)
class ApiError(Exception):
    code: str
    message: str
    status: int = 400
    # "Sender" (the caller's fault) or "Receiver" (ours), as the Query protocol says.
    fault: str = "Sender"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def bad_request(message: str, protocol: Protocol = V2) -> ApiError:
    return ApiError("BadRequestException" if protocol == V2
                    else "InvalidParameterValue", message)


def not_found(message: str, protocol: Protocol = V2) -> ApiError:
    return ApiError("NotFoundException", message, 404) if protocol == V2 \
        else ApiError("NotFoundException", message, 400)


def unavailable(message: str) -> ApiError:
    # 503 with this code: every SDK's default retry policy tries again.
    return ApiError("ServiceUnavailable", message, 503, "Receiver")


def _text(reply: Reply) -> str:
    """The reply's words without its enhanced status code ("5.7.1 ...")."""
    code, _, words = reply.text.partition(" ")
    return words if code[:1].isdigit() else reply.text


# Refusals with a fixed reply: (v2 code, v2 status, v1 code, message).
_FIXED: dict[Reply, tuple[str, int, str, str]] = {
    R.RATE_EXCEEDED: ("TooManyRequestsException", 429, "Throttling",
                      "Maximum sending rate exceeded."),
    R.DAILY_QUOTA_EXCEEDED: ("TooManyRequestsException", 429, "Throttling",
                             "Daily message quota exceeded."),
    R.SET_PAUSED: ("SendingPausedException", 400, "ConfigurationSetSendingPausedException",
                   "Sending is paused for this configuration set."),
    R.ACCOUNT_PAUSED: ("SendingPausedException", 400, "AccountSendingPausedException",
                       "Sending is paused for this account."),
}


def refusal(reply: Reply, protocol: Protocol, *, configuration_set: str | None = None
            ) -> ApiError:
    """The API error for a pipeline reply that is not a success."""
    fixed = _FIXED.get(reply)
    if fixed is not None:
        v2_code, v2_status, v1_code, message = fixed
        if protocol == V2:
            return ApiError(v2_code, message, v2_status)
        return ApiError(v1_code, message, 400)
    if reply is R.SET_UNKNOWN:
        message = f"Configuration set <{configuration_set}> does not exist."
        return ApiError("NotFoundException", message, 404) if protocol == V2 \
            else ApiError("ConfigurationSetDoesNotExist", message, 400)
    if reply.code in (421, 451, 452, 454):
        # The relay could not take it now (its store, its disk): the client tries again.
        return unavailable(f"Service unavailable, try again: {_text(reply)}")
    text = _text(reply)
    if "MailFromDomainNotVerified" in text:
        # v1's model too gives this code its full shape name (unlike, say,
        # ConfigurationSetDoesNotExist), so botocore maps it to the exception.
        return ApiError("MailFromDomainNotVerifiedException", text)
    if text.startswith("Message rejected: Contact list") or \
            text.startswith("Message rejected: Topic"):
        return not_found(text.removeprefix("Message rejected: "), protocol)
    if text.startswith("Access denied"):
        return ApiError("AccessDeniedException" if protocol == V2
                        else "AccessDenied", text, 403)
    if reply.code in (530, 535):
        return ApiError("AccessDeniedException" if protocol == V2
                        else "AccessDenied", "The account of this key is not configured.",
                        403)
    return ApiError("MessageRejected", text.removeprefix("Message rejected: "))
