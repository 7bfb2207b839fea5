"""``PublishBatcher``: the publishes of one confirm channel, written together. Imports no sibling.

Publishes that callers start within one turn of the event loop (a burst of MQTT messages, many
HTTP sends at once) leave as one write of all their frames, instead of one trip each through
aiormq's channel lock and write queue (``basic_publish``); each caller still awaits its own
confirm. The confirms stay aiormq's: every message gets the channel's next delivery tag and a
confirmation future in ``channel.confirmations`` and its ``message_id`` in
``channel.message_id_delivery_tag``, exactly as ``basic_publish`` registers them, so that
aiormq's own readers settle it: an ack, a nack (by tag, ``multiple`` too), a ``basic.return``
of a mandatory message (by ``message_id``, before its ack), and the channel's or the
connection's close (every pending confirmation fails). Those attributes are aiormq's internals:
``tests/test_dependency_seams.py`` checks them, and pyproject.toml caps aiormq below its next
major.

The frames are marshalled here rather than by pamqp's ``Basic.Properties``, which encoded the
same headers again for every message (a sixth of a forwarder's time): an entry of the header
table that is the same for every event of a name (``x-event-name``, ``ce-type``, ...) is
encoded once and kept (``_entry``); the bytes are pamqp's own, which a test compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from ..._version import APP_ID

__all__ = ["MAX_BATCH", "PublishBatcher", "content_header_frame"]

# Messages per write at most: a burst larger than this leaves in several writes, so that one
# write (and the broker's reading of it) stays short beside the heartbeats and other channels.
MAX_BATCH = 256
# As aiormq's basic_publish: a longer key would make the broker close the channel.
_KEY_MAX = 255

Result = aiormq.abc.ConfirmationFrameType | aiormq.abc.DeliveredMessage


@dataclass(slots=True)
class _Outgoing:
    exchange: str
    key: str
    body: bytes
    content_type: str
    message_id: str
    timestamp: datetime
    headers: Mapping[str, Any]
    user_id: str | None
    # The caller's own future: cancelled when the caller stops waiting, and then skipped if
    # it was not written yet.
    done: asyncio.Future[Result]


class PublishBatcher:
    """Publishes with a confirm and ``mandatory`` on the channel ``channel()`` returns (awaited
    once per write, within ``timeout``: a robust channel waits there for a reconnection)."""

    def __init__(
        self, channel: Callable[[], Awaitable[aiormq.abc.AbstractChannel]], *, timeout: float
    ) -> None:
        self._channel = channel
        self._timeout = timeout
        self._outbox: list[_Outgoing] = []
        self._writer: asyncio.Task[None] | None = None

    async def publish(
        self,
        exchange: str,
        key: str,
        body: bytes,
        *,
        content_type: str,
        message_id: str,
        timestamp: datetime,
        headers: Mapping[str, Any],
        user_id: str | None,
    ) -> Result:
        """Publish a persistent message of the bridge (``app_id`` ours). The broker's answer: a
        ``Basic.Ack``, or the returned message when no queue was bound; a nack raises
        ``aiormq.exceptions.DeliveryError``, a lost channel or connection the exception aiormq
        fails its confirmations with."""
        if len(key) > _KEY_MAX:
            raise ValueError("Routing key too long (max 255 bytes)")
        if not message_id:
            raise ValueError("a message needs its message_id (the confirm is found by it)")
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._outbox.append(
            _Outgoing(
                exchange, key, body, content_type, message_id, timestamp, headers, user_id, done
            )
        )
        if self._writer is None:
            # Started now, it runs once every caller of this turn of the loop has queued.
            self._writer = asyncio.create_task(self._write_all(), name="amqp publish batcher")
        return await done

    async def close(self) -> None:
        """Fail what was not written yet and stop the writer."""
        writer, self._writer = self._writer, None
        self._fail(self._outbox, aiormq.exceptions.ChannelInvalidStateError("link closed"))
        self._outbox = []
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    @staticmethod
    def _fail(batch: list[_Outgoing], exc: BaseException) -> None:
        for item in batch:
            if not item.done.done():
                item.done.set_exception(exc)

    async def _write_all(self) -> None:
        try:
            while self._outbox:
                batch = self._outbox[:MAX_BATCH]
                del self._outbox[:MAX_BATCH]
                try:
                    async with asyncio.timeout(self._timeout):
                        channel = await self._channel()
                    if not isinstance(channel, aiormq.Channel):
                        raise TypeError(f"not an aiormq channel: {channel!r}")
                    await self._write(channel, batch)
                except asyncio.CancelledError:
                    self._fail(batch, aiormq.exceptions.ChannelInvalidStateError("link closed"))
                    raise
                except Exception as exc:  # every caller of the batch gets it
                    self._fail(batch, exc)
        finally:
            # No await between the loop's last look at the outbox and this: a publish that
            # comes later finds no writer and starts one.
            if self._writer is asyncio.current_task():
                self._writer = None

    async def _write(self, channel: aiormq.Channel, batch: list[_Outgoing]) -> None:
        # aiormq's publish lock: the delivery tags must follow the order the frames are written.
        async with channel.lock:
            if channel.is_closed:
                raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            first_tag = channel.delivery_tag
            frames: list[bytes] = []
            number = channel.number
            pending: list[tuple[int, _Outgoing, asyncio.Future[Any]]] = []
            for item in batch:
                if item.done.done():  # its caller stopped waiting: not sent
                    continue
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                channel.message_id_delivery_tag[item.message_id] = tag
                pending.append((tag, item, confirmation))
                frames.append(_publish_frame(item.exchange, item.key, number))
                frames.append(
                    content_header_frame(
                        number,
                        len(item.body),
                        content_type=item.content_type,
                        message_id=item.message_id,
                        timestamp=item.timestamp,
                        headers=item.headers,
                        user_id=item.user_id,
                    )
                )
                most = channel.max_content_size
                for at in range(0, len(item.body), most):
                    piece = ContentBody(item.body[at : at + most])
                    frames.append(pamqp.frame.marshal(piece, number))
            if not pending:
                return
            try:
                payload = b"".join(frames)
                await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
            except BaseException:
                # Nothing of the batch reached the broker: give its delivery tags back.
                channel.delivery_tag = first_tag
                for tag, item, confirmation in pending:
                    channel.confirmations.pop(tag, None)
                    _forget(channel, item.message_id, tag)
                    confirmation.cancel()
                raise
        for tag, item, confirmation in pending:
            confirmation.add_done_callback(partial(_settle, channel, tag, item))


def _forget(channel: aiormq.Channel, message_id: str, tag: int) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


def _settle(
    channel: aiormq.Channel, tag: int, item: _Outgoing, answer: asyncio.Future[Any]
) -> None:
    _forget(channel, item.message_id, tag)
    if item.done.done():
        return
    if answer.cancelled():
        item.done.set_exception(aiormq.exceptions.ChannelInvalidStateError("confirm cancelled"))
    elif (exc := answer.exception()) is not None:
        item.done.set_exception(exc)
    else:
        item.done.set_result(answer.result())


# -- frames ---------------------------------------------------------------------------------------

_FRAME = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_HEADER_START = struct.Struct(">HxxQH")
_TIMESTAMP = struct.Struct(">Q")
_LONG = struct.Struct(">I")
_PERSISTENT = b"\x02"
# Basic.Properties flags, as pamqp has them: the properties every message of the bridge carries,
# and user_id when the link knows its user.
_FLAGS = sum(
    spec.Basic.Properties.flags[name]
    for name in ("content_type", "headers", "delivery_mode", "message_id", "timestamp", "app_id")
)
_USER_FLAG = spec.Basic.Properties.flags["user_id"]
# The headers that differ from one event to the next: kept, they would only push out the others.
_VARYING = frozenset(
    {"ce-id", "ce-time", "traceparent", "tracestate", "ce-traceparent", "ce-tracestate"}
)
_KEPT_ENTRIES = 4096


def _short(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 255:
        raise TypeError("string exceeds maximum length of 255 bytes")
    return bytes((len(data),)) + data


def _encode_entry(key: str, value: str) -> bytes:
    data = value.encode("utf-8")
    return _short(key) + b"S" + _LONG.pack(len(data)) + data


_entry = lru_cache(maxsize=_KEPT_ENTRIES)(_encode_entry)
_app_id = _short(APP_ID)


@lru_cache(maxsize=_KEPT_ENTRIES)
def _publish_frame(exchange: str, key: str, number: int) -> bytes:
    return pamqp.frame.marshal(
        spec.Basic.Publish(exchange=exchange, routing_key=key, mandatory=True), number
    )


def content_header_frame(
    number: int,
    body_size: int,
    *,
    content_type: str,
    message_id: str,
    timestamp: datetime,
    headers: Mapping[str, Any],
    user_id: str | None,
) -> bytes:
    """The content header frame of a persistent message of the bridge on channel ``number``:
    the bytes pamqp would marshal."""
    if not all(type(value) is str and len(key) <= 128 for key, value in headers.items()):
        # Other header values (numbers, tables) and keys pamqp would cut are rare: its way.
        properties = spec.Basic.Properties(
            content_type=content_type,
            message_id=message_id,
            timestamp=timestamp,
            app_id=APP_ID,
            delivery_mode=2,
            user_id=user_id,
            headers=dict(headers),
        )
        header = ContentHeader(properties=properties, body_size=body_size)
        return pamqp.frame.marshal(header, number)
    # pamqp writes a table sorted by key.
    table = b"".join(
        _encode_entry(key, headers[key]) if key in _VARYING else _entry(key, headers[key])
        for key in sorted(headers)
    )
    if timestamp.tzinfo is None:  # as pamqp: a naive time is UTC
        timestamp = timestamp.replace(tzinfo=UTC)
    parts = [
        _HEADER_START.pack(
            spec.Basic.Properties.frame_id, body_size, _FLAGS | _USER_FLAG * bool(user_id)
        ),
        _short(content_type),
        _LONG.pack(len(table)),
        table,
        _PERSISTENT,
        _short(message_id),
        _TIMESTAMP.pack(int(timestamp.timestamp())),
    ]
    if user_id:
        parts.append(_short(user_id))
    parts.append(_app_id)
    payload = b"".join(parts)
    return _FRAME.pack(2, number, len(payload)) + payload + _FRAME_END
