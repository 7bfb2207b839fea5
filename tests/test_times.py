"""Durations, deadlines and RFC 3339 times: one reader of each, every failure an InvalidInput."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from adapter import InvalidDeadline, InvalidInput
from adapter._times import parse_deadline_text, parse_duration_text, parse_rfc3339


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800), ("7", 7)],
)
def test_durations_read_as_documented(text: str, seconds: float) -> None:
    assert parse_duration_text(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["99999999999999999999s", "1" * 400 + "d"])
def test_a_duration_too_long_for_python_is_bad_input_not_an_overflow(text: str) -> None:
    with pytest.raises(InvalidInput, match="too long"):
        parse_duration_text(text, "--retain")
    with pytest.raises(InvalidInput, match="too far in the future"):
        parse_deadline_text(text, "--until")


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02T15:04:05Z",
        "2026-01-02t15:04:05z",
        "2026-01-02 15:04:05+01:00",
        "2026-01-02T15:04:05.123456789-07:30",
    ],
)
def test_rfc3339_times_parse_with_their_offset(text: str) -> None:
    moment = parse_rfc3339(text)
    assert moment.tzinfo is not None
    assert moment.year == 2026 and moment.second == 5


@pytest.mark.parametrize(
    "text",
    ["2026-01-02", "20260102T150405Z", "2026-01-02T15:04Z", "2026-W01-1T15:04:05Z", "now"],
)
def test_what_fromisoformat_takes_but_rfc3339_does_not_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_rfc3339(text)


def test_a_deadline_without_an_offset_says_so() -> None:
    with pytest.raises(InvalidInput, match="no time zone offset"):
        parse_deadline_text("2026-01-02T15:04:05", "until")


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_time_utc_cannot_hold_is_a_deadline_error(text: str) -> None:
    with pytest.raises(ValueError, match="outside the years"):
        parse_rfc3339(text)
    with pytest.raises(InvalidDeadline, match="outside the years 1 to 9999"):
        parse_deadline_text(text, "until")


def test_a_deadline_from_a_duration_is_from_now() -> None:
    before = datetime.now(UTC)
    deadline = parse_deadline_text("30s")
    assert timedelta(seconds=29) < deadline - before < timedelta(seconds=31)


def test_a_huge_fraction_is_read_in_linear_time_and_cut_to_microseconds() -> None:
    text = "2026-01-02T15:04:05." + "9" * 100_000 + "Z"
    assert parse_rfc3339(text).microsecond == 999_999
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_rfc3339("2026-01-02T15:04:05." + "9" * 100_000)  # no zone, however long
