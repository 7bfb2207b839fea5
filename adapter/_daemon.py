"""``customevent serve``: the bridge daemon.

One process: the bus client, the optional MQTT bridge and the HTTP server share one event loop (the
in-process bus cannot be shared between processes; on RabbitMQ, scale with replicas). On SIGTERM or
SIGINT the daemon stops accepting connections, ends open HTTP waits with 503 (they did not reach
their deadline; the caller waits again elsewhere), gives in-flight sends up to
``http.drain_seconds`` to finish, closes the bus and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from ._bus._amqp import redact_url
from ._client import Client
from ._http import create_app
from ._http._logging import configure_logging
from ._http._protocol import bounded_protocol, raise_file_limit
from ._settings import HttpSettings, Settings

__all__ = ["serve", "server_config"]

log = logging.getLogger("adapter.daemon")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, stopping: asyncio.Event) -> None:
        super().__init__(config)
        self._stopping = stopping

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn's own handlers re-raise the signal once it has shut down, so a SIGTERM would
        # end the process with status 143; a stop on request is a success, so handle it here.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Open waits end first: they would otherwise hold the drain until its timeout.
        self._stopping.set()
        await super().shutdown(sockets)


def _announce(settings: Settings) -> None:
    if settings.amqp.url:
        log.info(
            "publishing to RabbitMQ at %s, exchange %r",
            redact_url(settings.amqp.url),
            settings.amqp.exchange,
        )
    else:
        log.warning(
            "no amqp.url configured: running on the in-process bus; events do not leave this "
            "process"
        )
    auth = settings.auth
    if auth.anonymous:
        log.warning(
            "auth.anonymous is on: anyone who can reach this daemon may send external events "
            "matching %s",
            ", ".join(auth.anonymous_allow),
        )
    elif not auth.principals:
        log.warning(
            "no auth.principals configured and auth.anonymous is off: every send will be "
            "refused with 401"
        )


async def _run(settings: Settings) -> None:
    _announce(settings)
    async with Client(settings) as client, contextlib.AsyncExitStack() as stack:
        if settings.mqtt.url:
            from ._mqtt import MqttBridge

            await stack.enter_async_context(MqttBridge(settings, client))
        app = create_app(settings, client)
        raise_file_limit(settings.http)
        gateway = app.state.gateway
        try:
            await _Server(server_config(app, settings.http), gateway.stopping).serve()
        finally:
            gateway.auth.close()


def server_config(app: Any, http: HttpSettings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the daemon's app: bounded connections (``_protocol``), our
    logging, no lifespan, the drain on stop."""
    options: dict[str, Any] = {
        "host": http.host,
        "port": http.port,
        "ssl_certfile": http.tls_cert_file,
        "ssl_keyfile": http.tls_key_file,
        "http": bounded_protocol(http),
        "log_config": None,
        "access_log": False,
        "lifespan": "off",
        "server_header": False,
        "timeout_graceful_shutdown": math.ceil(http.drain_seconds),
    }
    return uvicorn.Config(app, **{**options, **overrides})


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it where it exists
        return None
    return uvloop.new_event_loop


def serve(settings: Settings) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the exit status (0 after a clean stop)."""
    configure_logging(settings.log)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(settings))
    except SystemExit as exc:
        # uvicorn exits this way when it cannot listen (it has logged why).
        return exc.code if isinstance(exc.code, int) else 1
    log.info("stopped")
    return 0
