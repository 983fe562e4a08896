"""A transform worker process: `python -m smtprelay.transform.worker`, started by the pool.

It reads requests on stdin and writes one reply per request, in order, on stdout,
until stdin closes. Each request carries everything transform.finish needs (the
message, its id, the recipient a copy is for, its time, the tracking.Plan, the
tracking key ring and the DKIM keys to sign with), so the worker holds no state but a
cache of key rings and keys it has already unpickled.

The wire format is length-prefixed and binary, so a 50 KB message crosses the pipe as
it is: no pickling of the message, no helper threads in the relay (a
ProcessPoolExecutor's feeder and manager threads cost the relay ~1 ms of CPU per
message, a third of the transform itself).

    request:  !II   parameters length, message length; pickled parameters; message
    reply:    !BII  status, details length, message length; pickled details; message

Status OK: details are (link count, open pixel added, unsubscribe URL, problems,
signatures, seconds spent signing, the keys' algorithms, whether the message changed)
and the message is the transformed one (empty when it did not change: the relay keeps
its own). DUPLICATE_OPEN_TRACKER: details are the number of placeholders. FAILED:
details are the stage that failed ("transform" or "dkim") and the exception's repr,
for the relay's log.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from smtprelay.transform import dkim

REQUEST = struct.Struct("!II")
REPLY = struct.Struct("!BII")
OK, DUPLICATE_OPEN_TRACKER, FAILED = 0, 1, 2
# Key rings and DKIM keys seen recently, by their pickled bytes: they are the same for
# every message until a reload, so unpickle (and parse) them once.
_CACHE_SIZE = 64


def request(message_id: str, recipient: int | None, issued_at: float, keyring: bytes,
            plan: object, data: bytes, keys: bytes = b"", media_type: str | None = None
            ) -> bytes:
    """One request frame; `keyring` and `keys` are pickled (keys_blob), `plan` is the
    message's tracking.Plan or None."""
    parameters = pickle.dumps((message_id, recipient, issued_at, keyring, plan, keys,
                               media_type), protocol=pickle.HIGHEST_PROTOCOL)
    return REQUEST.pack(len(parameters), len(data)) + parameters + data


def keys_blob(keys: Sequence[dkim.SigningKey]) -> bytes:
    """DKIM keys as a request carries them: (domain, selector, algorithm, PEM) each
    (cryptography's key objects do not pickle)."""
    return pickle.dumps(tuple((key.domain, key.selector, key.algorithm,
                               dkim.key_pem(key.private_key)) for key in keys),
                        protocol=pickle.HIGHEST_PROTOCOL) if keys else b""


def _thaw_keys(blob: bytes) -> tuple[dkim.SigningKey, ...]:
    from cryptography.hazmat.primitives import serialization
    keys = []
    # The relay is the only writer of this pipe.
    for domain, selector, algorithm, pem in pickle.loads(blob):  # noqa: S301
        private = serialization.load_pem_private_key(pem, password=None)
        keys.append(dkim.SigningKey(domain, selector, algorithm, private,  # type: ignore[arg-type]
                                    Path("")))
    return tuple(keys)


def serve(source: BinaryIO, sink: BinaryIO) -> int:
    """Answer requests until `source` ends; 0 at a clean end, 1 on a cut-off request."""
    from smtprelay.transform import finish, tracking

    cache: dict[bytes, Any] = {}

    def thawed(blob: bytes, thaw: Callable[[bytes], Any] = pickle.loads) -> Any:
        value = cache.get(blob)
        if value is None:
            if len(cache) >= _CACHE_SIZE:
                cache.clear()
            value = cache[blob] = thaw(blob)  # from the relay
        return value

    while True:
        head = source.read(REQUEST.size)
        if not head:
            return 0
        if len(head) < REQUEST.size:
            return 1
        parameters_size, data_size = REQUEST.unpack(head)
        body = source.read(parameters_size + data_size)
        if len(body) < parameters_size + data_size:
            return 1
        data = body[parameters_size:]
        details: object
        try:
            # The relay is the only writer of this pipe.
            message_id, recipient, issued_at, keyring, plan, keys, media_type = \
                pickle.loads(body[:parameters_size])  # noqa: S301
            done = finish.finish(data, plan, thawed(keyring),
                                 thawed(keys, _thaw_keys) if keys else (),
                                 message_id=message_id, recipient=recipient,
                                 issued_at=issued_at, media_type=media_type)
        except tracking.DuplicateOpenTracker as exc:
            status, details, data = DUPLICATE_OPEN_TRACKER, exc.count, b""
        except finish.FinishFailed as exc:  # the relay logs it and answers 451
            status, details, data = FAILED, (exc.stage, exc.detail), b""
        except Exception as exc:
            status, details, data = FAILED, ("transform", repr(exc)), b""
        else:
            result = done.result
            changed = result.data is not data
            status, data = OK, result.data if changed else b""
            details = (result.link_count, result.opens_tracked, result.unsubscribe_url,
                       result.problems, done.signatures, done.sign_seconds,
                       done.algorithms, changed)
        packed = pickle.dumps(details, protocol=pickle.HIGHEST_PROTOCOL)
        sink.write(REPLY.pack(status, len(packed), len(data)) + packed + data)
        sink.flush()


def main() -> int:
    # Ctrl-C and a service manager's SIGTERM reach the whole process group; the relay
    # decides when workers stop, by closing their stdin once the messages they hold are
    # done (and their stdin closes too if the relay dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Replies own file descriptor 1; anything printed by mistake goes to stderr instead
    # of corrupting them.
    sink = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        return serve(sys.stdin.buffer, sink)
    except BrokenPipeError:
        return 0  # the relay went away


if __name__ == "__main__":
    sys.exit(main())
