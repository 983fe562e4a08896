from __future__ import annotations

import pytest
from hypothesis import settings

from tests.support import HYPOTHESIS_PROFILE, Credential, RunningRelay, relay_fixture

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


# Fixtures for every test: dns_server (tests/dnsserver.py), the SMTP sinks that play
# remote hosts (sinks, and the TLS they use: tests/sinks.py), a relay with the default
# test config and a credential for it; a module that needs another relay makes its own
# with relay_fixture (tests/support.py).
pytest_plugins = ["tests.dnsserver", "tests.sinks"]

relay = relay_fixture()


@pytest.fixture
def cred(relay: RunningRelay) -> Credential:
    return relay.credential("acme")
