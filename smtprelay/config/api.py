"""The SES-compatible HTTP API (`api:`): which of SES's two APIs the HTTP listeners
answer, where the key that encrypts the API keys' secrets lives, and the limits on a
signed request.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from smtprelay.config.values import Duration, Model, Size

# SES: "Maximum message size (including attachments): 10 MB per message (after base64
# encoding)". 10 MiB holds such a message and the JSON or form fields around it.
DEFAULT_MAX_REQUEST_SIZE = 10 * 1024 * 1024


class APIConfig(Model):
    # SES v2 (REST and JSON, /v2/email/...) and the v1 Query API (form POSTs to /
    # with Action=...), served on http.listen and http.tls_listen, signed with
    # Signature Version 4 by keys from `smtprelay api-keys create`.
    sesv2: bool = False
    sesv1: bool = False
    # The key that encrypts the API keys' secrets at rest (AES-256-GCM; the secret is
    # needed to check a signature, so it cannot be a hash like SMTP passwords). Kept
    # apart from the database on purpose: a copy of state.db (or of Redis) alone
    # gives away no secret. None: <server.data_dir>/api-keys.key.
    key_file: Path | None = None
    # How far a request's X-Amz-Date may be from this host's clock; AWS allows 5m.
    # Longer lets a captured request be replayed for longer.
    max_clock_skew: Duration = 300.0
    # The largest request body accepted, before anything is parsed.
    max_request_size: Size = DEFAULT_MAX_REQUEST_SIZE

    @field_validator("max_clock_skew")
    @classmethod
    def _skew_bounded(cls, value: float) -> float:
        if value > 3600:
            raise ValueError("at most 1h: a signed request stays valid for this long either "
                             "side of now, so a longer one lets a captured request be "
                             "replayed for longer (AWS allows 5m)")
        return value

    @field_validator("max_request_size")
    @classmethod
    def _room_for_a_request(cls, value: int) -> int:
        if value < 64 * 1024:
            raise ValueError("at least 64k: smaller refuses ordinary messages (SES "
                             "accepts 10 MB after base64)")
        return value
