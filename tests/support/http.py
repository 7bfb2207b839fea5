"""Helpers for the HTTP daemon tests (no tests here): settings with principals, the app over
httpx's ASGI transport, and a real daemon (``adapter.testing.BridgeDaemon``: uvicorn on a free
port) in a thread of its own."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Iterator
from functools import cache
from typing import Any
from urllib.parse import quote

import httpx

from adapter import Client, Settings, load_settings
from adapter._http import create_app
from adapter._secrets import hash_secret, hash_token
from adapter.testing import BridgeDaemon

PASSWORD = "correct horse battery staple"
TOKEN = "tok-4f1c2a9e7d0b8c6e5a4f3d2c1b0a9e8d7c6b5a4f"
AUTH = ("ops", PASSWORD)
LIMITED = ("limited", "limited-password")


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


HEADERS = basic(*AUTH)


# scrypt's lowest useful cost for the tests' principals: they check who may do what, over
# thousands of requests a run, and at the default cost (2**14) each Basic check spends ~70 ms of
# CPU. The check still runs in the worker pool (any scrypt hash does); the default cost is the
# CLI's and the decoy's.
TEST_LOG2_N = 8


@cache
def _hashes() -> tuple[str, str, str]:
    return (
        hash_secret(PASSWORD, log2_n=TEST_LOG2_N),
        hash_token(TOKEN),
        hash_secret(LIMITED[1], log2_n=TEST_LOG2_N),
    )


def make_settings(amqp_url: str | None = None, **overrides: Any) -> Settings:
    """Settings with the principals ``ops`` (names under ``t.``, internal ones too; Basic and
    bearer) and ``limited`` (external names under ``t.limited.``), plus any overrides by
    section."""
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
                    "read_internal": ["t.#"],
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


# The daemon in a thread of the test process: the one adapter.testing offers users.
ThreadedDaemon = BridgeDaemon


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


def url_with_credentials(daemon: BridgeDaemon, user: str = "ops", password: str = PASSWORD) -> str:
    """The daemon's URL with Basic credentials in it, as ``Client`` and ``--url`` take them."""
    scheme, _, address = daemon.url.partition("://")
    return f"{scheme}://{user}:{quote(password, safe='')}@{address}"


def daemon_settings(bus_kind: str, amqp_url: str | None, **overrides: Any) -> Settings:
    """``make_settings`` on the bus a ``bus_kind`` test runs on."""
    return make_settings(amqp_url if bus_kind == "rabbitmq" else None, **overrides)
