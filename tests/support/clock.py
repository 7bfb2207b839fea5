"""A clock a test moves by hand (``adapter._clock.Clock``): windows pass without sleeping."""

from __future__ import annotations


class FakeClock:
    """Both readings start at a fixed moment and move only with ``advance``."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self._wall = now
        self._monotonic = 1000.0

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._monotonic += seconds
