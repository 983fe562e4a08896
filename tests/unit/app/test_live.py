"""smtprelay.app.live: a reload swaps the configuration and the keys together or not at
all, and the components built before it read the new ones without being told."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from smtprelay.app.live import Live
from smtprelay.bounces import verp
from smtprelay.config import Derived, load_config
from smtprelay.delivery.capture import CaptureTransport
from smtprelay.delivery.scheduler import DeliveryPolicy, Scheduler
from smtprelay.feedback.inbox import FeedbackInbox
from smtprelay.feedback.listener import FeedbackReceiver
from smtprelay.policy.quota import Quotas
from smtprelay.policy.suppression import SQLiteSuppressionStore
from smtprelay.spool.store import Spool
from smtprelay.state.local import LocalState
from smtprelay.submission.pipeline import Pipeline
from smtprelay.transform import dkim
from smtprelay.transform.tokens import KeyRing
from tests.support import base_config, write_config

MID = "018bd0e1a2b3-0123456789abcdef"


class World:
    """A configuration file, the holder opened on it as at start, and components built
    on the holder before any reload."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.path = tmp_path / "smtprelay.yaml"
        self.password = tmp_path / "smarthost.password"
        self.password.write_text("first\n")
        self.rsa = tmp_path / "rsa.pem"
        dkim.write_key(self.rsa, dkim.generate_key("rsa"))
        self.write()
        self.live = Live(load_config(self.path).config)
        self.live.config.server.data_dir.mkdir(parents=True)
        self.live.open()
        self.pipeline = Pipeline(self.live, Spool(tmp_path / "spool.db"),
                                 Quotas(self.live, LocalState()),
                                 SQLiteSuppressionStore(tmp_path / "state.db"))
        self.scheduler = Scheduler(Spool(tmp_path / "spool.db"),
                                   CaptureTransport(tmp_path / "capture"),
                                   policy=Derived(self.live, DeliveryPolicy.from_config),
                                   keys=self.live)
        self.receiver = FeedbackReceiver(self.live, FeedbackInbox(tmp_path / "fb.db"))

    def write(self, *, key_file: Path | None = None, **overrides: Any) -> None:
        identities = {"example.com": {
            "mail_from_domain": "bounce.example.com",
            "dkim": [{"selector": "r2026", "key_file": str(key_file or self.rsa)}]}}
        settings = {
            "identities": identities,
            "delivery": {"mode": "smarthost", "retry": {"first": "1m"},
                         "smarthost": {"host": "127.0.0.1", "port": 2525, "username": "relay",
                                       "password_file": str(self.password)}},
            **overrides}
        write_config(self.path, base_config(self.tmp_path / "var", **settings))

    def rotate_tracking_keys(self) -> KeyRing:
        ring = KeyRing.load(self.live.config.tracking_keys_path)
        ring.rotate()
        ring.save(self.live.config.tracking_keys_path)
        return ring

    def in_force(self) -> tuple[object, object, object, object]:
        live = self.live
        return live.config, live.signer, live.keyring, live.smarthost_password


def test_a_good_reload_swaps_everything_and_the_components_read_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    before = world.in_force()
    assert world.pipeline.check_sender("acme", "x@new.test") is not None
    assert world.scheduler.policy.retry.first == 60
    ring = world.rotate_tracking_keys()
    tag = verp.address(MID, 0, "bounce.example.com", ring)  # signed with the new key
    assert world.receiver.check_recipient("", tag) is not None
    ed25519 = tmp_path / "ed25519.pem"
    dkim.write_key(ed25519, dkim.generate_key("ed25519"))
    world.password.write_text("second\n")
    world.write(key_file=ed25519, accounts={"acme": {"identities": ["new.test"]}},
                delivery={"mode": "smarthost", "retry": {"first": "5m"},
                          "smarthost": {"host": "127.0.0.1", "port": 2525, "username": "relay",
                                        "password_file": str(world.password)}})

    with caplog.at_level(logging.INFO, logger="smtprelay"):
        assert world.live.reload(str(world.path))

    after = world.in_force()
    assert all(new is not old for new, old in zip(after, before, strict=True))
    assert world.live.smarthost_password == "second"
    assert [k.algorithm for k in world.live.signer.keys_for("example.com")] == ["ed25519-sha256"]
    assert world.live.keyring.active().id == 2
    # Built before the reload, they read the holder: new identities, policy and keys.
    assert world.pipeline.check_sender("acme", "x@new.test") is None
    assert world.scheduler.policy.retry.first == 300
    assert world.receiver.check_recipient("", tag) is None
    assert "tracking keys loaded: signing with key 2" in caplog.text
    assert "configuration reloaded from" in caplog.text


@pytest.mark.parametrize("problem", ["unknown key", "DKIM key missing", "DKIM key not PEM",
                                     "smarthost password gone", "tracking keys unreadable"])
def test_a_refused_reload_changes_nothing(tmp_path: Path, problem: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    before = world.in_force()
    world.rotate_tracking_keys()  # a reload would load the new key ring too
    if problem == "unknown key":
        world.write(bogus_key=1)
    elif problem == "DKIM key missing":
        world.write(key_file=tmp_path / "gone.pem")
    elif problem == "DKIM key not PEM":
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a key\n")
        world.write(key_file=garbage)
    elif problem == "smarthost password gone":
        world.password.unlink()
    else:
        world.live.config.tracking_keys_path.write_text("{ not json")

    with caplog.at_level(logging.ERROR, logger="smtprelay"):
        assert not world.live.reload(str(world.path))

    assert "reload refused, keeping the running config" in caplog.text
    after = world.in_force()
    assert all(new is old for new, old in zip(after, before, strict=True))
    assert world.scheduler.policy.retry.first == 60


def test_restart_only_keys_keep_their_running_values(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path)
    running = world.live.config
    world.write(limits={"idle_timeout": "45s"},
                delivery={"mode": "hold", "retry": {"first": "5m"}})

    with caplog.at_level(logging.WARNING, logger="smtprelay"):
        assert world.live.reload(str(world.path))

    assert world.live.config.limits == running.limits
    assert world.live.config.delivery.mode == "smarthost"
    assert world.scheduler.policy.retry.first == 300
    assert "reload: changes to limits take effect at the next restart" in caplog.text
    assert "reload: changes to delivery.mode take effect at the next restart" in caplog.text
