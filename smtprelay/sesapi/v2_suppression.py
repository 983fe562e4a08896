"""SES v2's account-level suppression list operations, on the caller's account's list:
PutSuppressedDestination, GetSuppressedDestination, DeleteSuppressedDestination and
ListSuppressedDestinations.

The list is the one the pipeline reads for every recipient and the admin API and the
CLI change (smtprelay.operations.suppression, whose rules apply here: an address put
again has its reason and time updated). An API key names its account, so no request
can reach another account's list: the account is never a parameter.
"""

from __future__ import annotations

import datetime
from typing import Any, cast

from smtprelay.config import ConfigSource
from smtprelay.operations import suppression as suppression_ops
from smtprelay.policy.suppression import REASONS, Reason, SuppressionEntry, SuppressionStore
from smtprelay.sesapi.errors import bad_request
from smtprelay.sesapi.v2 import Caller
from smtprelay.sesapi.v2_rest import (
    Request,
    Route,
    blocking,
    cursor_of,
    member,
    next_token,
    page_size,
)

_PATH = "/suppression/addresses"


def _no_tenant(name: str | None) -> None:
    # SES's tenants group resources inside one AWS account; here the API key's
    # account is the tenant, and a TenantName would silently mean nothing.
    if name is not None:
        raise bad_request("TenantName is not supported: the API key's account is the "
                          "list's owner")


def _date(text: str | None, name: str) -> float | None:
    """A query timestamp: botocore writes ISO 8601 (…Z); a number of seconds too."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(f"{name} must be an ISO 8601 date and time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _reason(given: list[str]) -> Reason | None:
    for reason in given:
        if reason not in REASONS:
            raise bad_request(f"Reason {reason!r} is not BOUNCE or COMPLAINT")
    # Both reasons are the whole list, as none.
    return cast(Reason, given[0]) if len(set(given)) == 1 else None


def _summary(entry: SuppressionEntry) -> dict[str, Any]:
    return {"EmailAddress": entry.address, "Reason": entry.reason,
            "LastUpdateTime": entry.created_at}


class SuppressionApi:
    def __init__(self, live: ConfigSource, store: SuppressionStore) -> None:
        self._live = live
        self._store = store

    def routes(self) -> list[Route]:
        return [Route("PUT", _PATH, self.put),
                Route("GET", _PATH, self.list),
                Route("GET", f"{_PATH}/{{EmailAddress}}", self.get),
                Route("DELETE", f"{_PATH}/{{EmailAddress}}", self.delete)]

    async def put(self, caller: Caller, request: Request) -> dict[str, Any]:
        body = request.json()
        _no_tenant(member(body, "TenantName", str))
        address = member(body, "EmailAddress", str, required=True)
        reason = member(body, "Reason", str, required=True)
        assert address is not None
        await blocking(suppression_ops.add, self._store, self._live.config, caller.account,
                       address, reason)
        return {}

    async def get(self, caller: Caller, request: Request) -> dict[str, Any]:
        _no_tenant(request.one("TenantName"))
        entry = await blocking(suppression_ops.get, self._store, self._live.config,
                               caller.account, request.path["EmailAddress"])
        found = _summary(entry)
        if entry.source_message_id is not None:
            found["Attributes"] = {"MessageId": entry.source_message_id}
        return {"SuppressedDestination": found}

    async def delete(self, caller: Caller, request: Request) -> dict[str, Any]:
        _no_tenant(request.one("TenantName"))
        await blocking(suppression_ops.remove, self._store, self._live.config,
                       caller.account, request.path["EmailAddress"])
        return {}

    async def list(self, caller: Caller, request: Request) -> dict[str, Any]:
        _no_tenant(request.one("TenantName"))
        page = await blocking(
            suppression_ops.page, self._store, self._live.config, caller.account,
            reason=_reason(request.all("Reason")),
            since=_date(request.one("StartDate"), "StartDate"),
            until=_date(request.one("EndDate"), "EndDate"),
            limit=page_size(request.one("PageSize")),
            after=cursor_of(request.one("NextToken"), "InvalidNextTokenException"))
        return {"SuppressedDestinationSummaries": [_summary(e) for e in page.items],
                **next_token(page.next_cursor)}
