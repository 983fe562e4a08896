"""The last changes to a message, in one step: tracking and unsubscribe as its plan says,
then its DKIM signatures over the result.

One function for every place the work runs: a transform worker process
(transform.worker), a thread, or inline (transform.finisher decides), at acceptance
for a message every recipient gets alike and at delivery for each per-recipient copy
(transform.copies). Run in a worker, neither the link rewriting nor the signing
(dkimpy's relaxed canonicalisation holds the GIL) shares the event loop's
interpreter lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from smtprelay.mail.headers import HeaderField
from smtprelay.transform import dkim, tokens, tracking

Stage = Literal["transform", "dkim"]


class FinishFailed(Exception):
    """The transform or the signer raised (not a refusal of the message): the caller
    answers with a temporary failure, as OpenDKIM's default for internal errors does,
    so the message never leaves unsigned or half-rewritten."""

    def __init__(self, stage: Stage, detail: str) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage: Stage = stage
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Finished:
    # `result.data` is the input object itself when nothing changed it.
    result: tracking.Result
    # Our DKIM-Signature fields (CRLF-terminated, in front of the message); empty
    # without keys.
    signatures: bytes = b""
    sign_seconds: float = 0.0
    algorithms: tuple[str, ...] = field(default_factory=tuple)


def finish(data: bytes, plan: tracking.Plan | None, keyring: tokens.KeyRing,
           keys: Sequence[dkim.SigningKey], *, message_id: str, recipient: int | None,
           issued_at: float, media_type: str | None = None,
           fields: Sequence[HeaderField] | None = None) -> Finished:
    """`data` as `plan` wants it (None: only the ses:* clean-up), tokens naming
    `recipient` (None: the whole message), signed with `keys`. `fields`: `data`'s
    header fields, when the caller has them (used for signing if nothing changed).
    DuplicateOpenTracker: refuse the message; FinishFailed: try again later."""
    transformer = tracking.Transformer(keyring)
    try:
        if plan is None:
            result = transformer.apply(data, message_id=message_id, recipient_count=1,
                                       issued_at=issued_at, settings=None,
                                       media_type=media_type)
        else:
            result = transformer.render(data, plan, message_id=message_id,
                                        recipient=recipient, issued_at=issued_at)
    except tracking.DuplicateOpenTracker:
        raise
    except Exception as exc:
        raise FinishFailed("transform", repr(exc)) from exc
    return sign(result, keys, fields if result.data is data else None)


def sign(result: tracking.Result, keys: Sequence[dkim.SigningKey],
         fields: Sequence[HeaderField] | None = None) -> Finished:
    """`result` with its DKIM signatures; FinishFailed("dkim", ...) when signing fails."""
    if not keys:
        return Finished(result)
    started = time.perf_counter()
    try:
        signed = dkim.signatures(result.data, keys, None, fields)
    except Exception as exc:
        raise FinishFailed("dkim", repr(exc)) from exc
    return Finished(result, b"".join(signed), time.perf_counter() - started,
                    tuple(key.algorithm for key in keys))
