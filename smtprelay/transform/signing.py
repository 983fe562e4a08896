"""DKIM signing off the event loop, with its metrics: the last change to a message, made
at acceptance for a message every recipient gets alike and at delivery for each
per-recipient copy (transform.copies).

Signing runs in a thread for every size. Dual-signing (RSA 2048 + Ed25519) a 2 KB
message costs ~0.9 ms inline, all of it on the loop; through to_thread the loop thread
spends ~0.1 ms, since OpenSSL's RSA and hashlib release the GIL, for ~0.3 ms more
latency on that message. 50 KB HTML: 2.4 ms inline against 0.1 ms; 1 MB: 5-48 ms
against 0.1-0.2 ms (bench/dkim_cost.py, 2-core VM), so no size is cheaper inline. (The
relaxed-body regexes do hold the GIL, in 64 KiB pieces.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from smtprelay.infra import metrics
from smtprelay.mail.headers import HeaderField
from smtprelay.transform import dkim

log = logging.getLogger("smtprelay.dkim")


class SigningFailed(Exception):
    """The signer raised: the caller answers with a temporary failure, as OpenDKIM's
    default for internal errors does, so the message never leaves unsigned."""


async def signatures(signer: dkim.Signer, message_id: str, data: bytes, from_domain: str,
                     fields: Sequence[HeaderField] | None = None) -> bytes:
    """Our DKIM-Signature fields for `data` (they go in front of it), empty when no
    identity with keys covers the From domain. `fields`: `data`'s header fields, when
    the caller has them. SigningFailed when signing did."""
    keys = signer.keys_for(from_domain)
    if not keys:
        return b""
    started = time.perf_counter()
    try:
        signed = await asyncio.to_thread(dkim.signatures, data, keys, None, fields)
    except Exception as exc:
        raise SigningFailed(repr(exc)) from exc
    metrics.DKIM_SIGN_SECONDS.observe(time.perf_counter() - started)
    for key in keys:
        metrics.DKIM_SIGNATURES.labels(algorithm=key.algorithm).inc()
    log.debug("msg=%s dkim d=%s s=%s", message_id, keys[0].domain,
              ",".join(key.selector for key in keys))
    return b"".join(signed)
