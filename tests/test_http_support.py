"""Helpers for the HTTP daemon tests (no tests here): settings with principals, the app over
httpx's ASGI transport, and a real daemon (uvicorn on a free port) in a thread of its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from functools import cache
from typing import Any
from urllib.parse import quote

import httpx
import uvicorn

from adapter import Client, Settings, load_settings
from adapter._daemon import _Server
from adapter._http import create_app
from adapter._secrets import hash_secret

PASSWORD = "correct horse battery staple"
TOKEN = "tok-4f1c2a9e7d"
AUTH = ("ops", PASSWORD)
LIMITED = ("limited", "limited-password")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


HEADERS = basic(*AUTH)


@cache
def _hashes() -> tuple[str, str, str]:
    return hash_secret(PASSWORD), hash_secret(TOKEN), hash_secret(LIMITED[1])


def make_settings(amqp_url: str | None = None, **overrides: Any) -> Settings:
    """Settings with the principals ``ops`` (names under ``t.``, Basic and bearer) and
    ``limited`` (names under ``t.limited.``), plus any overrides by section."""
    password_hash, token_hash, limited_hash = _hashes()
    sections: dict[str, Any] = {
        "amqp": {"url": amqp_url, "wait_grace": 2.0},
        "auth": {
            "principals": [
                {
                    "name": "ops",
                    "password_hash": password_hash,
                    "token_hash": token_hash,
                    "allow": ["t.#", "vm.*"],
                },
                {"name": "limited", "password_hash": limited_hash, "allow": ["t.limited.#"]},
            ]
        },
        "http": {"host": "127.0.0.1", "port": 0, "max_wait": 60.0},
        "log": {"level": "WARNING"},
    }
    for section, values in overrides.items():
        sections[section] = {**sections.get(section, {}), **values}
    return load_settings(**sections)


@contextlib.asynccontextmanager
async def asgi_client(client: Client, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in-process (no socket)."""
    app = create_app(settings, client)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://daemon.test") as http:
        yield http


async def until_waiting(client: Client, count: int = 1) -> None:
    """Return once ``count`` waits of the client are bound (a wait binds in a request task)."""
    async with asyncio.timeout(10):
        while client.active_waits < count:
            await asyncio.sleep(0.005)


class _QuietServer(_Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the test runner, not to a daemon inside it.
        yield


class ThreadedDaemon:
    """The daemon (client, app, uvicorn) on a free port, in its own thread and event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = ""
        self.port = 0
        self.app: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: _QuietServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="daemon", daemon=True)

    def __enter__(self) -> ThreadedDaemon:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the daemon did not start within 30 s")
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
        async with Client(self.settings) as client:
            self.app = create_app(self.settings, client)
            config = uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=0,
                ssl_certfile=self.settings.http.tls_cert_file,
                ssl_keyfile=self.settings.http.tls_key_file,
                log_config=None,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=5,
            )
            self._server = _QuietServer(config, self.app.state.gateway.stopping)
            serving = asyncio.create_task(self._server.serve())
            while not self._server.started:
                if serving.done():
                    await serving
                    raise RuntimeError("the daemon stopped while starting")
                await asyncio.sleep(0.01)
            self.port = self._server.servers[0].sockets[0].getsockname()[1]
            scheme = "https" if self.settings.http.tls_cert_file else "http"
            self.url = f"{scheme}://127.0.0.1:{self.port}"
            self._ready.set()
            await serving


@contextlib.contextmanager
def bound_wait(
    base_url: str, name: str, *, timeout: str = "20s", headers: dict[str, str] | None = None
) -> Iterator[Any]:
    """A stream-mode wait at a live daemon, bound when this is entered; call the yielded
    function for its outcome (``{"status": 200, "event": ...}`` or ``{"status": 204}``)."""
    import json

    with (
        httpx.Client(base_url=base_url, headers=headers or HEADERS, timeout=60) as http,
        http.stream(
            "GET", f"/api/v1/events/{name}/wait", params={"timeout": timeout, "stream": "true"}
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["x-customevent-wait"] == "bound"
        yield lambda: json.loads(response.read())


def url_with_credentials(
    daemon: ThreadedDaemon, user: str = "ops", password: str = PASSWORD
) -> str:
    """The daemon's URL with Basic credentials in it, as ``Client`` and ``--url`` take them."""
    scheme, _, address = daemon.url.partition("://")
    return f"{scheme}://{user}:{quote(password, safe='')}@{address}"


def daemon_settings(bus_kind: str, amqp_url: str | None, **overrides: Any) -> Settings:
    """``make_settings`` on the bus a ``bus_kind`` test runs on."""
    return make_settings(amqp_url if bus_kind == "rabbitmq" else None, **overrides)
