"""Error responses in the shapes Amazon SES sends, for the SDKs' error parsers.

Two protocols (botocore/data/ses*/service-2.json's ``metadata.protocol``):

- ``json``: SES v2, REST-JSON. The code travels in the ``x-amzn-ErrorType`` header and
  the body is ``{"__type": code, "message": text}``. botocore's RestJSONParser takes the
  code from the header first, then ``__type``/``code`` in the body, and the text from
  ``message``/``Message``; the JS and Go SDKs read the same places. (SES itself sends
  only ``message`` in the body; ``__type`` is there for readers without the header.)
- ``query``: SES v1 (2010-12-01), the Query protocol: an XML ``ErrorResponse`` in the
  service's namespace, which botocore's QueryParser turns into Error.Type/Code/Message
  and ResponseMetadata.RequestId.

Generic on purpose: the HTTP layer renders its own errors (MessageRejected, throttling)
with the same two functions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal
from xml.sax.saxutils import escape

Protocol = Literal["json", "query"]

# botocore/data/ses/2010-12-01/service-2.json, metadata.xmlNamespace.
QUERY_NAMESPACE = "http://ses.amazonaws.com/doc/2010-12-01/"

# Characters XML 1.0 cannot carry at all, not even escaped. Messages can echo what the
# client sent (an Authorization header), and one such byte would make the whole
# response unparseable instead of showing the error.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def render_json(code: str, message: str, status: int, *,
                request_id: str | None = None) -> ErrorResponse:
    headers = [("Content-Type", "application/json"), ("x-amzn-ErrorType", code)]
    if request_id is not None:
        headers.append(("x-amzn-RequestId", request_id))
    body = json.dumps({"__type": code, "message": message}).encode("utf-8")
    return ErrorResponse(status, tuple(headers), body)


def render_query_xml(code: str, message: str, status: int, request_id: str) -> ErrorResponse:
    # AWS's Type says whose fault it is: the client's for 4xx, the service's for 5xx.
    fault = "Receiver" if status >= 500 else "Sender"
    body = (
        f'<ErrorResponse xmlns="{QUERY_NAMESPACE}">\n'
        f"  <Error>\n"
        f"    <Type>{fault}</Type>\n"
        f"    <Code>{_xml_text(code)}</Code>\n"
        f"    <Message>{_xml_text(message)}</Message>\n"
        f"  </Error>\n"
        f"  <RequestId>{_xml_text(request_id)}</RequestId>\n"
        f"</ErrorResponse>\n"
    )
    headers = (("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id))
    return ErrorResponse(status, headers, body.encode("utf-8"))


def render(protocol: Protocol, code: str, message: str, status: int,
           request_id: str) -> ErrorResponse:
    if protocol == "json":
        return render_json(code, message, status, request_id=request_id)
    return render_query_xml(code, message, status, request_id)


def _xml_text(text: str) -> str:
    return escape(_XML_INVALID.sub("\ufffd", text))
