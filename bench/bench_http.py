"""Benchmark: the daemon's vRO REST send against RabbitMQ's own HTTP publish API.

Run: ``python bench/bench_http.py`` (RabbitMQ on 127.0.0.1:5672, guest/guest; wrk installed;
``--amqp-url`` and ``--management`` for another node, whose management plugin this turns on, with
``rabbitmq-plugins``, which honours ``RABBITMQ_NODENAME``). Loopback only, about a minute. In
alternating rounds, wrk loads, with the same connections:

- the daemon: ``POST /vco/api/customevent/bench.load?properties=a%3D1`` with HTTP Basic;
- RabbitMQ: ``POST /api/exchanges/%2F/customevents/publish`` (management plugin, guest:guest).

- raw aio-pika: as many publishers as wrk has connections, on one confirm channel, each sending
  its next message once the last is confirmed (as each wrk connection waits for its answer), to
  the same exchange and routing key. The ceiling of any sender on this broker.

It prints the requests per second of each and the ratios (targets >= 2.0 against the management
API, >= 0.7 against raw aio-pika), the daemon's peak RSS under load (target <= 80 MB), and
send-to-waiter latency p50/p99: HTTP send through the daemon to a library waiter, next to a raw
aio-pika publish to a consumer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika

from adapter import Client
from adapter._secrets import hash_secret

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import Figure, emit_figures  # noqa: E402

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
MANAGEMENT = "http://127.0.0.1:15672"
RABBIT_BODY = (
    '{"properties":{},"routing_key":"external.bench","payload":"{}","payload_encoding":"string"}'
)
USER, PASSWORD = "bench", "bench-password"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_for(check: object, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    sys.exit(f"bench: {what} did not come up within {seconds:.0f}s")


def ensure_management(management: str) -> None:
    port = urlsplit(management).port or 15672
    if port_open(port):
        return
    print("enabling rabbitmq_management ...", flush=True)
    subprocess.run(["rabbitmq-plugins", "enable", "rabbitmq_management"], check=True)
    wait_for(lambda: port_open(port), f"the RabbitMQ management API on :{port}", 90)


def wrk_script(directory: Path, name: str, authorization: str, body: str, ctype: str) -> Path:
    script = directory / f"{name}.lua"
    lua_body = body.replace("\\", "\\\\").replace('"', '\\"')
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Authorization"] = "{authorization}"\n'
        f'wrk.headers["Content-Type"] = "{ctype}"\n'
        f'wrk.body = "{lua_body}"\n'
    )
    return script


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[float, int]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return rate, int(bad.group(1)) if bad else 0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples a process's RSS in a thread while the load runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def daemon_latency(url: str, port: int, count: int) -> list[float]:
    """HTTP send through the daemon to a library waiter. The request is written by hand on one
    keep-alive connection, as wrk does: an HTTP client library would add its own overhead (httpx
    adds over a millisecond) and measure itself rather than the daemon."""
    samples = []
    authorization = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    async with Client(url) as client:
        for i in range(count):
            name = f"bench.latency.{i}"
            request = (
                f"POST /vco/api/customevent/{name}?properties=a%3D1 HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Basic {authorization}\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            async with client.expect("external", name, until=timedelta(seconds=10)) as waiter:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                event = await waiter
                samples.append(time.perf_counter() - started)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert event is not None
    writer.close()
    return samples


async def raw_latency(url: str, count: int) -> list[float]:
    samples = []
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            "customevents", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "external.bench.raw")
        arrived: asyncio.Queue[float] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.put_nowait(time.perf_counter())

        await queue.consume(on_message, no_ack=True)
        for _ in range(count):
            started = time.perf_counter()
            await exchange.publish(
                aio_pika.Message(b'{"a":"1"}', content_type="application/json"),
                "external.bench.raw",
            )
            samples.append(await arrived.get() - started)
    return samples


async def raw_publish_rate(url: str, seconds: float, publishers: int) -> float:
    """Confirmed publishes a second by raw aio-pika: ``publishers`` on one confirm channel, each
    publishing its next message once its last is confirmed, to what the daemon's sends go to."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("customevents", ensure=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        done = 0

        async def publisher() -> None:
            nonlocal done
            while loop.time() < deadline:
                message = aio_pika.Message(
                    b'{"a":"1"}', content_type="application/json", delivery_mode=2
                )
                await exchange.publish(message, "external.bench.load")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(publisher() for _ in range(publishers)))
        return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--amqp-url",
        default=os.environ.get("CUSTOMEVENT_AMQP__URL") or AMQP_URL,
        help=f"RabbitMQ (default $CUSTOMEVENT_AMQP__URL or {AMQP_URL})",
    )
    parser.add_argument(
        "--management",
        default=MANAGEMENT,
        help=f"the same node's management API, guest:guest (default {MANAGEMENT})",
    )
    args = parser.parse_args()
    amqp = urlsplit(args.amqp_url)
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (apt-get install -y wrk)")
    if not port_open(amqp.port or 5672):
        sys.exit(f"bench: RabbitMQ is not running on {amqp.hostname}:{amqp.port or 5672}")
    ensure_management(args.management)

    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="customevent-bench-"))
    config = workdir / "bench.toml"
    config.write_text(
        f'[amqp]\nurl = "{args.amqp_url}"\n'
        # Access lines off (WARNING): one JSON line per request is the operator's choice, not
        # the daemon's cost. No rate limit: the load is the point.
        f'[http]\nport = {port}\nrate_limit = 0\n[log]\nlevel = "WARNING"\n'
        f'[[auth.principals]]\nname = "{USER}"\npassword_hash = "{hash_secret(PASSWORD)}"\n'
        'allow = ["bench.#"]\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "adapter._cli", "serve", "--config", str(config)],
        stderr=open(workdir / "daemon.log", "w"),  # noqa: SIM115 - lives as long as the daemon
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: port_open(port), "the daemon", 30)
        basic_ours = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        basic_rabbit = "Basic " + base64.b64encode(b"guest:guest").decode()
        # Latency first, on a quiet broker: after a load RabbitMQ is still busy for a while.
        ours_latency = asyncio.run(daemon_latency(args.amqp_url, port, args.latency_samples))
        raw = asyncio.run(raw_latency(args.amqp_url, args.latency_samples))
        ours_p50, ours_p99 = percentiles(ours_latency)
        raw_p50, raw_p99 = percentiles(raw)
        ours = wrk_script(workdir, "daemon", basic_ours, "", "text/plain")
        theirs = wrk_script(workdir, "rabbit", basic_rabbit, RABBIT_BODY, "application/json")
        ours_url = f"{base}/vco/api/customevent/bench.load?properties=a%3D1"
        theirs_url = f"{args.management}/api/exchanges/%2F/customevents/publish"
        # Warm both up (connections, caches, the credential check) before measuring.
        run_wrk(ours_url, ours, 2, args.connections)
        run_wrk(theirs_url, theirs, 2, args.connections)

        ours_rates, theirs_rates, raw_rates, bad = [], [], [], 0
        with PeakRss(daemon.pid) as rss:
            for round_number in range(1, args.rounds + 1):
                rate, errors = run_wrk(ours_url, ours, args.seconds, args.connections)
                ours_rates.append(rate)
                bad += errors
                rate, errors = run_wrk(theirs_url, theirs, args.seconds, args.connections)
                theirs_rates.append(rate)
                bad += errors
                raw_rates.append(
                    asyncio.run(raw_publish_rate(args.amqp_url, args.seconds, args.connections))
                )
                print(
                    f"round {round_number}: daemon {ours_rates[-1]:8.0f} req/s   "
                    f"RabbitMQ HTTP API {theirs_rates[-1]:8.0f} req/s   "
                    f"raw aio-pika {raw_rates[-1]:8.0f} msg/s",
                    flush=True,
                )
        ours_mean = statistics.mean(ours_rates)
        theirs_mean = statistics.mean(theirs_rates)
        raw_mean = statistics.mean(raw_rates)

        print()
        print(
            f"load: wrk -t2 -c{args.connections}, "
            f"{args.rounds} alternating rounds of {args.seconds}s each; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )
        print(f"daemon REST send (vRO path, Basic): {ours_mean:8.0f} req/s")
        print(f"RabbitMQ HTTP publish API:          {theirs_mean:8.0f} req/s")
        print(
            f"ratio daemon / RabbitMQ:            {ours_mean / theirs_mean:8.2f}   (target >= 2.0)"
        )
        print(f"daemon peak RSS under load:         {rss.peak:8.1f} MB (target <= 80 MB)")
        print(f"non-2xx responses during the load:  {bad:8d}")
        print(
            f"send-to-waiter latency, daemon HTTP -> RabbitMQ -> library waiter: "
            f"p50 {ours_p50:.2f} ms, p99 {ours_p99:.2f} ms"
        )
        print(
            f"send-to-waiter latency, raw aio-pika publish -> consumer:          "
            f"p50 {raw_p50:.2f} ms, p99 {raw_p99:.2f} ms"
        )
        emit_figures(
            [
                Figure(
                    "REST send (vRO path, Basic auth)",
                    ours_mean,
                    "req/s",
                    reference=theirs_mean,
                    reference_name="RabbitMQ HTTP publish API, same wrk load",
                    at_least=2.0,
                    samples=tuple(ours_rates),
                ),
                Figure(
                    "REST send (vRO path, Basic auth), against raw aio-pika",
                    ours_mean,
                    "req/s",
                    reference=raw_mean,
                    reference_name=f"raw aio-pika confirmed publishes, {args.connections} at once",
                    at_least=0.7,
                    samples=tuple(ours_rates),
                ),
                Figure("daemon peak RSS under load", rss.peak, "MB", at_most=80),
                Figure("non-2xx responses under load", bad, at_most=0),
                Figure(
                    "send-to-waiter latency p50",
                    ours_p50,
                    "ms",
                    reference=raw_p50,
                    reference_name="raw aio-pika publish -> consumer",
                ),
                Figure(
                    "send-to-waiter latency p99",
                    ours_p99,
                    "ms",
                    reference=raw_p99,
                    reference_name="raw aio-pika publish -> consumer",
                ),
            ]
        )
    finally:
        daemon.terminate()
        daemon.wait(30)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
