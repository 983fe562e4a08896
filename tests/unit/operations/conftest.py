"""The configuration the operations tests share: two accounts, three sets (one disabled),
the databases under the test's own directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprelay.config import Config


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return Config.model_validate({
        "server": {"data_dir": str(tmp_path)},
        "listeners": [{"name": "s", "address": "127.0.0.1", "port": 0, "tls": "none"}],
        "accounts": {"acme": {"identities": ["example.com"]},
                     "other": {"identities": ["other.test"]}},
        "configuration_sets": {"news": {}, "alerts": {}, "off": {"sending_enabled": False}},
    })
