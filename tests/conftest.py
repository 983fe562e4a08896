from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Credential, RunningRelay, running


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    """A relay with the default test config (see tests/support.py)."""
    with running(tmp_path) as r:
        yield r


@pytest.fixture
def cred(relay: RunningRelay) -> Credential:
    return relay.credential("acme")
