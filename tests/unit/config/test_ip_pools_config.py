"""ip_pools in the configuration: addresses and HELO names, the references to pools
from sets and delivery.ip_pool, and the problems named by their keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from smtprelay.config import ConfigError, load_config
from tests.support import base_config


def load(tmp_path: Path, **overrides: Any) -> Any:
    path = tmp_path / "smtprelay.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path / "var", **overrides)))
    return load_config(path).config


def problems(tmp_path: Path, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **overrides)
    return "\n".join(info.value.problems)


POOL = {"addresses": [{"address": "2001:DB8::0:1", "helo": "O1.Relay.Test."},
                      {"address": "192.0.2.7", "helo": "o7.relay.test", "warm": True}]}


def test_a_pool_and_the_sets_that_use_it(tmp_path: Path) -> None:
    config = load(tmp_path, ip_pools={"bulk": POOL},
                  configuration_sets={"news": {"delivery": {"ip_pool": "bulk"}}},
                  delivery={"mode": "mx", "ip_pool": "bulk"})
    pool = config.ip_pools["bulk"]
    assert [(a.address, a.helo, a.warm) for a in pool.addresses] == [
        ("2001:db8::1", "o1.relay.test", False), ("192.0.2.7", "o7.relay.test", True)]
    assert (pool.overflow, pool.warmup.schedule, pool.warmup.days) == ("warmed", "standard",
                                                                       30)
    assert config.configuration_sets["news"].delivery.ip_pool == "bulk"
    assert config.delivery.ip_pool == "bulk"


def test_a_pool_that_is_not_defined_is_named_by_its_key(tmp_path: Path) -> None:
    text = problems(tmp_path, ip_pools={"bulk": POOL},
                    configuration_sets={"news": {"delivery": {"ip_pool": "bluk"}}},
                    delivery={"mode": "mx", "ip_pool": "nope"})
    assert "delivery.ip_pool: 'nope' is not defined under ip_pools" in text
    assert "configuration_sets.news.delivery.ip_pool: 'bluk' is not defined under " \
           "ip_pools; define the pool there or name one of bulk" in text


@pytest.mark.parametrize(("pools", "wanted"), [
    ({"bulk": {"addresses": [{"address": "192.0.2.300", "helo": "a.test"}]}},
     "'192.0.2.300' is not an IPv4 or IPv6 address"),
    ({"bulk": {"addresses": [{"address": "192.0.2.1", "helo": "a.test"},
                             {"address": "192.0.2.1", "helo": "b.test"}]}},
     "the address 192.0.2.1 is listed twice"),
    ({"a": {"addresses": [{"address": "192.0.2.1", "helo": "a.test"}]},
      "b": {"addresses": [{"address": "192.0.2.1", "helo": "a.test"}]}},
     "ip_pools.b.addresses: 192.0.2.1 is already in pool 'a'"),
    ({"bad name": {"addresses": [{"address": "192.0.2.1", "helo": "a.test"}]}},
     "ip_pools.bad name: a pool name is 1-64 letters"),
    ({"bulk": {"addresses": []}}, "ip_pools.bulk.addresses"),
    ({"bulk": {"addresses": [{"address": "192.0.2.1", "helo": "a.test"}],
               "overflow": "bounce"}}, "ip_pools.bulk.overflow"),
])
def test_bad_pools_are_refused(tmp_path: Path, pools: dict[str, Any], wanted: str) -> None:
    assert wanted in problems(tmp_path, ip_pools=pools, delivery={"mode": "mx"})


def test_pools_do_not_go_with_a_smarthost(tmp_path: Path) -> None:
    text = problems(tmp_path, ip_pools={"bulk": POOL},
                    delivery={"mode": "smarthost", "smarthost": {"host": "up.test"}})
    assert "ip_pools: pools choose the source address towards MX hosts" in text
