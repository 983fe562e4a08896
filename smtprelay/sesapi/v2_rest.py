"""What the SES v2 operations on the account's data share: the request as the HTTP
layer hands it on (path parameters, query, body), their routes as SES's model writes
them, paging tokens, and the operations layer's refusals in SES's words.

SendEmail reads only its body; these operations also read the path (a name, an
address) and the query string (ListSuppressedDestinations' filters), as botocore's
rest-json serializer puts them there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from smtprelay.operations import paging
from smtprelay.operations.errors import (
    BadContact,
    Conflict,
    NotConfigured,
    NotFound,
    OperationError,
)
from smtprelay.sesapi.errors import ApiError, bad_request, not_found
from smtprelay.sesapi.v2 import Caller

P = ParamSpec("P")
T = TypeVar("T")

# SES's largest page for these listings; also the size of a page not asked for.
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Request:
    """An SES v2 request: `path` the URI's parameters by SES's member names (decoded),
    `query` the query string's pairs in order (a list member repeats its name)."""

    body: bytes = b""
    path: Mapping[str, str] = field(default_factory=dict)
    query: Sequence[tuple[str, str]] = ()

    def json(self) -> Mapping[str, Any]:
        """The body as a JSON object ({} for none: a GET has none)."""
        try:
            value = json.loads(self.body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise bad_request(f"the request body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise bad_request("the request body must be a JSON object")
        return value

    def one(self, name: str) -> str | None:
        """A query member given at most once."""
        found = self.all(name)
        if len(found) > 1:
            raise bad_request(f"{name} is given {len(found)} times")
        return found[0] if found else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]


RestOperation = Callable[[Caller, Request], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Route:
    """An operation at its SES v2 method and requestUri (below /v2/email), whose
    {Name} parameters are aiohttp's too."""

    method: str
    path: str
    operation: RestOperation


def page_size(value: Any, field_name: str = "PageSize") -> int:
    """PageSize from a body (a number) or a query (its text): 1 to MAX_PAGE_SIZE."""
    if value is None:
        return MAX_PAGE_SIZE
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_PAGE_SIZE:
        raise bad_request(f"{field_name} must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return value


def next_token(cursor: str | None) -> dict[str, str]:
    """The NextToken member of an answer for a page's cursor: opaque, as SES's are, so
    that a client passes it back rather than building one."""
    if cursor is None:
        return {}
    return {"NextToken": base64.urlsafe_b64encode(cursor.encode()).decode()}


def cursor_of(token: Any, code: str = "BadRequestException") -> str | None:
    """The cursor a NextToken stands for; `code` is the operation's error for one
    it never gave (ListSuppressedDestinations has InvalidNextTokenException)."""
    if token is None:
        return None
    try:
        if not isinstance(token, str) or not token:
            raise ValueError
        return base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, binascii.Error, UnicodeError):
        raise ApiError(code, "The NextToken is not one this relay gave.") from None


def refused(exc: OperationError) -> ApiError:
    """An operation's refusal as SES's API says it."""
    if isinstance(exc, NotFound | NotConfigured):
        return not_found(str(exc))
    if isinstance(exc, Conflict):
        return ApiError("AlreadyExistsException", str(exc))
    if isinstance(exc, BadContact):
        return bad_request(f"{exc.field}: {exc}")
    return bad_request(str(exc))


@contextmanager
def ses_refusals() -> Iterator[None]:
    """The operations layer's refusals, raised as SES's."""
    try:
        yield
    except OperationError as exc:
        raise refused(exc) from None


async def blocking(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A blocking operation (a store's) in a thread, its refusals as SES's."""
    with ses_refusals():
        return await asyncio.to_thread(call, *args, **kwargs)


def member(body: Mapping[str, Any], name: str, kind: type[T], *,
           required: bool = False) -> T | None:
    """A body member of the model's type: `kind` str, bool, list or dict."""
    value = body.get(name)
    if value is None:
        if required:
            raise bad_request(f"{name} is required")
        return None
    # bool is an int in Python, not in JSON: True is no PageSize.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise bad_request(f"{name} must be {_KINDS.get(kind, kind.__name__)}")
    return value


_KINDS: dict[type, str] = {str: "a string", bool: "true or false", list: "a list",
                           dict: "an object", int: "a number"}


def names_page(names: Sequence[str], size: Any, token: Any) -> tuple[list[str], dict[str, str]]:
    """A page of names the configuration has (sets, lists), sorted, and its
    NextToken member."""
    after = cursor_of(token)
    ordered = sorted(n for n in names if after is None or n > after)
    found = paging.page(lambda n: ordered[:n], page_size(size), key=lambda name: name)
    return list(found.items), next_token(found.next_cursor)
