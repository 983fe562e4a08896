"""AUTH lockout (smtprelay.auth.lockout): per client address and per user, expiring."""

from __future__ import annotations

from smtprelay.auth.lockout import Lockout


def test_lockout_per_ip_and_per_user_expires() -> None:
    now = [0.0]
    lockout = Lockout(per_ip=3, per_user=2, window=60, lockout=100, clock=lambda: now[0])
    lockout.failure("10.0.0.1", "alice")
    assert lockout.locked_for("10.0.0.1", "alice") == 0
    lockout.failure("10.0.0.2", "alice")
    assert lockout.locked_for("10.0.0.9", "alice") == 100  # the user, from anywhere
    assert lockout.locked_for("10.0.0.1", "bob") == 0
    for _ in range(3):
        lockout.failure("10.0.0.3", None)
    assert lockout.locked_for("10.0.0.3", "carol") == 100  # the address, for anyone
    now[0] = 101
    assert lockout.locked_for("10.0.0.3", "alice") == 0
    lockout.failure("10.0.0.4", "dave")
    now[0] = 200  # outside the window: the first failure no longer counts
    lockout.failure("10.0.0.4", "dave")
    assert lockout.locked_for("10.0.0.4", "dave") == 0
