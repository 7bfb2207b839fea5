"""Durations, deadlines and times as every edge and the library read them.

One reading of each: a duration (``30s``, ``5m``, ``1h30m``, ``250ms``, ``2d``; a bare number is
seconds), a deadline (a duration from now, or an RFC 3339 time), an RFC 3339 time (a wait's
``until``, a CloudEvent's ``time``), and a send's ``retain``. What cannot be read is an
``InvalidInput`` (``InvalidDeadline`` for a deadline) naming the option or parameter, never an
``OverflowError``: a duration of 10**20 seconds or a time whose offset takes it past the year 9999
is bad input like any other.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ._exceptions import InvalidDeadline, InvalidInput

__all__ = [
    "OutsideUtc",
    "check_retain",
    "in_utc",
    "parse_deadline_text",
    "parse_duration_text",
    "parse_rfc3339",
    "resolve_deadline",
]

_DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
# RFC 3339 section 5.6 (date-time), with its note's space or lower-case t and z allowed.
_LOCAL = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?"
_RFC3339 = re.compile(_LOCAL + r"(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII)
_NO_ZONE = re.compile(_LOCAL, re.ASCII)


class OutsideUtc(ValueError):
    """A time whose zone offset takes it past the year 9999 or before the year 1 in UTC."""


def in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; ``ValueError`` when its offset takes it past the year 9999 or before
    the year 1 (``9999-12-31T23:59:59-14:00``), which ``astimezone`` reports as an overflow."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise OutsideUtc(
            f"time {moment.isoformat()} is outside the years 1 to 9999 once in UTC"
        ) from None


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time (with its zone offset) as an aware datetime; ``ValueError`` naming
    what is wrong, also when UTC cannot hold it. Fractions past microseconds are cut."""
    text = text.strip()
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"{text[:40]!r} is not an RFC 3339 time (2026-01-02T15:04:05Z)")
    head, dot, rest = text.partition(".")
    if dot:  # fromisoformat takes at most 6 digits of a fraction
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    moment = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T").replace(" ", "T"))
    in_utc(moment)
    return moment


def resolve_deadline(until: datetime | timedelta) -> datetime:
    """An aware UTC deadline from an aware datetime or a timedelta from now; ``InvalidDeadline``
    for one that UTC cannot hold (past the year 9999, or before the year 1, once its offset is
    applied)."""
    if isinstance(until, timedelta):
        try:
            return datetime.now(UTC) + until
        except OverflowError:
            raise InvalidDeadline(f"{until} from now is past the year 9999") from None
    if isinstance(until, datetime):
        if until.tzinfo is None or until.utcoffset() is None:
            raise InvalidDeadline(
                f"{until.isoformat()} has no time zone; give an aware datetime or a timedelta"
            )
        try:
            return until.astimezone(UTC)
        except OverflowError:
            raise InvalidDeadline(
                f"{until.isoformat()} is outside the years 1 to 9999 once in UTC"
            ) from None
    raise InvalidDeadline(f"until must be a datetime or a timedelta, not {type(until).__name__}")


def parse_duration_text(text: str, what: str = "the duration") -> timedelta:
    """A duration from text: ``30s``, ``5m``, ``1h30m``, ``250ms``, ``2d``; a bare number is
    seconds. ``what`` names the option or parameter in the error."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        text += "s"  # a bare number is seconds, in the CLI as over HTTP
    if text.startswith("-"):
        raise InvalidInput(f"{what} {text!r} is negative")
    if not (text and _DURATION.sub("", text) == "" and _DURATION.match(text)):
        raise InvalidInput(f"{what} {text!r} is not a duration (30s, 5m, 1h)")
    seconds = sum(float(m["value"]) * _UNITS[m["unit"]] for m in _DURATION.finditer(text))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # past 999,999,999 days
        raise InvalidInput(f"{what} {text[:40]!r} is too long") from None


def parse_deadline_text(text: str, what: str = "the deadline") -> datetime:
    """A deadline from text: a duration from now (as ``parse_duration_text`` reads it), or an
    RFC 3339 time with a zone. ``what`` names the option or parameter in the error."""
    text = text.strip()
    if text.startswith("-"):
        raise InvalidInput(f"{what} {text!r} is negative: give a duration from now or a time")
    if _SECONDS.fullmatch(text) or (_DURATION.match(text) and _DURATION.sub("", text) == ""):
        try:
            return datetime.now(UTC) + parse_duration_text(text, what)
        except (OverflowError, InvalidInput):
            raise InvalidInput(f"{what} {text[:40]!r} is too far in the future") from None
    if _NO_ZONE.fullmatch(text):
        raise InvalidInput(f"{what} {text!r} has no time zone offset (add Z or +01:00)")
    try:
        moment = parse_rfc3339(text)
    except OutsideUtc:
        raise InvalidDeadline(
            f"{what} {text!r} is outside the years 1 to 9999 once in UTC"
        ) from None
    except ValueError:
        raise InvalidInput(
            f"{what} {text!r} is neither a duration (30s, 5m, 1h) nor an RFC 3339 time "
            "(2026-01-02T15:04:05Z)"
        ) from None
    return resolve_deadline(moment)


def check_retain(retain: timedelta | None, max_retain: float) -> timedelta | None:
    """A send's ``retain``: None, or a positive ``timedelta`` of at most ``amqp.max_retain``."""
    if retain is None:
        return None
    if not isinstance(retain, timedelta):
        raise InvalidInput(f"retain must be a timedelta, not {type(retain).__name__}")
    seconds = retain.total_seconds()
    if seconds <= 0:
        raise InvalidInput(f"retain must be positive, not {seconds:g}s")
    if seconds > max_retain:
        raise InvalidInput(f"retain {seconds:g}s is longer than amqp.max_retain ({max_retain:g}s)")
    return retain
