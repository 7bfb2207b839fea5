"""Core figures against the real RabbitMQ: how fast waits are set up (the library next to one
queue per wait), 100,000 waits held at once in one process and its peak RSS, and the confirmed
publish rate next to raw aio-pika.

Every round gets its own names under a topic exchange made for this run, and everything made is
deleted at the end. Rounds of the compared variants alternate, so load from other processes on
the machine falls on both sides; the median of the rounds is reported.

``python bench/run.py core`` runs it; ``python bench/bench_core.py --hold N`` is the subprocess
that holds N waits (so that its peak RSS is the library's own, not this runner's).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import sys
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    Figure,
    Stopwatch,
    add_common_arguments,
    alternating,
    amqp_url,
    emit_figures,
    in_flight,
    log,
    median,
    parse_figures,
    peak_rss_mib,
    rate,
    run_id,
)

import adapter  # noqa: E402
from adapter._settings import load_settings  # noqa: E402

WAIT_SECONDS = 60.0  # every wait's deadline: long enough to outlast the round
HOLD_SECONDS = 600.0  # the deadline of the waits held at once
GRACE_SECONDS = 5.0  # the library's default wait_grace; the naive queues get the same
POOL_CHANNELS = 16  # the "queue per wait over a pool of channels" variant
SAMPLE = 50  # waits checked per round by publishing to them


def _client(url: str, exchange: str) -> adapter.Client:
    return adapter.Client(load_settings(amqp={"url": url, "exchange": exchange}))


async def _connect(url: str) -> AbstractRobustConnection:
    return await aio_pika.connect_robust(url, client_properties={"connection_name": "bench"})


async def _ignore(message: AbstractIncomingMessage) -> None:
    return None


# -- wait set-up ---------------------------------------------------------------------------


async def _delete_queues(connection: AbstractRobustConnection, names: Sequence[str]) -> None:
    """Delete queues over a few channels at once (clean-up, not timed)."""
    channels = [await connection.channel() for _ in range(8)]

    async def worker(k: int) -> None:
        for name in names[k :: len(channels)]:
            await channels[k].queue_delete(name)

    try:
        await asyncio.gather(*(worker(k) for k in range(len(channels))))
    finally:
        for channel in channels:
            await channel.close()


async def per_wait_queues(url: str, exchange: str, names: Sequence[str], channels: int) -> float:
    """The way without the library: per wait, declare its own queue (x-expires = deadline +
    grace), bind it and consume from it; the waits are entered concurrently, as the library's are,
    over ``channels`` channels (1: the naive way). Returns the seconds until all are bound."""
    connection = await _connect(url)
    try:
        pool = [await connection.channel() for _ in range(channels)]
        expires_ms = int((WAIT_SECONDS + GRACE_SECONDS) * 1000)
        tag = uuid.uuid4().hex[:8]
        queue_names = [f"bench.wait.{tag}.{i}" for i in range(len(names))]

        async def one(i: int) -> None:
            queue = await pool[i % channels].declare_queue(
                queue_names[i], auto_delete=False, arguments={"x-expires": expires_ms}
            )
            await queue.bind(exchange, f"internal.{names[i]}")
            await queue.consume(_ignore, no_ack=True)

        try:
            with Stopwatch() as sw:
                await asyncio.gather(*(one(i) for i in range(len(names))))
        finally:
            for channel in pool:
                await channel.close()
            await _delete_queues(connection, queue_names)
        return sw.seconds
    finally:
        await connection.close()


async def _check_held(
    client: adapter.Client, waits: Sequence[Any], names: Sequence[str], sample: int
) -> int:
    """Publish to a sample of the waits; how many were routed and delivered (each to its own
    wait: waits that share a name match on the property ``i``)."""
    picked = random.sample(range(len(names)), min(sample, len(names)))
    results = await asyncio.gather(
        *(client.send_custom_event(names[i], {"i": str(i)}) for i in picked)
    )
    held = 0
    for i, result in zip(picked, results, strict=True):
        if not result.routed:
            continue
        event = await asyncio.wait_for(waits[i].get(), 10)
        if event is not None and event.name == names[i] and event.properties == {"i": str(i)}:
            held += 1
    return held


async def library_waits(
    url: str, exchange: str, names: Sequence[str], sample: int = SAMPLE
) -> tuple[float, float, int]:
    """``client.expect`` for every name, entered concurrently. Returns (set-up seconds,
    release seconds, waits of the sample that received their event)."""
    async with _client(url, exchange) as client:
        with Stopwatch() as setup:
            # Making the expectations is part of a wait's set-up: it is timed too.
            waits = [
                client.expect("internal", n, until=timedelta(seconds=WAIT_SECONDS)) for n in names
            ]
            await asyncio.gather(*(w.__aenter__() for w in waits))
        held = await _check_held(client, waits, names, sample)
        with Stopwatch() as release:
            await asyncio.gather(*(w.__aexit__(None, None, None) for w in waits))
        return setup.seconds, release.seconds, held


# -- publishing ----------------------------------------------------------------------------


async def library_publish(
    url: str, exchange: str, name: str, count: int, concurrency: int
) -> float:
    async with _client(url, exchange) as client:
        await client.send_custom_event(name, {"k": "v"})  # warm-up
        return await in_flight(
            count, concurrency, lambda i: client.send_custom_event(name, {"k": "v"})
        )


async def raw_publish(url: str, exchange: str, name: str, count: int, concurrency: int) -> float:
    """What a careful user of aio-pika does: one confirm channel, mandatory, the same message."""
    connection = await _connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.get_exchange(exchange)
        key = f"internal.{name}"
        headers = {"x-event-name": name, "x-event-kind": "internal", "x-event-source": "amqp"}

        async def send(i: int) -> None:
            message = aio_pika.Message(
                body=b'{"k":"v"}',
                content_type="application/json",
                message_id=str(uuid.uuid4()),
                app_id="customevent-bridge",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=headers,  # type: ignore[arg-type]
            )
            await target.publish(message, key, mandatory=True)

        await send(-1)  # warm-up
        return await in_flight(count, concurrency, send)
    finally:
        await connection.close()


# -- holding many waits (subprocess) ---------------------------------------------------------

# RabbitMQ 3.x keeps a topic exchange's bindings in these tables (its routes, and the trie the
# topic exchange matches keys with); their memory is what bindings cost the broker.
_BINDING_TABLES = (
    "rabbit_route",
    "rabbit_reverse_route",
    "rabbit_topic_trie_node",
    "rabbit_topic_trie_edge",
    "rabbit_topic_trie_binding",
)


async def broker_binding_bytes() -> int | None:
    """The memory of the local RabbitMQ's binding tables (``rabbitmqctl eval``), or None where
    rabbitmqctl cannot reach it (a remote broker)."""
    tables = ", ".join(_BINDING_TABLES)
    expression = (
        f"lists:sum([mnesia:table_info(T, memory) || T <- [{tables}]])"
        " * erlang:system_info(wordsize)."
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "eval",
            expression,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
    except OSError:
        return None
    text = out.decode().strip()
    return int(text) if proc.returncode == 0 and text.isdigit() else None


async def hold(url: str, exchange: str, count: int, *, match: bool = False) -> list[Figure]:
    """Set up ``count`` waits at once in this process, check that they are all held, and report
    the set-up time and this process's peak RSS. With ``match``, the waits are all on one name,
    each matching its own value of the property ``i`` (correlation), instead of one name each."""
    rid = run_id()
    names = [f"bench.hold.{rid}" if match else f"bench.hold.{rid}.w{i}" for i in range(count)]
    # RabbitMQ binds a few thousand keys a second: 100,000 waits take most of a minute to set
    # up, and a wait's deadline must outlast its set-up.
    until = timedelta(seconds=HOLD_SECONDS)
    async with _client(url, exchange) as client:
        baseline = peak_rss_mib()
        broker_before = await broker_binding_bytes()
        waits = [
            client.expect("internal", n, until=until, match={"i": str(i)} if match else None)
            for i, n in enumerate(names)
        ]
        with Stopwatch() as setup:
            await asyncio.gather(*(w.__aenter__() for w in waits))
        active = client.active_waits
        held = await _check_held(client, waits, names, 100)
        peak = peak_rss_mib()
        broker_held = await broker_binding_bytes()
        with Stopwatch() as release:
            await asyncio.gather(*(w.__aexit__(None, None, None) for w in waits))
    label = f"{count:,} match waits on one name" if match else f"{count:,} waits"
    broker: list[Figure] = []
    if broker_before is not None and broker_held is not None:
        broker = [
            Figure(
                f"RabbitMQ memory for the bindings of {label}",
                (broker_held - broker_before) / 2**20,
                "MiB",
                note=f"{(broker_held - broker_before) / count:,.0f} bytes a wait; binding "
                "tables, by rabbitmqctl eval (other clients' bindings come and go meanwhile)",
            )
        ]
    return [
        Figure(f"time to set up {label}", setup.seconds, "s"),
        Figure("waits held at once (client.active_waits)", active, "", at_least=count),
        Figure(
            "of 100 sampled waits, routed and delivered",
            held,
            "",
            at_least=100,
        ),
        Figure(
            f"peak RSS holding {label}",
            peak,
            "MiB",
            at_most=300.0 if count >= 100_000 else None,
            note=f"RSS after import and connect was {baseline:.1f} MiB",
        ),
        Figure(
            f"set-up rate, {label}",
            count / setup.seconds,
            "waits/s",
        ),
        Figure(
            f"RSS a wait, holding {label}",
            (peak - baseline) * 1024 / count,
            "KiB",
            note="peak RSS less the RSS after import and connect, over the waits",
        ),
        *broker,
        Figure(f"time to release {label}", release.seconds, "s"),
    ]


async def hold_in_subprocess(
    url: str, exchange: str, count: int, *, match: bool = False
) -> list[Figure]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--hold",
        str(count),
        "--exchange",
        exchange,
        "--amqp-url",
        url,
        *(["--match"] if match else []),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the --hold subprocess exited with status {proc.returncode}")
    return parse_figures(out.decode())


# -- the run -------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> list[Figure]:
    url = amqp_url(args)
    quick = getattr(args, "quick", False)
    rounds = 1 if quick else max(1, getattr(args, "rounds", 3))
    n_waits = 500 if quick else 2000
    n_hold = 2000 if quick else 100_000
    n_publish = 2000 if quick else 10_000
    concurrency = 100
    rid = run_id()
    exchange = f"bench.customevents.{rid}"

    setup_connection = await _connect(url)
    channel = await setup_connection.channel()
    await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    try:
        log(f"wait set-up: {n_waits:,} waits per round, {rounds} rounds, exchange {exchange}")
        held_counts: list[int] = []
        releases: list[float] = []

        def names(r: int, variant: str) -> list[str]:
            return [f"bench.{rid}.{variant}{r}.w{i}" for i in range(n_waits)]

        async def naive(r: int) -> float:
            return rate(n_waits, await per_wait_queues(url, exchange, names(r, "n"), 1))

        async def pool(r: int) -> float:
            seconds = await per_wait_queues(url, exchange, names(r, "p"), POOL_CHANNELS)
            return rate(n_waits, seconds)

        async def library(r: int) -> float:
            setup, release, held = await library_waits(url, exchange, names(r, "l"))
            held_counts.append(held)
            releases.append(release)
            return rate(n_waits, setup)

        waits = await alternating(
            rounds, {"naive": naive, "channel pool": pool, "library": library}
        )

        log(
            f"publishing: {n_publish:,} confirmed messages, {concurrency} in flight, "
            f"{rounds} rounds"
        )
        target = f"bench.{rid}.nobody"

        async def raw_send(r: int) -> float:
            return rate(n_publish, await raw_publish(url, exchange, target, n_publish, concurrency))

        async def lib_send(r: int) -> float:
            seconds = await library_publish(url, exchange, target, n_publish, concurrency)
            return rate(n_publish, seconds)

        sends = await alternating(rounds, {"raw aio-pika": raw_send, "library": lib_send})

        log(f"holding {n_hold:,} waits in a subprocess")
        held_figures = await hold_in_subprocess(url, exchange, n_hold)
        log(f"holding {n_hold:,} match waits on one name in a subprocess")
        match_figures = await hold_in_subprocess(url, exchange, n_hold, match=True)
    finally:
        with contextlib.suppress(Exception):
            await channel.exchange_delete(exchange)
        await setup_connection.close()

    naive_rate = median(waits["naive"])
    return [
        Figure(
            f"wait set-up rate ({n_waits:,} waits)",
            median(waits["library"]),
            "waits/s",
            reference=naive_rate,
            reference_name="naive: queue per wait, 1 channel",
            at_least=10.0,
            samples=tuple(waits["library"]),
        ),
        Figure(
            f"wait set-up rate, queue per wait over {POOL_CHANNELS} channels",
            median(waits["channel pool"]),
            "waits/s",
            reference=naive_rate,
            reference_name="naive",
            samples=tuple(waits["channel pool"]),
            note="for comparison (docs/waits.md); not a design the library uses",
        ),
        Figure(
            f"sampled waits routed and delivered (of {SAMPLE} per round)",
            min(held_counts),
            "",
            at_least=SAMPLE,
            samples=tuple(held_counts),
        ),
        Figure(
            f"time to release {n_waits:,} waits",
            median(releases),
            "s",
            samples=tuple(releases),
        ),
        *held_figures,
        *match_against_names(held_figures, match_figures, n_hold),
        Figure(
            f"confirmed publish rate ({concurrency} in flight)",
            median(sends["library"]),
            "msg/s",
            reference=median(sends["raw aio-pika"]),
            reference_name="raw aio-pika, confirms + mandatory",
            at_least=0.7,
            samples=tuple(sends["library"]),
        ),
    ]


def match_against_names(
    names: Sequence[Figure], matches: Sequence[Figure], count: int
) -> list[Figure]:
    """The match waits' figures side by side with the distinct names' (the reference): set-up
    time and peak RSS, as ratios. The sampled-delivery check stays a figure of its own."""
    by_name = {f.name: f for f in names}
    label = f"{count:,}"
    setup = by_name[f"time to set up {label} waits"]
    rss = by_name[f"peak RSS holding {label} waits"]
    mine = {f.name: f for f in matches}
    tag = f"{label} match waits on one name"
    return [
        Figure(
            f"time to set up {tag}",
            mine[f"time to set up {tag}"].value,
            "s",
            reference=setup.value,
            reference_name=f"{label} waits on distinct names",
            at_most=1.5,
        ),
        Figure(
            f"peak RSS holding {tag}",
            mine[f"peak RSS holding {tag}"].value,
            "MiB",
            reference=rss.value,
            reference_name=f"{label} waits on distinct names",
            at_most=1.25,
        ),
        dataclasses.replace(
            mine["of 100 sampled waits, routed and delivered"],
            name="of 100 sampled match waits, each given its own event",
        ),
    ]


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--hold", type=int, metavar="N", help="hold N waits; print figures")
    parser.add_argument(
        "--exchange",
        default="customevent",
        help="with --hold: the run's exchange (default: the bridge's own, customevent)",
    )
    parser.add_argument(
        "--match", action="store_true", help="with --hold: on one name, each matching its own key"
    )
    args = parser.parse_args()
    if args.hold:
        figures = asyncio.run(hold(amqp_url(args), args.exchange, args.hold, match=args.match))
        emit_figures(figures)
        return
    from _common import print_table

    print_table(asyncio.run(main(args)))


if __name__ == "__main__":
    _cli()
