"""How many transform processes each worker process starts."""

from __future__ import annotations

import pytest

from smtprelay.app.worker import transform_processes
from smtprelay.transform.pool import worker_count


def test_auto_is_shared_out_among_the_workers() -> None:
    relay_wide = worker_count("auto")
    if relay_wide == 0:
        pytest.skip("a single core: no transform processes with auto")
    assert transform_processes("auto", 1) == relay_wide
    assert transform_processes("auto", relay_wide) == 1
    assert transform_processes("auto", 64) == 1  # never none where the relay has some


def test_a_number_is_each_workers() -> None:
    assert transform_processes(3, 8) == 3
    assert transform_processes(0, 2) == 0
