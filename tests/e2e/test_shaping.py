"""Traffic shaping end to end: submission -> spool -> scheduler -> shaped transport -> MX.

The relay runs with an operator rules file that maps test MX host names to two
providers; a rate-limit reply from one provider's host suspends the provider, and what
is held back shows in the spool as a DeliveryDelay with SES's delayType SendingDeferral.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from tests.e2e.delivery_world import World, wait_for
from tests.sinks import Script


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump({"providers": {
        "p1": {"mx": ["*.p1.test"], "limits": {"connections": 4},
               "rules": [{"name": "p1-rate", "match": r"4\.7\.28", "action": "suspend",
                          "duration": "1h"}]},
        "p2": {"mx": ["*.p2.test"]},
    }}))
    return path


def test_a_suspended_provider_defers_with_sending_deferral_and_others_flow(
        net: World, tmp_path: Path) -> None:
    angry = net.sinks.smtp(Script(data_reply="421 4.7.28 unusual rate of mail, go away"),
                           host=net.address(), port=net.port)
    calm = net.sinks.smtp(host=net.address(), port=net.port)
    other = net.sinks.smtp(host=net.address(), port=net.port)
    net.mx("angry.test", (10, "mx1.p1.test", angry.host))
    net.mx("calm.test", (10, "mx2.p1.test", calm.host))
    net.mx("other.test", (10, "mx.p2.test", other.host))
    net.start(shaping={"rules_file": str(rules_file(tmp_path))},
              delay={"after": "1ms", "every": "1h"})

    tripped = net.submit(["a@angry.test"])
    assert net.wait_states(tripped, {"a@angry.test": "deferred"}) == {
        "a@angry.test": "deferred"}
    held = net.submit(["b@calm.test", "c@other.test"])
    expected = {"b@calm.test": "deferred", "c@other.test": "delivered"}
    assert net.wait_states(held, expected) == expected
    assert calm.sessions == [] and len(other.received) == 1

    delays = wait_for(lambda: [o for o in net.outcomes(held) if o.kind == "delay"])
    assert [d.delay_type for d in delays] == ["SendingDeferral"]
    assert "p1" in (delays[0].diagnostic or "") and "p1-rate" in (delays[0].diagnostic or "")
    # The reply that tripped the rule is the provider's own, with its own delay type.
    first = [o for o in net.outcomes(tripped) if o.kind == "delay"]
    assert [d.delay_type for d in first] == ["IPFailure"]
    assert REGISTRY.get_sample_value("smtprelay_provider_suspended",
                                     {"provider": "p1", "source": "default"}) == 1
