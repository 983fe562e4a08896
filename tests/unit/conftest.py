"""Fixtures the unit tests share (tests/conftest.py has the ones every test may use)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from smtprelay.spool.store import Spool


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    """An open spool in tmp_path, opened and closed on the test's event loop."""
    s = Spool(tmp_path / "spool.db")
    s.open()
    yield s
    s.close()
