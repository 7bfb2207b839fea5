"""Latency: how long an event takes from its send to the waiter that receives it, in the library,
through the daemon's HTTP edge and from an MQTT device, each beside raw aio-pika in the same run;
and how long a confirmed send takes while many others run at once.

``python bench/run.py latency`` (about a minute; ``--quick`` about 10 s; needs RabbitMQ and the
``mosquitto`` binary). Every path is timed one event at a time, from the moment the send starts
to the moment the waiter has the event, with the waiter bound before the send, and whether or
not the sender's confirm (or answer) has come back by then, as a consumer gets a message before
its publisher's confirm:

- ``raw``: aio-pika publishes the library's message (JSON body, its headers, persistent) on a
  confirm channel and awaits the confirm; a consumer of an exclusive queue bound to the name
  receives it. The reference of every figure;
- ``library``: ``client.send_custom_event`` to a name that ``client.expect`` bound;
- ``daemon``: ``POST /vco/api/customevent/{name}`` (the vRO REST path) answered by an HTTP
  long-poll (``GET /api/v1/events/{name}/wait?stream=true``, whose 200 says it is bound) on the
  same daemon; both requests are written by hand on keep-alive connections, as in
  ``bench_http.py``, so the figure is the daemon's and not an HTTP client's;
- ``mqtt``: a paho device publishes QoS 1 to a private Mosquitto, the daemon's MQTT ingress
  forwards it, a library waiter receives it.

The paths alternate within each round (A B C D, then D C B A); percentiles pool every round's
samples, and ``samples`` keeps each round's figure. Under load, ``SENDERS`` senders send at once,
one confirmed send after another each, to a name bound to a counting queue; the figure is the
latency of each send, the library's next to raw aio-pika on one confirm channel at the same
concurrency. Nothing may be lost: a wait that ends without its event, or a counting queue short
of what was confirmed, fails the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import paho.mqtt.client as mqtt
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (HERE, ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from _common import Figure, amqp_url, log, run_id  # noqa: E402

import adapter  # noqa: E402
from adapter._mqtt._testing import PrivateMosquitto  # noqa: E402
from adapter._settings import load_settings  # noqa: E402
from tests.support.processes import Daemon  # noqa: E402

SENDERS = 32  # concurrent senders of the "under load" figures
EVENT_SECONDS = 10.0  # how long one timed event may take before the run fails
RAW = "raw aio-pika confirmed publish -> consumer"
RAW_LOADED = f"raw aio-pika confirmed publish, {SENDERS} at once on one channel"

Timed = Callable[[int], Awaitable[float]]


class Lost(RuntimeError):
    """An event sent and confirmed never reached its waiter: the benchmark fails."""


def _client(url: str, exchange: str) -> adapter.Client:
    return adapter.Client(load_settings(amqp={"url": url, "exchange": exchange}))


def _message(name: str, kind: str) -> aio_pika.Message:
    """The message the library publishes, as a careful aio-pika user would write it."""
    return aio_pika.Message(
        body=b'{"a":"1"}',
        content_type="application/json",
        message_id=str(uuid.uuid4()),
        app_id="customevent-bridge",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={"x-event-name": name, "x-event-kind": kind, "x-event-source": "amqp"},
    )


def percentile(samples: list[float], p: int) -> float:
    """The p-th percentile of ``samples`` (seconds), in milliseconds."""
    if len(samples) < 2:
        return samples[0] * 1000 if samples else float("nan")
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1] * 1000


# -- the paths, one event at a time ----------------------------------------------------------


class RawPath:
    """aio-pika alone: a confirm channel publishing, a consumer on an exclusive queue."""

    def __init__(self, url: str, exchange: str, word: str) -> None:
        self.url, self.exchange_name, self.word = url, exchange, word
        self._arrived: asyncio.Queue[tuple[str | None, float]] = asyncio.Queue()

    async def __aenter__(self) -> RawPath:
        self.connection = await aio_pika.connect(self.url)
        channel = await self.connection.channel(publisher_confirms=True)
        self.exchange: AbstractExchange = await channel.get_exchange(self.exchange_name)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.exchange, f"internal.{self.word}.raw.*")

        async def arrived(message: AbstractIncomingMessage) -> None:
            self._arrived.put_nowait((message.message_id, time.perf_counter()))

        await queue.consume(arrived, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def __call__(self, i: int) -> float:
        name = f"{self.word}.raw.{i}"
        message = _message(name, "internal")
        started = time.perf_counter()
        await self.exchange.publish(message, f"internal.{name}", mandatory=True)
        try:
            got, at = await asyncio.wait_for(self._arrived.get(), EVENT_SECONDS)
        except TimeoutError:
            raise Lost(f"raw: {name} was confirmed and never consumed") from None
        if got != message.message_id:
            raise Lost(f"raw: {name}: the consumer received {got}, not {message.message_id}")
        return at - started


class LibraryPath:
    """``client.send_custom_event`` to a name that ``client.expect`` bound first."""

    def __init__(self, client: adapter.Client, word: str) -> None:
        self.client, self.word = client, word

    async def __call__(self, i: int) -> float:
        name = f"{self.word}.lib.{i}"
        async with self.client.expect(
            "internal", name, until=timedelta(seconds=EVENT_SECONDS)
        ) as waiter:
            started = time.perf_counter()
            # The waiter is timed as the raw path's consumer is: when it has the event, whether
            # or not the sender's confirm has come back yet (awaiting the send first added the
            # confirm's round trip whenever it came after the delivery).
            sending = asyncio.ensure_future(self.client.send_custom_event(name, {"a": "1"}))
            event = await waiter
            took = time.perf_counter() - started
            await sending
        if event is None:
            raise Lost(f"library: {name} was confirmed and its waiter reached its deadline")
        return took


class _Http:
    """One keep-alive HTTP/1.1 connection, requests and responses written and read by hand. The
    daemon closes a connection idle for a few seconds (while the other paths run): a request on
    a closed one opens another first, outside the timed span."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.writer: asyncio.StreamWriter | None = None

    async def ready(self) -> None:
        if self.writer is None or self.reader.at_eof() or self.writer.is_closing():
            self.close()
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def request(self, method: str, target: str) -> None:
        assert self.writer is not None
        self.writer.write(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n".encode()
        )

    async def head(self) -> tuple[int, dict[str, str]]:
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        return status, headers

    async def body(self, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return await self.reader.readexactly(int(headers["content-length"]))
        chunks = []
        while True:  # chunked
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])


class DaemonPath:
    """vRO REST send -> the daemon -> RabbitMQ -> the daemon -> an HTTP long-poll answered."""

    def __init__(self, port: int, word: str) -> None:
        self.sender, self.waiter = _Http(port), _Http(port)
        self.word = word

    async def __aenter__(self) -> DaemonPath:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.sender.close()
        self.waiter.close()

    async def __call__(self, i: int) -> float:
        name = f"{self.word}.http.{i}"
        await self.waiter.ready()
        await self.sender.ready()
        self.waiter.request("GET", f"/api/v1/events/{name}/wait?timeout=10s&stream=true")
        status, headers = await self.waiter.head()
        if status != 200 or headers.get("x-customevent-wait") != "bound":
            raise RuntimeError(f"daemon: the wait on {name} answered {status} {headers}")
        started = time.perf_counter()
        self.sender.request("POST", f"/vco/api/customevent/{name}?properties=a%3D1")
        # As in the library path: the wait's answer is timed on its own, whenever the send's
        # answer comes.
        sending = asyncio.ensure_future(self._sent(name))
        outcome = await asyncio.wait_for(self.waiter.body(headers), EVENT_SECONDS + 5)
        took = time.perf_counter() - started
        await sending
        if b'"status":200' not in outcome.replace(b" ", b"") or name.encode() not in outcome:
            raise Lost(f"daemon: {name} was sent (200) and its HTTP wait ended with {outcome!r}")
        return took

    async def _sent(self, name: str) -> None:
        sent, sent_headers = await self.sender.head()
        await self.sender.body(sent_headers)
        if sent != 200:
            raise RuntimeError(f"daemon: the REST send of {name} answered {sent}")


class Device:
    """An MQTT device (paho, its own network thread) publishing QoS 1."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-latency-{uuid.uuid4().hex[:8]}"
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self._lock = threading.Lock()

    def publish(self, topic: str) -> None:
        with self._lock:
            self.client.publish(topic, "a=1", qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class MqttPath:
    """A device's QoS 1 publish -> Mosquitto -> the daemon's MQTT ingress -> a library waiter."""

    def __init__(self, client: adapter.Client, device: Device, word: str) -> None:
        self.client, self.device, self.word = client, device, word

    async def __call__(self, i: int) -> float:
        name = f"{self.word}.mqtt.{i}"
        topic = "customevents/external/" + name.replace(".", "/")
        async with self.client.expect(
            "external", name, until=timedelta(seconds=EVENT_SECONDS)
        ) as waiter:
            started = time.perf_counter()
            self.device.publish(topic)
            event = await waiter
            took = time.perf_counter() - started
        if event is None:
            raise Lost(f"mqtt: {name} was published at QoS 1 and never reached its waiter")
        return took

    async def ready(self) -> None:
        """Until the daemon's MQTT side forwards (its subscription is made after start-up)."""
        for attempt in range(60):
            name = f"{self.word}.ready.{attempt}"
            async with self.client.expect("external", name, until=timedelta(seconds=1)) as w:
                self.device.publish("customevents/external/" + name.replace(".", "/"))
                if await w is not None:
                    return
        raise RuntimeError("the daemon's MQTT ingress forwarded nothing within a minute")


# -- under load --------------------------------------------------------------------------------


async def loaded(count: int, send: Callable[[], Awaitable[object]]) -> list[float]:
    """The latency of each of ``count`` sends, ``SENDERS`` running at once."""
    samples: list[float] = []
    left = iter(range(count))

    async def sender() -> None:
        for _ in left:
            started = time.perf_counter()
            await send()
            samples.append(time.perf_counter() - started)

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return samples


@contextlib.asynccontextmanager
async def counted(url: str, exchange: str, key: str) -> Any:
    """A queue bound to ``key``, so that what was confirmed can be counted at the end."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{key}.count", exclusive=True, auto_delete=True)
        await queue.bind(exchange, key)
        yield queue
    finally:
        await connection.close()


async def _drained(queue: Any, expected: int, what: str) -> None:
    for _ in range(100):
        declared = await queue.declare()
        if declared.message_count >= expected:
            await queue.purge()
            return
        await asyncio.sleep(0.05)
    raise Lost(f"{what}: {expected} sends confirmed, {declared.message_count} in the queue")


# -- the run -----------------------------------------------------------------------------------


def _round_robin(rounds: int, order: list[str]) -> Iterator[tuple[int, str]]:
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            yield r, name


async def _measure(
    paths: dict[str, Timed], rounds: int, count: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Every sample of each path, and each round's p50 of each path."""
    pooled: dict[str, list[float]] = {name: [] for name in paths}
    per_round: dict[str, list[float]] = {name: [] for name in paths}
    for r, name in _round_robin(rounds, list(paths)):
        timed = paths[name]
        await timed(-1 - r)  # warm-up: the first of a round pays for what the other path did
        samples = [await timed(r * count + i) for i in range(count)]
        pooled[name] += samples
        per_round[name].append(percentile(samples, 50))
        log(f"round {r + 1}/{rounds} {name}: p50 {per_round[name][-1]:.2f} ms")
    return pooled, per_round


def _figures(
    label: str,
    pooled: list[float],
    per_round: list[float],
    reference: list[float],
    reference_name: str,
    targets: dict[int, float],
    note: str = "",
) -> list[Figure]:
    return [
        Figure(
            f"{label} p{p}",
            percentile(pooled, p),
            "ms",
            reference=percentile(reference, p),
            reference_name=reference_name,
            at_most=targets.get(p),
            samples=tuple(per_round) if p == 50 else (),
            note=note if p == 50 else "",
        )
        for p in (50, 90, 99)
    ]


async def main(args: argparse.Namespace) -> list[Figure]:
    url = amqp_url(args)
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else max(1, getattr(args, "rounds", 3))
    count = 100 if quick else 300
    n_loaded = 1000 if quick else 5000
    rid = run_id()
    exchange, word = f"bench.customevents.{rid}", f"bench.latency.{rid}"
    setup = await aio_pika.connect(url)
    channel = await setup.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    try:
        with PrivateMosquitto() as mosquitto:
            daemon = Daemon(
                f"bench-latency-{rid}",
                CUSTOMEVENT_AMQP__URL=url,
                CUSTOMEVENT_AMQP__EXCHANGE=exchange,
                CUSTOMEVENT_MQTT__URL=mosquitto.url,
                CUSTOMEVENT_MQTT__CLIENT_ID=f"bench-latency-{rid}",
                CUSTOMEVENT_LOG__LEVEL="WARNING",
            )
            await asyncio.to_thread(daemon.start)
            device = Device(mosquitto.port)
            try:
                async with (
                    _client(url, exchange) as client,
                    RawPath(url, exchange, word) as raw,
                    DaemonPath(daemon.port, word) as http,
                ):
                    mqtt_path = MqttPath(client, device, word)
                    await mqtt_path.ready()
                    log(f"{count} events per path and round, {rounds} rounds, one at a time")
                    paths: dict[str, Timed] = {
                        "raw": raw,
                        "library": LibraryPath(client, word),
                        "daemon": http,
                        "mqtt": mqtt_path,
                    }
                    pooled, per_round = await _measure(paths, rounds, count)
                    loaded_samples = await _under_load(url, exchange, client, raw, rounds, n_loaded)
            finally:
                device.close()
                await asyncio.to_thread(daemon.stop)
    finally:
        await channel.exchange_delete(exchange)
        await setup.close()

    sent = sum(len(s) for s in pooled.values())
    library_loaded, raw_loaded = loaded_samples
    return [
        *_figures(
            "send -> waiter, library",
            pooled["library"],
            per_round["library"],
            pooled["raw"],
            RAW,
            {50: 1.2, 99: 1.5},
            note=f"{sent:,} events timed one at a time, every one received",
        ),
        *_figures(
            "vRO REST send -> HTTP long-poll, daemon",
            pooled["daemon"],
            per_round["daemon"],
            pooled["raw"],
            RAW,
            {},
        ),
        *_figures(
            "MQTT device QoS 1 publish -> waiter, daemon",
            pooled["mqtt"],
            per_round["mqtt"],
            pooled["raw"],
            RAW,
            {},
        ),
        *[
            Figure(
                f"confirmed send under load ({SENDERS} senders) p{p}",
                percentile(library_loaded, p),
                "ms",
                reference=percentile(raw_loaded, p),
                reference_name=RAW_LOADED,
                note=(
                    f"{len(library_loaded):,} library sends and as many raw ones, "
                    "every one confirmed and counted in a bound queue"
                )
                if p == 50
                else "",
            )
            for p in (50, 99)
        ],
    ]


async def _under_load(
    url: str, exchange: str, client: adapter.Client, raw: RawPath, rounds: int, count: int
) -> tuple[list[float], list[float]]:
    name = f"{raw.word}.loaded"
    key = f"internal.{name}"
    library: list[float] = []
    reference: list[float] = []

    async def library_round() -> list[float]:
        return await loaded(count, lambda: client.send_custom_event(name, {"a": "1"}))

    async def raw_round() -> list[float]:
        return await loaded(
            count, lambda: raw.exchange.publish(_message(name, "internal"), key, mandatory=True)
        )

    variants = {"library": (library_round, library), "raw": (raw_round, reference)}
    async with counted(url, exchange, key) as queue:
        for r, variant in _round_robin(rounds, list(variants)):
            run, into = variants[variant]
            samples = await run()
            await _drained(queue, count, f"under load, {variant}")
            into += samples
            log(
                f"round {r + 1}/{rounds} {variant} under load: "
                f"p50 {percentile(samples, 50):.2f} ms, p99 {percentile(samples, 99):.2f} ms"
            )
    return library, reference
