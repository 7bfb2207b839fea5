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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from .._event import Event, encode_body, event_from_message
from .._exceptions import AdapterError, BusUnavailable
from .._names import routing_key, validate_kind
from ._base import Subscription
from ._retained import RetainedEvents

if TYPE_CHECKING:
    from ._amqp import AmqpBus

__all__ = [
    "RETAINED_QUEUE_TYPE",
    "RETAIN_UNTIL_HEADER",
    "STREAM_MAX_BYTES",
    "RetainedStream",
]

log = logging.getLogger("adapter.amqp")

#: The queue type of the retained events' store: the one RabbitMQ type that many consumers read
#: without taking messages from each other.
RETAINED_QUEUE_TYPE = "stream"
RETAIN_UNTIL_HEADER = "x-retain-until"
_MARKER_HEADER = "x-customevent-caught-up"
#: The most the stream holds, whatever the traffic (x-max-length-bytes), and its segment size:
#: RabbitMQ applies the age and size limits a whole segment at a time.
STREAM_MAX_BYTES = 256 * 1024 * 1024
_SEGMENT_BYTES = 8 * 1024 * 1024
_PREFETCH = 1000
_ACK_EVERY = 100
# After a failed start (a broker that refused the stream), waits go without retained events for
# this long before the next attempt, instead of paying for a refusal each.
_RETRY_SECONDS = 30.0


class RetainedStream:
    """The retained events of one ``AmqpBus``: writes to the stream and this process's view."""

    def __init__(self, bus: AmqpBus) -> None:
        self.bus = bus
        self.name = f"customevent.retained.{bus.settings.exchange}"
        self.view = RetainedEvents(bus.settings.max_retained_names)
        self._marker = uuid.uuid4().hex
        self._starting: asyncio.Task[None] | None = None
        self._failed_at = -_RETRY_SECONDS
        self._channel: AbstractRobustChannel | None = None
        self._unacked = 0

    # -- reading ---------------------------------------------------------------------------

    def _start(self) -> asyncio.Task[None]:
        task = self._starting
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._starting = asyncio.get_running_loop().create_task(
                self._follow(), name="customevent-retained-stream"
            )
            task.add_done_callback(self._started)
        return task

    def _started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.bus._state != "opened":
            return  # stopped with its bus: nothing to warn about
        error = task.exception()
        if error is not None:
            self._failed_at = time.monotonic()
            log.warning(
                "retained events are unavailable: cannot read the stream %s (%s)",
                self.name,
                error,
            )

    async def _follow(self) -> None:
        old, self._channel = self._channel, None
        if old is not None:  # a start that failed half-way: its channel goes first
            await self.bus._release(old)
        async with self.bus._broker_call(f"the stream {self.name} could not be read"):
            channel = self._channel = await self.bus._new_channel()
            await channel.set_qos(prefetch_count=_PREFETCH)
            queue = await self._declare(channel)
            since = datetime.now(UTC) - timedelta(seconds=self.bus.settings.max_retain)
            await queue.consume(
                self._on_message,
                no_ack=False,
                # Waits in progress after a reconnection read from here again; ``order`` in the
                # view makes that harmless.
                arguments={"x-stream-offset": since},
            )
            await self._write(b"", {_MARKER_HEADER: self._marker}, "the caught-up marker")

    async def _declare(self, channel: AbstractRobustChannel) -> AbstractQueue:
        # Declared by whoever comes first; a stream made with other limits (another
        # amqp.max_retain) is used as it is: a re-declaration with other arguments is refused.
        if await self.bus._probe(lambda probe: probe.queue_declare(self.name, passive=True)):
            return await channel.declare_queue(self.name, passive=True)
        return await channel.declare_queue(
            self.name,
            durable=True,
            auto_delete=False,
            arguments={
                "x-queue-type": RETAINED_QUEUE_TYPE,
                "x-max-age": f"{max(1, round(self.bus.settings.max_retain))}s",
                "x-max-length-bytes": STREAM_MAX_BYTES,
                "x-stream-max-segment-size-bytes": _SEGMENT_BYTES,
            },
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
            if _text(marker) == self._marker:
                self.view.mark_ready()
            return
        until = headers.get(RETAIN_UNTIL_HEADER)
        order = headers.get("x-stream-offset")
        if not isinstance(until, int) or not isinstance(order, int):
            # Not ours (someone else wrote to the stream): every process reads it, so a warning
            # would repeat in each until the stream drops it.
            log.debug("skipping a message in %s without %s", self.name, RETAIN_UNTIL_HEADER)
            return
        try:
            kind = validate_kind(_text(headers.get("x-event-kind")))
            key = routing_key(kind, _text(headers.get("x-event-name")))
            event = event_from_message(
                routing_key=key,
                body=message.body,
                headers=headers,
                message_id=message.message_id,
                timestamp=message.timestamp,
            )
        except AdapterError as exc:
            log.debug("skipping a message in %s that is not an event: %s", self.name, exc)
            return
        self.view.put(key, event, until / 1000, order)

    async def watch(self, sub: Subscription) -> None:
        """Give a wait on an exact name the retained event, now or once the stream is read.
        Never holds the wait up: reading starts in the background, and a broker that refuses
        the stream costs the wait its retained event, not its answer."""
        if not sub.literal:
            return
        if self._starting is None or time.monotonic() - self._failed_at >= _RETRY_SECONDS:
            self._start()
        self.view.watch(sub)

    def unwatch(self, sub: Subscription) -> None:
        self.view.unwatch(sub)

    async def caught_up(self) -> RetainedEvents:
        """The view, once it has read every retained send confirmed before it started;
        ``BusUnavailable`` if the stream cannot be read within ``amqp.publish_timeout``."""
        if self.view.ready.is_set():
            return self.view
        task = self._start()
        what = f"the retained events in {self.name} could not be read"
        try:
            async with asyncio.timeout(self.bus.settings.publish_timeout):
                await asyncio.shield(task)
                await self.view.ready.wait()
        except TimeoutError:
            raise BusUnavailable(f"{what} in {self.bus.settings.publish_timeout:g}s") from None
        return self.view

    # -- writing ---------------------------------------------------------------------------

    async def retain(self, event: Event, retain: timedelta) -> None:
        """Write the event's copy to the stream, retained for ``retain`` from now."""
        until = int((time.time() + retain.total_seconds()) * 1000)
        headers: dict[str, Any] = {**event.headers(), RETAIN_UNTIL_HEADER: until}
        await self._write(encode_body(event.properties), headers, f"the event {event.name!r}")

    async def _write(self, body: bytes, headers: dict[str, Any], what: str) -> None:
        routed = await self.bus.publish_raw(
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
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, AdapterError):
                await task
        self.view.clear()


_GONE = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
