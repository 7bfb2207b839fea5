"""A TCP proxy that tests control: cut every connection through it, refuse new ones, restore.

With ``server_ssl`` it also terminates TLS, so a client's TLS settings (CA, client certificate,
host name) are exercised for real in front of a plain-text broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit


class Proxy:
    def __init__(
        self, target_host: str, target_port: int, *, server_ssl: ssl.SSLContext | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.server_ssl = server_ssl
        self.port = 0
        self.accepting = True
        self.connections_seen = 0
        self._upstream_url = f"tcp://{target_host}:{target_port}/"
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @classmethod
    def in_front_of(cls, url: str, *, server_ssl: ssl.SSLContext | None = None) -> Proxy:
        """A proxy to the broker at ``url``; ``proxy.url()`` is that URL through the proxy."""
        parts = urlsplit(url)
        proxy = cls(parts.hostname or "127.0.0.1", parts.port or 5672, server_ssl=server_ssl)
        proxy._upstream_url = url
        return proxy

    def url(self, *, scheme: str | None = None) -> str:
        """The upstream URL (``in_front_of``) pointing at the proxy, with another scheme if
        given (``amqps`` when the proxy terminates TLS)."""
        parts = urlsplit(self._upstream_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(scheme=scheme or parts.scheme, netloc=netloc))

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.server_ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._pipes):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def cut(self) -> None:
        """Drop every open connection (both directions) at once."""
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    def refuse(self) -> None:
        """Cut everything and refuse new connections until ``restore``."""
        self.accepting = False
        self.cut()

    def restore(self) -> None:
        self.accepting = True

    def stall(self) -> None:
        """Keep every connection open but pass nothing on: a broker that stopped answering."""
        self._flowing.clear()

    def unstall(self) -> None:
        self._flowing.set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        self.connections_seen += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink, (writer, up_writer)))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in pair:
                writer.transport.abort()
                self._writers.discard(writer)
