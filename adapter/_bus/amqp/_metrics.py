"""What the RabbitMQ side counts: the messages it refused to believe. Imports no sibling but the
codec's error."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter

from ._codec import BadMessage

__all__ = ["REFUSED", "refused"]

log = logging.getLogger("adapter.amqp")

REFUSED = Counter(
    "customevent_bus_refused",
    "Messages read from RabbitMQ that are not events the bridge may believe (dropped by waits, "
    "dead-lettered by groups), by consumer (wait, resumable, group, retained).",
    ["consumer"],
)
# A flood of bad messages must not become a flood of log lines: one line per consumer kind and
# this many seconds, with the count of those not shown.
_LOG_EVERY = 5.0
_last: dict[str, tuple[float, int]] = {}


def refused(consumer: str, where: str, exc: BadMessage) -> None:
    """Count a refused message, and log it (at most one line per consumer every few seconds)."""
    REFUSED.labels(consumer).inc()
    now = time.monotonic()
    logged, hidden = _last.get(consumer, (-_LOG_EVERY, 0))
    if now - logged < _LOG_EVERY:
        _last[consumer] = (logged, hidden + 1)
        return
    _last[consumer] = (now, 0)
    more = f" ({hidden} more since the last such line)" if hidden else ""
    log.warning("%s %s: refused a message that is not an event: %s%s", consumer, where, exc, more)
