"""Per-caller shares of the daemon-wide caps that outlive a request: resumable waits (each holds
a queue at the broker until its deadline plus the grace) and retained event names (each held
until its ``retain`` ends). Without a share, one principal could fill a cap for everyone for up
to an hour (``limits.max_resumable_waits``, ``amqp.max_retained_names``). Counted per replica."""

from __future__ import annotations

import math

from .._clock import SYSTEM_CLOCK, Clock
from .._exceptions import LimitExceeded

__all__ = ["Shares"]

_MAX_CALLERS = 10_000


class _Held:
    """What callers hold until a moment (wall-clock seconds), each at most ``limit`` things."""

    def __init__(self, what: str, limit: int, setting: str, clock: Clock) -> None:
        self.what = what
        self._clock = clock
        self.limit = limit
        self.setting = setting
        self._held: dict[str, dict[str, float]] = {}

    def take(self, caller: str, thing: str, until: float) -> None:
        """Count ``thing`` for ``caller`` until ``until``; ``LimitExceeded`` (with the seconds
        until the caller's first thing is let go) past the caller's share."""
        now = self._clock.time()
        held = self._held.get(caller)
        if held is None:
            if len(self._held) >= _MAX_CALLERS:
                self._forget(now)
            held = self._held[caller] = {}
        if thing not in held and len(held) >= self.limit:
            for other, ends in list(held.items()):
                if ends <= now:
                    del held[other]
            if len(held) >= self.limit:
                soonest = min(held.values())
                raise LimitExceeded(
                    f"this caller holds {len(held)} {self.what}",
                    limit=self.limit,
                    setting=self.setting,
                    retry_after=max(1, math.ceil(soonest - now)),
                )
        held[thing] = max(held.get(thing, 0.0), until)

    def until(self, caller: str, thing: str) -> float:
        held = self._held.get(caller, {}).get(thing)
        return held if held is not None and held > self._clock.time() else 0.0

    def keep(self, caller: str, thing: str, until: float) -> None:
        """Hold ``thing`` (already counted) until ``until`` exactly."""
        self._held.setdefault(caller, {})[thing] = until

    def give_back(self, caller: str, thing: str) -> None:
        held = self._held.get(caller)
        if held is not None:
            held.pop(thing, None)
            if not held:
                del self._held[caller]

    def _forget(self, now: float) -> None:
        for caller, held in list(self._held.items()):
            if all(ends <= now for ends in held.values()):
                del self._held[caller]


class Shares:
    """The daemon's per-caller shares (``http.max_resumable_waits_per_caller``,
    ``http.max_retained_names_per_caller``)."""

    def __init__(
        self, resumable_waits: int, retained_names: int, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.resumable = _Held(
            "resumable waits", resumable_waits, "http.max_resumable_waits_per_caller", clock
        )
        self.retained = _Held(
            "retained event names", retained_names, "http.max_retained_names_per_caller", clock
        )

    def hold_resumable(self, caller: str, wait_id: str) -> float:
        """A caller's resumable wait opens (held until it finishes or its keeping ends); when
        the id was kept already, until when (else 0)."""
        before = self.resumable.until(caller, wait_id)
        self.resumable.take(caller, wait_id, math.inf)
        return before

    def resumable_done(
        self, caller: str, wait_id: str, kept_until: float | None, before: float
    ) -> None:
        """It closed: finished (``None``), or kept for a comeback until ``kept_until`` (or what
        it was kept until before this wait, if later: a wait refused never shortens it)."""
        if kept_until is None:
            self.resumable.give_back(caller, wait_id)
        else:
            self.resumable.keep(caller, wait_id, max(kept_until, before))

    def hold_retained(self, caller: str, key: str, until: float) -> None:
        self.retained.take(caller, key, until)

    def retained_failed(self, caller: str, key: str) -> None:
        self.retained.give_back(caller, key)
