"""What a binding costs RabbitMQ, on one node and on the local 3-node cluster, in one run: how
many topic bindings a second it takes (sent ``nowait`` in batches confirmed by one round trip, as
the library's wait lanes send them) and the memory of its binding tables on each node. The
figures behind "what 1,000,000 waits would need" on the Performance page and in docs/waits.md.

``python bench/bench_bindings.py [--count N]``; the cluster is the one of
``scripts/rabbitmq-cluster.sh`` (started when it is not running, stopped again at the end); the
single node is ``--amqp-url``. Needs ``rabbitmqctl`` (for the tables' memory).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiormq

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Figure, add_common_arguments, amqp_url, log, print_table, run_id  # noqa: E402

SCRIPT = HERE.parent / "scripts" / "rabbitmq-cluster.sh"
BATCH = 32  # binds a lane sends before the round trip that confirms them (8 lanes, 256)
LANES = 8
TABLES = (
    "rabbit_route",
    "rabbit_reverse_route",
    "rabbit_topic_trie_node",
    "rabbit_topic_trie_edge",
    "rabbit_topic_trie_binding",
)


def _table_bytes(node: str | None) -> int:
    """The memory of a node's binding tables, by ``rabbitmqctl eval``."""
    expression = (
        f"lists:sum([mnesia:table_info(T, memory) || T <- [{', '.join(TABLES)}]])"
        " * erlang:system_info(wordsize)."
    )
    command = ["rabbitmqctl", "-q", *(["-n", node] if node else []), "eval", expression]
    return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


async def bind_rate(url: str, count: int) -> float:
    """Bind ``count`` keys to one transient queue over LANES channels; binds a second."""
    connection = await aiormq.connect(url)
    try:
        channels = [await connection.channel() for _ in range(LANES)]
        exchange, queue = f"bench.bindings.{run_id()}", f"bench.bindings.{run_id()}"
        await channels[0].exchange_declare(exchange, exchange_type="topic", auto_delete=True)
        await channels[0].queue_declare(queue, arguments={"x-expires": 600_000})
        started = time.perf_counter()

        async def lane(i: int) -> None:
            channel = channels[i]
            keys = range(i, count, LANES)
            for n, k in enumerate(keys, 1):
                await channel.queue_bind(queue, exchange, f"internal.bench.w{k}", nowait=True)
                if n % BATCH == 0 or n == len(keys):
                    await channel.queue_declare(queue, passive=True)

        await asyncio.gather(*(lane(i) for i in range(LANES)))
        rate = count / (time.perf_counter() - started)
        return rate
    finally:
        await connection.close()


async def _measure(label: str, url: str, nodes: list[str | None], count: int) -> list[Figure]:
    before = [_table_bytes(node) for node in nodes]
    log(f"{label}: binding {count:,} keys")
    rate = await bind_rate(url, count)
    after = [_table_bytes(node) for node in nodes]
    figures = [Figure(f"{label}: topic bindings a second ({LANES} lanes)", rate, "binds/s")]
    for node, b, a in zip(nodes, before, after, strict=True):
        figures.append(
            Figure(
                f"{label}: binding memory on {node or 'the node'}",
                (a - b) / count,
                "bytes/binding",
            )
        )
    return figures


def _cluster(command: str) -> str:
    return subprocess.run(
        ["bash", str(SCRIPT), command], capture_output=True, text=True, check=False
    ).stdout


def main(args: argparse.Namespace) -> list[Figure]:
    single = asyncio.run(_measure("one node", amqp_url(args), [None], args.count))
    status = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, check=False)
    urls = _cluster("start").strip().split(",")
    name = os.environ.get("CUSTOMEVENT_TEST_CLUSTER_NAME", "customevent")
    nodes: list[str | None] = [f"{name}-{n}@localhost" for n in (1, 2, 3)]
    try:
        clustered = asyncio.run(_measure("3-node cluster", urls[0], nodes, args.count))
    finally:
        if status.returncode != 0:
            _cluster("stop")
    rate = clustered[0]
    clustered[0] = Figure(
        rate.name, rate.value, rate.unit, reference=single[0].value, reference_name="one node"
    )
    return [*single, *clustered]


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--count", type=int, default=20_000, help="bindings made on each")
    print_table(main(parser.parse_args()), title="bindings")


if __name__ == "__main__":
    _cli()
