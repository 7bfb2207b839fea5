"""What the RabbitMQ side counts: the messages it refused to believe. Imports no sibling but the
codec's error."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from ..._clock import SYSTEM_CLOCK, Clock
from ._codec import BadMessage

__all__ = ["Refusals"]

log = logging.getLogger("adapter.amqp")

# A flood of bad messages must not become a flood of log lines: one line per consumer kind and
# this many seconds, with the count of those not shown.
_LOG_EVERY = 5.0


class Refusals:
    """Counts refused messages on ``counter`` (``customevent_bus_refused``), by consumer kind,
    and logs them sparingly."""

    def __init__(self, counter: Counter, clock: Clock = SYSTEM_CLOCK) -> None:
        self._counter = counter
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, consumer: str, where: str, exc: BadMessage) -> None:
        """Count a refused message, and log it (at most one line per consumer every few
        seconds)."""
        self._counter.labels(consumer).inc()
        now = self._clock.monotonic()
        logged, hidden = self._last.get(consumer, (-_LOG_EVERY, 0))
        if now - logged < _LOG_EVERY:
            self._last[consumer] = (logged, hidden + 1)
            return
        self._last[consumer] = (now, 0)
        more = f" ({hidden} more since the last such line)" if hidden else ""
        log.warning(
            "%s %s: refused a message that is not an event: %s%s", consumer, where, exc, more
        )
