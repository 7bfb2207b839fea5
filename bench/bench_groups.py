"""Groups and webhook triggers, each beside its reference, in one run.

    .venv/bin/python bench/run.py groups [--quick] [--rounds N]

- **group consume**: N events waiting in a group (a de-duplicating one, the default) handed to a
  no-op handler that acknowledges each, against raw aio-pika consuming the same N messages from a
  quorum queue with manual acks and the same prefetch. Goal >= 0.9x.
- **de-duplication**: the same group consume with de-duplication (one active consumer that
  remembers ids) against without it (``dedup_window = 0``). Goal >= 0.8x.
- **webhooks**: N events waiting in its group delivered by a trigger to a local no-op receiver,
  timed once the trigger has joined the group, against the same N events POSTed by a plain httpx
  loop (one at a time, as a script would). Goal >= 1.2x (the trigger has deliveries under way at
  once).
- **the webhook client**: the same plain loop with aiohttp (the triggers' client) against httpx
  (theirs until 2026-12): what the choice of client is worth, one POST at a time.

Needs RabbitMQ (``--amqp-url``, default ``$CUSTOMEVENT_AMQP__URL`` or 127.0.0.1:5672).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import aiohttp
import httpx
from standardwebhooks import Webhook

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from _common import Figure, Stopwatch, amqp_url, median, rate, run_id  # noqa: E402

from adapter import Client, load_settings  # noqa: E402
from adapter._bus.amqp._queues import dead_queue, group_queue  # noqa: E402
from adapter._cloudevents import to_http  # noqa: E402
from adapter._event import Event  # noqa: E402
from adapter._triggers import Triggers, sign, webhook_id  # noqa: E402
from adapter.testing import free_port  # noqa: E402

PREFETCH = 64
SECRET = "whsec_YmVuY2gtd2ViaG9vay1zZWNyZXQtMDEyMzQ1Njc4OQ=="


def log(message: str) -> None:
    print(f"groups: {message}", file=sys.stderr, flush=True)


async def _publish(url: str, name: str, count: int) -> None:
    async with Client(load_settings(amqp={"url": url})) as client:
        pending = [client.send_custom_event(name, {"n": str(i)}) for i in range(count)]
        for start in range(0, count, 500):
            await asyncio.gather(*pending[start : start + 500])


async def group_consume(url: str, count: int, *, dedup: bool) -> float:
    """Seconds for a group's consumer to ack ``count`` events waiting in the group."""
    group = f"bench-{run_id()}"
    name = f"bench.groups.{group}"
    window = 600.0 if dedup else 0.0
    groups = {"prefetch": PREFETCH, "dedup_window": window}
    settings = load_settings(amqp={"url": url}, groups=groups)
    async with Client(settings) as client:
        async with client.subscribe(name, group=group):
            pass
        await _publish(url, name, count)
        done = 0
        async with client.subscribe(name, group=group) as deliveries:
            with Stopwatch() as watch:
                async for delivery in deliveries:
                    await delivery.ack()
                    done += 1
                    if done == count:
                        break
    await _delete(url, group_queue("customevents", group), dead_queue("customevents", group))
    return watch.seconds


async def raw_consume(url: str, count: int) -> float:
    """Seconds for raw aio-pika to consume ``count`` messages from a quorum queue, acking each:
    the same events a group gets (sent by the bridge, with their headers), through a quorum queue
    bound to their name."""
    queue_name = f"bench.groups.raw.{run_id()}"
    name = f"bench.groups.{queue_name}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        raw = await channel.declare_queue(
            queue_name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await raw.bind("customevents", f"internal.{name}")
        await _publish(url, name, count)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=PREFETCH)
        queue = await consumer.get_queue(queue_name)
        done = 0
        finished = asyncio.Event()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal done
            await message.ack()
            done += 1
            if done == count:
                finished.set()

        with Stopwatch() as watch:
            await queue.consume(on_message)
            await finished.wait()
        await channel.queue_delete(queue_name)
    return watch.seconds


async def _delete(url: str, *queues: str) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)


RECEIVER = """
import sys, uvicorn
seen = 0
async def app(scope, receive, send):
    global seen
    if scope["type"] != "http":
        return
    message = await receive()
    while message.get("more_body"):
        message = await receive()
    if scope["method"] == "GET":
        body = str(seen).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    seen += 1
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
"""


@contextlib.asynccontextmanager
async def receiver(
    expected: int,
) -> AsyncIterator[tuple[str, Callable[[], Awaitable[None]], Callable[[], Awaitable[int]]]]:
    """A no-op HTTP receiver in a process of its own (as a real one would be), answering 204;
    yields its URL, a coroutine function that returns once it has had ``expected`` POSTs, and
    one that returns how many it has had."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", RECEIVER, str(port))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                await http.get(url)
                break
            await asyncio.sleep(0.05)

        async def seen() -> int:
            return int((await http.get(url)).text)

        async def received() -> None:
            while await seen() < expected:
                await asyncio.sleep(0.02)

        try:
            yield f"{url}/hook", received, seen
        finally:
            process.terminate()
            await process.wait()


async def webhook_deliveries(url: str, count: int) -> float:
    """Deliveries a second by a trigger of ``count`` events waiting in its group, in its steady
    state: from the moment it has joined the group (the deliveries it made while joining are not
    counted) to the last one received."""
    group = f"bench-hook-{run_id()}"
    name = f"bench.hooks.{group}"
    async with receiver(count) as (hook, received, seen):
        trigger = {"name": group, "pattern": name, "url": hook, "secret": SECRET}
        settings = load_settings(amqp={"url": url}, triggers=[trigger])
        async with Client(settings) as client:
            async with client.subscribe(name, group=group):
                pass
            await _publish(url, name, count)
            async with Triggers(settings, client):
                with Stopwatch() as watch:
                    before = await seen()
                    await received()
    await _delete(url, group_queue("customevents", group), dead_queue("customevents", group))
    return rate(count - before, watch.seconds)


def _events(count: int) -> list[Event]:
    return [
        Event(name="bench.plain", kind="internal", properties={"n": str(i)}) for i in range(count)
    ]


def _signed(event: Event, webhooks: list[Webhook]) -> tuple[dict[str, str], bytes]:
    """The headers and body of ``event`` as a trigger sends it by default (structured, signed)."""
    headers, body = to_http(event, "structured")
    headers.update(sign(webhooks, webhook_id(event.event_id, headers), int(time.time()), body))
    return headers, body


async def plain_posts(count: int) -> float:
    """Seconds for a plain httpx loop to sign and POST ``count`` CloudEvents, one at a time."""
    webhooks = [Webhook(SECRET)]
    events = _events(count)
    async with receiver(count) as (hook, received, _), httpx.AsyncClient() as http:
        with Stopwatch() as watch:
            for event in events:
                headers, body = _signed(event, webhooks)
                response = await http.post(hook, content=body, headers=headers)
                response.raise_for_status()
            await received()
    return watch.seconds


async def client_posts(count: int, client: str) -> float:
    """Seconds for a plain loop to POST ``count`` signed CloudEvents (made beforehand), one at a
    time, with ``client`` (``httpx`` or ``aiohttp``): the HTTP client alone."""
    webhooks = [Webhook(SECRET)]
    requests = [_signed(event, webhooks) for event in _events(count)]
    async with receiver(count) as (hook, received, _):
        if client == "httpx":
            async with httpx.AsyncClient() as http:
                with Stopwatch() as watch:
                    for headers, body in requests:
                        (await http.post(hook, content=body, headers=headers)).raise_for_status()
                    await received()
        else:
            async with aiohttp.ClientSession() as session:
                with Stopwatch() as watch:
                    for headers, body in requests:
                        async with session.post(hook, data=body, headers=headers) as response:
                            response.raise_for_status()
                    await received()
    return watch.seconds


async def main(args: argparse.Namespace) -> list[Figure]:
    url = amqp_url(args)
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else max(1, getattr(args, "rounds", 3))
    count = 2000 if quick else 10_000
    hooks = 500 if quick else 2000
    group_rates: list[float] = []
    raw_rates: list[float] = []
    plain_group: list[float] = []
    hook_rates: list[float] = []
    post_rates: list[float] = []
    client_rates: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
    for r in range(rounds):
        log(f"round {r + 1}/{rounds}: {count:,} events through groups and raw aio-pika")
        # Alternate the order so that neither side always runs on a warmer broker.
        if r % 2 == 0:
            raw_rates.append(rate(count, await raw_consume(url, count)))
            group_rates.append(rate(count, await group_consume(url, count, dedup=True)))
            plain_group.append(rate(count, await group_consume(url, count, dedup=False)))
        else:
            plain_group.append(rate(count, await group_consume(url, count, dedup=False)))
            group_rates.append(rate(count, await group_consume(url, count, dedup=True)))
            raw_rates.append(rate(count, await raw_consume(url, count)))
        log(f"round {r + 1}/{rounds}: {hooks:,} webhook deliveries and plain posts")
        hook_rates.append(await webhook_deliveries(url, hooks))
        post_rates.append(rate(hooks, await plain_posts(hooks)))
        for client in ("httpx", "aiohttp") if r % 2 == 0 else ("aiohttp", "httpx"):
            client_rates[client].append(rate(hooks, await client_posts(hooks, client)))
    return [
        Figure(
            "group consume to a no-op handler (dedup on)",
            median(group_rates),
            "events/s",
            reference=median(raw_rates),
            reference_name="raw aio-pika, one quorum queue, manual acks",
            at_least=0.9,
            samples=tuple(group_rates),
        ),
        Figure(
            "group consume with de-duplication",
            median(group_rates),
            "events/s",
            reference=median(plain_group),
            reference_name="the same group without de-duplication",
            at_least=0.8,
            samples=tuple(group_rates),
        ),
        Figure(
            "webhook deliveries to a no-op receiver",
            median(hook_rates),
            "events/s",
            reference=median(post_rates),
            reference_name="a plain httpx loop posting the same CloudEvents",
            at_least=1.2,
            samples=tuple(hook_rates),
        ),
        Figure(
            "a plain aiohttp loop (the triggers' client since 2026-12)",
            median(client_rates["aiohttp"]),
            "posts/s",
            reference=median(client_rates["httpx"]),
            reference_name="the same loop with httpx (their client before)",
            samples=tuple(client_rates["aiohttp"]),
            subject="aiohttp",
            better="higher",
        ),
    ]
