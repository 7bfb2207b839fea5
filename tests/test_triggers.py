"""Webhook triggers against real receivers (uvicorn on a free port) and the real RabbitMQ: signed
CloudEvents that the SDK parses, retries honouring Retry-After, dead letters, timeouts, a daemon
restarted mid-stream, and a dead receiver that holds up nobody else."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import importlib.util
import json
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cloudevents.core.bindings import http as ce_http
from starlette.requests import Request
from starlette.responses import Response

from adapter import Client, ConfigurationError, load_settings
from adapter._bus.amqp._queues import dead_queue, group_queue
from adapter._triggers import SIGNATURE_HEADER, Triggers, sign
from adapter.testing import free_port
from tests.support.processes import Daemon

SECRET = "a-webhook-secret-of-some-length"
RETRY = {"retry_initial": 0.2, "retry_max": 2.0}


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


def _trigger(name: str, pattern: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "pattern": pattern, "url": url, "secret": SECRET, "timeout": 2, **extra}


@pytest.fixture
def group() -> Iterator[str]:
    name = f"t-hook-{uuid.uuid4().hex[:10]}"
    yield name
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True
    )
    for queue in listing.stdout.split():
        if queue.startswith(group_queue("customevents", name)):
            subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


@contextlib.asynccontextmanager
async def running(amqp_url: str, *triggers: dict[str, Any]) -> AsyncIterator[Client]:
    settings = load_settings(amqp={"url": amqp_url}, groups=RETRY, triggers=list(triggers))
    async with Client(settings) as client, Triggers(settings, client):
        yield client


async def _until(check: Callable[[], bool], what: str, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.05)
    assert check(), what


@pytest.mark.rabbitmq
@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_a_delivery_is_a_signed_cloudevent_the_sdk_reads(
    amqp_url: str, group: str, unique_name: str, mode: str
) -> None:
    async with serving(Receiver()) as receiver:
        hook = _trigger(group, f"{unique_name}.*", receiver.url, mode=mode)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(
                f"{unique_name}.created", {"vm": "web-1"}, event_id=f"{group}-1", principal="ops"
            )
            await _until(lambda: len(receiver.received) == 1, "one delivery")
            await asyncio.sleep(0.5)
    assert len(receiver.received) == 1
    _, headers, body = receiver.received[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["x-customevent-signature"] == expected == sign(SECRET.encode(), body)
    event = receiver.events()[0]
    assert event.get_id() == f"{group}-1"
    assert event.get_type() == f"{unique_name}.created"
    assert event.get_source() == "urn:customevent:amqp"
    assert event.get_extension("eventkind") == "internal"
    assert event.get_extension("principal") == "ops"
    assert event.get_data() == {"vm": "web-1"}
    if mode == "structured":
        assert headers["content-type"].startswith("application/cloudevents+json")
    else:
        assert headers["ce-id"] == f"{group}-1"


@pytest.mark.rabbitmq
async def test_500_then_204_is_retried_then_acknowledged(
    amqp_url: str, group: str, unique_name: str
) -> None:
    receiver = Receiver(answer=lambda n: (500, {}) if n == 1 else (204, {}))
    async with serving(receiver):
        async with running(amqp_url, _trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-r")
            await _until(lambda: len(receiver.received) == 2, "the retry")
            await asyncio.sleep(1)
            assert await client.dead_letters(group) == []
    assert [e.get_id() for e in receiver.events()] == [f"{group}-r"] * 2
    assert receiver.received[1][0] - receiver.received[0][0] >= 0.15  # after the backoff


@pytest.mark.rabbitmq
async def test_429_with_retry_after_is_retried_no_sooner(
    amqp_url: str, group: str, unique_name: str
) -> None:
    receiver = Receiver(answer=lambda n: (429, {"Retry-After": "2"}) if n == 1 else (200, {}))
    async with serving(receiver):
        async with running(amqp_url, _trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-429")
            await _until(lambda: len(receiver.received) == 2, "the retry", 30)
    assert receiver.received[1][0] - receiver.received[0][0] >= 1.9


@pytest.mark.rabbitmq
async def test_400_is_a_dead_letter_at_once(amqp_url: str, group: str, unique_name: str) -> None:
    receiver = Receiver(answer=lambda n: (400, {}))
    async with serving(receiver):
        async with running(amqp_url, _trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-400")
            await _until(lambda: len(receiver.received) == 1, "the delivery")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
    assert len(receiver.received) == 1
    assert [(d.event.event_id, d.reason) for d in dead] == [
        (f"{group}-400", f"{receiver.url} answered 400")
    ]


@pytest.mark.rabbitmq
async def test_a_receiver_that_hangs_past_the_timeout_gets_it_again(
    amqp_url: str, group: str, unique_name: str
) -> None:
    receiver = Receiver(delay=0)
    receiver.answer = lambda n: (204, {})
    slow_first = Receiver()

    async def hanging(scope: Any, receive: Any, send: Any) -> None:
        if not slow_first.received:
            slow_first.received.append((time.monotonic(), {}, b""))
            await asyncio.sleep(10)
        await receiver.app(scope, receive, send)

    slow_first.app = hanging  # type: ignore[method-assign]
    async with serving(slow_first) as served:
        hook = _trigger(group, unique_name, served.url, timeout=1)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-slow")
            await _until(lambda: len(receiver.received) == 1, "the delivery after the timeout")
    assert receiver.events()[0].get_id() == f"{group}-slow"


@pytest.mark.rabbitmq
async def test_a_dead_receiver_holds_up_neither_sends_nor_other_triggers(
    amqp_url: str, group: str, unique_name: str
) -> None:
    # A black hole: accepts connections and never answers.
    hole = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    hole_url = f"http://127.0.0.1:{hole.sockets[0].getsockname()[1]}/"
    good = Receiver()
    try:
        async with serving(good):
            hooks = [
                _trigger(f"{group}-bad", unique_name, hole_url, timeout=5, max_in_flight=2),
                _trigger(group, unique_name, good.url),
            ]
            async with running(amqp_url, *hooks) as client:
                started = time.monotonic()
                for n in range(30):
                    await client.send_custom_event(unique_name, {"n": str(n)})
                sending = time.monotonic() - started
                await _until(lambda: len(good.received) == 30, "the good trigger's deliveries")
    finally:
        hole.close()
        for queue in (
            group_queue("customevents", f"{group}-bad"),
            dead_queue("customevents", f"{group}-bad"),
        ):
            await asyncio.to_thread(
                subprocess.run, ["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True
            )
    assert sending < 5  # the sends did not wait for the black hole's 5 s timeouts
    assert sorted(int(e.get_data()["n"]) for e in good.events()) == list(range(30))


@pytest.mark.rabbitmq
async def test_the_daemon_restarted_mid_stream_loses_nothing(
    amqp_url: str, group: str, unique_name: str, tmp_path: Path
) -> None:
    receiver = Receiver(delay=0.2)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    async with serving(receiver):
        trigger = {
            "name": group,
            "pattern": unique_name,
            "url": receiver.url,
            "secret_file": str(secret_file),
            "max_in_flight": 4,
        }
        env = {
            "CUSTOMEVENT_AMQP__URL": amqp_url,
            "CUSTOMEVENT_TRIGGERS": json.dumps([trigger]),
            "CUSTOMEVENT_GROUPS__RETRY_INITIAL": "0.2",
        }
        daemon = Daemon(f"triggers-{group}", **env)
        await asyncio.to_thread(daemon.start)
        async with Client(load_settings(amqp={"url": amqp_url})) as sender:
            for n in range(40):
                await sender.send_custom_event(unique_name, {"n": str(n)}, event_id=f"{group}-{n}")
            await _until(lambda: len(receiver.received) >= 5, "some deliveries")
            assert await asyncio.to_thread(daemon.stop) == 0
            delivered_before = len(receiver.received)
            await asyncio.to_thread(daemon.start)
            try:
                await _until(
                    lambda: (
                        {e.get_id() for e in receiver.events()}
                        == {f"{group}-{n}" for n in range(40)}
                    ),
                    "every event, after the restart",
                    60,
                )
            finally:
                await asyncio.to_thread(daemon.stop)
    assert delivered_before < 40  # the restart came mid-stream


@pytest.mark.rabbitmq
async def test_trigger_metrics_and_readiness(amqp_url: str, group: str, unique_name: str) -> None:
    receiver = Receiver(answer=lambda n: (204, {}) if n > 1 else (503, {}))
    async with serving(receiver):
        trigger = {**_trigger(group, unique_name, receiver.url)}
        daemon = Daemon(
            f"trigger-metrics-{group}",
            CUSTOMEVENT_AMQP__URL=amqp_url,
            CUSTOMEVENT_TRIGGERS=json.dumps([trigger]),
            CUSTOMEVENT_GROUPS__RETRY_INITIAL="0.2",
        )
        with daemon:
            async with Client(load_settings(amqp={"url": amqp_url})) as sender:
                await sender.send_custom_event(unique_name)
            await _until(lambda: len(receiver.received) == 2, "two deliveries")
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"{daemon.url}/metrics")).text
    assert f'customevent_trigger_deliveries_total{{outcome="retry",trigger="{group}"}} 1.0' in text
    assert f'customevent_trigger_deliveries_total{{outcome="ok",trigger="{group}"}} 1.0' in text
    assert f'customevent_trigger_running{{trigger="{group}"}} 1.0' in text
    assert f'customevent_trigger_in_flight{{trigger="{group}"}} 0.0' in text
    assert f'customevent_trigger_seconds_count{{trigger="{group}"}} 2.0' in text


def test_a_trigger_needs_one_secret_and_a_readable_file(tmp_path: Path) -> None:
    base = {"name": "t", "pattern": "vm.*", "url": "http://x/"}
    with pytest.raises(ConfigurationError, match="as secret or as secret_file"):
        load_settings(triggers=[base])
    with pytest.raises(ConfigurationError, match="at least 16 characters"):
        load_settings(triggers=[{**base, "secret": "short"}])
    with pytest.raises(ConfigurationError, match=r"triggers\.url must look like"):
        load_settings(triggers=[{**base, "secret": SECRET, "url": "ftp://x/"}])
    settings = load_settings(triggers=[{**base, "secret_file": str(tmp_path / "none")}])
    with pytest.raises(ConfigurationError, match="cannot read secret_file"):
        settings.triggers[0].read_secret()


async def test_the_webhook_receiver_example_checks_what_a_trigger_sends(unique_name: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "webhook_receiver", Path(__file__).parents[1] / "docs" / "examples" / "webhook_receiver.py"
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    handled: list[tuple[str, str, dict[str, str]]] = []
    port = free_port()
    server = example.make_server(port, SECRET.encode(), lambda *event: handled.append(event))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        settings = load_settings(amqp={"url": None}, triggers=[_trigger("docs", "t.#", url)])
        async with Client(settings) as client, Triggers(settings, client):
            await client.send_custom_event(unique_name, {"vm": "web-1"}, event_id="docs-1")
            await _until(lambda: len(handled) == 1, "the example to handle the event")
        async with httpx.AsyncClient() as http:
            forged = await http.post(url, content=b"{}", headers={SIGNATURE_HEADER: "sha256=00"})
            body = b'{"not": "a cloudevent"}'
            unsigned = {SIGNATURE_HEADER: sign(SECRET.encode(), body)}
            not_an_event = await http.post(url, content=body, headers=unsigned)
    finally:
        server.shutdown()
        thread.join(10)
    assert handled == [("docs-1", unique_name, {"vm": "web-1"})]
    assert forged.status_code == 401
    assert not_an_event.status_code == 400
