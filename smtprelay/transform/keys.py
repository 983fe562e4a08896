"""The keys in force, as the stages read them: sources that SIGHUP swaps.

A component that signs or verifies is given a source when it is built and reads the
key ring or the DKIM signer from it each time, so that after `smtprelay tracking-keys
rotate` or a new DKIM key and a reload it uses the new keys without being told. The
daemon's holder (smtprelay.app.live) is the source; these protocols say what a
component needs of it.
"""

from __future__ import annotations

from typing import Protocol

from smtprelay.transform.dkim import Signer
from smtprelay.transform.tokens import KeyRing


class KeySource(Protocol):
    """The tracking keys in force: they sign and verify tracking tokens and VERP tags."""

    @property
    def keyring(self) -> KeyRing: ...


class SignerSource(Protocol):
    """The DKIM keys in force."""

    @property
    def signer(self) -> Signer: ...
