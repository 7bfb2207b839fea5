"""The bound on a wait's set-up, with one timer for many waits.

A wait's set-up must end by its deadline plus a margin, whatever the bus does. With one
``asyncio.timeout`` each, a burst of 100,000 waits held a ``Timeout``, a ``TimerHandle`` in the
loop's heap and a bound method each while in flight: 580 bytes a wait by ``tracemalloc`` (CPython
3.11), 55 MiB of the 340 MiB peak of ``bench/bench_core.py --hold 100000``. Here the set-ups whose
bounds fall in one 50 ms slot share one timer, and each costs an entry in its slot's set of tasks.

A set-up is cut as ``asyncio.timeout`` cuts its block: the timer cancels the task, and the
cancellation that reaches the set-up is taken for the bound's (``cut``) only if no other
cancellation of the task is pending; the set-up then raises ``BusUnavailable``.

A client's waits are entered through ``Subscription.enter`` (``_bus/_base.py``), given these
bounds, so that a burst holds one coroutine a wait, not one for the client's entry and one for
the bus's.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

from ._exceptions import BusUnavailable

__all__ = ["SetUpBounds"]

# The bound is rounded up to the end of its slot: at most this much later than asked.
_SLOT_SECONDS = 0.05


class _Slot:
    """The set-ups whose bounds fall in one slot, and the timer that cuts them."""

    __slots__ = ("cut_tasks", "key", "owner", "tasks", "timer")

    def __init__(self, owner: SetUpBounds, key: int, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.key = key
        self.tasks: set[asyncio.Task[object]] = set()
        self.cut_tasks: set[asyncio.Task[object]] | None = None
        self.timer: asyncio.TimerHandle | None = loop.call_at(key * _SLOT_SECONDS, self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.owner.forget(self)
        self.cut_tasks = set(self.tasks)
        for task in self.cut_tasks:
            task.cancel()

    def leave(self, task: asyncio.Task[object]) -> None:
        tasks = self.tasks
        tasks.discard(task)
        cut_tasks = self.cut_tasks
        if cut_tasks is not None and task in cut_tasks:
            # Cut, yet the set-up ended without the cancellation (something swallowed it): take
            # it back, as ``asyncio.timeout`` does, so that it does not hit the caller later.
            cut_tasks.discard(task)
            task.uncancel()
        if not tasks and self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.owner.forget(self)

    def cut(self, task: asyncio.Task[object], cancelling: int) -> bool:
        """Whether the cancellation that reached ``task`` was this bound's, and no other is
        pending (``cancelling``: the task's count when it entered). Call once, on
        ``CancelledError``: it takes the bound's cancellation back."""
        cut_tasks = self.cut_tasks
        if cut_tasks is None or task not in cut_tasks:
            return False
        cut_tasks.discard(task)
        return task.uncancel() <= cancelling


class SetUpBounds:
    """The set-ups of one client's waits: their bounds (the deadline plus ``margin``, on one
    event loop) and how many waits are bound (``active``)."""

    __slots__ = ("_slots", "active", "bus_name", "margin")

    def __init__(self, bus_name: str, margin: float) -> None:
        self._slots: dict[int, _Slot] = {}
        self.bus_name = bus_name
        self.margin = margin
        self.active = 0

    def start(self, deadline: datetime) -> tuple[asyncio.Task[object], int, _Slot]:
        """Bound the current task's set-up of a wait with ``deadline``: the task, its count of
        cancellations (for ``cut``) and the slot to ``leave`` when the set-up ends."""
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        remaining = max((deadline - datetime.now(UTC)).total_seconds(), 0.0)
        return task, task.cancelling(), self.enter(task, remaining + self.margin)

    def cut(self, slot: _Slot, task: asyncio.Task[object], cancelling: int) -> None:
        """On ``CancelledError`` in a set-up: ``BusUnavailable`` if it was its bound's."""
        if slot.cut(task, cancelling):
            raise BusUnavailable(
                f"the {self.bus_name} bus could not bind the wait before its deadline"
            ) from None

    def enter(self, task: asyncio.Task[object], seconds: float) -> _Slot:
        """Bound ``task``'s set-up to ``seconds`` from now (rounded up to its slot's end); the
        slot to ``leave`` when the set-up ends, however it ends."""
        loop = asyncio.get_running_loop()
        key = math.ceil((loop.time() + seconds) / _SLOT_SECONDS)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot(self, key, loop)
        slot.tasks.add(task)
        return slot

    def forget(self, slot: _Slot) -> None:
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]

    @property
    def pending(self) -> int:
        """Slots with a timer set (for tests: none is left once the set-ups have ended)."""
        return len(self._slots)
