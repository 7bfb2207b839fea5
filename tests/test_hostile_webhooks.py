"""The webhook edge against hostile peers, with the real RabbitMQ and the docs' receiver example.

Each abuse and its bound:

- **replay as another event**: a captured delivery whose type, kind or principal is changed (in the
  body in structured mode, in the ``ce-*`` headers in binary mode, or by switching modes) fails
  Standard Webhooks verification; two events without properties never share a signature
  (``webhook-id`` differs).
- **late replay**: the receiver example refuses a delivery whose ``webhook-timestamp`` is more
  than 5 minutes old (401, so the daemon dead-letters it).
- **huge reply**: a receiver answering a gzip bomb (400 MiB of zeros, ``Content-Encoding: gzip``)
  or a 200 MiB body costs the daemon at most ``REPLY_BYTES`` (4 KiB) of it: its RSS stays within
  +50 MiB, and the delivery is settled by its status as usual.
- **dripping reply**: a receiver that sends its answer one byte a second is cut at the trigger's
  ``timeout`` (the whole exchange) and the delivery retried, settled within timeout + 5 s;
  the other triggers deliver meanwhile.
- **endless head**: ever more header lines, or one line that never ends: refused by the client's
  bounds long before the timeout, retried, RSS flat.
- **redirects and cookies**: a 307 is not followed (a dead letter at once), a cookie never sent
  back; the environment's proxy carries the deliveries unless ``NO_PROXY`` spares the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from adapter._triggers import REPLY_BYTES
from tests.support.webhooks import (
    SECRET,
    delete_group_queues,
    receiver_example,
    running,
    serving_example,
    trigger,
    until,
)

pytestmark = pytest.mark.rabbitmq

MiB = 1 << 20
RSS_BOUND = 50 * MiB
Answer = Callable[[int, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
def group() -> Iterator[str]:
    name = f"t-hostile-{uuid.uuid4().hex[:10]}"
    yield name
    delete_group_queues(name)


@dataclass
class RawReceiver:
    """An HTTP/1.1 service written by hand: it reads each request whole, records it, then lets
    ``answer(n, writer)`` write whatever it likes (n: 1 for the first request), and closes."""

    answer: Answer
    requests: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@contextlib.asynccontextmanager
async def raw_serving(answer: Answer) -> AsyncIterator[RawReceiver]:
    receiver = RawReceiver(answer)
    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            headers = {}
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            receiver.requests.append((time.monotonic(), headers, body))
            await answer(len(receiver.requests), writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the daemon hung up: what a bounded reader does
        finally:
            writer.close()
            handlers.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    receiver.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield receiver
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


def head(status: int, **headers: str | int) -> bytes:
    lines = [f"HTTP/1.1 {status} Hostile", "Connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def plain(writer: asyncio.StreamWriter, status: int = 204) -> None:
    writer.write(head(status, Content_Length=0))
    await writer.drain()


class PeakRss:
    """The highest RSS of this process while the ``with`` block runs, sampled every 5 ms by a
    thread (the event loop may be too busy to do it)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


# -- replay ----------------------------------------------------------------------------------------


async def _captured(amqp_url: str, group: str, name: str, mode: str) -> list[tuple[dict, bytes]]:
    """Two deliveries of two events without properties, as a receiver got them."""

    async def ok(n: int, writer: asyncio.StreamWriter) -> None:
        await plain(writer)

    async with raw_serving(ok) as receiver:
        async with running(amqp_url, trigger(group, name, receiver.url, mode=mode)) as client:
            await client.send_custom_event(name, event_id=f"{group}-a", principal="dev")
            await client.send_custom_event(name, event_id=f"{group}-b", principal="dev")
            await until(lambda: len(receiver.requests) == 2, "both deliveries")
    return [(headers, body) for _, headers, body in receiver.requests]


def _other_kind(kind: str) -> str:
    return "external" if kind == "internal" else "internal"


def _forgeries(headers: dict[str, str], body: bytes, mode: str) -> dict[str, tuple[dict, bytes]]:
    """Ways to make one captured delivery say another event, keeping its signature."""
    if mode == "binary":
        return {
            "ce-type": ({**headers, "ce-type": "ops.deploy"}, body),
            "kind": ({**headers, "ce-eventkind": _other_kind(headers["ce-eventkind"])}, body),
            "principal": ({**headers, "ce-principal": "admin"}, body),
            "added attribute": ({**headers, "ce-subject": "prod"}, body),
            "as structured": (
                {
                    **{k: v for k, v in headers.items() if not k.startswith("ce-")},
                    "content-type": "application/cloudevents+json",
                },
                body,
            ),
        }
    cloudevent = json.loads(body)
    edited = {
        "ce-type": {**cloudevent, "type": "ops.deploy"},
        "kind": {**cloudevent, "eventkind": _other_kind(cloudevent["eventkind"])},
        "principal": {**cloudevent, "principal": "admin"},
    }
    forged = {what: (headers, json.dumps(value).encode()) for what, value in edited.items()}
    binary = {"ce-specversion": "1.0", "ce-id": cloudevent["id"], "ce-source": "urn:x"}
    binary |= {"ce-type": "ops.deploy", "content-type": "application/json"}
    forged["as binary"] = ({**headers, **binary}, json.dumps(cloudevent["data"] or {}).encode())
    return forged


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_a_captured_delivery_cannot_be_replayed_as_another_event(
    amqp_url: str, group: str, unique_name: str, mode: str
) -> None:
    (first, first_body), (second, second_body) = await _captured(amqp_url, group, unique_name, mode)
    # Two events without properties: their signatures differ.
    assert first["webhook-signature"] != second["webhook-signature"]
    assert first["webhook-id"] != second["webhook-id"]
    if mode == "binary":
        assert first_body == second_body == b"{}"  # what the old body-only HMAC signed alike
    example = receiver_example()
    webhook = Webhook(SECRET)
    example.verified(webhook, list(first.items()), first_body)  # the capture itself verifies
    forgeries = _forgeries(first, first_body, mode)
    for what, (headers, body) in forgeries.items():
        with pytest.raises(WebhookVerificationError):
            example.verified(webhook, list(headers.items()), body)
            pytest.fail(f"the {what} forgery verified")
    # And over HTTP, the example answers 401 to each (so a daemon would dead-letter it).
    handled: list[tuple[str, str, dict[str, str]]] = []
    sent = {name: value for name, value in first.items() if name not in _HOP_HEADERS}
    with serving_example(handled) as url:
        async with httpx.AsyncClient() as http:
            replayed = await http.post(url, content=first_body, headers=sent)
            answers = {}
            for what, (headers, body) in forgeries.items():
                headers = {k: v for k, v in headers.items() if k not in _HOP_HEADERS}
                answers[what] = (await http.post(url, content=body, headers=headers)).status_code
    assert replayed.status_code == 204  # a true redelivery: the receiver de-duplicates it
    assert answers == dict.fromkeys(forgeries, 401)
    assert [name for _, name, _ in handled] == [unique_name]


_HOP_HEADERS = {"host", "content-length", "connection", "accept", "user-agent", "accept-encoding"}


async def test_the_receiver_example_refuses_a_delivery_older_than_5_minutes(
    amqp_url: str, group: str, unique_name: str
) -> None:
    handled: list[tuple[str, str, dict[str, str]]] = []
    with serving_example(handled) as url:
        late = trigger(f"{group}-late", f"{unique_name}.late", url)
        fresh = trigger(group, f"{unique_name}.fresh", url)
        # A delivery captured 301 s ago and replayed now looks like this one.
        async with running(amqp_url, late, clock=lambda: time.time() - 301) as client:
            await client.send_custom_event(f"{unique_name}.late", event_id=f"{group}-late")
            dead = await _dead_letters(client, f"{group}-late")
        async with running(amqp_url, fresh) as client:
            await client.send_custom_event(f"{unique_name}.fresh", event_id=f"{group}-fresh")
            await until(lambda: len(handled) == 1, "the fresh one handled")
    delete_group_queues(f"{group}-late")
    assert [(d.event.event_id, d.reason, d.attempts) for d in dead] == [
        (f"{group}-late", f"{url} answered 401", 1)
    ]
    assert handled == [(f"{group}-fresh", f"{unique_name}.fresh", {})]


async def _dead_letters(client: Any, group: str, seconds: float = 20) -> list[Any]:
    """The group's dead letters, once it has one."""
    async with asyncio.timeout(seconds):
        while not (dead := await client.dead_letters(group)):
            await asyncio.sleep(0.1)
    return list(dead)


# -- huge replies ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """400 MiB of zeros, gzipped (about 400 KiB), made without holding the 400 MiB."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MiB)
    return b"".join(packer.compress(zeros) for _ in range(400)) + packer.flush()


async def _huge(writer: asyncio.StreamWriter, status: int, size: int) -> None:
    writer.write(head(status, Content_Length=size, Content_Type="text/plain"))
    chunk = b"no " * (64 * 1024 // 3)
    sent = 0
    while sent < size:
        piece = chunk[: size - sent]
        writer.write(piece)
        await writer.drain()
        sent += len(piece)


async def _bomb(writer: asyncio.StreamWriter, status: int, bomb: bytes) -> None:
    writer.write(head(status, Content_Length=len(bomb), Content_Encoding="gzip"))
    writer.write(bomb)
    await writer.drain()


@pytest.mark.parametrize(
    ("reply", "status", "outcome"),
    [("gzip bomb", 200, "ok"), ("gzip bomb", 503, "retry"), ("200 MiB", 400, "dead_letter")],
)
async def test_a_huge_reply_leaves_the_daemon_flat_and_settles_by_its_status(
    amqp_url: str,
    group: str,
    unique_name: str,
    gzip_bomb: bytes,
    reply: str,
    status: int,
    outcome: str,
) -> None:
    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        if n > 1:
            return await plain(writer)
        if reply == "gzip bomb":
            await _bomb(writer, status, gzip_bomb)
        else:
            await _huge(writer, status, 200 * MiB)

    async with raw_serving(answer) as receiver:
        hook = trigger(group, unique_name, receiver.url, timeout=10)
        async with running(amqp_url, hook) as client:
            with PeakRss() as rss:
                await client.send_custom_event(unique_name, event_id=f"{group}-1")
                if outcome == "retry":
                    await until(lambda: len(receiver.requests) == 2, "the retry", 30)
                else:
                    await until(lambda: len(receiver.requests) == 1, "the delivery", 30)
                await asyncio.sleep(1)  # settled, and nothing more comes
            dead = await client.dead_letters(group)
    assert rss.growth < RSS_BOUND, f"RSS grew {rss.growth / MiB:.0f} MiB"
    if outcome == "dead_letter":
        assert len(receiver.requests) == 1
        ((reason, attempts),) = [(d.reason, d.attempts) for d in dead]
        assert attempts == 1
        assert reason.startswith(f"{receiver.url} answered 400: no no no")
        assert len(reason) < REPLY_BYTES
    else:
        assert dead == []
        assert len(receiver.requests) == (2 if outcome == "retry" else 1)


# -- slow replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["status line", "body"])
async def test_a_receiver_that_drips_its_reply_is_cut_at_the_timeout(
    amqp_url: str, group: str, unique_name: str, where: str
) -> None:
    timeout = 2.0

    async def drip(n: int, writer: asyncio.StreamWriter) -> None:
        if n > 1:
            return await plain(writer)
        reply = head(200, Content_Length=60) + b"x" * 60
        if where == "body":
            writer.write(reply[:-60])
            reply = reply[-60:]
        for byte in reply:  # a byte a second: a minute for the whole answer
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)

    async def good(n: int, writer: asyncio.StreamWriter) -> None:
        await plain(writer)

    async with raw_serving(drip) as dripping, raw_serving(good) as other:
        hooks = [
            trigger(group, unique_name, dripping.url, timeout=timeout, max_in_flight=1),
            trigger(f"{group}-other", unique_name, other.url),
        ]
        try:
            async with running(amqp_url, *hooks) as client:
                await client.send_custom_event(unique_name, event_id=f"{group}-0")
                await until(lambda: len(dripping.requests) == 1, "the dripped delivery")
                for n in range(1, 6):  # meanwhile, the other trigger delivers
                    await client.send_custom_event(unique_name, event_id=f"{group}-{n}")
                await until(lambda: len(other.requests) == 6, "the other trigger's deliveries")
                held = len(dripping.requests)
                await until(
                    lambda: len(dripping.requests) >= 2, "the retry after the cut", timeout + 5
                )
                await until(lambda: len(dripping.requests) == 7, "the rest, once the slot is free")
                first = f"{group}-0"
                times = [t for t, _, body in dripping.requests if json.loads(body)["id"] == first]
                dead = await client.dead_letters(group)
        finally:
            delete_group_queues(f"{group}-other")
    assert held == 1  # the other trigger delivered while the drip held the slot
    assert len(times) == 2  # the first one cut, and retried (after the ones sent meanwhile)
    assert times[1] - times[0] < timeout + 5
    assert dead == []


# -- what the HTTP client makes of an answer -------------------------------------------------------


@pytest.mark.parametrize("flood", ["header lines", "one header line"])
async def test_an_endless_answer_head_is_cut_and_retried_with_the_daemon_flat(
    amqp_url: str, group: str, unique_name: str, flood: str
) -> None:
    """A receiver whose answer's head never ends, with ever more header lines or one line that
    never ends: the client refuses it past its bounds (128 lines, 8 KiB a line), long before the
    timeout, and the delivery is retried."""

    async def endless(n: int, writer: asyncio.StreamWriter) -> None:
        if n > 1:
            return await plain(writer)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        line = 0
        while line < 20_000:  # 20 MiB or so, unless the daemon hangs up first
            line += 1
            chunk = f"X-Flood-{line}: {'v' * 1000}\r\n" if flood == "header lines" else "v" * 1024
            writer.write(chunk.encode())
            await writer.drain()

    async with raw_serving(endless) as receiver:
        hook = trigger(group, unique_name, receiver.url, timeout=30)
        async with running(amqp_url, hook) as client:
            with PeakRss() as rss:
                started = time.monotonic()
                await client.send_custom_event(unique_name, event_id=f"{group}-1")
                await until(lambda: len(receiver.requests) == 2, "the retry", 30)
                cut_after = receiver.requests[1][0] - started
            dead = await client.dead_letters(group)
    assert rss.growth < RSS_BOUND, f"RSS grew {rss.growth / MiB:.0f} MiB"
    assert cut_after < 10  # refused by its bounds, not by the 30 s timeout
    assert dead == []


async def test_a_redirect_is_not_followed_and_a_cookie_is_not_sent_back(
    amqp_url: str, group: str, unique_name: str
) -> None:
    """A 3xx dead-letters the delivery at once (a trigger posts to its URL and nowhere else), and
    the cookie a receiver set is never sent with a later delivery."""

    async def answer(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            writer.write(
                head(307, Location=elsewhere.url, Set_Cookie="session=stolen", Content_Length=0)
            )
            await writer.drain()
        else:
            await plain(writer)

    async def taken(n: int, writer: asyncio.StreamWriter) -> None:
        await plain(writer)

    async with raw_serving(taken) as elsewhere, raw_serving(answer) as receiver:
        # By name: a cookie jar keeps no cookie of a bare IP address.
        receiver.url = receiver.url.replace("127.0.0.1", "localhost")
        async with running(amqp_url, trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-1")
            await until(lambda: len(receiver.requests) == 1, "the delivery")
            await client.send_custom_event(unique_name, event_id=f"{group}-2")
            await until(lambda: len(receiver.requests) == 2, "the next delivery")
            dead = await client.dead_letters(group)
    assert elsewhere.requests == []
    assert [(d.event.event_id, d.attempts) for d in dead] == [(f"{group}-1", 1)]
    assert dead[0].reason.startswith(f"{receiver.url} answered 307")
    assert "cookie" not in receiver.requests[1][1]


@pytest.mark.parametrize("no_proxy", ["", "127.0.0.1"])
async def test_the_proxy_of_the_environment_carries_the_deliveries_unless_no_proxy_spares_them(
    amqp_url: str, group: str, unique_name: str, no_proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ok(n: int, writer: asyncio.StreamWriter) -> None:
        await plain(writer)

    async with raw_serving(ok) as proxy, raw_serving(ok) as target:
        for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/hook"))
        monkeypatch.setenv("NO_PROXY", no_proxy)
        async with running(amqp_url, trigger(group, unique_name, target.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-1")
            await until(lambda: len(proxy.requests) + len(target.requests) == 1, "the delivery")
    through = proxy if not no_proxy else target
    assert len(through.requests) == 1
    assert through.requests[0][1]["host"] == target.url.split("/")[2]
