"""Retained events on RabbitMQ: a stream that every retained send is written to, and each
process's view of it (``RetainedEvents``), kept by reading the stream.

Why a stream: a wait must read the latest retained event of its name *without consuming it*, so
that every other wait, in any process or replica, reads it too. A stream is the one RabbitMQ
queue type that many consumers read independently; a classic or quorum queue holds a message it
hands to one reader away from all the others until that reader gives it back.

How: a retained send publishes the event to the exchange as usual and, at the same time, a copy
to the stream ``customevent.retained.<exchange>`` (through the default exchange), both
confirmed; the copy carries ``x-retain-until`` (epoch milliseconds). Each process that waits or
retains reads the stream from ``now - amqp.max_retain`` on, keeping the latest copy per kind and
name. To know when it has read everything confirmed before it started, it writes a marker of its
own to the stream and counts itself caught up when the marker comes back. A wait then costs no
broker round trip at all; a cold process pays once for reading the stream's last
``amqp.max_retain`` (bounded by ``STREAM_MAX_BYTES``).

Only a retained send creates the stream. A wait reads it only if it exists (it looks again, at
most once a second, while it does not): waits that never meet a retained event pay nothing for
them, and need no permission to declare it.

The stream keeps at most ``amqp.max_retain`` of copies (``x-max-age``; RabbitMQ drops whole
segments, so a little more may stay: the copies carry their own end and are judged by it) and at
most ``STREAM_MAX_BYTES``. Streams are replicated like quorum queues, so the retained events of a
cluster survive the loss of a minority of its nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from ..._clock import SYSTEM_CLOCK, Clock
from ..._event import Event
from ..._exceptions import BusUnavailable
from ..._names import routing_key
from .._base import Subscription
from .._retained import RetainedEvents
from ._codec import H_ORIGINAL_ROUTING_KEY, BadMessage, Policy, decode, encode_body, message_headers
from ._link import BrokerLink
from ._metrics import Refusals
from ._queues import retained_arguments, retained_stream

__all__ = ["RETAIN_UNTIL_HEADER", "RetainedStream"]

log = logging.getLogger("adapter.amqp")

RETAIN_UNTIL_HEADER = "x-retain-until"
_MARKER_HEADER = "x-customevent-caught-up"
_PREFETCH = 1000
_ACK_EVERY = 100
# After a failed start (a broker that refused the stream), waits go without retained events for
# this long before the next attempt, instead of paying for a refusal each.
_RETRY_SECONDS = 30.0
# How long closing waits for a start under way before cancelling it.
_CLOSE_SECONDS = 2.0
# While the stream does not exist, a wait looks for it again after this long at the earliest.
_ABSENT_SECONDS = 1.0


class RetainedStream:
    """The retained events of one bus: writes to the stream and this process's view."""

    def __init__(
        self,
        link: BrokerLink,
        policy: Policy,
        *,
        max_names: int,
        is_open: Callable[[], bool],
        refused: Refusals,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.link = link
        self._refused = refused
        self._clock = clock
        self.policy = policy
        self.name = retained_stream(link.exchange)
        self.view = RetainedEvents(max_names, clock)
        self._is_open = is_open
        self._marker = uuid.uuid4().hex
        self._starting: asyncio.Task[None] | None = None
        self._creating = False
        self._failed_at = -_RETRY_SECONDS
        self._absent_at: float | None = None
        self._channel: AbstractRobustChannel | None = None
        self._unacked = 0

    # -- reading ---------------------------------------------------------------------------

    def _start(self, *, create: bool) -> asyncio.Task[None]:
        task = self._starting
        again = task is None or (task.done() and (task.cancelled() or task.exception() is not None))
        if not again and create and self._absent_at is not None:
            again = True  # read it without creating it: it was not there; now make it
        if again:
            task = self._starting = asyncio.get_running_loop().create_task(
                self._follow(create=create), name="customevent-retained-stream"
            )
            task.add_done_callback(self._started)
        assert task is not None
        return task

    def _started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or not self._is_open():
            return  # stopped with its bus: nothing to warn about
        error = task.exception()
        if error is not None:
            self._failed_at = self._clock.monotonic()
            log.warning(
                "retained events are unavailable: cannot read the stream %s (%s)",
                self.name,
                error,
            )

    async def _follow(self, *, create: bool) -> None:
        old, self._channel = self._channel, None
        if old is not None:  # a start that failed half-way: its channel goes first
            await self.link.release(old)
        async with self.link.call(f"the stream {self.name} could not be read"):
            name = self.name
            exists = await self.link.probe(lambda probe: probe.queue_declare(name, passive=True))
            if not exists and not create:
                # Nothing was ever retained on this exchange: nothing to read, yet.
                self._absent_at = self._clock.monotonic()
                self.view.mark_ready()
                return
            self._absent_at = None
            channel = self._channel = await self.link.new_channel()
            await channel.set_qos(prefetch_count=_PREFETCH)
            queue = await self._declare(channel, exists)
            since = datetime.now(UTC) - timedelta(seconds=self.link.settings.max_retain)
            await queue.consume(
                self._on_message,
                no_ack=False,
                # Waits in progress after a reconnection read from here again; ``order`` in the
                # view makes that harmless.
                arguments={"x-stream-offset": since},
            )
            await self._write(b"", {_MARKER_HEADER: self._marker}, "the caught-up marker")

    async def _declare(self, channel: AbstractRobustChannel, exists: bool) -> AbstractQueue:
        # Declared by whoever comes first; a stream made with other limits (another
        # amqp.max_retain) is used as it is: a re-declaration with other arguments is refused.
        if exists:
            return await channel.declare_queue(self.name, passive=True)
        return await channel.declare_queue(
            self.name,
            durable=True,
            auto_delete=False,
            arguments=retained_arguments(self.link.settings.max_retain),
        )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self._read(message)
        finally:
            # A stream consumer acknowledges for flow control only: one acknowledgement for
            # many messages (well before the prefetch runs out) reads the stream three times
            # faster than one each.
            self._unacked += 1
            if self._unacked >= _ACK_EVERY or self.view.ready.is_set():
                self._unacked = 0
                with contextlib.suppress(*_GONE):
                    await message.ack(multiple=True)

    def _read(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        marker = headers.get(_MARKER_HEADER)
        if marker is not None:
            if marker in (self._marker, self._marker.encode()):
                self.view.mark_ready()
            return
        until = headers.get(RETAIN_UNTIL_HEADER)
        order = headers.get("x-stream-offset")
        if not isinstance(until, int) or not isinstance(order, int):
            # Not ours (someone else wrote to the stream): every process reads it, so a warning
            # would repeat in each until the stream drops it.
            log.debug("skipping a message in %s without %s", self.name, RETAIN_UNTIL_HEADER)
            return
        original = None
        if H_ORIGINAL_ROUTING_KEY not in headers:  # a copy written before it carried one
            kind, name = headers.get("x-event-kind"), headers.get("x-event-name")
            if isinstance(kind, str) and isinstance(name, str):
                original = f"{kind}.{name}"
        try:
            event = decode(message, self.policy, copies_to=self.name, original_key=original).event
        except BadMessage as exc:
            self._refused("retained", self.name, exc)
            return
        try:
            ends = until / 1000
            time.gmtime(ends)  # an end no clock can reach is a refusal, not an error later
        except (OverflowError, OSError, ValueError):
            self._refused(
                "retained", self.name, BadMessage(f"{RETAIN_UNTIL_HEADER} is out of range")
            )
            return
        self.view.put(routing_key(event.kind, event.name), event, ends, order)

    async def watch(self, sub: Subscription) -> None:
        """Give a wait on an exact name the retained event, now or once the stream is read.
        Never holds the wait up: reading starts in the background, and a broker that refuses
        the stream costs the wait its retained event, not its answer."""
        if not sub.literal:
            return
        now = self._clock.monotonic()
        absent = self._absent_at is not None and now - self._absent_at >= _ABSENT_SECONDS
        if self._starting is None or absent or now - self._failed_at >= _RETRY_SECONDS:
            self._start(create=False)
        self.view.watch(sub)

    def unwatch(self, sub: Subscription) -> None:
        self.view.unwatch(sub)

    async def caught_up(self) -> RetainedEvents:
        """The view, once it has read every retained send confirmed before it started (the
        stream made if it was not there); ``BusUnavailable`` if the stream cannot be read within
        ``amqp.publish_timeout``."""
        what = f"the retained events in {self.name} could not be read"
        timeout = self.link.settings.publish_timeout
        try:
            async with asyncio.timeout(timeout):
                # Twice at most: a read started by a wait may find no stream, which this makes.
                for _ in range(2):
                    if self.view.ready.is_set() and self._absent_at is None and self._channel:
                        break
                    if self._absent_at is not None:
                        self.view.ready.clear()
                    await asyncio.shield(self._start(create=True))
                    await self.view.ready.wait()
        except TimeoutError:
            raise BusUnavailable(f"{what} in {timeout:g}s") from None
        return self.view

    # -- writing ---------------------------------------------------------------------------

    async def retain(self, event: Event, retain: timedelta) -> None:
        """Write the event's copy to the stream, retained for ``retain`` from now."""
        until = int((self._clock.time() + retain.total_seconds()) * 1000)
        headers: dict[str, Any] = {
            **message_headers(event),
            H_ORIGINAL_ROUTING_KEY: routing_key(event.kind, event.name),
            RETAIN_UNTIL_HEADER: until,
        }
        await self._write(encode_body(event.properties), headers, f"the event {event.name!r}")

    async def _write(self, body: bytes, headers: dict[str, Any], what: str) -> None:
        routed = await self.link.publish_raw(
            self.name,
            body,
            exchange="",
            content_type="application/json",
            # Not the event id (ce-id carries it): aiormq tells a returned message from another
            # by its message_id, and the event's own publish goes out at the same time.
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            headers=headers,
            what=f"{what} (to retain it)",
        )
        if not routed:
            raise BusUnavailable(f"the stream {self.name} is missing; {what} was not retained")

    async def close(self) -> None:
        task, self._starting = self._starting, None
        if task is not None and not task.done():
            # Let a start under way finish (a few round trips) rather than cancel it in the
            # middle of an RPC: aiormq answers that with a warning of its own ("Closing channel
            # ... because RPC call ... cancelled") on the user's stderr, in about half of the
            # runs of a script that waits once and exits. Cancelled only past the bound.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), _CLOSE_SECONDS)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.view.clear()


_GONE = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)
