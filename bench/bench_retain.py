"""What retained events cost on the real RabbitMQ, each figure beside the same operation without
retain, measured in the same run:

- a send: one at a time (latency) and 100 in flight (rate); a retained send also writes its copy
  to the retained-events stream, confirmed;
- a wait in a process that already reads the stream: a wait on a name with a retained event
  (answered at once from memory) next to a wait bound and closed on a name with nothing;
- a wait in a new process (a fresh client): opening the client and waiting for the retained
  event, which first reads the stream's last ``amqp.max_retain``, next to opening a client and
  binding a plain wait. It runs after the latency rounds only; the note says how many retained
  copies the stream held then (the cost grows with them).

The run uses an exchange of its own, so its stream holds only this run's copies; both are deleted
at the end. ``python bench/run.py retain`` runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import aio_pika

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Figure, amqp_url, in_flight, median, rate, run_id  # noqa: E402

import adapter  # noqa: E402
from adapter._settings import load_settings  # noqa: E402

RETAIN = timedelta(minutes=5)
SOON = timedelta(seconds=30)
COLD = timedelta(minutes=5)  # a new process reads the whole window of the stream first


def log(message: str) -> None:
    print(f"   {message}", flush=True)


def _client(url: str, exchange: str) -> adapter.Client:
    return adapter.Client(load_settings(amqp={"url": url, "exchange": exchange}))


async def _per_op_ms(count: int, operation: Callable[[int], Awaitable[object]]) -> float:
    """Median milliseconds of ``count`` runs of ``operation``, one at a time."""
    times = []
    for i in range(count):
        started = time.perf_counter()
        await operation(i)
        times.append((time.perf_counter() - started) * 1000)
    return median(times)


async def _alternate(
    rounds: int, variants: dict[str, Callable[[], Awaitable[float]]]
) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            results[name].append(await variants[name]())
            log(f"round {r + 1}/{rounds} {name}: {results[name][-1]:,.3f}")
    return results


def _versus(
    name: str, results: dict[str, list[float]], unit: str, reference: str, note: str = ""
) -> Figure:
    """The retained variant's median beside the plain one's."""
    return Figure(
        name,
        median(results["retained"]),
        unit,
        reference=median(results["plain"]),
        reference_name=reference,
        samples=tuple(results["retained"]),
        note=note,
    )


async def main(args: argparse.Namespace) -> list[Figure]:
    url = amqp_url(args)
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else max(1, getattr(args, "rounds", 3))
    n_ops = 100 if quick else 500
    n_rate = 1000 if quick else 5000
    n_cold = 5 if quick else 20
    rid = run_id()
    exchange = f"bench.customevents.{rid}"
    name = f"bench.{rid}.retained"
    empty = f"bench.{rid}.empty"
    figures: list[Figure] = []
    try:
        async with _client(url, exchange) as client:
            await client.send_custom_event(name, {"k": "v"}, retain=RETAIN)  # reads the stream

            log(f"send latency: {n_ops} sends one at a time per round, {rounds} rounds")

            async def plain_send() -> float:
                return await _per_op_ms(n_ops, lambda i: client.send_custom_event(name, {"k": "v"}))

            async def retained_send() -> float:
                return await _per_op_ms(
                    n_ops, lambda i: client.send_custom_event(name, {"k": "v"}, retain=RETAIN)
                )

            latency = await _alternate(rounds, {"plain": plain_send, "retained": retained_send})
            figures.append(_versus("retained send latency", latency, "ms", "plain send"))

            copies = 1 + n_ops * rounds
            log(f"wait, new process: {n_cold} fresh clients per round")

            async def cold_plain() -> float:
                async def once(i: int) -> None:
                    async with (
                        _client(url, exchange) as fresh,
                        fresh.expect("internal", empty, until=SOON),
                    ):
                        pass

                return await _per_op_ms(n_cold, once)

            async def cold_retained() -> float:
                async def once(i: int) -> None:
                    async with _client(url, exchange) as fresh:
                        event = await fresh.wait_custom_event_until("internal", name, COLD)
                        assert event is not None

                return await _per_op_ms(n_cold, once)

            cold = await _alternate(rounds, {"plain": cold_plain, "retained": cold_retained})
            figures.append(
                _versus(
                    "new client's first wait, answered by a retained event",
                    cold,
                    "ms",
                    "new client, wait bound and closed",
                    note=f"reads the stream first: {copies:,} retained copies in it",
                )
            )
            log(f"send rate: {n_rate} sends, 100 in flight, per round")

            async def plain_rate() -> float:
                seconds = await in_flight(
                    n_rate, 100, lambda i: client.send_custom_event(name, {"k": "v"})
                )
                return rate(n_rate, seconds)

            async def retained_rate() -> float:
                seconds = await in_flight(
                    n_rate,
                    100,
                    lambda i: client.send_custom_event(name, {"k": "v"}, retain=RETAIN),
                )
                return rate(n_rate, seconds)

            rates = await _alternate(rounds, {"plain": plain_rate, "retained": retained_rate})
            figures.append(_versus("retained send rate", rates, "msg/s", "plain send rate"))

            log(f"wait, warm process: {n_ops} waits one at a time per round")

            async def plain_wait() -> float:
                async def bind_and_close(i: int) -> None:
                    async with client.expect("internal", empty, until=SOON):
                        pass

                return await _per_op_ms(n_ops, bind_and_close)

            async def retained_wait() -> float:
                async def answered(i: int) -> None:
                    event = await client.wait_custom_event_until("internal", name, SOON)
                    assert event is not None

                return await _per_op_ms(n_ops, answered)

            warm = await _alternate(rounds, {"plain": plain_wait, "retained": retained_wait})
            figures.append(
                _versus("wait answered by a retained event", warm, "ms", "wait bound and closed")
            )
    finally:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(f"customevent.retained.{exchange}")
            await channel.exchange_delete(exchange)
    return figures
