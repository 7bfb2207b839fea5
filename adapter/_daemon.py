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
import errno
import logging
import math
import signal
import socket
from collections.abc import Callable, Generator
from typing import Any

import uvicorn

from ._client import Client
from ._exceptions import ConfigurationError
from ._http import create_app
from ._http._logging import configure_logging
from ._http._protocol import bounded_protocol, raise_file_limit
from ._metrics import Metrics
from ._nodes import redact_url
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


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen(host: str, port: int) -> list[socket.socket]:
    """Bound sockets for every address ``host`` resolves to, as asyncio's ``create_server``
    would bind them, so that a busy port is refused before the daemon connects to its bus, with
    a message that says what to do."""
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"http.host {host!r} is not an address of this machine ({exc.strerror})"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = "the port is already in use (another customevent serve, or another program)"
        elif exc.errno == errno.EACCES:
            reason = "permission denied (ports below 1024 need privileges)"
        else:
            reason = exc.strerror or str(exc)
        raise ConfigurationError(
            f"cannot listen on {_address(host, port)}: {reason}; choose another port with "
            f"http.port in the config file or the environment (CUSTOMEVENT_HTTP__PORT="
            f"{port + 1 if port else 8281}), or another address with http.host "
            "(CUSTOMEVENT_HTTP__HOST)"
        ) from None
    return sockets


async def _run(settings: Settings) -> None:
    # Listen first: a busy port is an answer the user needs at once, not after the bus connected.
    sockets = _listen(settings.http.host, settings.http.port)
    _announce(settings)
    try:
        await _serve(settings, sockets)
    finally:
        for sock in sockets:  # uvicorn closes them too; this covers a failure before it started
            sock.close()


async def _serve(settings: Settings, sockets: list[socket.socket]) -> None:
    # The daemon's own registry: /metrics shows this daemon's counts, not the process's.
    metrics = Metrics.own(mqtt=bool(settings.mqtt.url), triggers=bool(settings.triggers))
    async with Client(settings, metrics=metrics) as client, contextlib.AsyncExitStack() as stack:
        if settings.mqtt.url:
            from ._mqtt import MqttBridge

            await stack.enter_async_context(MqttBridge(settings, client))
        if settings.triggers:
            from ._triggers import Triggers

            await stack.enter_async_context(Triggers(settings, client))
        app = create_app(settings, client)
        raise_file_limit(settings.http)
        http = settings.http
        scheme = "https" if http.tls_cert_file else "http"
        for sock in sockets:
            log.info("listening on %s://%s", scheme, _address(*sock.getsockname()[:2]))
        gateway = app.state.gateway
        try:
            await _Server(server_config(app, http), gateway.stopping).serve(sockets=sockets)
        finally:
            gateway.auth.close()


def server_config(app: Any, http: HttpSettings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the daemon's app: bounded connections (``_protocol``), our
    logging, no lifespan, the drain on stop, and ``X-Forwarded-For`` believed only from
    ``http.trusted_proxies``."""
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
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local process (a
        # sidecar, another user) would pick its own address and escape the per-address bounds.
        "proxy_headers": bool(http.trusted_proxies),
        "forwarded_allow_ips": list(http.trusted_proxies) or None,
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
        # uvicorn exits this way when it cannot start (it has logged why), with a status of its
        # own (3) that the CLI does not document: any failure to start is a plain 1.
        return 0 if exc.code in (0, None) else 1
    log.info("stopped")
    return 0
