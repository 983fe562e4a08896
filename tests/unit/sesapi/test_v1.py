"""SES v1's form fields and GetSendStatistics' points, without a relay."""

from __future__ import annotations

import datetime

import pytest

from smtprelay.sesapi.errors import ApiError
from smtprelay.sesapi.v1 import Form, data_points, render
from smtprelay.spool import set_stats
from smtprelay.spool.set_stats import HOUR, Counts, Kind, Window

NOW = 1_800_000_000.0 + 1234  # inside some hour


class Hourly:
    """Counters with given counts per (hour, account)."""

    def __init__(self, counts: dict[tuple[int, str], dict[str, int]]) -> None:
        self.counts = counts
        self.windows: list[Window] = []

    def set_totals(self, window: Window, *, by: str = "configuration_set",
                   configuration_set: str | None = None,
                   account: str | None = None) -> dict[str, Counts]:
        assert by == "account" and window.first_hour == window.last_hour
        self.windows.append(window)
        return {a: Counts(values) for (hour, a), values in self.counts.items()
                if hour == window.first_hour and a == account}


def test_points_are_the_hours_that_counted_anything_in_two_weeks_oldest_first() -> None:
    now_hour = set_stats.hour_of(NOW)
    counters = Hourly({
        (now_hour - 15 * 24, "acme"): {Kind.SEND: 9},  # older than two weeks
        (now_hour - 14 * 24, "acme"): {Kind.SEND: 1},  # the oldest hour still in
        (now_hour - 3, "acme"): {Kind.SEND: 4, Kind.BOUNCE: 1, Kind.BOUNCE_TRANSIENT: 2,
                                 Kind.COMPLAINT: 1, Kind.REJECT: 2},
        (now_hour - 2, "acme"): {Kind.OPEN: 5},  # nothing SES's points count
        (now_hour, "acme"): {Kind.SEND: 2},
        (now_hour, "other"): {Kind.SEND: 7},
    })
    points = data_points(counters, "acme", NOW)
    stamp = [int(p["Timestamp"].timestamp()) // HOUR for p in points]
    assert stamp == [now_hour - 14 * 24, now_hour - 3, now_hour]
    assert points[1] == {"Timestamp": datetime.datetime.fromtimestamp(
        (now_hour - 3) * HOUR, datetime.UTC), "DeliveryAttempts": 4, "Bounces": 1,
        "Complaints": 1, "Rejects": 2}
    assert points[2]["DeliveryAttempts"] == 2
    assert len(counters.windows) == 14 * 24 + 1


def test_form_fields() -> None:
    form = Form.parse(b"Action=SendEmail&Destination.ToAddresses.member.1=a%40x.example"
                      b"&Destination.ToAddresses.member.2=b%40x.example"
                      b"&Destination.ToAddresses.member.4=gap%40x.example&Empty=")
    assert form.members("Destination.ToAddresses") == ["a@x.example", "b@x.example"]
    assert form.get("Empty") == "" and form.members("Destinations") == []
    with pytest.raises(ApiError) as missing:
        form.required("Message.Subject.Data")
    assert missing.value.code == "ValidationError"
    assert "'message.subject.data'" in missing.value.message
    for malformed in (b"Action=A&Action=B", b"Action=A&word", b"Source=%FF"):
        with pytest.raises(ApiError) as refused:
            Form.parse(malformed)
        assert refused.value.code == "MalformedQueryString"


def test_render_escapes_and_lists_members() -> None:
    xml = render("GetSendStatistics", {"SendDataPoints": [{"Rejects": 1}, {"Rejects": 2}],
                                       "Odd": "<&>"}, "req-1")
    assert xml.startswith(b'<GetSendStatisticsResponse xmlns="http://ses.amazonaws.com/doc/')
    assert b"<SendDataPoints><member><Rejects>1</Rejects></member><member>" in xml
    assert b"<Odd>&lt;&amp;&gt;</Odd>" in xml
    assert b"<ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata>" in xml
