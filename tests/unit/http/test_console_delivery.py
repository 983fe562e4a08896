"""The console's Delivery page: pure pieces (the page itself: tests/e2e/test_console_http.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.config import Config
from smtprelay.delivery.warmup import progress
from smtprelay.http.console import _duration, pool_views
from tests.support import base_config


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0s"), (45.4, "45s"), (59.6, "1m"), (1800, "30m"), (3599.6, "1h"), (3900, "1h 5m"),
    (86400, "1d"), (90000, "1d 1h")])
def test_durations_read_as_the_provider_table_writes_them(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown


def test_pools_are_grouped_in_the_configurations_order_with_who_sends_from_them(
        tmp_path: Path) -> None:
    def addresses(*ips: str) -> list[dict[str, str]]:
        return [{"address": ip, "helo": f"o{ip.rsplit('.', 1)[1]}.pool.test"} for ip in ips]

    config = Config.model_validate(base_config(
        tmp_path / "var",
        ip_pools={"shared": {"addresses": addresses("192.0.2.1")},
                  "bulk": {"addresses": addresses("192.0.2.2", "192.0.2.3"),
                           "overflow": "wait"}},
        configuration_sets={"transactional": {},
                            "news": {"delivery": {"ip_pool": "bulk"}},
                            "offers": {"delivery": {"ip_pool": "bulk"}}},
        delivery={"mode": "hold", "ip_pool": "shared"}))
    found = [progress(pool, ip, "h.test", config.ip_pools[pool].warmup, warm=False,
                      started=None, today=20000, sent={})
             for pool, ip in [("bulk", "192.0.2.3"), ("shared", "192.0.2.1"),
                              ("bulk", "192.0.2.2")]]
    shared, bulk = pool_views(config, found)
    assert (shared.name, shared.default, shared.used_by) == ("shared", True, [])
    assert [p.address for p in shared.addresses] == ["192.0.2.1"]
    assert (bulk.name, bulk.default, bulk.used_by) == ("bulk", False, ["news", "offers"])
    assert bulk.settings.overflow == "wait"
    assert [p.address for p in bulk.addresses] == ["192.0.2.3", "192.0.2.2"]
