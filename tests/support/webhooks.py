"""What the webhook tests share: a trigger's settings, the triggers running against the real
RabbitMQ, the docs' receiver example on a free port, and the cleanup of a trigger's queues."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import uvicorn
from cloudevents.core.bindings import http as ce_http
from starlette.requests import Request
from starlette.responses import Response

from adapter import Client, load_settings
from adapter._bus.amqp._queues import group_queue
from adapter._metrics import Metrics
from adapter._triggers import Triggers
from adapter.testing import free_port

KEY = b"a-webhook-secret-of-some-length"
SECRET = "whsec_" + base64.b64encode(KEY).decode()
RETRY = {"retry_initial": 0.2, "retry_max": 2.0}
EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "webhook_receiver.py"


def trigger(name: str, pattern: str, url: str, **extra: Any) -> dict[str, Any]:
    """A trigger's settings, signed with ``SECRET``, a 2 s timeout unless ``extra`` says."""
    return {"name": name, "pattern": pattern, "url": url, "secret": SECRET, "timeout": 2, **extra}


@contextlib.asynccontextmanager
async def running(
    amqp_url: str | None, *triggers: dict[str, Any], clock: Callable[[], float] = time.time
) -> AsyncIterator[Client]:
    """A client on RabbitMQ (or the in-process bus for ``None``) with the triggers running,
    counting on metrics of its own."""
    settings = load_settings(amqp={"url": amqp_url}, groups=RETRY, triggers=list(triggers))
    client = Client(settings, metrics=Metrics.own())
    async with client, Triggers(settings, client, clock=clock):
        yield client


async def until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


def delete_group_queues(group: str) -> None:
    """Deletes the queues of a group (and of the groups named after it) from RabbitMQ."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True
    )
    for queue in listing.stdout.split():
        if queue.startswith(group_queue("customevents", group)):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


def receiver_example() -> ModuleType:
    """docs/examples/webhook_receiver.py, imported."""
    spec = importlib.util.spec_from_file_location("webhook_receiver", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@contextlib.contextmanager
def serving_example(handled: list[tuple[str, str, dict[str, str]]]) -> Iterator[str]:
    """The receiver example on a free port, recording what it handles; yields its URL."""
    port = free_port()
    server = receiver_example().make_server(port, SECRET, lambda *event: handled.append(event))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.shutdown()
        thread.join(10)


@dataclass
class Receiver:
    """An HTTP service that records what it is sent and answers as ``answer`` says."""

    answer: Callable[[int], tuple[int, dict[str, str]]] = lambda n: (204, {})
    delay: float = 0.0
    received: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        body = await request.body()
        self.received.append((time.monotonic(), dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status, headers = self.answer(len(self.received))
        await Response(status_code=status, headers=headers)(scope, receive, send)

    def events(self) -> list[Any]:
        return [ce_http.from_http_event(ce_http.HTTPMessage(h, b)) for _, h, b in self.received]


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[Receiver]:
    port = free_port()
    config = uvicorn.Config(
        receiver.app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="off",
        interface="asgi3",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    receiver.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield receiver
    finally:
        server.should_exit = True
        await task
