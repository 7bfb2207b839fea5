"""The local 3-node RabbitMQ cluster of ``scripts/rabbitmq-cluster.sh``, for the cluster tests:
its nodes (read from the same environment variables, with the same defaults), which node holds a
connection, and stopping, starting and restarting nodes. Only these nodes are ever stopped."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika

from adapter._bus.amqp._queues import durable_queue_arguments
from tests.support.mqtt import LEFTOVER_EXPIRY

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "rabbitmq-cluster.sh"


@dataclass(frozen=True)
class Node:
    name: str  # the Erlang node name, for rabbitmqctl -n
    port: int

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def answers(self) -> bool:
        """True while the node's app runs (its AMQP listener is open)."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True


class Cluster:
    def __init__(self) -> None:
        name = os.environ.get("CUSTOMEVENT_TEST_CLUSTER_NAME", "customevent")
        port = int(os.environ.get("CUSTOMEVENT_TEST_CLUSTER_PORT", "5741"))
        self.nodes = [Node(f"{name}-{n}@localhost", port + n - 1) for n in (1, 2, 3)]

    @property
    def urls(self) -> str:
        """``amqp.url`` for the whole cluster: the three nodes, comma-separated."""
        return ",".join(node.url for node in self.nodes)

    def node_at(self, url: str) -> Node:
        """The node a URL (a redacted one too) points at."""
        port = urlsplit(url).port
        for node in self.nodes:
            if node.port == port:
                return node
        raise AssertionError(f"{url} is not a node of the test cluster")

    def urls_as(self, user: str, password: str) -> str:
        """``amqp.url`` for the three nodes as ``user``, made (with every permission on the
        default virtual host) if the cluster does not know it yet."""
        node = self.running()
        users = self.ctl(node, "list_users", "--no-table-headers")
        if user not in {line.split("\t")[0] for line in users.splitlines()}:
            self.ctl(node, "add_user", user, password)
            self.ctl(node, "set_permissions", "-p", "/", user, ".*", ".*", ".*")
        return ",".join(f"amqp://{user}:{password}@127.0.0.1:{n.port}/" for n in self.nodes)

    def running(self) -> Node:
        """A node whose app runs, to ask the cluster something (one may be stopped)."""
        for node in self.nodes:
            if node.answers():
                return node
        raise AssertionError("no node of the test cluster answers")

    def other_than(self, node: Node) -> Node:
        return next(n for n in self.nodes if n != node)

    def ctl(self, node: Node, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            ["rabbitmqctl", "-q", "-n", node.name, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {result.stderr}")
        return result.stdout

    def stop_app(self, node: Node) -> None:
        self.ctl(node, "stop_app")

    def start_app(self, node: Node) -> None:
        self.ctl(node, "start_app")
        self.ctl(node, "await_startup")

    def heal(self) -> None:
        """Start the app of any node a failed test left stopped."""
        for node in self.nodes:
            if not node.answers():
                self.start_app(node)

    def restart(self) -> None:
        """Stop all three nodes, then start them again (their data kept)."""
        for command in ("stop", "start"):
            subprocess.run(
                [str(SCRIPT), command], check=True, capture_output=True, text=True, timeout=600
            )

    def node_of_connection(self, connection_name: str) -> Node:
        """The node that holds the connection named ``connection_name`` (its client property)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # ``port`` is the port the client connected to: the node's AMQP port.
            listing = self.ctl(self.running(), "list_connections", "port", "client_properties")
            for line in listing.splitlines():
                if f'"{connection_name}"' in line:
                    port = int(line.split("\t", 1)[0])
                    return next(n for n in self.nodes if n.port == port)
            time.sleep(0.2)
        raise AssertionError(f"no connection named {connection_name!r} in the cluster")

    def queue_type_and_members(self, queue: str) -> tuple[str, int]:
        """The queue's type (``quorum``, ``classic``) and how many nodes hold a replica."""
        listing = self.ctl(self.running(), "list_queues", "name", "type", "members")
        for line in listing.splitlines():
            fields = line.split("\t")
            if fields[0] == queue:
                members = fields[2].strip("[]").split(",") if fields[2].strip("[]") else []
                return fields[1], len(members)
        raise AssertionError(f"no queue {queue!r} in the cluster")

    async def run(self, method: str, node: Node) -> float:
        """``stop_app`` or ``start_app`` on ``node`` off the event loop; the seconds it took."""
        started = time.monotonic()
        await asyncio.to_thread(getattr(self, method), node)
        return time.monotonic() - started


async def collector(url: str, binding_key: str) -> str:
    """A quorum queue of the test's own (expiring ten minutes after a crashed run) bound to
    ``binding_key`` on the events exchange: it catches every event routed there while any
    majority of the cluster runs."""
    queue_name = f"test.cluster.{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "customevents", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            queue_name, durable=True, arguments=durable_queue_arguments(LEFTOVER_EXPIRY)
        )
        await queue.bind(exchange, binding_key)
    return queue_name


async def drain(url: str, queue_name: str) -> Counter[str]:
    """Every message id in the queue, with how often it arrived; deletes the queue."""
    seen: Counter[str] = Counter()
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        queue = await channel.get_queue(queue_name)
        while (message := await queue.get(fail=False, timeout=5)) is not None:
            seen[message.message_id or ""] += 1
            await message.ack()
        await queue.delete(if_unused=False, if_empty=False)
    return seen
