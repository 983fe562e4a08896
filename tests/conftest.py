from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import HYPOTHESIS_PROFILE, Credential, RunningRelay, running

# Hypothesis profiles, registered before any test module is imported so that the
# examples() counts in @settings see them. "ci" is used whenever tests run (also with
# CI=true, replacing Hypothesis's own "ci"): few examples keep the suite quick, and no
# deadline, because on a shared machine a slow example says nothing about the code.
# "thorough" gives each property test the large count it was written with, and 1000
# where it names none:
#     HYPOTHESIS_PROFILE=thorough scripts/test
# The explicit parent keeps a profile the same whether or not Hypothesis detected CI;
# print_blob, kept from Hypothesis's "ci", lets a failure seen in CI be replayed.
settings.register_profile("ci", settings.get_profile("default"), max_examples=50,
                          deadline=None, print_blob=True)
settings.register_profile("thorough", settings.get_profile("default"), max_examples=1000,
                          deadline=None, print_blob=True)
settings.load_profile(HYPOTHESIS_PROFILE)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RunningRelay]:
    """A relay with the default test config (see tests/support.py)."""
    with running(tmp_path) as r:
        yield r


@pytest.fixture
def cred(relay: RunningRelay) -> Credential:
    return relay.credential("acme")
