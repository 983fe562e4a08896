"""Shared pieces for the feedback unit tests: the sample reports in tests/data/feedback."""

from __future__ import annotations

import email.utils
from pathlib import Path

DATA = Path(__file__).parents[2] / "data" / "feedback"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def ts(date: str) -> float:
    """A date as Unix seconds, by the stdlib (not by the code under test)."""
    return email.utils.parsedate_to_datetime(date).timestamp()
