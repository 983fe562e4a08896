"""One tenant never uses another's configuration set (issue 16): before, account
`other` sent with acme's set and got acme's tracking domain and event destination.
Now another account's set is answered as one that does not exist."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.config import ConfigError, load_config
from tests.support import (
    RunningRelay,
    base_config,
    message,
    relay_fixture,
    send_raw,
    session,
    spooled,
    write_config,
)

UNKNOWN = (554, b"5.3.0 Configuration set does not exist")

relay = relay_fixture(
    accounts={
        "acme": {"identities": ["example.com"], "default_configuration_set": "tracked"},
        "other": {"identities": ["other.test"]},
        "third": {"identities": ["third.test"], "default_configuration_set": "common"},
    },
    configuration_sets={
        "tracked": {"shared": False},  # acme's, by its default_configuration_set
        "listed": {"accounts": ["acme", "third"]},
        "common": {"shared": True},
    })


def with_set(name: str, sender: str) -> bytes:
    return f"X-SES-CONFIGURATION-SET: {name}\r\n".encode() + message(sender=sender)


def test_another_accounts_set_does_not_exist_for_it(relay: RunningRelay) -> None:
    other = relay.credential("other")
    with session(relay, other) as smtp:
        for name in ("tracked", "listed", "nosuchset"):
            assert send_raw(smtp, ["a@example.net"], with_set(name, "x@other.test"),
                            sender="x@other.test") == UNKNOWN, name
        assert send_raw(smtp, ["a@example.net"], with_set("common", "x@other.test"),
                        sender="x@other.test")[0] == 250
    acme = relay.credential("acme")
    with session(relay, acme) as smtp:
        for name in ("tracked", "listed", "common"):
            assert send_raw(smtp, ["a@example.net"], with_set(name, "app@example.com"))[0] \
                == 250, name
    accounts = [e["account"] for e in spooled(relay.config)]
    assert accounts.count("other") == 1 and accounts.count("acme") == 3


def test_a_set_that_leaves_out_its_default_account_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yaml", base_config(
        tmp_path / "var",
        accounts={"acme": {"identities": ["example.com"],
                           "default_configuration_set": "mine"}},
        configuration_sets={"mine": {"accounts": ["nobody"]}}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    problems = "\n".join(raised.value.problems)
    assert "configuration_sets.mine.accounts: 'nobody' is not an account" in problems
    assert ("accounts.acme.default_configuration_set: 'mine' does not list 'acme' in its "
            "accounts") in problems
