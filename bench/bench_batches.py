"""Benchmark: one principal's send latency while eight clients of another flood CloudEvents batches.

Run: ``python bench/bench_batches.py`` or ``python bench/run.py batches`` (RabbitMQ on
127.0.0.1:5672). About half a minute. One daemon on RabbitMQ with two principals:

- ``ops`` sends one event at a time (``POST /api/v1/events/...``, HTTP Basic, one keep-alive
  connection written by hand, as wrk would) and times each answer;
- ``flood`` runs eight clients that post, again and again, a ``cloudevents-batch+json`` of 19,064
  items: far past ``http.max_batch``, so every one of them is refused.

The figures are ``ops``'s p50 and p99 latency under that flood, beside the same under a flood of
the cheapest refusal there is (the same clients posting an empty batch with no body, 400), measured
in the same run: a 19,064-item batch must cost the daemon no more than that, whatever its size
(before the count came ahead of the parsing, 8 such clients took ``ops`` from 4.6 ms to 1.5 s).
The latency with no flood at all is printed too, for scale.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from _common import Figure, amqp_url, log  # noqa: E402

from adapter._secrets import hash_secret  # noqa: E402
from tests.support.processes import Daemon  # noqa: E402

FLOODERS = 8
ITEMS = 19_064
SENDS = 300
PRINCIPALS = {"ops": "ops-password", "flood": "flood-password"}


def _basic(name: str) -> str:
    return base64.b64encode(f"{name}:{PRINCIPALS[name]}".encode()).decode()


def _batch() -> bytes:
    item = {"specversion": "1.0", "id": "x", "source": "urn:bench", "type": "bench.flood"}
    return json.dumps([{**item, "id": f"f{n}"} for n in range(ITEMS)]).encode()


async def _victim(port: int, count: int) -> list[float]:
    """``ops``'s answer times, in seconds, one request after the other."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"properties": {"a": "1"}}'
    samples = []
    try:
        for n in range(count):
            request = (
                f"POST /api/v1/events/bench.victim.{n % 16} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Basic {_basic('ops')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            samples.append(time.perf_counter() - started)
            assert head.startswith(b"HTTP/1.1 202"), head[:80]
    finally:
        writer.close()
    return samples


async def _flooded(port: int, kind: str, answers: Counter[str]) -> list[float]:
    """``ops``'s answer times while ``FLOODERS`` clients post batches of ``kind`` (``empty`` or
    ``huge``), from a process of their own: writing 1.3 MB a request would otherwise take the
    timing process's CPU, not the daemon's."""
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--flood",
        str(port),
        kind,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert flood.stdin is not None and flood.stdout is not None
    try:
        await flood.stdout.readline()  # "flooding"
        await asyncio.sleep(1)
        return await _victim(port, SENDS)
    finally:
        flood.stdin.close()
        answers.update(json.loads(await flood.stdout.readline() or b"{}"))
        await flood.wait()


async def _flood(port: int, kind: str) -> None:
    """The flood process: until its stdin closes; then prints the answers it got as JSON."""
    body = _batch() if kind == "huge" else b""
    stop = asyncio.Event()
    answers: Counter[str] = Counter()
    tasks = [asyncio.create_task(_flooder(port, body, stop, answers)) for _ in range(FLOODERS)]
    print("flooding", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks)
    print(json.dumps(answers), flush=True)


async def _flooder(port: int, body: bytes, stop: asyncio.Event, answers: Counter[str]) -> None:
    head = (
        f"POST /api/v1/cloudevents HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Basic {_basic('flood')}\r\n"
        "Content-Type: application/cloudevents-batch+json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            writer.write(body)
            status = (await reader.readline()).split(b" ")[1:2]
            answers[status[0].decode() if status else "closed"] += 1
            writer.close()
        except (ConnectionError, OSError, IndexError):
            answers["reset"] += 1  # refused before its body was read: the daemon hung up


def _percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def main(args: object = None) -> list[Figure]:
    principals = [
        {"name": name, "password_hash": hash_secret(password), "allow": ["#"]}
        for name, password in PRINCIPALS.items()
    ]
    log(f"batches: one batch is {len(_batch()) / 1e6:.1f} MB, {ITEMS} items")
    with Daemon(
        "bench-batches",
        CUSTOMEVENT_AMQP__URL=amqp_url(args),  # type: ignore[arg-type]
        CUSTOMEVENT_AUTH__ANONYMOUS="false",
        CUSTOMEVENT_AUTH__PRINCIPALS=json.dumps(principals),
        CUSTOMEVENT_LOG__LEVEL="WARNING",
    ) as daemon:
        await _victim(daemon.port, 50)  # warm-up: the password check's cache, the channels
        quiet = await _victim(daemon.port, SENDS)
        cheap: Counter[str] = Counter()
        cheaply = await _flooded(daemon.port, "empty", cheap)
        answers: Counter[str] = Counter()
        flooded = await _flooded(daemon.port, "huge", answers)
    log(f"batches: the flood's answers: {dict(answers)}; the cheap flood's: {dict(cheap)}")
    (quiet50, quiet99), (flood50, flood99) = _percentiles(quiet), _percentiles(flooded)
    cheap50, cheap99 = _percentiles(cheaply)
    note = f"{FLOODERS} clients posting {ITEMS}-item batches; answers {dict(answers)}"
    return [
        Figure("ops send p50, no flood", quiet50, "ms", note="for scale"),
        Figure("ops send p99, no flood", quiet99, "ms", note="for scale"),
        Figure(
            "ops send p50 while another principal floods batches",
            flood50,
            "ms",
            reference=cheap50,
            reference_name="under a flood of empty batches",
            at_most=1.5,
            note=note,
        ),
        Figure(
            "ops send p99 while another principal floods batches",
            flood99,
            "ms",
            reference=cheap99,
            reference_name="under a flood of empty batches",
            at_most=1.5,
            note=note,
        ),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--flood"]:
        asyncio.run(_flood(int(sys.argv[2]), sys.argv[3]))
    else:
        from _common import print_table

        print_table(asyncio.run(main()))
