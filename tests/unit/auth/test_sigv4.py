"""SigV4 verification (smtprelay.auth.sigv4) against botocore, the independent signer:
botocore.auth.SigV4Auth on hand-made requests, and real boto3 clients (sesv2 REST-JSON,
ses Query) whose prepared requests are caught before they are sent."""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest, AWSResponse
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.parsers import create_parser
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.auth import sigv4
from smtprelay.auth.aws_errors import render_json, render_query_xml
from smtprelay.auth.sigv4 import Authorization, Failure, SignedRequest, SigV4Error
from tests.support import examples

AKID = "AKIDSMTPRELAYTEST01"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
ENDPOINT = "http://ses.relay.test:8443"
NEW_YEAR = datetime.datetime(2026, 1, 1, 0, 0, 0, tzinfo=datetime.UTC)
NEW_YEAR_EPOCH = NEW_YEAR.timestamp()
ODD = "ünï cödé +plus/slash%percent 100% & a=b ✉"


# -- building signed requests ---------------------------------------------------------

def from_prepared(prepared: AWSPreparedRequest) -> SignedRequest:
    """What the server receives: the URL's raw path and query, the headers botocore set
    plus the Host line the HTTP client adds (botocore signs it without setting it)."""
    url = urlsplit(prepared.url)
    headers = [(_text(k), _text(v)) for k, v in prepared.headers.items()]
    body = prepared.body or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    return SignedRequest(prepared.method, url.path, url.query, [*headers, ("Host", url.netloc)],
                         body)


def _text(value: str | bytes) -> str:
    # The way aiohttp decodes header bytes: a byte that is not UTF-8 survives as a
    # surrogate, and verification encodes it back.
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def botocore_signed(method: str = "POST", url: str = ENDPOINT + "/v2/email/outbound-emails",
                    body: bytes = b'{"a": 1}', headers: dict[str, str] | None = None, *,
                    secret: str = SECRET, region: str = "us-east-1", service: str = "ses",
                    params: Sequence[tuple[str, str]] | None = None,
                    when: datetime.datetime | None = None) -> SignedRequest:
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {},
                         params=list(params) if params else None)
    signer = SigV4Auth(Credentials(AKID, secret), service, region)
    if when is None:
        signer.add_auth(request)
    else:
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            signer.add_auth(request)
    return from_prepared(request.prepare())


def parsed(request: SignedRequest, now: float | None = None,
           max_skew: float = 300) -> Authorization:
    result = sigv4.parse(request, now=time.time() if now is None else now, max_skew=max_skew)
    assert isinstance(result, Authorization), result
    return result


def check(request: SignedRequest, secret: str = SECRET,
          now: float | None = None) -> SigV4Error | None:
    """parse, then verify: the whole path a request takes."""
    result = sigv4.parse(request, now=time.time() if now is None else now, max_skew=300)
    if isinstance(result, SigV4Error):
        return result
    assert result.access_key_id == AKID
    return sigv4.verify(request, result, secret)


def replace_header(request: SignedRequest, name: str, value: str | None) -> SignedRequest:
    headers = [(k, v) for k, v in request.headers if k.lower() != name.lower()]
    if value is not None:
        headers.append((name, value))
    return SignedRequest(request.method, request.path, request.query, headers, request.body)


def with_fields(request: SignedRequest, **changes: Any) -> SignedRequest:
    fields = {"method": request.method, "path": request.path, "query": request.query,
              "headers": request.headers, "body": request.body} | changes
    return SignedRequest(**fields)


def authorization_header(request: SignedRequest) -> str:
    return request.header("authorization")[0]


# -- real boto3 clients, caught before-send -------------------------------------------

class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def client(service: str, region: str, *, secret: str = SECRET,
           reply: Callable[[AWSPreparedRequest], tuple[int, dict[str, str], bytes]]
           ) -> tuple[Any, list[AWSPreparedRequest]]:
    session = boto3.session.Session(aws_access_key_id=AKID, aws_secret_access_key=secret,
                                    region_name=region)
    made = session.client(service, endpoint_url=ENDPOINT,
                          config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    sent: list[AWSPreparedRequest] = []

    def before_send(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
        sent.append(request)
        status, headers, body = reply(request)
        return AWSResponse(request.url, status, headers, _Raw(body))

    made.meta.events.register("before-send", before_send)
    return made, sent


def sesv2_ok(_: AWSPreparedRequest) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, b'{"MessageId": "m-1"}'


def ses_v1_ok(_: AWSPreparedRequest) -> tuple[int, dict[str, str], bytes]:
    body = ('<SendRawEmailResponse xmlns="http://ses.amazonaws.com/doc/2010-12-01/">'
            "<SendRawEmailResult><MessageId>m-1</MessageId></SendRawEmailResult>"
            "<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata>"
            "</SendRawEmailResponse>")
    return 200, {"Content-Type": "text/xml"}, body.encode()


REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-2", "my-own-region-7"]


def sesv2_send_email(region: str) -> SignedRequest:
    ses, sent = client("sesv2", region, reply=sesv2_ok)
    ses.send_email(
        FromEmailAddress="Sénder <sender+tag@example.com>",
        Destination={"ToAddresses": ["to/slash%25@example.com"]},
        Content={"Simple": {"Subject": {"Data": ODD}, "Body": {"Text": {"Data": ODD * 20}}}},
        ConfigurationSetName="set 1+2",
    )
    [request] = sent
    return from_prepared(request)


def ses_v1_send_raw_email(region: str) -> SignedRequest:
    ses, sent = client("ses", region, reply=ses_v1_ok)
    raw = f"From: a@example.com\r\nSubject: {ODD}\r\n\r\n{ODD}\r\n".encode()
    ses.send_raw_email(Source="Sénder <a+b@example.com>", Destinations=["x%y@example.com"],
                       RawMessage={"Data": raw})
    [request] = sent
    return from_prepared(request)


@pytest.mark.parametrize("region", REGIONS)
def test_boto3_sesv2_send_email_verifies(region: str) -> None:
    request = sesv2_send_email(region)
    assert request.path == "/v2/email/outbound-emails"
    authorization = parsed(request)
    assert (authorization.region, authorization.service) == (region, "ses")
    assert sigv4.verify(request, authorization, SECRET) is None
    assert sigv4.verify(request, authorization, SECRET[:-1] + "X") == sigv4.MISMATCH


@pytest.mark.parametrize("region", REGIONS)
def test_boto3_ses_v1_send_raw_email_verifies(region: str) -> None:
    request = ses_v1_send_raw_email(region)
    assert (request.method, request.path) == ("POST", "/")
    assert b"Action=SendRawEmail" in request.body and b"%" in request.body
    assert check(request) is None
    assert check(request, secret="another secret") == sigv4.MISMATCH


def test_boto3_sesv2_odd_characters_in_path_and_query() -> None:
    ses, sent = client("sesv2", "eu-central-1", reply=lambda _: (200, {}, b"{}"))
    ses.get_suppressed_destination(EmailAddress="a b+c/d%é@exämple.com", TenantName=ODD)
    ses.list_email_templates(NextToken=ODD, PageSize=7)
    ses.get_blacklist_reports(BlacklistItemNames=["z ü", ODD, "a+b"])  # a repeated name
    suppressed, listing, repeated = (from_prepared(r) for r in sent)
    # botocore encoded the label (so "%" arrives as "%25") and the query's values.
    assert suppressed.path == ("/v2/email/suppression/addresses/"
                               "a%20b%2Bc%2Fd%25%C3%A9%40ex%C3%A4mple.com")
    assert "TenantName=%C3%BCn%C3%AF%20" in suppressed.query
    assert repeated.query.count("BlacklistItemNames=") == 3
    for request in (suppressed, listing, repeated):
        assert check(request) is None
    assert check(with_fields(suppressed, path=suppressed.path.replace("%2Fd", "%2Fe"))) \
        == sigv4.MISMATCH
    assert check(with_fields(listing, query=listing.query.replace("PageSize=7", "PageSize=8"))) \
        == sigv4.MISMATCH
    assert check(with_fields(repeated, query=repeated.query.replace("a%2Bb", "a%2Bc"))) \
        == sigv4.MISMATCH


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda r: with_fields(r, body=r.body[:-1] + bytes([r.body[-1] ^ 1])),
                 id="body-byte"),
    pytest.param(lambda r: with_fields(r, body=r.body + b" "), id="body-longer"),
    pytest.param(lambda r: with_fields(r, method="PUT"), id="method"),
    pytest.param(lambda r: with_fields(r, path=r.path + "x"), id="path"),
    pytest.param(lambda r: with_fields(r, path=r.path.upper()), id="path-case"),
    pytest.param(lambda r: with_fields(r, query="a=1"), id="query-added"),
    pytest.param(lambda r: replace_header(r, "Content-Type", "text/plain"), id="signed-header"),
    pytest.param(lambda r: replace_header(r, "Host", "other.test:8443"), id="host"),
    pytest.param(lambda r: replace_header(r, "X-Amz-Date", "20991231T235959Z"), id="date"),
])
def test_any_change_to_what_was_signed_is_refused(
        mutate: Callable[[SignedRequest], SignedRequest]) -> None:
    request = sesv2_send_email("us-east-1")
    assert check(request) is None
    changed = mutate(request)
    authorization = sigv4.parse(changed, now=time.time(), max_skew=10**10)  # not the clock's test
    error = (sigv4.verify(changed, authorization, SECRET)
             if isinstance(authorization, Authorization) else authorization)
    assert isinstance(error, SigV4Error) and error.failure is Failure.SIGNATURE, error


def test_unsigned_headers_and_header_whitespace_do_not_matter() -> None:
    request = botocore_signed(headers={"Content-Type": "application/json",
                                       "X-Spaced": "a   b \t c"})
    assert "x-spaced" in parsed(request).signed_headers
    # An HTTP hop may fold the spacing differently; AWS's trimming makes that harmless.
    respaced = replace_header(request, "X-Spaced", "  a b  c")
    assert check(replace_header(respaced, "User-Agent", "proxy/1.0")) is None


def test_repeated_header_values_are_joined_in_order() -> None:
    request = botocore_signed(headers={"X-Multi": "one,two"})
    split = replace_header(request, "X-Multi", None)
    split = with_fields(split, headers=[*split.headers, ("X-Multi", "one"), ("x-multi", "two")])
    assert check(split) is None
    swapped = replace_header(request, "X-Multi", None)
    swapped = with_fields(swapped,
                          headers=[*swapped.headers, ("X-Multi", "two"), ("X-Multi", "one")])
    assert check(swapped) == sigv4.MISMATCH


def test_declared_payload_hash_like_the_cli() -> None:
    body = b"Action=SendRawEmail&RawMessage.Data=" + ODD.encode()
    good = hashlib.sha256(body).hexdigest()
    assert check(botocore_signed(body=body, headers={"X-Amz-Content-SHA256": good})) is None
    # botocore signs whatever hash it is told; only the body's own hash may pass.
    for declared in (hashlib.sha256(b"other").hexdigest(), "UNSIGNED-PAYLOAD", good.upper()):
        request = botocore_signed(body=body, headers={"X-Amz-Content-SHA256": declared})
        assert check(request) == sigv4.MISMATCH, declared


def test_dot_segments_and_double_slashes_normalise_as_botocore() -> None:
    request = botocore_signed(url=ENDPOINT + "/v2/./email//x/../outbound-emails/")
    assert request.path == "/v2/./email//x/../outbound-emails/"
    assert check(request) is None


def test_query_signed_as_given_or_as_params() -> None:
    # A URL given whole: botocore signs its query as it stands, "+" and all.
    whole = botocore_signed(method="GET", url=ENDPOINT + "/v2/email/x?b=2+3&a=%7e&a=z", body=b"")
    assert check(whole) is None
    # Params: botocore signs "%20" and sends "+" (urlencode); the two must agree.
    params = botocore_signed(method="GET", url=ENDPOINT + "/v2/email/x", body=b"",
                             params=[("k y", "v+w ü"), ("a", "")])
    assert "+" in params.query
    assert check(params) is None


# -- clock --------------------------------------------------------------------------

def test_request_time_within_skew_either_side() -> None:
    request = botocore_signed(when=NEW_YEAR)
    for offset in (-300, 0, 300):
        assert check(request, now=NEW_YEAR_EPOCH + offset) is None, offset


def test_expired_request_has_aws_message() -> None:
    request = botocore_signed(when=NEW_YEAR)
    error = sigv4.parse(request, now=NEW_YEAR_EPOCH + 600, max_skew=300)
    assert isinstance(error, SigV4Error)
    assert error.message("query") == ("Signature expired: 20260101T000000Z is now earlier than "
                                      "20260101T000500Z (20260101T001000Z - 5 min.)")
    assert (error.code("query"), error.status("query")) == ("SignatureDoesNotMatch", 403)
    assert (error.code("json"), error.status("json")) == ("InvalidSignatureException", 403)
    just_out = sigv4.parse(request, now=NEW_YEAR_EPOCH + 301, max_skew=300)
    assert isinstance(just_out, SigV4Error) and just_out.detail.startswith("Signature expired")


def test_request_from_the_future_has_aws_message() -> None:
    request = botocore_signed(when=NEW_YEAR)
    error = sigv4.parse(request, now=NEW_YEAR_EPOCH - 901, max_skew=900)
    assert isinstance(error, SigV4Error) and error.failure is Failure.SIGNATURE
    assert error.detail == ("Signature not yet current: 20260101T000000Z is still later than "
                            "20251231T235959Z (20251231T234459Z + 15 min.)")


def test_date_header_in_basic_format_is_the_request_time() -> None:
    request = botocore_signed(when=NEW_YEAR)
    moved = replace_header(replace_header(request, "X-Amz-Date", None), "Date", "20260101T000000Z")
    assert isinstance(sigv4.parse(moved, now=NEW_YEAR_EPOCH), Authorization)
    rfc = replace_header(moved, "Date", "Thu, 01 Jan 2026 00:00:00 GMT")
    error = sigv4.parse(rfc, now=NEW_YEAR_EPOCH)
    assert isinstance(error, SigV4Error) and error.failure is Failure.INCOMPLETE
    assert error.detail == ("Date must be in ISO-8601 'basic format'. Got "
                            "'Thu, 01 Jan 2026 00:00:00 GMT'. See http://en.wikipedia.org/wiki/ISO_8601")


# -- scope --------------------------------------------------------------------------

def test_scope_for_another_service_is_refused() -> None:
    for service in ("email", "sesv2", "s3"):
        error = check(botocore_signed(service=service))
        assert error == SigV4Error(Failure.SIGNATURE,
                                   "Credential should be scoped to correct service: 'ses'. ")


def test_scope_date_must_be_the_request_date() -> None:
    request = botocore_signed(when=NEW_YEAR)
    header = authorization_header(request).replace("/20260101/", "/20251231/")
    error = sigv4.parse(replace_header(request, "Authorization", header), now=NEW_YEAR_EPOCH)
    assert error == SigV4Error(
        Failure.SIGNATURE,
        "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from "
        "HTTP: '20251231' != '20260101', from '20260101T000000Z'.")


def test_scope_terminator_and_shape() -> None:
    request = botocore_signed(when=NEW_YEAR)
    header = authorization_header(request)
    bad_end = sigv4.parse(replace_header(request, "Authorization",
                                         header.replace("/aws4_request", "/aws5_request")),
                          now=NEW_YEAR_EPOCH)
    assert bad_end == SigV4Error(Failure.SIGNATURE, "Credential should be scoped with a valid "
                                 "terminator: 'aws4_request', not 'aws5_request'. ")
    short = sigv4.parse(replace_header(request, "Authorization",
                                       header.replace("/us-east-1/ses", "")),
                        now=NEW_YEAR_EPOCH)
    assert isinstance(short, SigV4Error) and short.failure is Failure.INCOMPLETE


def test_host_must_be_signed() -> None:
    request = botocore_signed(when=NEW_YEAR, headers={"Content-Type": "application/json"})
    header = authorization_header(request).replace(";host;", ";")
    assert "host" not in header
    error = sigv4.parse(replace_header(request, "Authorization", header), now=NEW_YEAR_EPOCH)
    assert error == SigV4Error(Failure.SIGNATURE,
                               "'Host' must be a 'SignedHeader' in the AWS Authorization.")


def test_a_session_token_is_never_ours() -> None:
    request = AWSRequest(method="POST", url=ENDPOINT + "/", data=b"x")
    temporary = Credentials(AKID, SECRET, token="FQoGZXIvYXdzE")
    SigV4Auth(temporary, "ses", "us-east-1").add_auth(request)
    error = check(from_prepared(request.prepare()))
    assert error == sigv4.unknown_key()
    assert (error.code("json"), error.code("query")) == ("UnrecognizedClientException",
                                                         "InvalidClientTokenId")
    assert error.message("query") == "The security token included in the request is invalid."


# -- unreadable or missing authentication -----------------------------------------------

def test_no_authorization_at_all() -> None:
    request = replace_header(botocore_signed(), "Authorization", None)
    error = check(request)
    assert error == sigv4.MISSING
    assert (error.code("json"), error.status("json"), error.message("json")) == (
        "MissingAuthenticationTokenException", 403, "Missing Authentication Token")
    assert (error.code("query"), error.status("query"), error.message("query")) == (
        "MissingAuthenticationToken", 403, "Request is missing Authentication Token")


@pytest.mark.parametrize(("header", "message"), [
    ("AWS4-HMAC-SHA256 Credential=ABCDEF",
     "Authorization header requires 'Signature' parameter. Authorization header requires "
     "'SignedHeaders' parameter. Authorization=AWS4-HMAC-SHA256 Credential=ABCDEF"),
    ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x",
     "Authorization header requires 'Credential' parameter. Authorization header requires "
     "'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. "
     "Authorization=Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
    ("AWS AKID:c2lnbmF0dXJl",
     "Authorization header requires 'Credential' parameter. Authorization header requires "
     "'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. "
     "Authorization=AWS AKID:c2lnbmF0dXJl"),
    ("AWS4-HMAC-SHA256 Credential= AKID/20260101/us-east-1/ses/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=ab",
     "'AKID/20260101/us-east-1/ses/aws4_request' not a valid key=value pair (missing "
     "equal-sign) in Authorization header: 'AWS4-HMAC-SHA256 Credential= "
     "AKID/20260101/us-east-1/ses/aws4_request, SignedHeaders=host;x-amz-date, Signature=ab'."),
    ("AWS4-ECDSA-P256-SHA256 Credential=AKID/20260101/ses/aws4_request, "
     "SignedHeaders=host;x-amz-date, Signature=ab",
     "Unsupported AWS 'algorithm': 'AWS4-ECDSA-P256-SHA256'"),
])
def test_incomplete_signature(header: str, message: str) -> None:
    request = replace_header(botocore_signed(), "Authorization", header)
    error = check(request)
    assert error == SigV4Error(Failure.INCOMPLETE, message)
    assert (error.code("query"), error.status("query")) == ("IncompleteSignature", 400)
    assert (error.code("json"), error.status("json")) == ("IncompleteSignatureException", 403)


def test_no_request_time() -> None:
    request = replace_header(botocore_signed(), "X-Amz-Date", None)
    error = check(request)
    assert isinstance(error, SigV4Error) and error.failure is Failure.INCOMPLETE
    assert error.detail.startswith("Authorization header requires existence of either a "
                                   "'X-Amz-Date' or a 'Date' header. Authorization=AWS4-HMAC")


def test_presigned_and_doubled_headers_are_refused_plainly() -> None:
    request = replace_header(botocore_signed(), "Authorization", None)
    presigned = with_fields(request, query="X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab")
    error = check(presigned)
    assert isinstance(error, SigV4Error) and error.failure is Failure.INCOMPLETE
    assert "presigned" in error.detail
    signed = botocore_signed()
    doubled = with_fields(signed, headers=[*signed.headers,
                                           ("Authorization", authorization_header(signed))])
    error = check(doubled)
    assert isinstance(error, SigV4Error) and error.failure is Failure.INCOMPLETE


# -- signing key ---------------------------------------------------------------------

def test_signing_key_matches_aws_example_and_cache() -> None:
    # AWS General Reference, "Examples of how to derive a signing key for SigV4".
    key = sigv4.derive_signing_key(SECRET, "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    assert sigv4.signing_key(SECRET, "20120215", "us-east-1", "iam") == key
    hits = sigv4.signing_key.cache_info().hits
    assert sigv4.signing_key(SECRET, "20120215", "us-east-1", "iam") == key
    assert sigv4.signing_key.cache_info().hits == hits + 1
    assert sigv4.signing_key(SECRET, "20120216", "us-east-1", "iam") != key


# -- rendering, read back by botocore ---------------------------------------------------

def test_errors_render_as_botocore_reads_them() -> None:
    error = sigv4.MISMATCH
    as_json = error.render("json", "req-1")
    assert as_json.status == 403
    assert dict(as_json.headers)["x-amzn-ErrorType"] == "InvalidSignatureException"
    parsed_json = create_parser("rest-json").parse(
        {"status_code": 403, "headers": {k.lower(): v for k, v in as_json.headers},
         "body": as_json.body}, None)
    assert parsed_json["Error"] == {"Code": "InvalidSignatureException",
                                    "Message": sigv4.MISMATCH_MESSAGE}
    assert parsed_json["ResponseMetadata"]["RequestId"] == "req-1"

    # A message that echoes what the client sent, XML-hostile characters included.
    nasty = SigV4Error(Failure.INCOMPLETE, "Authorization=<&'\"\x00\x1b>")
    as_xml = nasty.render("query", "req-2")
    assert as_xml.status == 400
    parsed_xml = create_parser("query").parse(
        {"status_code": 400, "headers": dict(as_xml.headers), "body": as_xml.body}, None)
    assert parsed_xml["Error"] == {"Type": "Sender", "Code": "IncompleteSignature",
                                   "Message": "Authorization=<&'\"\ufffd\ufffd>"}
    assert parsed_xml["ResponseMetadata"]["RequestId"] == "req-2"


def test_server_faults_are_receiver_in_query_xml() -> None:
    response = render_query_xml("InternalFailure", "boom", 500, "r")
    assert b"<Type>Receiver</Type>" in response.body
    assert json.loads(render_json("Throttling", "slow down", 400).body) == {
        "__type": "Throttling", "message": "slow down"}


@pytest.mark.parametrize(("service", "protocol"), [("sesv2", "json"), ("ses", "query")])
def test_real_clients_raise_our_errors(service: str, protocol: str) -> None:
    def refuse(request: AWSPreparedRequest) -> tuple[int, dict[str, str], bytes]:
        authorization = parsed(from_prepared(request))
        error = sigv4.verify(from_prepared(request), authorization, "not the secret")
        assert error is not None
        response = error.render(protocol, "req-9")  # type: ignore[arg-type]
        return response.status, dict(response.headers), response.body

    ses, _ = client(service, "us-west-2", reply=refuse)
    with pytest.raises(ClientError) as caught:
        if service == "sesv2":
            ses.send_email(FromEmailAddress="a@example.com", Destination={"ToAddresses": []},
                           Content={"Raw": {"Data": b"x"}})
        else:
            ses.send_raw_email(RawMessage={"Data": b"x"})
    error = caught.value.response
    assert error["Error"]["Code"] == ("InvalidSignatureException" if protocol == "json"
                                      else "SignatureDoesNotMatch")
    assert error["Error"]["Message"] == sigv4.MISMATCH_MESSAGE
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["ResponseMetadata"]["RequestId"] == "req-9"


# -- property: whatever botocore signs verifies; any flipped byte does not -------------

_segment = st.one_of(st.text(st.characters(codec="utf-8"), max_size=8),
                     st.sampled_from([".", "..", ""]))
_query_text = st.text(st.characters(codec="utf-8"), max_size=10)
_header_value = st.text(st.one_of(st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                                  st.just("\t")), max_size=20)


@st.composite
def signed_requests(draw: st.DrawFn) -> tuple[SignedRequest, str]:
    segments = draw(st.lists(_segment, max_size=5))
    path = "/" + "/".join(quote(s, safe="!$&'()*+,;=:@~") for s in segments)
    pairs = draw(st.lists(st.tuples(_query_text, _query_text), max_size=4))
    params: list[tuple[str, str]] | None = None
    url = ENDPOINT + path
    as_params = draw(st.booleans())
    if pairs and as_params:
        params = pairs
    elif pairs:
        # Raw query text: some characters left bare that a decoder would read otherwise.
        url += "?" + "&".join(quote(k, safe="") + "=" + quote(v, safe="+=/:@!$'()*,;")
                              for k, v in pairs)
    headers = {name: draw(_header_value)
               for name in draw(st.sets(st.sampled_from(["X-Custom", "X-Amz-Meta-Thing",
                                                         "Content-Type", "Accept"])))}
    region = draw(st.from_regex(r"[a-z]{2}-[a-z]{4,9}-[1-9]", fullmatch=True))
    secret = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                          max_size=40))
    request = botocore_signed(method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"])),
                              url=url, body=draw(st.binary(max_size=3000)), headers=headers,
                              secret=secret, region=region, params=params)
    return request, secret


@settings(max_examples=examples(500), deadline=None)
@given(signed_requests(), st.data())
def test_property_botocore_signed_verifies_and_flips_do_not(
        signed: tuple[SignedRequest, str], data: st.DataObject) -> None:
    request, secret = signed
    assert check(request, secret) is None

    signature = parsed(request).signature
    i = data.draw(st.integers(0, len(signature) - 1), label="signature index")
    flipped = signature[:i] + data.draw(st.sampled_from("0123456789abcdef").filter(
        lambda c: c != signature[i]), label="hex") + signature[i + 1:]
    header = authorization_header(request).replace(signature, flipped)
    assert check(replace_header(request, "Authorization", header), secret) == sigv4.MISMATCH

    body = request.body or b"\0"
    j = data.draw(st.integers(0, len(body) - 1), label="body index")
    bit = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]), label="bit")
    changed = body[:j] + bytes([body[j] ^ bit]) + body[j + 1:]
    if request.body:
        assert check(with_fields(request, body=changed), secret) == sigv4.MISMATCH
    else:
        assert check(with_fields(request, body=b"\0"), secret) == sigv4.MISMATCH
