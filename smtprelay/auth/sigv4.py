"""AWS Signature Version 4 verification for the SES-compatible API: pure, no I/O.

The HTTP layer turns a request into a SignedRequest and calls, in order:

1. ``parse(request, now=..., max_skew=...)`` reads the ``Authorization:
   AWS4-HMAC-SHA256 Credential=AKID/YYYYMMDD/REGION/SERVICE/aws4_request,
   SignedHeaders=..., Signature=...`` header and the request time (``X-Amz-Date``, else
   ``Date`` in the same ISO 8601 basic format), and checks what needs no secret: the
   header's shape, the scope (service ``ses``, any region, terminator ``aws4_request``,
   scope date = request date), ``host`` among the signed headers, no session token
   (this server issues none), and the clock skew. It returns an Authorization naming
   the access key id, or a SigV4Error.
2. The caller looks the secret up by ``access_key_id`` (asynchronously, elsewhere); an
   unknown or disabled key is ``unknown_key()``.
3. ``verify(request, authorization, secret)`` rebuilds the signature as the client did
   and compares it in constant time:
   - canonical request = method, canonical path, canonical query, the signed headers
     (lower-case name, ``:``, values trimmed with inner whitespace collapsed, repeated
     values joined by ``,``), the signed-header list, the payload's SHA-256 in hex;
   - the path as every non-S3 service does it: dot segments and empty segments
     removed, then the path *as sent* (already percent-encoded) encoded once more,
     so ``%`` becomes ``%25``;
   - the query: each name and value decoded, re-encoded with only ``A-Za-z0-9-_.~``
     left bare, sorted by name then value;
   - string to sign = ``AWS4-HMAC-SHA256``, the request time, the scope, the
     canonical request's SHA-256; signing key = HMAC chain over ``AWS4`` + secret,
     date, region, service, ``aws4_request`` (cached: four HMACs a request otherwise).

References: AWS IAM User Guide, "Create a signed AWS API request" and "Elements of an
AWS API request signature"; botocore.auth.SigV4Auth, the signer the tests check
against. Services: both SES models (botocore/data/ses/2010-12-01 and
sesv2/2019-09-27) sign as ``ses`` (``signingName``; the endpoint prefix ``email`` is
never a scope), so only ``ses`` is accepted.

Error codes differ by protocol (see Failure and aws_errors): SES v2 (REST-JSON)
answers InvalidSignatureException / UnrecognizedClientException /
IncompleteSignatureException / MissingAuthenticationTokenException, all 403; SES v1
(Query) SignatureDoesNotMatch / InvalidClientTokenId / MissingAuthenticationToken
(403) and IncompleteSignature (400). A stale or future request time is a signature
error with AWS's "Signature expired: ..." text in both, as SES sends it.
"""

from __future__ import annotations

import datetime
import enum
import functools
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus

from smtprelay.auth.aws_errors import ErrorResponse, Protocol, render

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICES = frozenset({"ses"})
TERMINATOR = "aws4_request"
# AWS's own limit for SigV4 requests ("... - 5 min." in SES's expiry message).
DEFAULT_MAX_SKEW = 300.0

_ISO_BASIC = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
# AWS splits the header's parameters on commas and white space alike: that is why
# "Credential= AKID/..." is reported as "'AKID/...' not a valid key=value pair".
_PARAM_SEPARATORS = re.compile(r"[\s,]+")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
# Characters that stay bare in the canonical query (RFC 3986 unreserved).
_QUERY_SAFE = "-_.~"


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """An HTTP request as received: the raw path and query exactly as sent (still
    percent-encoded), every header line (a name may repeat), the whole body."""

    method: str
    path: str
    query: str
    headers: Sequence[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        """The values of a header, in order; `name` in lower case."""
        return [value for key, value in self.headers if key.lower() == name]


class Failure(enum.Enum):
    """What went wrong, independent of the protocol; the codes are chosen per protocol."""

    MISSING = "missing"          # no Authorization header at all
    INCOMPLETE = "incomplete"    # an Authorization header that cannot be read
    SIGNATURE = "signature"      # readable, but wrong: mismatch, scope, clock
    UNKNOWN_KEY = "unknown_key"  # the access key id (or a session token) is not ours


# (code, HTTP status) for SES v2 (REST-JSON) and SES v1 (Query). REST-JSON services
# answer authentication failures with 403 (SES v2's own InvalidSignatureException is
# a 403); the Query protocol keeps IncompleteSignature at 400, as SES v1 sends it.
_CODES: dict[Failure, dict[Protocol, tuple[str, int]]] = {
    Failure.MISSING: {"json": ("MissingAuthenticationTokenException", 403),
                      "query": ("MissingAuthenticationToken", 403)},
    Failure.INCOMPLETE: {"json": ("IncompleteSignatureException", 403),
                         "query": ("IncompleteSignature", 400)},
    Failure.SIGNATURE: {"json": ("InvalidSignatureException", 403),
                        "query": ("SignatureDoesNotMatch", 403)},
    Failure.UNKNOWN_KEY: {"json": ("UnrecognizedClientException", 403),
                          "query": ("InvalidClientTokenId", 403)},
}
_MISSING_MESSAGES: dict[Protocol, str] = {
    "json": "Missing Authentication Token",
    "query": "Request is missing Authentication Token",
}
MISMATCH_MESSAGE = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)
UNKNOWN_KEY_MESSAGE = "The security token included in the request is invalid."


@dataclass(frozen=True, slots=True)
class SigV4Error:
    failure: Failure
    detail: str = ""  # the message; MISSING has a fixed one per protocol instead

    def code(self, protocol: Protocol) -> str:
        return _CODES[self.failure][protocol][0]

    def status(self, protocol: Protocol) -> int:
        return _CODES[self.failure][protocol][1]

    def message(self, protocol: Protocol) -> str:
        if self.failure is Failure.MISSING:
            return _MISSING_MESSAGES[protocol]
        return self.detail

    def render(self, protocol: Protocol, request_id: str) -> ErrorResponse:
        return render(protocol, self.code(protocol), self.message(protocol),
                      self.status(protocol), request_id)


MISSING = SigV4Error(Failure.MISSING)
MISMATCH = SigV4Error(Failure.SIGNATURE, MISMATCH_MESSAGE)


def unknown_key() -> SigV4Error:
    """For the caller: the access key id is not known, or is disabled (AWS answers an
    inactive key the same way)."""
    return SigV4Error(Failure.UNKNOWN_KEY, UNKNOWN_KEY_MESSAGE)


@dataclass(frozen=True, slots=True)
class Authorization:
    """A readable Authorization header whose scope and time passed; not yet verified."""

    access_key_id: str
    request_time: str  # the X-Amz-Date (or Date) value, ISO 8601 basic
    date: str          # the scope's YYYYMMDD
    region: str
    service: str
    signed_headers: tuple[str, ...]  # lower case, in the client's order
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"


def parse(request: SignedRequest, *, now: float,
          max_skew: float = DEFAULT_MAX_SKEW) -> Authorization | SigV4Error:
    headers = request.header("authorization")
    if not headers:
        if "x-amz-algorithm=" in request.query.lower():
            # SDKs never presign SES calls; say so rather than "missing token".
            return SigV4Error(Failure.INCOMPLETE,
                              "Query-string (presigned) authentication is not supported; "
                              "sign the request with an Authorization header.")
        return MISSING
    if len(headers) > 1:
        return SigV4Error(Failure.INCOMPLETE, "The request has more than one Authorization header.")
    header = headers[0]
    algorithm, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    if algorithm == ALGORITHM:
        for part in _PARAM_SEPARATORS.split(rest):
            if not part:
                continue
            name, equals, value = part.partition("=")
            if not equals:
                return SigV4Error(
                    Failure.INCOMPLETE,
                    f"'{part}' not a valid key=value pair (missing equal-sign) in "
                    f"Authorization header: '{header}'.")
            params[name] = value
    elif algorithm.startswith("AWS4-"):
        # SigV4a (AWS4-ECDSA-P256-SHA256) is only for multi-region endpoints.
        return SigV4Error(Failure.INCOMPLETE, f"Unsupported AWS 'algorithm': '{algorithm}'")
    # Any other scheme (AWS's v2 "AWS AKID:sig", a bearer token) has none of the three
    # parameters, and AWS reports exactly that.
    amz_date = request.header("x-amz-date") or request.header("date")
    problems = [f"Authorization header requires '{name}' parameter. "
                for name in ("Credential", "Signature", "SignedHeaders") if name not in params]
    if not amz_date:
        problems.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ")
    if problems:
        return SigV4Error(Failure.INCOMPLETE, "".join(problems) + f"Authorization={header}")

    request_time = amz_date[0].strip()
    when = _parse_time(request_time)
    if when is None:
        return SigV4Error(Failure.INCOMPLETE,
                          f"Date must be in ISO-8601 'basic format'. Got '{request_time}'. "
                          "See http://en.wikipedia.org/wiki/ISO_8601")

    credential = params["Credential"]
    scope = credential.split("/")
    if len(scope) != 5:
        return SigV4Error(Failure.INCOMPLETE,
                          "Credential should be of the form "
                          f"'<access key id>/YYYYMMDD/<region>/<service>/{TERMINATOR}', "
                          f"not '{credential}'.")
    access_key_id, date, region, service, terminator = scope
    # The texts below, trailing spaces included, are AWS's.
    if terminator != TERMINATOR:
        return SigV4Error(Failure.SIGNATURE,
                          "Credential should be scoped with a valid terminator: "
                          f"'{TERMINATOR}', not '{terminator}'. ")
    if service not in SERVICES:
        return SigV4Error(Failure.SIGNATURE,
                          f"Credential should be scoped to correct service: '{min(SERVICES)}'. ")
    if not region:
        return SigV4Error(Failure.SIGNATURE, "Credential should be scoped to a valid region. ")
    if date != request_time[:8]:
        return SigV4Error(Failure.SIGNATURE,
                          "Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                          f"version of date from HTTP: '{date}' != '{request_time[:8]}', "
                          f"from '{request_time}'.")
    signed_headers = tuple(name.lower() for name in params["SignedHeaders"].split(";"))
    if "host" not in signed_headers:
        return SigV4Error(Failure.SIGNATURE,
                          "'Host' must be a 'SignedHeader' in the AWS Authorization.")
    if request.header("x-amz-security-token"):
        # Temporary credentials come from AWS STS; no token can be one of ours.
        return unknown_key()

    minutes = f"{max_skew / 60:g}"
    if when < now - max_skew:
        return SigV4Error(Failure.SIGNATURE,
                          f"Signature expired: {request_time} is now earlier than "
                          f"{_format_time(now - max_skew)} ({_format_time(now)} - {minutes} min.)")
    if when > now + max_skew:
        return SigV4Error(Failure.SIGNATURE,
                          f"Signature not yet current: {request_time} is still later than "
                          f"{_format_time(now + max_skew)} ({_format_time(now)} + {minutes} min.)")
    return Authorization(access_key_id, request_time, date, region, service, signed_headers,
                         params["Signature"])


def payload_hash(body: bytes) -> str:
    """The body's SHA-256 as the canonical request has it (hashlib lets go of the GIL
    for large bodies, so a caller may run this in a thread)."""
    return hashlib.sha256(body).hexdigest()


def verify(request: SignedRequest, authorization: Authorization, secret: str, *,
           body_hash: str | None = None) -> SigV4Error | None:
    """None when the signature is the one `secret` makes for this request; `body_hash`:
    payload_hash(request.body) when the caller has it already."""
    payload_hash = body_hash or hashlib.sha256(request.body).hexdigest()
    values: dict[str, list[str]] = {}
    for name, value in request.headers:
        values.setdefault(name.lower(), []).append(value)
    declared = values.get("x-amz-content-sha256")
    # The client may sign a declared payload hash instead of hashing the body itself
    # (the AWS CLI and S3 clients do); only the body's real hash is accepted, which
    # also refuses UNSIGNED-PAYLOAD: SES bodies are small and always signed.
    if declared and declared[0].strip() != payload_hash:
        return MISMATCH
    headers = "".join(
        f"{name}:{','.join(' '.join(v.split()) for v in values.get(name, ()))}\n"
        for name in authorization.signed_headers)
    head = f"{request.method}\n{_canonical_path(request.path)}\n"
    tail = f"\n{headers}\n{';'.join(authorization.signed_headers)}\n{payload_hash}"
    key = signing_key(secret, authorization.date, authorization.region, authorization.service)
    try:
        provided = authorization.signature.encode("utf-8", "surrogateescape")
        query = _canonical_query(request.query)
        if hmac.compare_digest(_sign(key, authorization, head + query + tail), provided):
            return None
        # A signer that took the query string as sent, without decoding it (botocore
        # does, for a URL it was given whole), differs only where the client left
        # characters unencoded; the bytes it signed are still exactly those received.
        raw = _raw_canonical_query(request.query)
        if raw != query and hmac.compare_digest(_sign(key, authorization, head + raw + tail),
                                                provided):
            return None
    except UnicodeEncodeError:
        pass  # text no client could have signed: a lone surrogate that was not a byte
    return MISMATCH


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    # Not hmac.digest(): CPython's one-shot HMAC lets go of the GIL on every call, however
    # short the message, so that another of the relay's threads (the spool writer, a
    # hashing thread) runs before the event loop goes on; under the SES API's 50 KB load
    # py-spy had 5.5% of the relay's samples on that call (bench/run_ses_api.py).
    # hmac.new keeps the GIL for messages under 2 KB, as hashlib does.
    return hmac.new(key, message, "sha256").digest()


def derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac_sha256(("AWS4" + secret).encode("utf-8"), _bytes(date))
    key = _hmac_sha256(key, _bytes(region))
    key = _hmac_sha256(key, _bytes(service))
    return _hmac_sha256(key, TERMINATOR.encode("ascii"))


# One key per secret and day and region: a busy client reuses it for every request of
# the day. Bounded, so that many keys (or regions) cost recomputation, not memory.
signing_key = functools.lru_cache(maxsize=1024)(derive_signing_key)


def _sign(key: bytes, authorization: Authorization, canonical_request: str) -> bytes:
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{authorization.request_time}\n{authorization.scope}\n{digest}"
    return _hmac_sha256(key, _bytes(string_to_sign)).hex().encode("ascii")


def _bytes(text: str) -> bytes:
    # Header text may carry undecodable bytes as surrogates (aiohttp decodes that way);
    # encoding them back gives the bytes the client signed.
    return text.encode("utf-8", "surrogateescape")


def _canonical_path(path: str) -> str:
    # RFC 3986 dot-segment removal plus the removal of empty segments that AWS services
    # expect (botocore.utils.remove_dot_segments), then the second encoding.
    if not path:
        return "/"
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = ("/" if path.startswith("/") else "") + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~", errors="surrogateescape")


def _canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_reencode(name), _reencode(value)))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _reencode(text: str) -> str:
    # "+" is a space in a query string, as in the form encoding SDKs use (urlencode).
    return quote(unquote_plus(text, errors="surrogateescape"), safe=_QUERY_SAFE,
                 errors="surrogateescape")


def _raw_canonical_query(query: str) -> str:
    # botocore.auth.SigV4Auth._canonical_query_string_url, to the letter.
    if not query:
        return ""
    pairs = sorted(part.partition("=")[::2] for part in query.split("&"))
    return "&".join(f"{name}={value}" for name, value in pairs)


def _parse_time(text: str) -> float | None:
    match = _ISO_BASIC.fullmatch(text)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = map(int, match.groups())
        when = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.UTC)
    except ValueError:
        return None
    return (when - _EPOCH).total_seconds()


def _format_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
