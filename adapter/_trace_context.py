"""The W3C trace context (``traceparent``, ``tracestate``) as an event carries it: the rules a
value must pass at every edge (HTTP headers, MQTT v5 user properties, AMQP headers, CloudEvent
attributes). Imports nothing of the package.

A trace context is a hint from whoever sent the event, never a reason to refuse it: a value that
breaks a rule is dropped (the event goes on without it), never propagated and never an error.
The rules are the W3C Trace Context Level 1 ones, read strictly: a ``traceparent`` of version
``00`` exactly (``00-<32 hex>-<16 hex>-<2 hex>``, lowercase, neither id all zeros), and a
``tracestate`` of at most 32 ``key=value`` members and ``MAX_TRACESTATE`` characters, which is
only kept beside a valid ``traceparent``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

__all__ = [
    "MAX_TRACESTATE",
    "TRACEPARENT",
    "TRACESTATE",
    "check_trace",
    "check_traceparent",
    "check_tracestate",
    "trace_from_pairs",
    "trace_id",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
#: The longest ``tracestate`` kept: what W3C asks every vendor to propagate at least.
MAX_TRACESTATE: Final = 512
_MAX_MEMBERS: Final = 32

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
# W3C tracestate: a key is a simple key or tenant@system; a value is printable ASCII without
# ',' and '=', not ending in a space.
_KEY = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def check_traceparent(value: object) -> str | None:
    """``value`` if it is a valid W3C ``traceparent`` (version 00), else None."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    found = _TRACEPARENT.fullmatch(value)
    if found is None or found[1] == _ZERO_TRACE or found[2] == _ZERO_SPAN:
        return None
    return value


def check_tracestate(value: object) -> str | None:
    """``value`` if it is a valid W3C ``tracestate`` within the bounds, else None (an empty
    one, which says nothing, included)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TRACESTATE:
        return None
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]
    if not members or len(members) > _MAX_MEMBERS:
        return None
    keys = set()
    for member in members:
        key, equals, text = member.partition("=")
        if not equals or not _KEY.fullmatch(key) or not _VALUE.fullmatch(text) or key in keys:
            return None
        keys.add(key)
    return ",".join(members)


def check_trace(traceparent: object, tracestate: object) -> tuple[str | None, str | None]:
    """The trace context an event may carry from these two values: a valid ``traceparent``,
    and a valid ``tracestate`` beside it (a ``tracestate`` alone means nothing)."""
    parent = check_traceparent(traceparent)
    if parent is None:
        return None, None
    return parent, check_tracestate(tracestate)


def trace_from_pairs(pairs: Iterable[tuple[object, object]]) -> tuple[str | None, str | None]:
    """The trace context of headers or user properties given as (name, value) pairs; a name
    given twice (which could be read either way) drops that value."""
    found: dict[str, object] = {}
    doubled: set[str] = set()
    for name, value in pairs:
        if not isinstance(name, str):
            continue
        lowered = name.lower()
        if lowered in (TRACEPARENT, TRACESTATE):
            if lowered in found:
                doubled.add(lowered)
            found[lowered] = value
    for name in doubled:
        found.pop(name)
    return check_trace(found.get(TRACEPARENT), found.get(TRACESTATE))


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid ``traceparent`` (its 32 hex digits)."""
    return traceparent[3:35] if traceparent is not None else None
