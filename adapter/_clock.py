"""The clock the time-bound parts read (de-duplication windows, retained events' expiry, rate
limits, callers' shares), given to each so that a test moves time instead of sleeping past it."""

from __future__ import annotations

import time
from typing import Final, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


class Clock(Protocol):
    """Both readings of time: ``monotonic`` for spans, ``time`` (Unix seconds) for moments that
    are written down or compared with another process's."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The machine's clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


SYSTEM_CLOCK: Final[Clock] = SystemClock()
