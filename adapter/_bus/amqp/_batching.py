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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.base import Frame
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = ["MAX_BATCH", "PublishBatcher"]

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
    properties: spec.Basic.Properties
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
        self, exchange: str, key: str, body: bytes, properties: spec.Basic.Properties
    ) -> Result:
        """The broker's answer: a ``Basic.Ack``, or the returned message when no queue was
        bound; a nack raises ``aiormq.exceptions.DeliveryError``, a lost channel or connection
        the exception aiormq fails its confirmations with."""
        if len(key) > _KEY_MAX:
            raise ValueError("Routing key too long (max 255 bytes)")
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(exchange, key, body, properties, done))
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
            frames: list[Frame | ContentHeader | ContentBody] = []
            pending: list[tuple[int, _Outgoing, asyncio.Future[Any]]] = []
            for item in batch:
                if item.done.done():  # its caller stopped waiting: not sent
                    continue
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                channel.message_id_delivery_tag[_message_id(item)] = tag
                pending.append((tag, item, confirmation))
                frames.append(
                    spec.Basic.Publish(exchange=item.exchange, routing_key=item.key, mandatory=True)
                )
                frames.append(ContentHeader(properties=item.properties, body_size=len(item.body)))
                frames.extend(_body_frames(item.body, channel.max_content_size))
            if not pending:
                return
            try:
                payload = b"".join(pamqp.frame.marshal(frame, channel.number) for frame in frames)
                await channel.write_queue.put(ChannelFrame(payload=payload, should_close=False))
            except BaseException:
                # Nothing of the batch reached the broker: give its delivery tags back.
                channel.delivery_tag = first_tag
                for tag, item, confirmation in pending:
                    channel.confirmations.pop(tag, None)
                    _forget(channel, _message_id(item), tag)
                    confirmation.cancel()
                raise
        for tag, item, confirmation in pending:
            confirmation.add_done_callback(partial(_settle, channel, tag, item))


def _message_id(item: _Outgoing) -> str:
    message_id = item.properties.message_id
    assert message_id, "the link gives every message its message_id"
    return message_id


def _body_frames(body: bytes, most: int) -> list[ContentBody]:
    return [ContentBody(body[at : at + most]) for at in range(0, len(body), most)]


def _forget(channel: aiormq.Channel, message_id: str, tag: int) -> None:
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]


def _settle(
    channel: aiormq.Channel, tag: int, item: _Outgoing, answer: asyncio.Future[Any]
) -> None:
    _forget(channel, _message_id(item), tag)
    if item.done.done():
        return
    if answer.cancelled():
        item.done.set_exception(aiormq.exceptions.ChannelInvalidStateError("confirm cancelled"))
    elif (exc := answer.exception()) is not None:
        item.done.set_exception(exc)
    else:
        item.done.set_result(answer.result())
