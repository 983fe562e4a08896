"""The local shared-state backend: connection counts and AUTH lockout through the
SharedState interface, as the SMTP server and the authenticator call it."""

from __future__ import annotations

from smtprelay.state.api import ConnectionRefusal, LockoutPolicy
from smtprelay.state.local import LocalState


async def test_connections_are_counted_in_total_and_per_address() -> None:
    state = LocalState()
    assert await state.open_connection("10.0.0.1", 3, 2) is None
    assert await state.open_connection("10.0.0.1", 3, 2) is None
    assert await state.open_connection("10.0.0.1", 3, 2) is ConnectionRefusal.PER_IP
    assert await state.open_connection("10.0.0.2", 3, 2) is None
    assert await state.open_connection("10.0.0.3", 3, 2) is ConnectionRefusal.TOTAL
    await state.close_connection("10.0.0.1")
    # A refused one was never counted, so one close frees one place.
    assert await state.open_connection("10.0.0.3", 3, 2) is None
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        await state.close_connection(ip)
    assert state.connections == 0 and not state.connections_by_ip


async def test_lockout_limits_come_with_each_failure() -> None:
    state = LocalState()
    strict = LockoutPolicy(per_ip=2, per_user=2, per_user_everywhere=100, min_addresses=5,
                           window=60, lockout=100)
    await state.auth_failure("10.0.0.1", "alice", strict)
    assert await state.auth_locked_for("10.0.0.1", "alice") == 0
    await state.auth_failure("10.0.0.1", "alice", strict)
    assert 99 < await state.auth_locked_for("10.0.0.1", "bob") <= 100  # the address
    assert await state.auth_locked_for("10.0.0.9", "alice") == 0  # alice elsewhere
    await state.auth_success("10.0.0.9", "alice")
