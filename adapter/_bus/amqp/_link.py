"""``BrokerLink``: the RabbitMQ connection of one bus, and everything that talks over it at the
lowest level. Imports no sibling but ``_batching``.

- the nodes of ``amqp.url`` and the failover between them (``adapter/_bus/_failover.py``), the
  first connection with tenacity's retries, and reconnection callbacks;
- the confirm channel and ``publish_raw``: persistent messages, ``mandatory``, a confirm; the
  publishes of one turn of the event loop leave in one write (``_batching.PublishBatcher``);
- channels: opened with numbers this link chooses, going round every number the connection
  allows before one comes back, so a number is never reused while the broker may still hold it
  open (aiormq frees a number the moment the broker asks to close it, before our close-ok is
  written: a channel opened at once on that number made RabbitMQ close the whole connection with
  ``second 'channel.open' seen``); released for good, even during an outage;
- ``probe``: one method the broker may answer by closing the channel (a passive declare);
- ``call``: a caller's set-up at the broker, refused at once while disconnected and bounded in
  time; ``tidy``: a clean-up that never holds up a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustChannel
from tenacity import RetryCallState

from ..._exceptions import (
    BrokerAuthenticationError,
    BusError,
    BusUnavailable,
    ConfigurationError,
    PublishRejected,
)
from ..._nodes import redact_url, split_nodes
from ..._retry import broker_connect_retrying
from ..._settings import AmqpSettings
from ..._tls import client_tls_context
from .._failover import NodeConnection, Nodes, shown
from ._batching import PublishBatcher

__all__ = ["UNAVAILABLE", "BrokerLink"]

log = logging.getLogger("adapter.amqp")

# What the broker or the link does to us while it is away. Not RuntimeError in general: a bug
# must surface as one, not pass for an outage.
UNAVAILABLE = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
)
# A clean-up at the broker (an unbind, a queue delete) waits this long at most: what it would
# remove expires on its own, and a caller's answer must not wait for it.
_TIDY_SECONDS = 2.0
# RabbitMQ's default channel_max; the negotiated one is used when the broker says less.
_CHANNEL_MAX = 2047


class _Refused(Exception):
    """The broker closed the connection while it was being opened (a virtual host that does not
    exist or that the user may not use)."""


def _ssl_context(settings: AmqpSettings) -> ssl.SSLContext | None:
    if settings.url is None or urlsplit(settings.url).scheme != "amqps":
        return None
    return client_tls_context(settings, what="AMQP")


def _vhost(url: str) -> str:
    return unquote(urlsplit(split_nodes(url)[0]).path[1:]) or "/"


def _user(settings: AmqpSettings) -> str | None:
    """The user the connection authenticates as, or None when the broker decides it (EXTERNAL:
    a client certificate's name)."""
    assert settings.url is not None
    parts = urlsplit(split_nodes(settings.url)[0])
    if "auth=external" in parts.query.lower():
        return None
    if settings.username is not None:
        return settings.username
    return unquote(parts.username or "guest")  # aio-pika's default user


class BrokerLink:
    """The connection of one bus to RabbitMQ: ``await link.open()``, ``await link.close()``."""

    def __init__(self, settings: AmqpSettings, *, connection_name: str) -> None:
        if not settings.url:
            raise ConfigurationError("the RabbitMQ bus needs amqp.url (CUSTOMEVENT_AMQP__URL)")
        self.settings = settings
        self.exchange = settings.exchange
        self._url = settings.url
        try:
            self._nodes = Nodes.from_settings(settings)
        except ValueError as exc:  # settings made without validation (a --url, model_copy)
            raise ConfigurationError(f"amqp.url: {exc}") from None
        #: The AMQP user this link publishes as (every message carries it as ``user_id``, which
        #: RabbitMQ checks), or None when the broker names it.
        self.user = _user(settings)
        self._connection_name = connection_name
        self._connection: NodeConnection | None = None
        self._confirm_channel: AbstractRobustChannel | None = None
        self._batcher = PublishBatcher(
            self._underlay_confirm_channel, timeout=settings.publish_timeout
        )
        self._next_number = 0
        self._probe: aiormq.abc.AbstractConnection | None = None
        self._probe_lock = asyncio.Lock()
        #: Called (on the event loop, with no argument) after each reconnection.
        self.on_reconnect: list[Callable[[], None]] = []

    @property
    def where(self) -> str:
        return f"RabbitMQ at {redact_url(self._url)}"

    @property
    def node(self) -> str | None:
        """The node the link is connected to (password hidden), or None while it is not."""
        connection = self._connection
        if connection is None or not self.connected:
            return None
        return shown(connection.url)

    @property
    def connected(self) -> bool:
        connection = self._connection
        channel = self._confirm_channel
        # After a reconnect the connection is up a moment before the confirm channel is reopened:
        # ready means both, so /readyz never says ready while sends would get 503.
        return (
            connection is not None
            and not connection.is_closed
            and connection.connected.is_set()
            and channel is not None
            and not channel.is_closed
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, open the confirm channel and declare the events exchange (a durable topic
        exchange; used as it is by a user without configure permission)."""
        self._connection = await self._connect()
        try:
            self._connection.reconnect_callbacks.add(self._reconnected)
            passive = await self._exchange_needs_passive_declare()
            channel = await self.new_channel(publisher_confirms=True)
            self._confirm_channel = channel
            await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True, passive=passive
            )
        except BaseException:
            await self._connection.close()
            raise

    async def close(self) -> None:
        await self._batcher.close()
        probe, self._probe = self._probe, None
        if probe is not None:
            with contextlib.suppress(*UNAVAILABLE, aiormq.exceptions.AMQPError, OSError):
                await probe.close()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def _reconnected(self, *_: Any) -> None:
        connection = self._connection
        node = shown(connection.url) if connection is not None else redact_url(self._url)
        log.warning("RabbitMQ: reconnected to %s", node)
        for callback in self.on_reconnect:
            callback()

    async def _exchange_needs_passive_declare(self) -> bool:
        try:
            await self.probe(
                lambda probe: probe.exchange_declare(
                    self.exchange, exchange_type="topic", durable=True
                )
            )
        except aiormq.exceptions.ChannelAccessRefused:
            log.info("no configure permission on %r: using it as it is", self.exchange)
            return True
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"exchange {self.exchange!r} exists with other properties than a durable "
                f"topic exchange: {exc}"
            ) from None
        return False

    async def _connect(self) -> NodeConnection:
        shown_url = redact_url(self._url)
        context = _ssl_context(self.settings)
        failures: dict[str, str] = {}

        def announce(state: RetryCallState) -> None:
            pause = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "RabbitMQ at %s: connection attempt %d of %d failed (%s); retrying in %.1fs",
                shown_url,
                state.attempt_number,
                self.settings.connect_attempts,
                "; ".join(f"{node}: {error}" for node, error in failures.items()),
                pause,
            )

        async def each_node_once() -> NodeConnection:
            # One attempt is a round of the nodes: a node that is down costs no back-off while
            # another one answers.
            last: Exception | None = None
            for _ in range(len(self._nodes)):
                node = self._nodes.current
                connection = NodeConnection(
                    self._nodes,
                    client_properties={"connection_name": self._connection_name},
                    reconnect_interval=self.settings.reconnect_interval,
                    heartbeat=self.settings.heartbeat,
                    ssl_context=context,
                )
                try:
                    await connection.connect(timeout=10)
                except aiormq.exceptions.ProbableAuthenticationError:
                    raise  # the users are the cluster's: the next node would refuse them too
                except aiormq.exceptions.InvalidFrameError as exc:
                    # aiormq reports the broker's Connection.Close in answer to Connection.Open
                    # this way, without its reply text: RabbitMQ closes so for a virtual host
                    # that does not exist or that the user may not use (NOT_ALLOWED). Asking
                    # again, or another node, would get the same answer.
                    if "Connection.Close" in str(exc):
                        with contextlib.suppress(Exception):
                            await connection.close()
                        raise _Refused() from None
                    failures[shown(node)] = str(exc)
                    last = exc
                    continue
                except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
                    failures[shown(node)] = str(exc) or type(exc).__name__
                    if self._nodes.current == node:
                        # aio-pika reports a failed attempt to the connection, which moved on
                        # already; this covers a failure before that report.
                        self._nodes.advance()
                    last = exc
                    continue
                return connection
            assert last is not None
            raise last

        retrying = broker_connect_retrying(
            self.settings.connect_attempts,
            self.settings.connect_backoff_max,
            fatal=(aiormq.exceptions.ProbableAuthenticationError, _Refused),
            before_sleep=announce,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await each_node_once()
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise BrokerAuthenticationError(
                f"RabbitMQ at {shown_url} refused the credentials (check the user and password in "
                f"amqp.url, or amqp.username and amqp.password): {exc}"
            ) from None
        except _Refused:
            raise BrokerAuthenticationError(
                f"RabbitMQ at {shown_url} refused the virtual host {_vhost(self._url)!r}: it does "
                f"not exist, or the user {self.user!r} may not use it (the path of amqp.url names "
                "the virtual host; '/' is written %2F)"
            ) from None
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError):
            reasons = "; ".join(f"{node}: {error}" for node, error in failures.items())
            raise BusUnavailable(
                f"cannot connect to RabbitMQ at {shown_url} after "
                f"{self.settings.connect_attempts} attempts: {reasons}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # -- channels --------------------------------------------------------------------------

    def _require_connection(self) -> NodeConnection:
        if self._connection is None:
            raise BusUnavailable("not connected to RabbitMQ")
        return self._connection

    def _channel_number(self, connection: aiormq.abc.AbstractConnection) -> int:
        """The next channel number, going round every number the connection allows and skipping
        those in use: a number comes back only after all the others were used once."""
        tune = getattr(connection, "connection_tune", None)
        allowed = getattr(tune, "channel_max", 0) or _CHANNEL_MAX
        highest = min(allowed, _CHANNEL_MAX)
        in_use = connection.channels if isinstance(connection, aiormq.Connection) else {}
        for _ in range(highest):
            self._next_number = self._next_number % highest + 1
            if self._next_number not in in_use:
                return self._next_number
        raise BusUnavailable(f"every one of the {highest} AMQP channels of the connection is open")

    async def new_channel(self, *, publisher_confirms: bool = False) -> AbstractRobustChannel:
        """A robust channel of its own (restored by aio-pika after a reconnection); close it
        with ``release``."""
        connection = self._require_connection()
        transport = connection.transport
        if transport is None:  # aio-pika would raise a bare RuntimeError
            raise BusUnavailable("not connected to RabbitMQ")
        number = self._channel_number(transport.connection)
        channel = connection.channel(channel_number=number, publisher_confirms=publisher_confirms)
        try:
            await channel
        except BaseException as exc:
            # The robust connection took the channel before it opened: one that failed to open
            # (the link lost meanwhile, a timeout) would be opened on the next reconnection.
            await self.release(channel)
            if isinstance(exc, RuntimeError) and transport.connection.is_closed:
                raise BusUnavailable("the link to RabbitMQ was lost") from None  # aiormq's word
            raise
        return channel

    async def release(self, channel: AbstractRobustChannel) -> None:
        """Close a channel for good. Always, even when the link is down and the channel reads as
        closed: a robust channel that was not closed is opened again on the next reconnection,
        and kept open with nobody to close it."""
        await self.tidy("close a channel", channel.close, connected_only=False)

    async def probe(self, method: Callable[[aiormq.abc.AbstractChannel], Awaitable[Any]]) -> bool:
        """Run one method that the broker may answer by closing the channel (404 for a passive
        declare that finds nothing): True if it succeeded, False on 404; other refusals raise.

        It runs on a plain channel of a connection of its own, one probe at a time. Not on a
        robust channel: aio-pika would reopen the channel the broker closed and keep it open for
        good. Not on the main connection: aiormq answers the broker's close with a close-ok it
        drops when that connection's write queue is full (ten frames, soon reached by a burst of
        waits), so the broker kept such channels open, and a later channel.open on the same
        number made it close the whole connection (``second 'channel.open' seen``).
        """
        async with self._probe_lock:
            connection = await self._probe_connection()
            try:
                channel = await connection.channel(publisher_confirms=False)
            except RuntimeError:  # aiormq's word for a connection that closed meanwhile
                if not connection.is_closed:
                    raise
                raise BusUnavailable("the link to RabbitMQ was lost") from None
            try:
                await method(channel)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
            finally:
                if not channel.is_closed:
                    await channel.close()
        return True

    async def _probe_connection(self) -> aiormq.abc.AbstractConnection:
        current = self._probe
        if current is not None and not current.is_closed:
            return current
        main = self._require_connection()
        if not self.connected and self._confirm_channel is not None:
            raise BusUnavailable("not connected to RabbitMQ")
        async with asyncio.timeout(self.settings.publish_timeout):
            self._probe = await aiormq.connect(
                main.url,
                context=_ssl_context(self.settings),
                client_properties={"connection_name": f"{self._connection_name} (probes)"},
            )
        return self._probe

    @contextlib.asynccontextmanager
    async def call(self, what: str) -> AsyncIterator[None]:
        """Around a caller's set-up at the broker (a wait's queue, binding, channel): refused at
        once while disconnected (a robust channel would wait for the reconnection, however long),
        bounded by ``amqp.publish_timeout``, and every broker failure a ``BusError``."""
        if not self.connected:
            raise BusUnavailable(f"RabbitMQ is not connected; {what}")
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                yield
        except TimeoutError:
            raise BusUnavailable(
                f"RabbitMQ did not answer within {self.settings.publish_timeout:g}s; {what}"
            ) from None
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise BusError(f"RabbitMQ refused it ({exc}); {what}") from None
        except (*UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
            raise BusUnavailable(f"RabbitMQ failed ({exc or type(exc).__name__}); {what}") from None

    async def tidy(
        self, what: str, operation: Callable[[], Awaitable[object]], *, connected_only: bool = True
    ) -> None:
        """A clean-up at the broker, which must never hold up a caller: skipped while
        disconnected (what it removes expires on its own), bounded in time, failures logged."""
        if connected_only and not self.connected:
            return
        try:
            async with asyncio.timeout(_TIDY_SECONDS):
                await operation()
        except (TimeoutError, *UNAVAILABLE, aiormq.exceptions.AMQPError) as exc:
            log.debug("could not %s: %s", what, exc or type(exc).__name__)

    # -- publishing ------------------------------------------------------------------------

    async def _underlay_confirm_channel(self) -> aiormq.abc.AbstractChannel:
        channel = self._confirm_channel
        if channel is None:
            raise aiormq.exceptions.ChannelInvalidStateError("no confirm channel")
        return await channel.get_underlay_channel()

    async def publish_raw(
        self,
        key: str,
        body: bytes,
        *,
        content_type: str,
        message_id: str,
        timestamp: datetime,
        headers: Mapping[str, Any],
        what: str,
        exchange: str | None = None,
    ) -> bool:
        """Publish persistent bytes with a confirm and ``mandatory``; True if a queue was bound.

        ``exchange``: another exchange than the events', ``""`` for the default one, straight to
        the queue named by ``key`` (the bridge's own copies: retries, dead letters, replays, the
        retained stream).
        """
        if not self.connected or self._confirm_channel is None:
            raise BusUnavailable(f"RabbitMQ is not connected; {what} was not sent")
        try:
            async with asyncio.timeout(self.settings.publish_timeout):
                result = await self._batcher.publish(
                    self.exchange if exchange is None else exchange,
                    key,
                    body,
                    content_type=content_type,
                    message_id=message_id,
                    timestamp=timestamp,
                    headers=headers,
                    user_id=self.user,
                )
        except aiormq.exceptions.DeliveryError as exc:
            raise PublishRejected(f"RabbitMQ refused {what}: {exc}") from None
        except (*UNAVAILABLE, TimeoutError) as exc:
            raise BusUnavailable(
                f"RabbitMQ did not confirm {what}: {exc or type(exc).__name__}"
            ) from None
        return not isinstance(result, aiormq.abc.DeliveredMessage)
