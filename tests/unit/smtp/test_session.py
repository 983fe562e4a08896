"""Pieces of the SMTP session that are pure functions (the session itself is tested
over real sockets in tests/e2e/test_dialogs.py and test_limits.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtprelay.smtp.session import lines_within
from tests.support import examples


@settings(max_examples=examples(2000))
@given(st.lists(st.integers(0, 120), max_size=40), st.booleans(), st.integers(78, 100))
def test_lines_within_agrees_with_measuring_every_line(lengths: list[int], ending: bool,
                                                       limit: int) -> None:
    body = b"\r\n".join(b"x" * n for n in lengths) + (b"\r\n" if ending and lengths else b"")
    longest = max((len(line) for line in body.split(b"\r\n")), default=0)
    assert lines_within(body, limit) == (longest <= limit)


def test_a_line_of_exactly_the_limit_passes_and_one_more_octet_does_not() -> None:
    ok = b"a\r\n" + b"x" * 998 + b"\r\n" + b"b\r\n"
    assert lines_within(ok, 998)
    assert not lines_within(ok.replace(b"x" * 998, b"x" * 999), 998)
    assert not lines_within(b"x" * 999, 998) and lines_within(b"x" * 998, 998)
