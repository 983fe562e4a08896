"""SES v2's ListConfigurationSets and GetConfigurationSet, read from the relay's
configuration (`configuration_sets:`) and its pauses.

The sets are configuration, changed by editing the file and reloading, so
Create/Update/Delete ConfigurationSet and its Put*Options have no route (the API's
UnknownOperationException). An account sees only the sets it may send with
(`Config.may_use_set`); any other set is answered as one that does not exist, with
the words SendEmail uses for it, so that a set's name never tells one tenant that
another has it.
"""

from __future__ import annotations

from typing import Any

from smtprelay.config import ConfigSource
from smtprelay.operations import pauses as pauses_ops
from smtprelay.operations.pauses import PauseBook
from smtprelay.sesapi.errors import bad_request, not_found
from smtprelay.sesapi.v2 import Caller
from smtprelay.sesapi.v2_rest import Request, Route, member, names_page

# The relay's tracking.https as SES's HttpsPolicy: true makes links and pixel https;
# null keeps each link's scheme and makes the pixel https; false makes both http.
_HTTPS_POLICY = {True: "REQUIRE", None: "REQUIRE_OPEN_ONLY", False: "OPTIONAL"}
_TLS_POLICY = {"require": "REQUIRE", "require_encrypted": "REQUIRE",
               "require_verified": "REQUIRE", "opportunistic": "OPTIONAL"}


class ConfigurationSetsApi:
    def __init__(self, live: ConfigSource, pauses: PauseBook) -> None:
        self._live = live
        self._pauses = pauses

    def routes(self) -> list[Route]:
        return [Route("POST", "/list-configuration-sets", self.list),
                Route("GET", "/configuration-sets/{ConfigurationSetName}", self.get)]

    async def list(self, caller: Caller, request: Request) -> dict[str, Any]:
        body = request.json()
        if member(body, "Filter", dict):
            raise bad_request("Filter is not supported")
        config = self._live.config
        names, token = names_page(
            [name for name in config.configuration_sets
             if config.may_use_set(caller.account, name)],
            body.get("PageSize"), body.get("NextToken"))
        return {"ConfigurationSets": names, **token}

    async def get(self, caller: Caller, request: Request) -> dict[str, Any]:
        name = request.path["ConfigurationSetName"]
        config = self._live.config
        settings = config.configuration_sets.get(name)
        if settings is None or not config.may_use_set(caller.account, name):
            raise not_found(f"Configuration set <{name}> does not exist.")
        # The daemon's pauses are in memory (PausedSets): no store call here.
        target = pauses_ops.target(config, "set", name, self._pauses.all("set").get(name))
        found: dict[str, Any] = {
            "ConfigurationSetName": name,
            "DeliveryOptions": {"TlsPolicy": _TLS_POLICY[settings.tls or config.delivery.tls]},
            "ReputationOptions": {"ReputationMetricsEnabled": config.reputation.enabled},
            # Paused (by an operator or the reputation guard) or sending_enabled: false.
            "SendingOptions": {"SendingEnabled": target.accepting},
            "SuppressionOptions": {"SuppressedReasons": list(settings.suppression.reasons)},
            "Tags": [],
        }
        if settings.tracking.domain is not None:
            found["TrackingOptions"] = {"CustomRedirectDomain": settings.tracking.domain,
                                        "HttpsPolicy": _HTTPS_POLICY[settings.tracking.https]}
        return found
