from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from smtprelay.infra import passwords
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
# "fuzz": scripts/fuzz's long runs of tests/fuzz, FUZZ_EXAMPLES examples per test and
# round (the script runs rounds until its time is spent).
settings.register_profile("fuzz", settings.get_profile("default"),
                          max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2000")),
                          deadline=None, print_blob=True)
settings.load_profile(HYPOTHESIS_PROFILE)


# Fixtures for every test: dns_server (tests/dnsserver.py), the SMTP sinks that play
# remote hosts (sinks, and the TLS they use: tests/sinks.py), unbound (a validating
# resolver for DANE: tests/unbound.py), a relay with the default
# test config and a credential for it; a module that needs another relay makes its own
# with relay_fixture (tests/support.py).
pytest_plugins = ["tests.dnsserver", "tests.redis_server", "tests.sinks", "tests.unbound"]

relay = relay_fixture()


@pytest.fixture
def cred(relay: RunningRelay) -> Credential:
    return relay.credential("acme")


# Speed, not meaning: two session-wide settings that change no outcome.
#
# The tests start `python -m smtprelay` some 300 times (the CLI, `serve`, the tracking
# workers). With PYTHONDONTWRITEBYTECODE set, as on the CI machines, each of them would
# compile the relay's modules from source again; a bytecode cache of the session's own,
# outside the work tree, lets every child after the first load them compiled.
#
# Credentials made in this process (RunningRelay.credential, the authenticator's dummy
# hash) use scrypt's lowest supported cost, 2^10, as tests/unit/infra/test_passwords.py
# does: the default 2^15 costs ~0.1 s a hash, and a relay-backed test makes three. The
# hashes are real scrypt in the stored format; verification reads the cost from the hash.
# Child processes (`smtprelay credentials create`, `serve`) keep the default.

@pytest.fixture(scope="session", autouse=True)
def _quick_children_and_hashes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    defaults = passwords.hash_password.__kwdefaults__
    assert defaults is not None and "log_n" in defaults
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        patch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.mktemp("pycache")))
        patch.setitem(defaults, "log_n", 10)
        yield
