"""Per-caller token buckets for sends (``http.rate_limit`` per second, ``http.rate_burst``)."""

from __future__ import annotations

from dataclasses import dataclass

from .._clock import SYSTEM_CLOCK, Clock

__all__ = ["RateLimiter"]

_MAX_BUCKETS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets keyed by caller; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.rate = rate
        self._clock = clock
        self.burst = float(burst)
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str, tokens: int = 1) -> float:
        """Take ``tokens`` tokens (at most the burst), all or none: 0.0 when allowed, else the
        seconds until they are free."""
        if self.rate <= 0:
            return 0.0
        now = self._clock.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= tokens:
            bucket.tokens -= tokens
            return 0.0
        return (tokens - bucket.tokens) / self.rate

    def refund(self, key: str) -> None:
        """Give back a token taken by ``acquire`` (the work it paid for turned out free)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1.0)

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as a new one: dropping it loses nothing.
        for key, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= _MAX_BUCKETS:
            # Every bucket is in use (a flood of callers): forget the oldest half.
            for key in list(self._buckets)[: _MAX_BUCKETS // 2]:
                del self._buckets[key]
