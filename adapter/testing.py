"""Test helpers: the bridge and its library in-process, for your tests and for ours.

- ``memory_client()``: ``async with memory_client() as client:`` gives an opened ``Client`` on a
  bus of its own in this process (``MemoryBus``), whatever ``CUSTOMEVENT_AMQP__URL`` says, so a
  unit test never reaches a real broker by accident.
- ``BridgeDaemon``: ``with BridgeDaemon() as daemon:`` runs the bridge daemon (HTTP, SOAP, the
  long-poll) on a free port, in a thread of its own; ``daemon.url`` is where to send.
- ``PrivateMosquitto``: a Mosquitto process of your own (the ``mosquitto`` binary must be
  installed), on a free port, that a test may stop and restart.
- pytest fixtures, with ``pytest_plugins = ["adapter.testing"]`` in your top-level
  ``conftest.py``: ``customevent_client`` (``memory_client()``, needs pytest-asyncio),
  ``customevent_daemon`` (a ``BridgeDaemon``), ``private_mosquitto`` (a ``PrivateMosquitto``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

from ._bus import MemoryBus
from ._client import Client
from ._daemon import _Server, server_config
from ._http import create_app
from ._metrics import Metrics
from ._mqtt._testing import PrivateMosquitto, free_port
from ._settings import Settings, load_settings

__all__ = ["BridgeDaemon", "PrivateMosquitto", "free_port", "memory_client"]


def _in_process(settings: Settings | None, **overrides: Any) -> Settings:
    if settings is not None:
        return settings
    return load_settings(amqp={"url": None}, **overrides)


@contextlib.asynccontextmanager
async def memory_client(settings: Settings | None = None) -> AsyncIterator[Client]:
    """An opened ``Client`` on a ``MemoryBus`` of its own: the same patterns, broadcast,
    deadlines and resumable waits as RabbitMQ, inside this event loop. ``settings`` gives limits
    (its ``amqp.url`` is ignored). The client counts on metrics of its own (``client.metrics``)."""
    settings = _in_process(settings)
    bus = MemoryBus(
        wait_grace=settings.amqp.wait_grace,
        limits=settings.limits,
        max_retained_names=settings.amqp.max_retained_names,
    )
    async with Client(settings, bus=bus, metrics=Metrics.own()) as client:
        yield client


class _QuietServer(_Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the program that runs the daemon (a test runner), not to it.
        yield


class BridgeDaemon:
    """The bridge daemon (its client, its app, uvicorn) on a free port of 127.0.0.1, in a thread
    with its own event loop: ``with BridgeDaemon(settings) as daemon: ...daemon.url...``.

    Without settings it runs as ``make serve`` does: the in-process bus, anonymous sending
    allowed. ``http.port`` is ignored; ``http.tls_cert_file`` makes it serve HTTPS.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = _in_process(settings, auth={"anonymous": True})
        self.url = ""
        self.port = 0
        self.app: Any = None
        self.metrics = Metrics.own()
        """This daemon's metrics (what its ``GET /metrics`` serves), apart from any other's."""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: _QuietServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="customevent-daemon", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the bridge daemon did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop as on SIGTERM (open waits end with 503), and wait for the thread."""
        loop, server, self._loop = self._loop, self._server, None
        if loop is not None and server is not None:
            loop.call_soon_threadsafe(setattr, server, "should_exit", True)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        http = self.settings.http
        async with Client(self.settings, metrics=self.metrics) as client:
            self.app = create_app(self.settings, client)
            config = server_config(
                self.app, http, host="127.0.0.1", port=0, timeout_graceful_shutdown=5
            )
            self._server = _QuietServer(config, self.app.state.gateway.stopping)
            serving = asyncio.create_task(self._server.serve())
            while not self._server.started:
                if serving.done():
                    await serving
                    raise RuntimeError("the bridge daemon stopped while starting")
                await asyncio.sleep(0.01)
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
            scheme = "https" if http.tls_cert_file else "http"
            self.url = f"{scheme}://127.0.0.1:{self.port}"
            self._ready.set()
            await serving


try:  # the fixtures, for projects that test with pytest and pytest-asyncio
    import pytest
    import pytest_asyncio
except ImportError:  # pragma: no cover - a project without them uses the helpers above
    pass
else:

    @pytest_asyncio.fixture
    async def customevent_client() -> AsyncIterator[Client]:
        """An opened ``Client`` on an in-process bus of its own (``memory_client()``)."""
        async with memory_client() as client:
            yield client

    @pytest.fixture
    def customevent_daemon() -> Iterator[BridgeDaemon]:
        """The bridge daemon on the in-process bus, anonymous sending allowed, on a free port."""
        with BridgeDaemon() as daemon:
            yield daemon

    @pytest.fixture
    def private_mosquitto() -> Iterator[PrivateMosquitto]:
        """A Mosquitto of this test's own on a free port (``.url``, ``.restart()``)."""
        with PrivateMosquitto() as broker:
            yield broker
