"""Per-recipient copies: a message to several recipients whose content must name each one.

A one-click unsubscribe link, and tracked links and pixels, carry a token naming the
recipient. When a message has several envelope recipients and its configuration set
tracks or adds unsubscribe links, or it names a contact list, every recipient gets a
copy of their own (SES sends one copy per destination as well): the pipeline spools
the message as submitted, with its tracking.Plan in the message attributes, and the
delivery side asks a CopyMaker (once per message) for each recipient's copy, rendered with that
recipient's index in its tokens and then DKIM-signed, so each signature covers the
copy's own List-Unsubscribe and links. The copy is made again at every attempt: it is
a pure function of the stored message, the plan and the index, so a retry sends the
same tokens (only the signature's t= differs).

Why at delivery and not N bodies at acceptance: the spool and its fsyncs stay one
body per message whatever the recipient count (a 50 KB newsletter to 500 addresses is
50 KB on disk, not 25 MB), and the acknowledgement does not wait for N transforms and
N signatures. The price is that work at delivery, where it runs off the loop as at
acceptance (a transform worker process or a thread, and a thread for signing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from smtprelay.mail.address import domain_of
from smtprelay.mail.headers import addresses, parse_header_section
from smtprelay.transform import dkim, tokens, tracking
from smtprelay.transform.finish import FinishFailed
from smtprelay.transform.finisher import Finisher
from smtprelay.transform.keys import KeySource, SignerSource
from smtprelay.transform.pool import TransformPool, TransformUnavailable


class CopyFailed(Exception):
    """A recipient's copy could not be made (a damaged plan, a transform or signing
    failure): that recipient is deferred and tried again."""


class CopySource(KeySource, SignerSource, Protocol):
    """The tracking keys and DKIM keys in force (the daemon's holder, app.live)."""


class CopyMaker:
    def __init__(self, live: CopySource, pool: TransformPool | None = None) -> None:
        self._live = live
        self._finisher = Finisher(pool)

    def prepare(self, message_id: str, data: bytes, received: bytes, plan_json: object,
                issued_at: float) -> Copies:
        """What every recipient's copy of this message shares: its plan and signing
        keys, found once per attempt rather than once per recipient. CopyFailed when
        the stored plan is damaged or the message has no From to sign for."""
        plan = tracking.Plan.from_json(plan_json)
        if plan is None:
            raise CopyFailed(f"the stored copy plan is damaged: {plan_json!r:.200}")
        senders = [address for field in parse_header_section(data) if field.key == "from"
                   for address in addresses(field.value)]
        if not senders:
            raise CopyFailed("the message has no From address to sign for")
        return Copies(self._finisher, self._live.keyring,
                      self._live.signer.keys_for(domain_of(senders[0])), plan,
                      message_id, data, received, issued_at)


@dataclass(frozen=True, slots=True)
class Copies:
    """One message's per-recipient copies, made one at a time (CopyMaker.prepare)."""

    finisher: Finisher
    keyring: tokens.KeyRing
    keys: Sequence[dkim.SigningKey]
    plan: tracking.Plan
    message_id: str
    data: bytes
    received: bytes  # the Received field the spool keeps as the message's prefix
    issued_at: float

    async def copy_for(self, recipient: int) -> tuple[bytes, bytes]:
        """(prefix, data) of recipient `recipient`'s copy: our DKIM signatures and the
        Received field, and the transformed message. CopyFailed when it cannot be made."""
        try:
            done = await self.finisher.finish(
                self.data, self.plan, self.keyring, self.keys, message_id=self.message_id,
                recipient=recipient, issued_at=self.issued_at)
        except (tracking.DuplicateOpenTracker, FinishFailed, TransformUnavailable) as exc:
            raise CopyFailed(f"the copy could not be made: {exc!r}") from exc
        return done.signatures + self.received, done.result.data
