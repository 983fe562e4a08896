"""Operator commands run as root act as the owner of data_dir, so they never leave root files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support import base_config, write_config


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another user")
def test_root_cli_creates_databases_as_the_data_dir_owner() -> None:
    top = Path(tempfile.mkdtemp(prefix="smtprelay-owner-"))
    try:
        top.chmod(0o755)
        data_dir = top / "var"
        data_dir.mkdir()
        nobody = 65534
        os.chown(data_dir, nobody, nobody)
        config = write_config(top / "c.yaml", base_config(data_dir))
        for command in (["mta-sts", "list"], ["mta-sts", "forget", "example.test"],
                        ["ip-pools", "list"], ["queue", "list"],
                        ["credentials", "create", "acme"], ["api-keys", "create", "acme"]):
            run = subprocess.run([sys.executable, "-m", "smtprelay", *command, "-c", str(config)],
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
        owners = {p.name: p.stat().st_uid for p in data_dir.iterdir()}
        assert owners["spool.db"] == nobody
        assert owners["state.db"] == nobody
        assert owners["api-keys.key"] == nobody
        assert set(owners.values()) == {nobody}
    finally:
        shutil.rmtree(top)
