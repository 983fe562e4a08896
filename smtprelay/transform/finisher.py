"""Where transform.finish runs: a transform worker process when the relay has them, else
a thread or the event loop itself, chosen by size; and the metrics of its signing.

With workers (`server.transform_workers`), a message to track or to sign takes one
trip to a worker and back, and neither the link rewriting nor the DKIM
canonicalisation touches the interpreter that runs the event loop. Without them (one
core): link rewriting is pure Python and holds the GIL either way, so inline it costs
~3 ms for 50 KB of HTML, less than a thread hop's latency is worth, and a big message
goes to a thread so the loop keeps answering other sessions in between; signing always
goes to a thread, since OpenSSL's RSA and hashlib release the GIL (bench/dkim_cost.py:
dual-signing 50 KB costs the loop 2.4 ms inline against 0.1 ms through a thread).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from smtprelay.infra import metrics
from smtprelay.mail.headers import HeaderField
from smtprelay.transform import dkim, finish, tokens, tracking
from smtprelay.transform.finish import Finished
from smtprelay.transform.pool import TransformPool

log = logging.getLogger("smtprelay.transforms")

# Link rewriting of a bigger message goes to a thread (30 ms per MB of pure Python).
_INLINE_TRANSFORM_LIMIT = 256 * 1024


class Finisher:
    def __init__(self, pool: TransformPool | None = None) -> None:
        self.pool = pool

    async def finish(self, data: bytes, plan: tracking.Plan | None, keyring: tokens.KeyRing,
                     keys: Sequence[dkim.SigningKey], *, message_id: str,
                     recipient: int | None, issued_at: float, media_type: str | None = None,
                     fields: Sequence[HeaderField] | None = None) -> Finished:
        """transform.finish.finish, off the loop where it is worth it. Raises what it
        raises, and TransformUnavailable when the worker pool cannot take the message."""
        if self.pool is not None and (plan is not None or keys):
            done = await self.pool.finish(keyring, data, plan, keys, message_id=message_id,
                                          recipient=recipient, issued_at=issued_at,
                                          media_type=media_type)
        else:
            def transform() -> Finished:
                return finish.finish(data, plan, keyring, (), message_id=message_id,
                                     recipient=recipient, issued_at=issued_at,
                                     media_type=media_type)
            if len(data) > _INLINE_TRANSFORM_LIMIT:
                done = await asyncio.to_thread(transform)
            else:
                done = transform()
            if keys:
                unchanged = done.result.data is data
                done = await asyncio.to_thread(finish.sign, done.result, keys,
                                               fields if unchanged else None)
        if done.signatures:
            metrics.DKIM_SIGN_SECONDS.observe(done.sign_seconds)
            for algorithm in done.algorithms:
                metrics.DKIM_SIGNATURES.labels(algorithm=algorithm).inc()
            log.debug("msg=%s dkim %s", message_id, ",".join(
                f"d={key.domain} s={key.selector}" for key in keys))
        return done
