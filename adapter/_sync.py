"""A synchronous facade over ``Client`` for scripts: its event loop runs in a private thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from ._client import Client
from ._event import Event, SendResult
from ._exceptions import ClientStateError
from ._settings import Settings

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """``with SyncClient(...) as client: client.send_custom_event(...)`` for code without asyncio.

    Takes the same arguments as ``Client``.
    """

    def __init__(self, settings: Settings | str | None = None, *, token: str | None = None) -> None:
        self._settings = settings
        self._token = token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None

    def __enter__(self) -> Self:
        if self._loop is not None:
            raise ClientStateError("this SyncClient was already opened; make a new one")
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=loop.run_forever, name="customevent-sync", daemon=True
        )
        self._thread.start()
        try:
            self._client = self._call(self._open())
        except BaseException:
            self._stop()
            raise
        return self

    async def _open(self) -> Client:
        client = Client(self._settings, token=self._token)
        await client.__aenter__()
        return client

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                self._call(client.__aexit__(None, None, None))
        finally:
            self._stop()

    def _stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None or not self._loop.is_running():
            coro.close()
            raise ClientStateError("the SyncClient is not open; use it inside a with block")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def _require(self) -> Client:
        if self._client is None:
            raise ClientStateError("the SyncClient is not open; use it inside a with block")
        return self._client

    def send_custom_event(
        self,
        name: str,
        properties: Mapping[str, str] | str | None = None,
        *,
        kind: str = "internal",
        event_id: str | None = None,
    ) -> SendResult:
        """See ``Client.send_custom_event``."""
        client = self._require()
        return self._call(client.send_custom_event(name, properties, kind=kind, event_id=event_id))

    def wait_custom_event_until(
        self,
        kind: str,
        name: str,
        until: datetime | timedelta,
        *,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Event | None:
        """See ``Client.wait_custom_event_until``."""
        client = self._require()
        return self._call(
            client.wait_custom_event_until(kind, name, until, wait_id=wait_id, match=match)
        )
