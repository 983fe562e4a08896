"""The sliding windows under the rate limits: never more than the limit in any span."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st

from smtprelay.delivery.shaping import SLICES, Window


def most_in_any_span(times: list[float], span: float) -> int:
    """The largest number of `times` inside one half-open span (t - span, t]."""
    times = sorted(times)
    return max((i + 1 - bisect.bisect_right(times, t - span) for i, t in enumerate(times)),
               default=0)


@given(limit=st.integers(1, 20), span=st.sampled_from([1.0, 60.0, 3600.0]),
       gaps=st.lists(st.floats(0, 2.0), min_size=1, max_size=300))
def test_bookings_never_exceed_the_limit_in_any_span(limit: int, span: float,
                                                     gaps: list[float]) -> None:
    window = Window(limit, span)
    now, booked = 1000.0, []
    for gap in gaps:
        now += gap * span / 4
        at = window.earliest(now, now)
        assert at >= now
        window.book(at)
        booked.append(at)
    assert most_in_any_span(booked, span) <= limit


def test_a_full_window_has_room_once_its_oldest_slice_has_left() -> None:
    window = Window(3, 60.0)
    for _ in range(3):
        assert window.earliest(100.0, 100.0) == 100.0
        window.book(100.0)
    later = window.earliest(100.0, 100.0)
    # Counted until the whole of its slice (1/60 of the span) has left the window.
    assert 160.0 < later <= 160.0 + 60.0 / SLICES
    assert window.earliest(later, later) == later


def test_bookings_are_first_come_first_served() -> None:
    window = Window(2, 1.0)
    window.book(window.earliest(0.0, 0.0))
    window.book(window.earliest(0.0, 0.0))
    third = window.earliest(0.0, 0.0)
    window.book(third)
    # Even with room at an earlier moment, nobody is booked before the last booking.
    assert window.earliest(0.0, 0.0) >= third


def test_a_lower_limit_takes_effect_on_what_is_counted() -> None:
    window = Window(10, 60.0)
    for _ in range(4):
        window.book(window.earliest(0.0, 0.0))
    window.limit = 4  # a throttle or a reload
    assert window.earliest(0.0, 0.0) > 60.0


@given(limit=st.integers(1, 20), span=st.sampled_from([1.0, 60.0, 3600.0]),
       gaps=st.lists(st.floats(0, 2.0), min_size=1, max_size=300))
def test_room_now_is_what_the_earliest_booking_says(limit: int, span: float,
                                                    gaps: list[float]) -> None:
    """has_room (the shaper's fast path) agrees with earliest, booking as admit does:
    at once when there is room, else at the earliest time."""
    window = Window(limit, span)
    now, booked = 1000.0, []
    for gap in gaps:
        now += gap * span / 4
        room = window.has_room(now)
        at = window.earliest(now, now)
        assert room == (at == now)
        window.book(now if room else at)
        booked.append(now if room else at)
    assert most_in_any_span(booked, span) <= limit
