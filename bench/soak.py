"""Soak: one daemon with MQTT against the real brokers, mixed traffic and faults on a schedule.

    .venv/bin/python bench/soak.py --minutes 10        # default 10; CI runs --minutes 2

For M minutes, one ``customevent serve`` (its AMQP link through a TCP proxy this script controls,
its MQTT side on a private Mosquitto) takes:

- sends: vRO REST, JSON and SOAP over HTTP; MQTT QoS 1 and QoS 0 from a device;
- waits: plain, pattern and resumable HTTP waits, library waits, and clients that vanish mid-wait;
- faults, in turn: the proxy cutting the AMQP link, RabbitMQ ``stop_app``/``start_app``, and a
  Mosquitto restart;
- hostile actors, all the time: clients that send a request head and drip its body a byte at a
  time (``--slow-clients``, the daemon's connections capped at ``--max-connections``), and a
  publisher of poison messages to the exchange (bodies that are no event, 100k-deep JSON, a
  ``ce-time`` out of range, a NUL in ``ce-id``, forged ``x-original-routing-key`` and
  ``x-event-principal``) on the names the waits and the trigger listen to;
- a webhook trigger on the soak's names whose receiver misbehaves in turn (a gzip bomb, a reply
  dripped a byte a second, a 200 MiB body, a 500) and answers 204 the rest of the time.

Every accepted send (HTTP 2xx or a SOAP response; MQTT QoS 1 acknowledged by Mosquitto) carries a
``soak`` property that a durable audit queue of its own must receive. At the start (after a
warm-up) and at the end the script samples the daemon's RSS and open files and the channels of its
RabbitMQ connection; after the daemon stopped, it counts the wait queues it left behind. Its last
line is one JSON object; it exits 1 when a goal is missed (nothing lost, no queue left, channels
+5 at most, RSS +40 MiB at most, every wait answered by its deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapter import BusUnavailable, Client, LimitExceeded, load_settings  # noqa: E402
from adapter._mqtt._testing import PrivateMosquitto  # noqa: E402
from tests.support.broker import connection_channels, queues_named  # noqa: E402
from tests.support.processes import Daemon, rabbitmqctl  # noqa: E402
from tests.support.proxy import Proxy  # noqa: E402

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
RESULTS = ROOT / ".reliability" / "soak.json"
SOAP_PATH = "/vco/vmware-vmo-webcontrol/webservice"
SOAP = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:vso="http://webservice.vso.dunes.ch"><soapenv:Body><vso:sendCustomEvent>'
    "<vso:eventName>{name}</vso:eventName>"
    "<vso:serializedProperties>soak={soak}</vso:serializedProperties>"
    "</vso:sendCustomEvent></soapenv:Body></soapenv:Envelope>"
)
LATE_MARGIN = 5.0  # a wait answered later than its deadline plus this is late
GOALS = {
    "lost": 0,
    "queues_left": 0,
    "channels_growth": 5,
    "rss_growth_mib": 40,
    "fds_growth": 32,
    "late_waits": 0,
    "webhook_lost": 0,
}
SECRET = "whsec_" + base64.b64encode(b"the soak's webhook secret, 32 b.").decode()
FAULTS = ("link cut", "rabbitmq stop_app", "mosquitto restart")


@dataclass
class Tally:
    """What happened, for the report."""

    accepted: set[str] = field(default_factory=set)
    sends: Counter[str] = field(default_factory=Counter)
    waits: Counter[str] = field(default_factory=Counter)
    late_waits: int = 0
    qos0_sent: int = 0
    hostile: Counter[str] = field(default_factory=Counter)
    faults: list[str] = field(default_factory=list)

    def wait_ended(self, kind: str, outcome: str, elapsed: float, budget: float) -> None:
        self.waits[f"{kind}:{outcome}"] += 1
        if elapsed > budget + LATE_MARGIN:
            self.late_waits += 1
            print(f"soak: late {kind} wait: {elapsed:.1f}s for a {budget:g}s deadline", flush=True)


class Device:
    """An MQTT device on paho's thread: QoS 1 messages count once Mosquitto acknowledged them."""

    def __init__(self, port: int, tally: Tally, prefix: str) -> None:
        self.tally = tally
        self.prefix = prefix
        self._pending: dict[int, str] = {}
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soak-device-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_publish = self._published
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def publish(self, word: str, qos: int, soak: str) -> None:
        topic = f"{self.prefix}/external/{word}/m/{random.randrange(8)}"
        with self._lock:
            info = self.client.publish(topic, f"soak={soak}", qos=qos)
            if qos == 1:
                self._pending[info.mid] = soak
        if qos == 0:
            self.tally.qos0_sent += 1

    def _published(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        with self._lock:
            soak = self._pending.pop(mid, None)
        if soak is not None:
            self.tally.accepted.add(soak)
            self.tally.sends["mqtt-qos1:acked"] += 1

    @property
    def unacked(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Receiver:
    """The trigger's webhook receiver: answers 204, and one request in four misbehaves, in turn:
    a gzip bomb (200, 2 KiB that inflate to 64 MiB), a reply dripped a byte a second, a 200 MiB
    body (200), and a 500. Only the gzip bomb and the huge body are answers the bridge takes as a
    success (2xx in time), beside the 204s; the drip and the 500 must be retried."""

    BOMB = zlib.compressobj(9, zlib.DEFLATED, 31).compress(b"\0" * (64 << 20))
    MISCHIEF = ("gzip-bomb", "drip", "huge", "500")

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.acked: set[str] = set()
        self.answers: dict[str, list[str]] = {}  # soak id -> the answers its deliveries got
        self.ids: dict[str, str] = {}  # soak id -> its event's id, as delivered
        self.requests = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests += 1
                mode = "ok" if self.requests % 4 else self.MISCHIEF[self.requests // 4 % 4]
                self.tally.hostile[f"receiver:{mode}"] += 1
                event = _json_or_none(body)
                soak = _soak_in(event.get("data") if isinstance(event, dict) else None)
                if soak is not None:
                    self.answers.setdefault(soak, []).append(mode)
                    self.ids[soak] = str(event.get("id"))
                    if mode in ("ok", "gzip-bomb", "huge"):  # a success, for the bridge
                        self.acked.add(soak)
                if not await self._answer(writer, mode):
                    return
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            ValueError,
            asyncio.LimitOverrunError,
        ):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, mode: str) -> bool:
        """Answers one request; False when the connection is done with."""
        if mode == "ok":
            writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return True
        if mode == "500":
            writer.write(b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\nconnection: close\r\n\r\noops")
        elif mode == "gzip-bomb":
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nconnection: close\r\n"
                + f"content-length: {len(self.BOMB)}\r\n\r\n".encode()
                + self.BOMB
            )
        elif mode == "huge":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 209715200\r\n\r\n")
            chunk = b"x" * 65536
            for _ in range(3200):  # until the bridge hangs up, which it does after a few KiB
                writer.write(chunk)
                await writer.drain()
        else:  # drip: the head at once, then a byte a second until the bridge gives up
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            for _ in range(100):
                await writer.drain()
                writer.write(b".")
                await asyncio.sleep(1)
        await writer.drain()
        return False


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _soak_in(properties: Any) -> str | None:
    """The ``soak`` property of an event's properties (a JSON object), if it has one."""
    soak = properties.get("soak") if isinstance(properties, dict) else None
    return soak if isinstance(soak, str) else None


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.word = f"soak{uuid.uuid4().hex[:8]}"
        self.tally = Tally()
        self.ids = itertools.count()
        self.stop = asyncio.Event()
        self.http: httpx.AsyncClient | None = None
        self.daemon: Daemon | None = None

    def next_id(self) -> str:
        return f"{self.word}-{next(self.ids)}"

    # -- traffic -------------------------------------------------------------------------

    async def send_over_http(self) -> None:
        assert self.http is not None
        for n in itertools.count():
            if self.stop.is_set():
                return
            soak = self.next_id()
            target = n % 4 == 0
            name = f"{self.word}.w.{n % 8}" if target else f"{self.word}.s.{n % 20}"
            how = ("rest", "json", "soap")[n % 3]
            try:
                if how == "rest":
                    response = await self.http.post(
                        f"/vco/api/customevent/{name}", params={"properties": f"soak={soak}"}
                    )
                elif how == "json":
                    response = await self.http.post(
                        f"/api/v1/events/{name}", json={"properties": {"soak": soak}}
                    )
                else:
                    response = await self.http.post(
                        SOAP_PATH,
                        content=SOAP.format(name=name, soak=soak),
                        headers={"content-type": "text/xml; charset=utf-8"},
                    )
                ok = response.status_code in (200, 202)
                self.tally.sends[f"{how}:{response.status_code}"] += 1
                if ok:
                    self.tally.accepted.add(soak)
            except httpx.HTTPError as exc:
                self.tally.sends[f"{how}:{type(exc).__name__}"] += 1
            await asyncio.sleep(1 / self.args.rate)

    async def send_over_mqtt(self, device: Device) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            device.publish(self.word, n % 2, self.next_id())
            await asyncio.sleep(1 / self.args.rate)

    async def wait_over_http(self, kind: str, index: int) -> None:
        assert self.http is not None
        names = {
            "plain": f"{self.word}.w.{index}",
            "pattern": f"{self.word}.w.*",
            "resumable": f"{self.word}.w.{index}",
        }
        name = names[kind]
        wait_id = f"{self.word}-r{index}" if kind == "resumable" else None
        budget = 10.0 if kind == "resumable" else 5.0
        while not self.stop.is_set():
            params: dict[str, str] = {"timeout": f"{budget:g}s"}
            if wait_id is not None:
                params["wait_id"] = wait_id
            started = time.monotonic()
            vanish = kind == "resumable" and random.random() < 0.3
            try:
                request = self.http.get(f"/api/v1/events/{name}/wait", params=params)
                if vanish:
                    # The client goes away mid-wait; it comes back with the same wait_id.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(request, 1.0)
                    self.tally.waits[f"{kind}:vanished"] += 1
                    continue
                response = await request
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.tally.wait_ended(kind, outcome, time.monotonic() - started, budget)
            if outcome not in ("200", "204"):
                await asyncio.sleep(0.5)

    async def vanish_mid_stream(self) -> None:
        """Stream-mode waits whose clients drop the connection once bound."""
        assert self.daemon is not None
        while not self.stop.is_set():
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.daemon.port)
                    writer.write(
                        f"GET /api/v1/events/{self.word}.v/wait?timeout=30s&stream=true HTTP/1.1"
                        "\r\nHost: soak\r\n\r\n".encode()
                    )
                    await writer.drain()
                    await reader.readline()
                    writer.transport.abort()
                    self.tally.waits["stream:vanished"] += 1
            await asyncio.sleep(1.0)

    # -- hostile actors ------------------------------------------------------------------

    async def slow_body(self, index: int) -> None:
        """A client without credentials that sends a complete head and then drips its body:
        the daemon must cut it at http.body_timeout, and serve everyone else meanwhile."""
        assert self.daemon is not None
        while not self.stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.daemon.port)
                writer.write(
                    f"POST /api/v1/events/{self.word}.slow.{index} HTTP/1.1\r\nHost: soak\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n".encode()
                )
                await writer.drain()
                status = b""
                while not self.stop.is_set():
                    try:
                        status = await asyncio.wait_for(reader.readline(), 1.0)
                        break
                    except TimeoutError:
                        writer.write(b" ")
                        await writer.drain()
                code = status.split(b" ")[1].decode() if status.count(b" ") >= 2 else "closed"
                self.tally.hostile[f"slow-body:{code}"] += 1
            except (OSError, ConnectionError):
                self.tally.hostile["slow-body:connection-error"] += 1
                await asyncio.sleep(0.5)
            finally:
                if writer is not None:
                    writer.transport.abort()

    async def poison(self) -> None:
        """Messages no consumer may believe or choke on, published to the exchange as any
        holder of publish rights could."""
        deep = b"[" * 100_000 + b"]" * 100_000
        kinds: list[tuple[str, bytes, dict[str, Any]]] = [
            ("deep", deep, {}),
            ("not-json", b"\xff not json", {}),
            ("time", b'{"a": "1"}', {"ce-time": "9999-12-31T23:59:59-14:00"}),
            ("nul-id", b'{"a": "1"}', {"ce-id": "bad\x00id"}),
            (
                "forged",
                b'{"a": "1"}',
                {"x-original-routing-key": f"internal.{self.word}.x", "x-event-principal": "admin"},
            ),
        ]
        connection = await aio_pika.connect_robust(self.args.amqp_url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.get_exchange("customevents", ensure=False)
            for n in itertools.count():
                if self.stop.is_set():
                    return
                label, body, headers = kinds[n % len(kinds)]
                # The faults take RabbitMQ away now and then: the publisher waits them out.
                with contextlib.suppress(
                    aio_pika.exceptions.AMQPError,
                    aiormq.exceptions.ChannelInvalidStateError,
                    ConnectionError,
                    TimeoutError,
                    RuntimeError,
                ):
                    await exchange.publish(
                        aio_pika.Message(body, headers=headers),
                        routing_key=f"external.{self.word}.w.{n % 4}",
                    )
                    self.tally.hostile[f"poison:{label}"] += 1
                await asyncio.sleep(0.5)

    async def wait_in_library(self, index: int) -> None:
        settings = load_settings(amqp={"url": self.args.amqp_url, "reconnect_interval": 0.5})
        budget = 5.0
        while not self.stop.is_set():
            try:
                async with Client(settings) as client:
                    while not self.stop.is_set():
                        started = time.monotonic()
                        try:
                            event = await client.wait_custom_event_until(
                                "external", f"{self.word}.w.{index}", timedelta(seconds=budget)
                            )
                            outcome = "event" if event is not None else "deadline"
                        except (BusUnavailable, LimitExceeded) as exc:
                            outcome = type(exc).__name__
                            await asyncio.sleep(0.5)
                        self.tally.wait_ended(
                            "library", outcome, time.monotonic() - started, budget
                        )
            except BusUnavailable:
                self.tally.waits["library:connect-failed"] += 1
                await asyncio.sleep(1)

    # -- faults --------------------------------------------------------------------------

    async def faults(self, proxy: Proxy, mosquitto: PrivateMosquitto) -> None:
        seconds = self.args.minutes * 60
        kinds = self.args.fault_kinds
        period = max(seconds / max(self.args.faults, 1), 15.0)
        await asyncio.sleep(period / 2)
        for kind in itertools.cycle(kinds):
            if self.stop.is_set():
                return
            print(f"soak: fault: {kind}", flush=True)
            self.tally.faults.append(kind)
            if kind == "link cut":
                proxy.cut()
            elif kind == "rabbitmq stop_app":
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                await asyncio.sleep(3)
                await asyncio.to_thread(rabbitmqctl, "start_app")
            else:
                await asyncio.to_thread(mosquitto.restart)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), period)

    # -- samples -------------------------------------------------------------------------

    async def sample(self) -> dict[str, float]:
        assert self.daemon is not None and self.daemon.process is not None
        pid = self.daemon.process.pid
        status = await asyncio.to_thread(Path(f"/proc/{pid}/status").read_text)
        rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmRSS:")
        channels = None
        for _ in range(30):
            with contextlib.suppress(AssertionError):
                channels = await connection_channels(self.word)
                break
            await asyncio.sleep(1)  # reconnecting after a fault
        return {
            "rss_mib": rss_kib / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "channels": float(channels if channels is not None else -1),
        }

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        args = self.args
        audit_name = f"customevent.soak.audit.{self.word}"
        connection = await aio_pika.connect_robust(args.amqp_url)
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "customevents", aio_pika.ExchangeType.TOPIC, durable=True
        )
        audit = await channel.declare_queue(
            audit_name, durable=True, arguments={"x-expires": 3600_000}
        )
        await audit.bind(exchange, f"external.{self.word}.#")
        await connection.close()
        queues_before = {
            *await queues_named("customevent.wait."),
            *await queues_named("customevent/customevents/wait/"),
        }

        trigger_name = f"soak-{self.word}"
        trigger: dict[str, Any] = {
            "name": trigger_name,
            "pattern": f"{self.word}.#",
            "kind": "external",
            "url": "",
            "secret": SECRET,
            "timeout": 2,
        }
        with PrivateMosquitto() as mosquitto:
            async with Proxy.in_front_of(args.amqp_url) as proxy, Receiver(self.tally) as receiver:
                trigger["url"] = receiver.url
                self.daemon = Daemon(
                    f"soak-{self.word}",
                    CUSTOMEVENT_AMQP__URL=proxy.url(),
                    CUSTOMEVENT_AMQP__CONNECTION_NAME=self.word,
                    CUSTOMEVENT_AMQP__RECONNECT_INTERVAL="0.5",
                    CUSTOMEVENT_MQTT__URL=mosquitto.url,
                    CUSTOMEVENT_MQTT__CLIENT_ID=f"bridge-{self.word}",
                    CUSTOMEVENT_LOG__LEVEL="WARNING",
                    CUSTOMEVENT_HTTP__MAX_CONNECTIONS=str(args.max_connections),
                    CUSTOMEVENT_TRIGGERS=json.dumps([trigger]),
                    CUSTOMEVENT_GROUPS__RETRY_INITIAL="0.2",
                    CUSTOMEVENT_GROUPS__RETRY_MAX="2",
                )
                await asyncio.to_thread(self.daemon.start)
                await self._trigger_bound(trigger_name)
                device = Device(mosquitto.port, self.tally, "customevents")
                try:
                    result = await self._traffic(proxy, mosquitto, device)
                    result["webhook_lost"] = await self._webhooks_lost(receiver)
                    result["webhook_requests"] = receiver.requests
                finally:
                    device.close()
                    if self.daemon.process is not None and self.daemon.process.poll() is None:
                        await asyncio.to_thread(self.daemon.stop)
        result["queues_left"] = await self._queues_left(queues_before)
        await self._delete_trigger_queues(trigger_name)
        seen, copies = await self._drain_audit(audit_name)
        lost = self.tally.accepted - seen
        result.update(
            accepted=len(self.tally.accepted),
            lost=len(lost),
            duplicates=copies - len(seen),
            late_waits=self.tally.late_waits,
        )
        if lost:
            print(f"soak: lost, e.g. {sorted(lost)[:10]}", flush=True)
        return result

    async def _traffic(
        self, proxy: Proxy, mosquitto: PrivateMosquitto, device: Device
    ) -> dict[str, Any]:
        assert self.daemon is not None
        async with httpx.AsyncClient(base_url=self.daemon.url, timeout=60) as http:
            self.http = http
            tasks = [
                asyncio.create_task(self.send_over_http()),
                asyncio.create_task(self.send_over_mqtt(device)),
                *(asyncio.create_task(self.wait_over_http("plain", i)) for i in range(4)),
                *(asyncio.create_task(self.wait_over_http("pattern", i)) for i in range(2)),
                *(asyncio.create_task(self.wait_over_http("resumable", i)) for i in range(2)),
                *(asyncio.create_task(self.wait_in_library(i)) for i in range(2)),
                asyncio.create_task(self.vanish_mid_stream()),
                *(asyncio.create_task(self.slow_body(i)) for i in range(self.args.slow_clients)),
                asyncio.create_task(self.poison()),
            ]
            await asyncio.sleep(min(15.0, self.args.minutes * 60 / 4))  # warm-up
            start = await self.sample()
            tasks.append(asyncio.create_task(self.faults(proxy, mosquitto)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.args.minutes * 60)
            self.stop.set()
            print("soak: traffic stopped; letting waits end and the bridge drain", flush=True)
            done, pending = await asyncio.wait(tasks, timeout=60)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            for _ in range(120):  # MQTT QoS 1 messages still in paho's hands
                if device.unacked == 0:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)
            end = await self.sample()
        return {
            "minutes": self.args.minutes,
            "faults": len(self.tally.faults),
            "sends": dict(self.tally.sends),
            "waits": dict(self.tally.waits),
            "hostile": dict(self.tally.hostile),
            "qos0_sent": self.tally.qos0_sent,
            "mqtt_unacked_at_end": device.unacked,
            "channels_growth": int(end["channels"] - start["channels"]),
            "rss_growth_mib": round(end["rss_mib"] - start["rss_mib"], 1),
            "fds_growth": int(end["fds"] - start["fds"]),
            "start": start,
            "end": end,
        }

    async def _trigger_bound(self, name: str) -> None:
        """Waits until the trigger's group queue exists: sends before it would not reach it."""
        for _ in range(60):
            if await queues_named(f"customevent/customevents/group/{name}"):
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"soak: the trigger {name}'s queue was never declared")

    async def _webhooks_lost(self, receiver: Receiver) -> int:
        """Accepted events the receiver never took with a success, once retries had time."""
        for _ in range(120):
            missing = self.tally.accepted - receiver.acked
            if not missing:
                return 0
            await asyncio.sleep(0.5)
        print(f"soak: webhooks never delivered, e.g. {sorted(missing)[:10]}", flush=True)
        for soak in sorted(missing)[:10]:
            print(f"soak: {soak}: answers {receiver.answers.get(soak, [])}", flush=True)
            self._daemon_said(receiver.ids.get(soak))
        columns = ("name", "messages_ready", "messages_unacknowledged", "consumers")
        listing = await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "list_queues", *columns],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in listing.stdout.splitlines():
            if f"group/soak-{self.word}" in line:
                print(f"soak: queue {line}", flush=True)
        await self._why_dead(receiver, missing)
        return len(missing)

    def _daemon_said(self, event_id: str | None) -> None:
        """The daemon's log lines about one event."""
        assert self.daemon is not None
        if event_id is None:
            return
        with contextlib.suppress(OSError):
            lines = self.daemon.log_path.read_text(errors="replace").splitlines()
            for line in [line for line in lines if event_id in line][:8]:
                print(f"soak: daemon: {line[:400]}", flush=True)

    async def _why_dead(self, receiver: Receiver, missing: set[str]) -> None:
        """Prints the dead letters among ``missing``, with their reasons."""
        connection = await aio_pika.connect(self.args.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                f"customevent/customevents/group/soak-{self.word}/dead", passive=True
            )
            while (message := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
                soak = _soak_in(_json_or_none(message.body))
                if soak in missing:
                    headers = message.headers or {}
                    print(
                        f"soak: {soak} dead-lettered after {headers.get('x-deadletter-attempts')!r}"
                        f" attempts: {headers.get('x-deadletter-reason')!r}",
                        flush=True,
                    )

    async def _delete_trigger_queues(self, name: str) -> None:
        for queue in await queues_named(f"customevent/customevents/group/{name}"):
            await asyncio.to_thread(rabbitmqctl, "delete_queue", queue)

    async def _queues_left(self, before: set[str]) -> int:
        # Waits whose clean-up met an outage leave queues that expire on their own (bucket end
        # plus the grace): give them that long, then count what is still there.
        left: set[str] = set()
        for _ in range(45):
            left = {
                *await queues_named("customevent.wait."),
                *await queues_named("customevent/customevents/wait/"),
            } - before
            if not left:
                return 0
            await asyncio.sleep(1)
        print(f"soak: queues left: {sorted(left)[:10]}", flush=True)
        return len(left)

    async def _drain_audit(self, name: str) -> tuple[set[str], int]:
        connection = await aio_pika.connect(self.args.amqp_url)
        seen: set[str] = set()
        copies = 0
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(name, passive=True)
            while True:
                message = await queue.get(no_ack=True, fail=False, timeout=10)
                if message is None:
                    break
                try:
                    soak = json.loads(message.body).get("soak")
                except (ValueError, RecursionError, AttributeError):
                    continue  # the poison publisher's
                if isinstance(soak, str):
                    seen.add(soak)
                    copies += 1
            await queue.delete(if_unused=False, if_empty=False)
        return seen, copies


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("CUSTOMEVENT_AMQP__URL", DEFAULT_AMQP_URL)
    )
    parser.add_argument("--rate", type=float, default=20.0, help="sends per second, per kind")
    parser.add_argument("--faults", type=int, default=0, help="faults in all (0: one a minute)")
    parser.add_argument(
        "--fault-kinds",
        default=",".join(FAULTS),
        help=f"the faults to take turns, comma-separated (default: {','.join(FAULTS)}); "
        "leave 'rabbitmq stop_app' out on a RabbitMQ others are using",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the result")
    parser.add_argument(
        "--slow-clients", type=int, default=100, help="clients dripping a request body at once"
    )
    parser.add_argument(
        "--max-connections", type=int, default=256, help="the daemon's http.max_connections"
    )
    args = parser.parse_args(argv)
    args.fault_kinds = [kind.strip() for kind in args.fault_kinds.split(",") if kind.strip()]
    unknown = sorted(set(args.fault_kinds) - set(FAULTS))
    if unknown or not args.fault_kinds:
        parser.error(f"--fault-kinds: {', '.join(unknown) or 'none given'}; known: {FAULTS}")
    if args.faults <= 0:
        args.faults = max(3, round(args.minutes))
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # The script's own clients reconnect through every fault: their libraries' accounts of it
    # would bury the figures.
    logging.basicConfig(level=logging.WARNING, format="soak: %(name)s: %(message)s")
    for noisy in ("aio_pika", "aiormq", "adapter"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    try:
        subprocess.run(["rabbitmqctl", "-q", "await_startup"], check=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        sys.exit(f"soak: RabbitMQ is not running here ({exc})")
    soak = Soak(args)
    result = asyncio.run(soak.run())
    missed = [key for key, limit in GOALS.items() if result[key] > limit]
    result["goals_missed"] = missed
    result["at"] = time.strftime("%Y-%m-%d", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {
        key: result[key]
        for key in (
            "minutes",
            "accepted",
            "lost",
            "duplicates",
            "queues_left",
            "channels_growth",
            "rss_growth_mib",
            "fds_growth",
            "late_waits",
            "webhook_lost",
            "faults",
        )
    }
    print(f"soak: sends {result['sends']}", flush=True)
    print(f"soak: waits {result['waits']}", flush=True)
    print(f"soak: hostile {result['hostile']}", flush=True)
    if missed:
        print(f"soak: goals missed: {', '.join(missed)} (goals: {GOALS})", flush=True)
    print(json.dumps(summary))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
