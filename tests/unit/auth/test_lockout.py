"""AUTH lockout (smtprelay.state.lockout): per client address, per user name at an
address, and per user name everywhere only for a guess spread over many addresses."""

from __future__ import annotations

from smtprelay.state.api import LockoutPolicy
from smtprelay.state.lockout import Lockout


class Guard:
    """A Lockout with one policy, as the authenticator calls it."""

    def __init__(self, now: list[float], **limits: int) -> None:
        settings = {"per_ip": 3, "per_user": 2, "per_user_everywhere": 4,
                    "min_addresses": 2, **limits}
        self.policy = LockoutPolicy(window=60, lockout=100, **settings)
        self.lockout = Lockout(clock=lambda: now[0])

    def failure(self, ip: str, username: str | None) -> None:
        self.lockout.failure(ip, username, self.policy)

    def success(self, ip: str, username: str) -> None:
        self.lockout.success(ip, username)

    def locked_for(self, ip: str, username: str | None) -> float:
        return self.lockout.locked_for(ip, username)


def lockout(now: list[float], **limits: int) -> Guard:
    return Guard(now, **limits)


def test_a_user_is_locked_at_the_guessing_address_not_everywhere() -> None:
    now = [0.0]
    guard = lockout(now)
    guard.failure("10.0.0.1", "alice")
    assert guard.locked_for("10.0.0.1", "alice") == 0
    guard.failure("10.0.0.1", "alice")
    assert guard.locked_for("10.0.0.1", "alice") == 100
    assert guard.locked_for("10.0.0.9", "alice") == 0  # the real alice, elsewhere
    assert guard.locked_for("10.0.0.1", "bob") == 0  # the address, not yet


def test_an_address_is_locked_for_every_user_name() -> None:
    now = [0.0]
    guard = lockout(now)
    for user in ("a", "b", None):
        guard.failure("10.0.0.3", user)
    assert guard.locked_for("10.0.0.3", "carol") == 100
    now[0] = 101
    assert guard.locked_for("10.0.0.3", "carol") == 0


def test_a_success_does_not_clear_the_addresses_failures() -> None:
    # Before: each own login reset the address's count, so 4 x (9 failures + 1 login)
    # made 36 guesses without a lockout.
    now = [0.0]
    guard = lockout(now, per_user=10)
    guard.failure("10.0.0.5", "victim")
    guard.failure("10.0.0.5", "victim")
    guard.success("10.0.0.5", "tenant")
    guard.failure("10.0.0.5", "victim")
    assert guard.locked_for("10.0.0.5", "anyone") == 100


def test_a_user_name_is_locked_everywhere_only_for_a_spread_guess() -> None:
    now = [0.0]
    guard = lockout(now, per_ip=100, per_user=100)
    for _ in range(6):
        guard.failure("10.0.0.6", "dave")  # many, but from one address
    assert guard.locked_for("10.0.0.7", "dave") == 0
    guard.failure("10.0.0.8", "erin")
    for _ in range(3):
        guard.failure("10.0.0.9", "erin")  # 4 failures from 2 addresses
    assert guard.locked_for("10.0.0.1", "erin") == 100


def test_failures_outside_the_window_no_longer_count() -> None:
    now = [0.0]
    guard = lockout(now)
    guard.failure("10.0.0.4", "dave")
    now[0] = 200
    guard.failure("10.0.0.4", "dave")
    assert guard.locked_for("10.0.0.4", "dave") == 0
