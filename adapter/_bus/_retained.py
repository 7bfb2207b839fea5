"""Retained events: for each kind and exact name, the latest event sent with ``retain``, handed to
every wait on that name that starts while it is retained.

``RetainedEvents`` is one process's view. The in-process bus fills it as it publishes; on RabbitMQ
it follows the stream every retained send is written to (``adapter/_bus/_amqp_retained.py``), so
that every process and replica sees every retained event. A wait registers (``watch``) when it
binds and gets the latest retained event at once, or the moment the view learns of it (a view
that is still reading the stream, or a send whose copy reached the stream a moment before the
wait bound). A pattern wait is never given retained events: "the latest" of every name a pattern
covers has no single answer.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from .._clock import SYSTEM_CLOCK, Clock
from .._event import Event
from .._exceptions import LimitExceeded
from ._base import Subscription, SubscriptionIndex

__all__ = ["RetainedEvents"]


@dataclass(slots=True)
class _Entry:
    event: Event
    until: float  # wall-clock time (Unix seconds) it stops being retained
    order: int  # position in the sequence of retained sends: a replay never goes back


class RetainedEvents:
    """The latest retained event per routing key, at most ``max_names`` of them, and the waits
    watching for one. ``ready`` is set once the view has caught up with every retained send
    confirmed before it started; until then nothing is handed out, since an older event read
    first would be taken for the latest."""

    def __init__(self, max_names: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.max_names = max_names
        self._clock = clock
        self.ready = asyncio.Event()
        self._latest: dict[str, _Entry] = {}
        # Names this process is retaining that the view has not read back yet (until when): on
        # RabbitMQ a send's copy reaches the view a moment after its confirm, and the cap must
        # count it meanwhile, and count sends under way.
        self._reserved: dict[str, float] = {}
        # Looked up as the waits are (by name, then by their match): a retained send reaches
        # its waits without a look at the thousands of others on its name.
        self._watchers = SubscriptionIndex(counting=False)

    def __len__(self) -> int:
        self._forget_expired()
        return self._names()

    def _names(self) -> int:
        # Without a scan of every name: the reservations are only the sends under way.
        return len(self._latest) + sum(1 for key in self._reserved if key not in self._latest)

    def _forget_expired(self) -> None:
        now = self._clock.time()
        for key in [key for key, entry in self._latest.items() if entry.until <= now]:
            del self._latest[key]
        for key in [key for key, until in self._reserved.items() if until <= now]:
            del self._reserved[key]

    def check_room(self, key: str) -> None:
        """``LimitExceeded`` if retaining an event under ``key`` would pass ``max_names``."""
        if key in self._latest or key in self._reserved or self._names() < self.max_names:
            return
        self._forget_expired()  # only when full: it looks at every name
        if self._names() < self.max_names:
            return
        ends = [entry.until for entry in self._latest.values()] + list(self._reserved.values())
        now = self._clock.time()
        raise LimitExceeded(
            "too many event names retained at once",
            limit=self.max_names,
            setting="amqp.max_retained_names",
            # Until the first of them stops being retained: then a name is free again.
            retry_after=max(1, math.ceil(min(ends, default=now + 1) - now)),
        )

    def reserve(self, key: str, until: float) -> bool:
        """``check_room``, then count ``key`` as retained until ``until`` or until the view reads
        its send; True if this call made the reservation (``release`` it if the send fails)."""
        self.check_room(key)
        held = self._reserved.get(key)
        if held is None or held < until:
            self._reserved[key] = until
        return held is None

    def release(self, key: str) -> None:
        """Give back a reservation whose send failed."""
        self._reserved.pop(key, None)

    def put(self, key: str, event: Event, until: float, order: int) -> None:
        """Record a retained send (``order``: its place among all retained sends); the latest
        replaces the one before, even once expired itself."""
        entry = self._latest.get(key)
        if entry is not None:
            if entry.order >= order:
                return  # read again after a reconnection
        elif len(self._latest) >= self.max_names:
            self._forget_expired()
            if len(self._latest) >= self.max_names:
                # Other senders may allow more names than this process: keep the memory
                # bounded, at the cost of the names whose retention ends first.
                del self._latest[min(self._latest, key=lambda k: self._latest[k].until)]
        self._latest[key] = _Entry(event, until, order)
        self._reserved.pop(key, None)
        if self.ready.is_set() and until > self._clock.time():
            for sub in self._watchers.matching(key, event):
                sub.deliver(event)

    def latest(self, key: str) -> Event | None:
        """The event retained under ``key`` now, if any."""
        entry = self._latest.get(key)
        if entry is None or entry.until <= self._clock.time():
            return None
        return entry.event

    def watch(self, sub: Subscription) -> None:
        """Hand ``sub`` (a wait on an exact name) the retained event, now or once known."""
        if not sub.literal:
            return
        self._watchers.add(sub)
        if self.ready.is_set():
            event = self.latest(sub.binding_key)
            if event is not None:
                sub.deliver(event)

    def unwatch(self, sub: Subscription) -> None:
        if sub.literal:
            self._watchers.remove(sub)

    def mark_ready(self) -> None:
        """The view has caught up: hand every watching wait its retained event."""
        if self.ready.is_set():
            return
        self.ready.set()
        for key in self._watchers.literal_keys():
            event = self.latest(key)
            if event is not None:
                for sub in self._watchers.matching(key, event):
                    sub.deliver(event)

    def clear(self) -> None:
        self._latest.clear()
        self._reserved.clear()
        self._watchers.clear()
