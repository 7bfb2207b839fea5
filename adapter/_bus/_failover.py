"""How the RabbitMQ bus moves between the nodes of a cluster.

aio-pika's robust connection reconnects to the one URL it was made with, then declares again the
queues, bindings and consumers of its channels. ``NodeConnection`` is that connection with one
change: each time an attempt to connect fails, or an established connection is lost, its next
attempt goes to the next node of ``amqp.url``. aio-pika reports both through
``_on_connection_close`` (a failed attempt with its error, a loss with the broker's reason), the
one method this class overrides; the restore that follows runs on the new node unchanged.

Order: each process shuffles the nodes once, then goes round them in that order. Replicas that
list the same nodes spread over them, at start and again when a node is lost (the clients of the
lost node do not all land on the node listed after it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

from aio_pika import RobustConnection
from yarl import URL

from .._nodes import split_nodes
from .._settings import AmqpSettings

__all__ = ["NodeConnection", "Nodes"]

log = logging.getLogger("adapter.amqp")


class Nodes:
    """The nodes of ``amqp.url`` in the order this process tries them, and the current one."""

    def __init__(self, urls: Sequence[URL], *, shuffle: bool = True) -> None:
        if not urls:
            raise ValueError("no RabbitMQ node")
        self._urls = random.sample(list(urls), len(urls)) if shuffle else list(urls)
        self._index = 0

    @classmethod
    def from_settings(cls, settings: AmqpSettings) -> Nodes:
        """The nodes of ``amqp.url``, with ``amqp.username`` and ``amqp.password`` (when set)
        in place of the credentials written in the URLs."""
        if not settings.url:
            raise ValueError("amqp.url is not set")
        urls = []
        for text in split_nodes(settings.url):
            url = URL(text)
            if settings.username is not None:
                url = url.with_user(settings.username)
            if settings.password is not None:
                url = url.with_password(settings.password.get_secret_value())
            urls.append(url)
        return cls(urls)

    @property
    def current(self) -> URL:
        return self._urls[self._index]

    def advance(self) -> URL:
        """Move to the next node (round the list) and return it."""
        self._index = (self._index + 1) % len(self._urls)
        return self.current

    def __len__(self) -> int:
        return len(self._urls)

    def __iter__(self) -> Iterator[URL]:
        return iter(self._urls)


def shown(url: URL) -> str:
    """The node's URL for logs and errors: the password replaced."""
    return str(url.with_password("***")) if url.password is not None else str(url)


class NodeConnection(RobustConnection):
    """A robust connection whose every new attempt goes to the next node of ``nodes``."""

    def __init__(self, nodes: Nodes, **kwargs: Any) -> None:
        self.nodes = nodes
        super().__init__(nodes.current, **kwargs)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if not (self._close_called or self.is_closed):
            lost = self.url
            self.url = self.nodes.advance()
            if len(self.nodes) > 1:
                log.warning(
                    "RabbitMQ node %s: %s; the next attempt goes to %s",
                    shown(lost),
                    _reason(closing),
                    shown(self.url),
                )
        await super()._on_connection_close(closing)


def _reason(closing: asyncio.Future[Any]) -> str:
    if closing.cancelled():
        return "connection closed"
    error = closing.exception()
    if error is None:
        return "connection closed"
    text = str(error) or type(error).__name__
    return f"connection lost or refused ({text})"
