"""What traces cost a send, each variant measured in the same run, alternating rounds:

- **before**: the send as it was before traces (``Client.send_event``'s body then: the checks
  and the bus's publish), the reference;
- **off**: ``Client.send_event`` with no tracer provider installed, the default: one check of the
  global provider, and a look at the caller's current context for a trace to pass through;
- **on**: the same with the SDK's ``TracerProvider`` and a batch processor whose exporter drops
  the spans (what a configured OTLP exporter costs the send, the network aside).

On the in-process bus (the send path's own CPU, nothing else) one send at a time, and on the real
RabbitMQ 100 in flight (confirmed). ``python bench/run.py traces`` runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import aio_pika
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Figure, amqp_url, in_flight, median, rate, run_id  # noqa: E402

import adapter  # noqa: E402
from adapter._client import check_retain  # noqa: E402
from adapter._settings import load_settings  # noqa: E402


def log(message: str) -> None:
    print(f"   {message}", flush=True)


class _Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider(provider: TracerProvider | None) -> None:
    """Install ``provider`` (None: none) as the global one; the API sets it once per process,
    so the benchmark undoes that by hand between variants."""
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE._done = False
    if provider is not None:
        trace.set_tracer_provider(provider)


async def _send_before(client: adapter.Client, event: adapter.Event) -> adapter.SendResult:
    """``Client.send_event`` as it was before traces, line for line."""
    client._check_open()
    retain = check_retain(None, client.settings.amqp.max_retain)
    routed = await (
        client.bus.publish(event) if retain is None else client.bus.publish(event, retain=retain)
    )
    return adapter.SendResult(event_id=event.event_id, routed=routed)


def _send(client: adapter.Client, variant: str, name: str) -> Callable[[int], Awaitable[object]]:
    if variant == "before":
        return lambda i: _send_before(client, client.prepare_event(name, {"k": "v"}))
    return lambda i: client.send_event(client.prepare_event(name, {"k": "v"}))


async def _memory_us(variant: str, count: int) -> float:
    """Microseconds per send on the in-process bus, one at a time."""
    async with adapter.Client(load_settings(amqp={"url": None})) as client:
        send = _send(client, variant, "bench.traces.nobody")
        for i in range(200):  # warm-up
            await send(i)
        started = time.perf_counter()
        for i in range(count):
            await send(i)
        return (time.perf_counter() - started) / count * 1e6


async def _rabbitmq_rate(url: str, exchange: str, variant: str, count: int) -> float:
    settings = load_settings(amqp={"url": url, "exchange": exchange})
    async with adapter.Client(settings) as client:
        send = _send(client, variant, "bench.traces.nobody")
        await send(0)
        return rate(count, await in_flight(count, 100, send))


async def main(args: argparse.Namespace) -> list[Figure]:
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else max(1, getattr(args, "rounds", 3))
    n_memory = 5_000 if quick else 20_000
    n_rabbitmq = 1_000 if quick else 4_000
    url = amqp_url(args)
    exchange = f"bench.customevents.{run_id()}"
    on = TracerProvider()
    on.add_span_processor(BatchSpanProcessor(_Dropped(), max_queue_size=65536))
    providers = {"before": None, "off": None, "on": on}
    memory: dict[str, list[float]] = {v: [] for v in providers}
    rabbitmq: dict[str, list[float]] = {v: [] for v in providers}
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    saved = trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done
    try:
        for r in range(rounds):
            order = list(providers) if r % 2 == 0 else list(reversed(providers))
            for variant in order:
                _provider(providers[variant])
                memory[variant].append(await _memory_us(variant, n_memory))
                rabbitmq[variant].append(await _rabbitmq_rate(url, exchange, variant, n_rabbitmq))
                log(
                    f"round {r + 1}/{rounds} {variant}: {memory[variant][-1]:.1f} us a send "
                    f"in process, {rabbitmq[variant][-1]:,.0f} sends/s on RabbitMQ"
                )
    finally:
        trace._TRACER_PROVIDER, trace._TRACER_PROVIDER_SET_ONCE._done = saved
        on.shutdown()
        await channel.exchange_delete(exchange)
        await connection.close()
    return [
        Figure(
            "in-process send, tracing off",
            median(memory["off"]),
            "us",
            reference=median(memory["before"]),
            reference_name="before traces",
            at_most=1.10,
            samples=tuple(memory["off"]),
        ),
        Figure(
            "in-process send, tracing on (SDK, spans dropped)",
            median(memory["on"]),
            "us",
            reference=median(memory["before"]),
            reference_name="before traces",
            samples=tuple(memory["on"]),
            note="the cost of recording a span a send",
        ),
        Figure(
            "RabbitMQ confirmed sends (100 in flight), tracing off",
            median(rabbitmq["off"]),
            "msg/s",
            reference=median(rabbitmq["before"]),
            reference_name="before traces",
            at_least=0.90,
            samples=tuple(rabbitmq["off"]),
        ),
        Figure(
            "RabbitMQ confirmed sends (100 in flight), tracing on",
            median(rabbitmq["on"]),
            "msg/s",
            reference=median(rabbitmq["before"]),
            reference_name="before traces",
            samples=tuple(rabbitmq["on"]),
        ),
    ]
