"""The admin API's OpenAPI 3.1 description, served at /api/v1/openapi.json (behind the token).

Written by hand, next to the routes in smtprelay.http.admin, which take their
patterns and limits from here: what the document allows is what the API accepts.
tests/e2e/test_admin_openapi.py checks that the two describe the same routes and
runs schemathesis against the running daemon.
"""

from __future__ import annotations

import copy
from typing import Any

from smtprelay import __version__
from smtprelay.config import NAME_PATTERN
from smtprelay.events.tail import EVENT_TYPES, RECENT
from smtprelay.operations.contacts import MAX_ATTRIBUTES, MAX_CURSOR, STATUSES
from smtprelay.policy.suppression import REASONS
from smtprelay.spool import set_stats
from smtprelay.spool.model import FILTER_STATES

# Characters no listed address may contain: controls, and what Python's
# str.isspace() calls white space (the suppression list's own rule).
_EXCLUDED = "\\x00-\\x20\\x7f-\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
# Something before the last @, and a domain after it with a character that is not a dot.
ADDRESS_PATTERN = f"^[^{_EXCLUDED}]+@[^@{_EXCLUDED}]*[^@.{_EXCLUDED}][^@{_EXCLUDED}]*$"
MAX_ADDRESS = 320
WINDOW_PATTERN = r"^([1-9][0-9]{0,5})([mhd])$"
QUEUE_STATES: tuple[str, ...] = FILTER_STATES
MAX_PAUSE_REASON = 1000
MAX_LIMIT = 1000
# A contacts cursor: an address a page ended with (no control characters).
CURSOR_PATTERN = "^[^\\x00-\\x1f\\x7f]*$"

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_STATE = {"type": "string", "enum": ["ok", "warning", "paused"]}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [schema, {"type": "null"}]}


def _ok(description: str, schema: str, status: str = "200") -> dict[str, Any]:
    return {status: {"description": description,
                     "content": {_JSON: {"schema": _ref(schema)}}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """References to the shared error responses; 401, 405 and 429 go with every route."""
    names = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 413: "TooLarge",
             415: "UnsupportedMediaType", 422: "Unprocessable", 503: "Unavailable"}
    found = {str(s): {"$ref": f"#/components/responses/{names[s]}"} for s in statuses}
    found["401"] = {"$ref": "#/components/responses/Unauthorized"}
    found["405"] = {"$ref": "#/components/responses/MethodNotAllowed"}
    found["429"] = {"$ref": "#/components/responses/LockedOut"}
    return found


def _param(name: str, where: str, schema: dict[str, Any], description: str, *,
           required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path",
            "description": description, "schema": schema}


_ACCOUNT = _param("account", "path", {"type": "string", "minLength": 1},
                  "An account under `accounts` in the configuration.")
_ADDRESS = _param("address", "path",
                  {"type": "string", "pattern": ADDRESS_PATTERN, "maxLength": MAX_ADDRESS},
                  "The email address (the domain is compared case-insensitively).")
_ANY_ADDRESS = _param("address", "path", {"type": "string", "minLength": 1},
                      "The email address as listed (the domain in any case).")
_MESSAGE_ID = _param("message_id", "path", {"type": "string", "minLength": 1},
                     "The relay's message id, as in the `250 Ok <id>` reply.")
_SET_NAME = _param("name", "path", {"type": "string", "minLength": 1},
                   "A configuration set's name.")
_POOL = _param("pool", "path", {"type": "string", "minLength": 1},
               "An IP pool under `ip_pools` in the configuration.")
_LIST = _param("list", "path", {"type": "string", "minLength": 1},
               "A contact list under `contact_lists` in the configuration.")
_CONTACT_ADDRESS = _param("address", "path", {"type": "string", "minLength": 1},
                          "The contact's email address (the domain in any case).")
_LIMIT = _param("limit", "query",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100},
                "Items per page.")
_WINDOW = _param("window", "query", {"type": "string", "pattern": WINDOW_PATTERN,
                                     "default": "24h"},
                 "How far back: minutes, hours or days (`60m`, `24h`, `7d`). Statistics "
                 "are kept 15 days: a longer window reads as 15 days.")


def _cursor(what: str) -> dict[str, Any]:
    return _param("cursor", "query", {"type": "string", "maxLength": 320},
                  f"`next_cursor` of the previous page: the page starts after this {what}.")


_COUNTS = {
    "type": "object",
    "description": "Counters summed over the window (see docs/admin-api.md).",
    "properties": {str(kind): {"type": "integer", "minimum": 0} for kind in set_stats.Kind},
    "required": [str(kind) for kind in set_stats.Kind],
    "additionalProperties": False,
}
_RATE = {"oneOf": [{"type": "number", "minimum": 0}, {"type": "null"}]}
_RATES = {
    "type": "object",
    "description": "null when the denominator is 0.",
    "properties": {
        "bounce": {**_RATE, "description": "bounce / (delivery + bounce)"},
        "complaint": {**_RATE, "description": "complaint / delivery"},
        "open": {**_RATE, "description": "open_unique / delivery"},
        "click": {**_RATE, "description": "click_unique / delivery"},
    },
    "required": ["bounce", "complaint", "open", "click"],
    "additionalProperties": False,
}

_STATUS = {"enum": list(STATUSES)}
_TOPIC_PREFERENCE = {
    "type": "object",
    "properties": {"TopicName": {"type": "string", "pattern": NAME_PATTERN},
                   "SubscriptionStatus": _STATUS},
    "required": ["TopicName", "SubscriptionStatus"], "additionalProperties": False,
}
_ATTRIBUTES_DATA = {
    "type": "string", "maxLength": MAX_ATTRIBUTES,
    "contentMediaType": "application/json", "contentSchema": {"type": "object"},
    "description": "A JSON object, as text (SES's AttributesData): metadata about the "
                   "contact, kept and shown as given.",
}
_CONTACT_BODY_FIELDS: dict[str, Any] = {
    "TopicPreferences": {
        "type": "array", "items": _ref("TopicPreference"),
        "description": "Explicit preferences, each for a topic of the list; a topic not "
                       "named follows its default."},
    "UnsubscribeAll": {"type": "boolean",
                       "description": "true: no mail of the list reaches the contact."},
    "AttributesData": _ATTRIBUTES_DATA,
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {"error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"], "additionalProperties": False}},
        "required": ["error"], "additionalProperties": False,
    },
    "SuppressionEntry": {
        "type": "object",
        "properties": {
            "account": {"type": "string"},
            "address": {"type": "string"},
            "reason": {"enum": list(REASONS)},
            "created_at": {"type": "number", "description": "Unix time it was last added."},
            "source_message_id": {"oneOf": [{"type": "string"}, {"type": "null"}]},
            "diagnostic": {"oneOf": [{"type": "string"}, {"type": "null"}],
                           "description": "The bounce that listed the address: the "
                                          "receiving server's reply or the DSN's "
                                          "Diagnostic-Code."},
        },
        "required": ["account", "address", "reason", "created_at", "source_message_id",
                     "diagnostic"],
        "additionalProperties": False,
    },
    "SuppressionPage": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("SuppressionEntry")},
                       "next_cursor": _nullable({"type": "string"})},
        "required": ["items", "next_cursor"], "additionalProperties": False,
    },
    "SuppressionPut": {
        "type": "object",
        "properties": {"reason": {"enum": list(REASONS)}},
        "required": ["reason"], "additionalProperties": False,
    },
    "SuppressionRemoved": {
        "type": "object",
        "properties": {"account": {"type": "string"}, "address": {"type": "string"},
                       "removed": {"const": True}},
        "required": ["account", "address", "removed"], "additionalProperties": False,
    },
    "Recipient": {
        "type": "object",
        "properties": {
            "address": {"type": "string"},
            "state": {"enum": [s for s in QUEUE_STATES
                               if s not in ("pending", "finished", "held")]},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt": {"type": "number"},
            "last_attempt": _nullable({"type": "number"}),
            "last_reply": _nullable({"type": "string"}),
            # Held by an operator (the console's hold): not tried until released.
            "held": {"type": "boolean"},
        },
        "required": ["address", "state", "attempts", "next_attempt", "last_attempt",
                     "last_reply", "held"],
        "additionalProperties": False,
    },
    "Message": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "account": {"type": "string"},
            "configuration_set": _nullable({"type": "string"}),
            "mail_from": {"type": "string", "description": "Envelope sender; \"\" for <>."},
            "received_at": {"type": "number"},
            "size": {"type": "integer", "minimum": 0},
            "client_ip": {"type": "string"},
            "auth_user": _nullable({"type": "string"}),
            "listener": {"type": "string", "description": "\"dsn\" for bounce messages"},
            "recipients": {"type": "array", "items": _ref("Recipient")},
        },
        "required": ["id", "account", "configuration_set", "mail_from", "received_at", "size",
                     "client_ip", "auth_user", "listener", "recipients"],
        "additionalProperties": False,
    },
    "MessagePage": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("Message")},
                       "next_cursor": _nullable({"type": "string"})},
        "required": ["items", "next_cursor"], "additionalProperties": False,
    },
    "RetryResult": {
        "type": "object",
        "properties": {"message_id": _nullable({"type": "string"}),
                       "recipients_due": {"type": "integer", "minimum": 0}},
        "required": ["message_id", "recipients_due"], "additionalProperties": False,
    },
    "HoldResult": {
        "type": "object",
        "properties": {"message_id": {"type": "string"},
                       "recipients_held": {"type": "integer", "minimum": 1}},
        "required": ["message_id", "recipients_held"], "additionalProperties": False,
    },
    "MessageDeleted": {
        "type": "object",
        "properties": {"message_id": {"type": "string"}, "deleted": {"const": True}},
        "required": ["message_id", "deleted"], "additionalProperties": False,
    },
    "Pause": {
        "type": "object",
        "properties": {
            "configuration_set": {"type": "string", "description": "The set paused."},
            "reason": {"type": "string",
                       "description": "manual (API, CLI) or reputation (the guard)"},
            "detail": {"type": "string", "description": "The operator's text, or the rate "
                                                        "that tripped the guard."},
            "since": {"type": "number"},
            "by": {"type": "string", "description": "cli, api <client address>, ..."},
        },
        "required": ["configuration_set", "reason", "detail", "since", "by"],
        "additionalProperties": False,
    },
    "ConfigurationSet": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "configured": {"type": "boolean",
                           "description": "false: paused, but no longer in the configuration"},
            "sending_enabled": _nullable({"type": "boolean"}),
            "paused": _nullable(_ref("Pause")),
            "accepting": {"type": "boolean",
                          "description": "sending_enabled and not paused: new mail is taken"},
            "publishes_events": {"type": "boolean"},
            "reputation": _nullable(_ref("Reputation")),
        },
        "required": ["name", "configured", "sending_enabled", "paused", "accepting",
                     "publishes_events", "reputation"],
        "additionalProperties": False,
    },
    "Reputation": {
        "type": "object",
        "description": "The reputation guard's last check (null before its first one).",
        "properties": {
            "state": _STATE, "bounce": _STATE, "complaint": _STATE,
            "bounce_rate": _nullable({"type": "number"}),
            "complaint_rate": _nullable({"type": "number"}),
            "volume": {"type": "integer", "minimum": 0,
                       "description": "Deliveries + permanent bounces counted."},
            "representative": {"type": "boolean",
                               "description": "volume >= reputation.minimum_volume"},
            "since": {"type": "number", "description": "Start of the counting."},
        },
        "required": ["state", "bounce", "complaint", "bounce_rate", "complaint_rate",
                     "volume", "representative", "since"],
        "additionalProperties": False,
    },
    "AccountPause": {
        "type": "object",
        "properties": {
            "account": {"type": "string", "description": "The account paused."},
            "reason": {"type": "string",
                       "description": "manual (API, CLI) or reputation (the guard)"},
            "detail": {"type": "string"},
            "since": {"type": "number"},
            "by": {"type": "string"},
        },
        "required": ["account", "reason", "detail", "since", "by"],
        "additionalProperties": False,
    },
    "Account": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "paused": _nullable(_ref("AccountPause")),
            "accepting": {"type": "boolean",
                          "description": "not paused: new mail is taken (each set's own "
                                         "state still applies)"},
            "reputation": _nullable(_ref("Reputation")),
        },
        "required": ["name", "paused", "accepting", "reputation"],
        "additionalProperties": False,
    },
    "AccountList": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("Account")}},
        "required": ["items"], "additionalProperties": False,
    },
    "ConfigurationSetList": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("ConfigurationSet")}},
        "required": ["items"], "additionalProperties": False,
    },
    "PauseRequest": {
        "type": "object",
        "properties": {"reason": {"type": "string", "maxLength": MAX_PAUSE_REASON,
                                  "description": "Free text kept as the pause's detail."}},
        "additionalProperties": False,
    },
    "Window": {
        "type": "object",
        "description": "The whole UTC hours counted: [since, until).",
        "properties": {"seconds": {"type": "number"}, "since": {"type": "number"},
                       "until": {"type": "number"}},
        "required": ["seconds", "since", "until"], "additionalProperties": False,
    },
    "TopicPreference": _TOPIC_PREFERENCE,
    "Topic": {
        "type": "object",
        "properties": {"TopicName": {"type": "string"}, "DisplayName": {"type": "string"},
                       "Description": {"type": "string"},
                       "DefaultSubscriptionStatus": _STATUS},
        "required": ["TopicName", "DisplayName", "Description", "DefaultSubscriptionStatus"],
        "additionalProperties": False,
    },
    "ContactList": {
        "type": "object",
        "properties": {
            "ContactListName": {"type": "string"},
            "Account": {"type": "string", "description": "The account whose mail may name "
                                                         "the list (one list per account)."},
            "Description": {"type": "string"},
            "Topics": {"type": "array", "items": _ref("Topic")},
        },
        "required": ["ContactListName", "Account", "Description", "Topics"],
        "additionalProperties": False,
    },
    "ContactListList": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("ContactList")}},
        "required": ["items"], "additionalProperties": False,
    },
    "Contact": {
        "type": "object",
        "properties": {
            "ContactListName": {"type": "string"},
            "EmailAddress": {"type": "string"},
            "UnsubscribeAll": {"type": "boolean"},
            "TopicPreferences": {"type": "array", "items": _ref("TopicPreference"),
                                 "description": "The contact's explicit preferences."},
            "TopicDefaultPreferences": {"type": "array", "items": _ref("TopicPreference"),
                                        "description": "Each topic's default, which "
                                                       "applies where the contact has no "
                                                       "preference."},
            "AttributesData": {"type": "string"},
            "CreatedTimestamp": {"type": "number"},
            "LastUpdatedTimestamp": {"type": "number"},
        },
        "required": ["ContactListName", "EmailAddress", "UnsubscribeAll", "TopicPreferences",
                     "TopicDefaultPreferences", "AttributesData", "CreatedTimestamp",
                     "LastUpdatedTimestamp"],
        "additionalProperties": False,
    },
    "ContactPage": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("Contact")},
                       "next_cursor": _nullable({"type": "string"})},
        "required": ["items", "next_cursor"], "additionalProperties": False,
    },
    "CreateContact": {
        "type": "object",
        "properties": {
            "EmailAddress": {"type": "string", "pattern": ADDRESS_PATTERN,
                             "maxLength": MAX_ADDRESS},
            **_CONTACT_BODY_FIELDS,
        },
        "required": ["EmailAddress"], "additionalProperties": False,
    },
    "UpdateContact": {
        "type": "object",
        "description": "What is given replaces what the contact has (TopicPreferences: all "
                       "of its explicit preferences, as SES's UpdateContact); what is left "
                       "out stays.",
        "properties": _CONTACT_BODY_FIELDS,
        "additionalProperties": False,
    },
    "ContactDeleted": {
        "type": "object",
        "properties": {"ContactListName": {"type": "string"},
                       "EmailAddress": {"type": "string"}, "Deleted": {"const": True}},
        "required": ["ContactListName", "EmailAddress", "Deleted"],
        "additionalProperties": False,
    },
    "Counts": _COUNTS,
    "Rates": _RATES,
    "SetStats": {
        "type": "object",
        "properties": {"configuration_set": {"type": "string"}, "window": _ref("Window"),
                       "counts": _ref("Counts"), "rates": _ref("Rates")},
        "required": ["configuration_set", "window", "counts", "rates"],
        "additionalProperties": False,
    },
    "NodeStatus": {
        "type": "object",
        "description": "This node, as `smtprelay status` shows it.",
        "properties": {
            "node": {"type": "string", "description": "store.node"},
            "ready": {"type": "boolean"},
            "draining": {"type": "boolean"},
            "connections": {"type": "integer", "minimum": 0,
                            "description": "SMTP connections open, every process's"},
            "queue_pending": {"type": "integer", "minimum": 0},
            "delivering": {"type": "integer", "minimum": 0},
            "safe_to_stop": {"type": "boolean",
                             "description": "Draining, and no connection, nothing queued "
                                            "and nothing being delivered."},
        },
        "required": ["node", "ready", "draining", "connections", "queue_pending",
                     "delivering", "safe_to_stop"],
    },
    "ClusterNodes": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {
            "type": "object",
            "description": "A node's last heartbeat (alive: false once it expired).",
            "properties": {"node": {"type": "string"}, "alive": {"type": "boolean"}},
            "required": ["node", "alive"]}}},
        "required": ["items"], "additionalProperties": False,
    },
    "PoolAddress": {
        "type": "object",
        "description": "A pool address's warm-up (docs/ip-pools.md); SES's field names "
                       "where SES has one.",
        "properties": {
            "Ip": {"type": "string"}, "Helo": {"type": "string"},
            "PoolName": {"type": "string"},
            "WarmupStatus": {"enum": ["IN_PROGRESS", "DONE"]},
            "WarmupPercentage": {"type": "integer", "minimum": 0, "maximum": 100},
            "day": {"type": "integer", "minimum": 1,
                    "description": "The warm-up day the address is on (1: its first)"},
            "started": _nullable({"type": "string", "format": "date",
                                  "description": "The UTC date of day 1; null before the "
                                                 "address first sent"}),
            "caps": _nullable({
                "type": "object", "description": "Today's caps; null once warm",
                "properties": {"total": {"type": "integer", "minimum": 1},
                               "per_provider": {"type": "integer", "minimum": 1}},
                "required": ["total", "per_provider"], "additionalProperties": False}),
            "sent_today": {
                "type": "object",
                "properties": {"total": {"type": "integer", "minimum": 0},
                               "by_provider": {"type": "object", "additionalProperties": {
                                   "type": "integer", "minimum": 0}}},
                "required": ["total", "by_provider"], "additionalProperties": False},
        },
        "required": ["Ip", "Helo", "PoolName", "WarmupStatus", "WarmupPercentage", "day",
                     "started", "caps", "sent_today"],
        "additionalProperties": False,
    },
    "PoolAddresses": {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("PoolAddress")}},
        "required": ["items"], "additionalProperties": False,
    },
    "WarmupDay": {
        "type": "object",
        "properties": {"day": {"type": "integer", "minimum": 1, "maximum": 366,
                               "description": "1 restarts the warm-up; days + 1 ends it"}},
        "required": ["day"], "additionalProperties": False,
    },
    "StatsReport": {
        "type": "object",
        "properties": {
            "window": _ref("Window"),
            "total": {"type": "object",
                      "properties": {"counts": _ref("Counts"), "rates": _ref("Rates")},
                      "required": ["counts", "rates"], "additionalProperties": False},
            "configuration_sets": {"type": "array", "items": {
                "type": "object",
                "properties": {
                    "configuration_set": {
                        "oneOf": [{"type": "string"}, {"type": "null"}],
                        "description": "null: mail sent without a configuration set"},
                    "counts": _ref("Counts"), "rates": _ref("Rates")},
                "required": ["configuration_set", "counts", "rates"],
                "additionalProperties": False}},
            "accounts": {"type": "array", "items": {
                "type": "object",
                "properties": {"account": {"type": "string"}, "counts": _ref("Counts"),
                               "rates": _ref("Rates")},
                "required": ["account", "counts", "rates"], "additionalProperties": False}},
        },
        "required": ["window", "total", "configuration_sets", "accounts"],
        "additionalProperties": False,
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Error")}}}


_RESPONSES: dict[str, Any] = {
    "Unauthorized": {
        "description": "No token, a wrong one, or an expired or altered signed token: "
                       "the same answer for each.",
        "headers": {"WWW-Authenticate": {"required": True, "schema": {
            "type": "string", "const": 'Bearer realm="smtprelay"'}}},
        "content": {_JSON: {"schema": _ref("Error")}},
    },
    "LockedOut": {
        "description": "Too many wrong tokens from the client's address "
                       "(auth.max_failures_per_ip within auth.failure_window): every "
                       "request from it is refused, the right token included, for "
                       "auth.lockout_duration.",
        "headers": {"Retry-After": {"required": True, "schema": {
            "type": "string", "pattern": "^[0-9]+$"}}},
        "content": {_JSON: {"schema": _ref("Error")}},
    },
    "BadRequest": _error_response("A malformed query parameter or a body that is not JSON."),
    "NotFound": _error_response("No such account, address, message, set, contact list, "
                                "topic, contact or route."),
    "MethodNotAllowed": {
        "description": "The route exists, not with this method.",
        "headers": {"Allow": {"required": True, "schema": {"type": "string"}}},
        "content": {_JSON: {"schema": _ref("Error")}},
    },
    "Conflict": _error_response("The state forbids it (already paused, not paused, "
                                "nothing to retry, the contact exists)."),
    "TooLarge": _error_response("The body is over 64 KiB."),
    "UnsupportedMediaType": _error_response("A body that is not sent as application/json."),
    "Unprocessable": _error_response("A JSON body or address with a value the relay "
                                     "cannot take."),
    "Unavailable": _error_response("The shared store (store: redis) does not answer."),
}


def _body(schema: str, *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {_JSON: {"schema": _ref(schema)}}}


_PATHS: dict[str, Any] = {
    "/openapi.json": {"get": {
        "operationId": "getOpenAPI", "summary": "This document.",
        "responses": {"200": {"description": "The OpenAPI document.",
                              "content": {_JSON: {"schema": {"type": "object"}}}},
                      **_errors()}}},
    "/accounts/{account}/suppression": {"get": {
        "operationId": "searchSuppression",
        "summary": "An account's suppressed addresses, by address.",
        "parameters": [
            _ACCOUNT,
            _param("prefix", "query", {"type": "string", "maxLength": MAX_ADDRESS},
                   "Only addresses starting with this (the domain in any case)."),
            _param("reason", "query", {"enum": list(REASONS)}, "Only this reason."),
            _LIMIT, _cursor("address")],
        "responses": {**_ok("A page of entries.", "SuppressionPage"), **_errors(400, 404)}}},
    "/accounts/{account}/suppression/{address}": {
        "get": {
            "operationId": "getSuppression", "summary": "One suppressed address.",
            "parameters": [_ACCOUNT, _ANY_ADDRESS],
            "responses": {**_ok("The entry.", "SuppressionEntry"), **_errors(404)}},
        "put": {
            "operationId": "putSuppression",
            "summary": "Suppress an address, or change its reason (SES "
                       "PutSuppressedDestination).",
            "parameters": [_ACCOUNT, _ADDRESS],
            "requestBody": _body("SuppressionPut", required=True),
            "responses": {**_ok("Updated.", "SuppressionEntry"),
                          **_ok("Added.", "SuppressionEntry", "201"),
                          **_errors(400, 404, 413, 415, 422)}},
        "delete": {
            "operationId": "deleteSuppression", "summary": "Take an address off the list.",
            "parameters": [_ACCOUNT, _ANY_ADDRESS],
            "responses": {**_ok("Removed.", "SuppressionRemoved"), **_errors(404)}},
    },
    "/queue": {"get": {
        "operationId": "listQueue",
        "summary": "Spooled messages in arrival order (finished ones until purged).",
        "parameters": [
            _param("account", "query", {"type": "string", "maxLength": 256},
                   "Only this account's messages."),
            _param("configuration_set", "query", {"type": "string", "maxLength": 256},
                   "Only this set's messages; empty: those sent without a set."),
            _param("state", "query", {"enum": list(QUEUE_STATES)},
                   "pending: some recipient still waits or is being sent; finished: none "
                   "does; held: some recipient is held (smtprelay queue hold); a "
                   "recipient state: some recipient is in it."),
            _LIMIT, _cursor("message id")],
        "responses": {**_ok("A page of messages.", "MessagePage"), **_errors(400)}}},
    "/queue/retry": {"post": {
        "operationId": "retryQueue",
        "summary": "Every waiting recipient due now (smtprelay queue flush).",
        "responses": {**_ok("How many recipients are due.", "RetryResult"), **_errors()}}},
    "/queue/{message_id}": {
        "get": {
            "operationId": "getMessage", "summary": "One message and its recipients.",
            "parameters": [_MESSAGE_ID],
            "responses": {**_ok("The message.", "Message"), **_errors(404)}},
        "delete": {
            "operationId": "deleteMessage",
            "summary": "Remove a message from the spool; it is not delivered, no DSN.",
            "parameters": [_MESSAGE_ID],
            "responses": {**_ok("Deleted.", "MessageDeleted"), **_errors(404)}},
    },
    "/queue/{message_id}/retry": {"post": {
        "operationId": "retryMessage", "summary": "A message's waiting recipients due now.",
        "parameters": [_MESSAGE_ID],
        "responses": {**_ok("How many recipients are due.", "RetryResult"),
                      **_errors(404, 409)}}},
    "/queue/{message_id}/hold": {"post": {
        "operationId": "holdMessage",
        "summary": "Keep a message's waiting recipients from delivery until it is released "
                   "or retried (smtprelay queue hold); a flush leaves it held. 409: no "
                   "recipient is waiting.",
        "parameters": [_MESSAGE_ID],
        "responses": {**_ok("How many recipients are held.", "HoldResult"),
                      **_errors(404, 409)}}},
    "/queue/{message_id}/release": {"post": {
        "operationId": "releaseMessage",
        "summary": "A held message's recipients due now (smtprelay queue release). 409: "
                   "the message is not held.",
        "parameters": [_MESSAGE_ID],
        "responses": {**_ok("How many recipients are due.", "RetryResult"),
                      **_errors(404, 409)}}},
    "/configuration-sets": {"get": {
        "operationId": "listConfigurationSets",
        "summary": "The configured sets (and sets still paused that the configuration "
                   "no longer has), with their pause.",
        "responses": {**_ok("The sets.", "ConfigurationSetList"), **_errors()}}},
    "/configuration-sets/{name}": {"get": {
        "operationId": "getConfigurationSet", "summary": "One set and its pause.",
        "parameters": [_SET_NAME],
        "responses": {**_ok("The set.", "ConfigurationSet"), **_errors(404)}}},
    "/configuration-sets/{name}/pause": {"post": {
        "operationId": "pauseConfigurationSet",
        "summary": "Refuse the set's new mail with 554 5.7.1 until resumed; queued mail "
                   "still goes.",
        "parameters": [_SET_NAME],
        "requestBody": _body("PauseRequest", required=False),
        "responses": {**_ok("Paused.", "ConfigurationSet"),
                      **_errors(400, 404, 409, 413, 415, 422)}}},
    "/configuration-sets/{name}/resume": {"post": {
        "operationId": "resumeConfigurationSet",
        "summary": "Lift a pause (manual or reputation).",
        "parameters": [_SET_NAME],
        "responses": {**_ok("Resumed.", "ConfigurationSet"), **_errors(404, 409)}}},
    "/configuration-sets/{name}/stats": {"get": {
        "operationId": "getConfigurationSetStats",
        "summary": "A set's counts and rates over a window.",
        "parameters": [_SET_NAME, _WINDOW],
        "responses": {**_ok("The statistics.", "SetStats"), **_errors(400, 404)}}},
    "/accounts": {"get": {
        "operationId": "listAccounts",
        "summary": "The configured accounts (and accounts still paused that the "
                   "configuration no longer has), with their pause and reputation.",
        "responses": {**_ok("The accounts.", "AccountList"), **_errors()}}},
    "/accounts/{account}": {"get": {
        "operationId": "getAccount", "summary": "One account, its pause and reputation.",
        "parameters": [_ACCOUNT],
        "responses": {**_ok("The account.", "Account"), **_errors(404)}}},
    "/accounts/{account}/pause": {"post": {
        "operationId": "pauseAccount",
        "summary": "Refuse all of the account's new mail with 554 5.7.1 until resumed; "
                   "queued mail still goes.",
        "parameters": [_ACCOUNT],
        "requestBody": _body("PauseRequest", required=False),
        "responses": {**_ok("Paused.", "Account"),
                      **_errors(400, 404, 409, 413, 415, 422)}}},
    "/accounts/{account}/resume": {"post": {
        "operationId": "resumeAccount",
        "summary": "Lift an account's pause (manual or reputation).",
        "parameters": [_ACCOUNT],
        "responses": {**_ok("Resumed.", "Account"), **_errors(404, 409)}}},
    "/contact-lists": {"get": {
        "operationId": "listContactLists",
        "summary": "The contact lists of the configuration, with their topics.",
        "responses": {**_ok("The lists.", "ContactListList"), **_errors()}}},
    "/contact-lists/{list}": {"get": {
        "operationId": "getContactList", "summary": "One contact list and its topics.",
        "parameters": [_LIST],
        "responses": {**_ok("The list.", "ContactList"), **_errors(404)}}},
    "/contact-lists/{list}/contacts": {
        "get": {
            "operationId": "listContacts",
            "summary": "A list's contacts in address order (SES ListContacts), filtered by "
                       "subscription status and topic.",
            "parameters": [
                _LIST,
                _param("status", "query", _STATUS,
                       "SES's FilteredStatus. Without topic: OPT_OUT lists the contacts "
                       "who unsubscribed from the whole list, OPT_IN the others. With "
                       "topic: the status a message of the topic meets (OPT_OUT for a "
                       "contact unsubscribed from the whole list)."),
                _param("topic", "query", {"type": "string", "pattern": NAME_PATTERN},
                       "SES's TopicFilter.TopicName: a topic of the list (404 otherwise). "
                       "Alone, it lists the contacts with a preference for the topic."),
                _param("use_default", "query", {"type": "boolean", "default": False},
                       "SES's UseDefaultIfPreferenceUnavailable: with topic, a contact "
                       "without a preference for it counts with the topic's default; "
                       "false: only explicit preferences count. Ignored without topic."),
                _LIMIT,
                _param("cursor", "query", {"type": "string", "maxLength": MAX_CURSOR,
                                           "pattern": CURSOR_PATTERN},
                       "`next_cursor` of the previous page: the page starts after this "
                       "address.")],
            "responses": {**_ok("A page of contacts.", "ContactPage"), **_errors(400, 404)}},
        "post": {
            "operationId": "createContact",
            "summary": "Add a contact to the list (SES CreateContact); 409 if it is on it.",
            "parameters": [_LIST],
            "requestBody": _body("CreateContact", required=True),
            "responses": {**_ok("Created.", "Contact", "201"),
                          **_errors(400, 404, 409, 413, 415, 422)}},
    },
    "/contact-lists/{list}/contacts/{address}": {
        "get": {
            "operationId": "getContact", "summary": "One contact (SES GetContact).",
            "parameters": [_LIST, _CONTACT_ADDRESS],
            "responses": {**_ok("The contact.", "Contact"), **_errors(404)}},
        "put": {
            "operationId": "updateContact",
            "summary": "Change a contact's preferences or attributes (SES UpdateContact).",
            "parameters": [_LIST, _CONTACT_ADDRESS],
            "requestBody": _body("UpdateContact", required=False),
            "responses": {**_ok("Updated.", "Contact"), **_errors(400, 404, 413, 415, 422)}},
        "delete": {
            "operationId": "deleteContact",
            "summary": "Take a contact off the list (SES DeleteContact).",
            "parameters": [_LIST, _CONTACT_ADDRESS],
            "responses": {**_ok("Deleted.", "ContactDeleted"), **_errors(404)}},
    },
    "/stats": {"get": {
        "operationId": "getStats",
        "summary": "Counts and rates per set (null: no set) and per account.",
        "parameters": [_WINDOW],
        "responses": {**_ok("The statistics.", "StatsReport"), **_errors(400)}}},
    "/node": {"get": {
        "operationId": "getNode",
        "summary": "This node: ready, draining, connections, queue.",
        "responses": {**_ok("The node.", "NodeStatus"), **_errors()}}},
    "/node/drain": {"post": {
        "operationId": "drainNode",
        "summary": "As `smtprelay drain`: new SMTP connections get 421 and /readyz fails; "
                   "the queue is still delivered. Poll GET /node until safe_to_stop.",
        "responses": {**_ok("The node, draining.", "NodeStatus"), **_errors()}}},
    "/node/undrain": {"post": {
        "operationId": "undrainNode",
        "summary": "End a drain: accept again.",
        "responses": {**_ok("The node, accepting.", "NodeStatus"), **_errors()}}},
    "/ip-pools": {"get": {
        "operationId": "listPoolAddresses",
        "summary": "Every IP pool address's warm-up: day, WarmupPercentage, WarmupStatus, "
                   "today's caps and what it sent today per mailbox provider.",
        "responses": {**_ok("The addresses.", "PoolAddresses"), **_errors(404, 503)}}},
    "/ip-pools/{pool}": {"get": {
        "operationId": "getPool",
        "summary": "One pool's addresses and their warm-up.",
        "parameters": [_POOL],
        "responses": {**_ok("The pool's addresses.", "PoolAddresses"),
                      **_errors(404, 503)}}},
    "/ip-pools/{pool}/addresses/{ip}/warmup": {"put": {
        "operationId": "putWarmupDay",
        "summary": "Put an address on a day of its warm-up, from today (SES's Edit warm "
                   "up): 1 restarts it, days + 1 ends it.",
        "parameters": [_POOL, _param("ip", "path", {"type": "string", "minLength": 1},
                                     "The address, as written under the pool's addresses.")],
        "requestBody": _body("WarmupDay", required=True),
        "responses": {**_ok("The address's warm-up now.", "PoolAddress"),
                      **_errors(400, 404, 413, 415, 422, 503)}}},
    "/cluster/nodes": {"get": {
        "operationId": "listClusterNodes",
        "summary": "Every node sharing the store (store: redis), from their heartbeats; "
                   "a relay that is one node lists itself.",
        "responses": {**_ok("The nodes.", "ClusterNodes"), **_errors(503)}}},
    "/events/stream": {"get": {
        "operationId": "streamEvents",
        "summary": "The live tail (smtprelay events tail): the latest events this node "
                   "committed, then with follow=true each new one as it comes, until the "
                   "client goes. One JSON object a line: an event (SES's record with only "
                   "source and destination in its mail object, and messageId, "
                   "configurationSet and timestamp), or "
                   '{"dropped": n} when n events were lost for reading too slowly; a '
                   "blank line keeps a quiet stream alive. At most once, from memory: "
                   "event destinations are the durable way to receive events.",
        "parameters": [
            _param("type", "query", {"type": "array", "items": {"enum": list(EVENT_TYPES)}},
                   "Only events of these types (repeat the parameter for several).",
                   ) | {"style": "form", "explode": True},
            _param("configuration_set", "query",
                   {"type": "array", "items": {"type": "string", "maxLength": 256,
                                               "pattern": CURSOR_PATTERN}},
                   "Only events of these sets; empty: mail sent without a set.",
                   ) | {"style": "form", "explode": True},
            _param("recent", "query", {"type": "integer", "minimum": 0, "maximum": RECENT},
                   "How many of the latest kept events to start with (default 10)."),
            _param("follow", "query", {"enum": ["true", "false"]},
                   "true: keep the stream open for new events (default false)."),
        ],
        "responses": {"200": {"description": "The events, as they come.",
                              "content": {"application/x-ndjson": {
                                  "schema": {"type": "string"}}}},
                      **_errors(400, 404)}}},
}


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change theirs)."""
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "smtprelay admin API",
            "version": __version__,
            "description": "Suppression list, queue, configuration-set and account "
                           "pauses, statistics and contact lists of one smtprelay node. "
                           "See docs/admin-api.md.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": _PATHS,
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "The secret in the variable http.admin_token_env names, "
                               "or a token from `smtprelay admin-token issue`."}},
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
        },
    })
