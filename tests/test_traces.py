"""Traces: the W3C trace context on every hop and the OpenTelemetry spans of a send and of what
consumes it. End to end (the issue's Done-when): a send through HTTP and through MQTT v5 with a
``traceparent`` finds its trace id on the AMQP message (read with aio-pika), in ``customevent wait
--json``, in the ``listen`` command's environment and in the webhook delivery, and with the SDK's
in-memory exporter the spans form one trace with the messaging semantic conventions. Hostile: a
forged, oversized or malformed trace context on HTTP, MQTT and the bus is dropped, never
propagated, and never costs the event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import paho.mqtt.client as mqtt
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapter import Client, ConfigurationError, Event, load_settings
from adapter._bus.amqp._codec import message_headers
from adapter._listen import listen
from adapter._mqtt import MqttBridge
from adapter._mqtt._mapping import egress_message, with_mqtt_trace
from adapter._trace_context import (
    MAX_TRACESTATE,
    check_trace,
    check_traceparent,
    trace_from_pairs,
)
from adapter._tracing import configure, enabled, remote_context
from adapter._triggers import Triggers
from tests.support.http import HEADERS, asgi_client, make_settings, until_waiting
from tests.support.mqtt import unique_prefix
from tests.support.processes import clean_env, customevent
from tests.support.webhooks import RETRY, Receiver, serving, trigger, until

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
STATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

FORGED: list[Any] = [
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # an all-zero trace id
    f"00-{TRACE}-" + "0" * 16 + "-01",  # an all-zero parent id
    PARENT.upper(),  # W3C: lowercase hex only
    "ff" + PARENT[2:],  # version ff is invalid
    "01" + PARENT[2:],  # a version this bridge does not read
    PARENT + "-00",  # extra fields
    PARENT[:-1],
    PARENT + "x" * 10000,  # oversized
    "00-abc-def-01",
    "",
    "00-4bf92f3577b34da6a3ce929d0e0e473\n-00f067aa0ba902b7-01",
]


def _trace_id(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if traceparent else None


# -- the W3C rules ------------------------------------------------------------------------------


def test_a_valid_trace_context_is_kept_as_given() -> None:
    assert check_trace(PARENT, STATE) == (PARENT, STATE)
    assert check_trace(PARENT, None) == (PARENT, None)
    assert check_traceparent(PARENT.replace("-01", "-00")) is not None  # not sampled: still a trace


@pytest.mark.parametrize("forged", FORGED)
def test_a_forged_traceparent_is_dropped_with_its_tracestate(forged: str) -> None:
    assert check_trace(forged, STATE) == (None, None)


@pytest.mark.parametrize(
    "state",
    [
        "x" * (MAX_TRACESTATE + 1),
        ",".join(f"k{i}=v" for i in range(33)),  # more than 32 members
        "Upper=v",
        "k=v=w",
        "k=v,k=w",  # a key twice
        "k=",
        "k=v\u00e9",
        "k=v\n",
        ",",
    ],
)
def test_a_forged_tracestate_is_dropped_and_the_traceparent_kept(state: str) -> None:
    assert check_trace(PARENT, state) == (PARENT, None)


def test_a_trace_context_given_twice_is_dropped() -> None:
    other = f"00-{'1' * 32}-{'2' * 16}-01"
    assert trace_from_pairs([("traceparent", PARENT), ("TraceParent", other)]) == (None, None)
    assert trace_from_pairs([("traceparent", PARENT), ("tracestate", STATE)]) == (PARENT, STATE)
    assert trace_from_pairs([(b"traceparent", PARENT), ("traceparent", 7)]) == (None, None)


def test_the_event_carries_it_in_json_and_as_a_cloudevent_and_drops_a_forged_one() -> None:
    event = Event("a.b", "external", {}, traceparent=PARENT, tracestate=STATE)
    data = event.to_json()
    assert (data["traceparent"], data["tracestate"]) == (PARENT, STATE)
    assert Event.from_json(data) == event
    forged = Event.from_json({**data, "traceparent": PARENT + "0", "tracestate": STATE})
    assert (forged.traceparent, forged.tracestate) == (None, None)
    assert "traceparent" not in Event("a.b", "external", {}).to_json()
    headers = message_headers(event)
    assert headers["traceparent"] == headers["ce-traceparent"] == PARENT
    assert headers["tracestate"] == headers["ce-tracestate"] == STATE


def _mqtt_message(user: list[tuple[str, str]]) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=b"ce/external/a")
    message.properties = Properties(PacketTypes.PUBLISH)
    message.properties.UserProperty = user
    return message


def test_mqtt_user_properties_give_the_trace_and_egress_gives_it_on() -> None:
    event = Event("a.b", "external", {})
    traced = with_mqtt_trace(event, _mqtt_message([("traceparent", PARENT), ("tracestate", STATE)]))
    assert (traced.traceparent, traced.tracestate) == (PARENT, STATE)
    for forged in FORGED:
        assert with_mqtt_trace(event, _mqtt_message([("traceparent", forged)])) == event
    out = egress_message("ce", traced, v5=True)
    assert out.properties is not None
    assert ("traceparent", PARENT) in out.properties.UserProperty


# -- configuration ------------------------------------------------------------------------------


@contextlib.contextmanager
def _global_provider(provider: trace.TracerProvider | None) -> Iterator[None]:
    """``provider`` as the process's tracer provider for a test (None: none at all), then the
    one before: the API sets it once per process, so the test undoes that by hand."""
    once = trace._TRACER_PROVIDER_SET_ONCE
    saved = trace._TRACER_PROVIDER, once._done
    trace._TRACER_PROVIDER, once._done = None, False
    if provider is not None:
        trace.set_tracer_provider(provider)
    try:
        yield
    finally:
        trace._TRACER_PROVIDER, once._done = saved


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with _global_provider(provider):
        yield exporter
    provider.shutdown()


def test_off_by_default_and_on_only_for_an_exporter_that_exists() -> None:
    with _global_provider(None):
        assert not enabled()
        assert configure({}) is None
        assert configure({"OTEL_TRACES_EXPORTER": "none"}) is None
        assert configure({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}) is None
        assert not enabled()
        with pytest.raises(ConfigurationError, match="'jaeger'"):
            configure({"OTEL_TRACES_EXPORTER": "jaeger"})
        with pytest.raises(ConfigurationError, match="http/protobuf"):
            configure({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
        provider = configure({"OTEL_TRACES_EXPORTER": "otlp"})
        try:
            assert isinstance(provider, TracerProvider) and enabled()
            assert provider.resource.attributes["service.name"] == "customevent-bridge"
        finally:
            provider.shutdown()


# -- one bus or the other -----------------------------------------------------------------------


async def test_untraced_the_callers_context_passes_through_unchanged(
    client: Client, kind: str, unique_name: str
) -> None:
    assert not enabled()
    token = otel_context.attach(remote_context(PARENT, STATE))
    try:
        async with client.expect(kind, unique_name, until=timedelta(seconds=10)) as w:
            await client.send_custom_event(unique_name, {"a": "1"}, kind=kind)
            event = await w
    finally:
        otel_context.detach(token)
    assert event is not None
    assert (event.traceparent, event.tracestate) == (PARENT, STATE)
    untraced = await client.send_custom_event(unique_name, kind=kind)
    assert untraced.event_id


async def test_traced_the_send_is_a_producer_span_whose_context_the_event_carries(
    client: Client, kind: str, unique_name: str, spans: InMemorySpanExporter
) -> None:
    token = otel_context.attach(remote_context(PARENT, None))
    try:
        async with client.expect(kind, unique_name, until=timedelta(seconds=10)) as w:
            await client.send_custom_event(unique_name, {"a": "1"}, kind=kind, event_id="e-1")
            event = await w
    finally:
        otel_context.detach(token)
    assert event is not None and _trace_id(event.traceparent) == TRACE
    (producer,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert producer.context is not None and producer.parent is not None
    assert producer.parent.span_id == int(PARENT.split("-")[2], 16)
    assert event.traceparent == f"00-{TRACE}-{producer.context.span_id:016x}-01"
    attributes = dict(producer.attributes or {})
    assert attributes["messaging.rabbitmq.destination.routing_key"] == f"{kind}.{unique_name}"
    assert attributes["messaging.message.id"] == "e-1"
    assert attributes["messaging.operation.type"] == "send"
    (consumer,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id


# -- the bus: forged headers --------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_a_forged_trace_context_on_the_bus_is_dropped_and_the_event_kept(
    amqp_url: str, unique_name: str
) -> None:
    forged: list[dict[str, Any]] = [{"traceparent": value} for value in FORGED]
    forged += [
        {"traceparent": bytearray(b"\xff\xfe")},
        {"traceparent": {"nested": PARENT}},
        {"traceparent": 12345},
        {"ce-traceparent": "00-abc-def-01", "ce-specversion": "1.0"},
        {"traceparent": PARENT, "tracestate": "x" * 100_000},
    ]
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    async with Client(load_settings(amqp={"url": amqp_url})) as client:
        async with client.bus.subscribe("internal", unique_name, deadline) as subscription:
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange("customevents")
                for i, headers in enumerate(forged):
                    await exchange.publish(
                        aio_pika.Message(b'{"i":"%d"}' % i, headers=headers),
                        routing_key=f"internal.{unique_name}",
                    )
            got = []
            for _ in forged:
                event = await subscription.get()
                assert event is not None
                got.append(event)
    assert [e.properties["i"] for e in got] == [str(i) for i in range(len(forged))]
    last = got[-1]
    assert (last.traceparent, last.tracestate) == (PARENT, None)  # the tracestate was oversized
    assert all(e.traceparent is None for e in got[:-1])


# -- end to end: HTTP and MQTT v5 in, AMQP, wait --json, listen, webhook -------------------------


async def _amqp_message(
    amqp_url: str, queue_name: str, *, keep: bool = False
) -> aio_pika.abc.AbstractIncomingMessage:
    """The next message of the queue, which is deleted after it unless ``keep``."""
    connection = await aio_pika.connect(amqp_url)
    async with connection, asyncio.timeout(20):
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name)
        while True:
            message = await queue.get(fail=False, no_ack=True)
            if message is not None:
                if not keep:
                    await queue.delete(if_unused=False, if_empty=False)
                return message
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _tap(amqp_url: str, key: str) -> AsyncIterator[str]:
    """A queue of our own bound to ``key`` on the events exchange, as any AMQP consumer has."""
    name = f"customevent.test.{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("customevents")
        queue = await channel.declare_queue(name, arguments={"x-expires": 600_000})
        await queue.bind(exchange, key)
    yield name


def _publish_mqtt(mqtt_url: str, topic: str, payload: bytes, user: list[tuple[str, str]]) -> None:
    port = int(mqtt_url.rsplit(":", 1)[1])
    device = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"dev-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    device.connect("127.0.0.1", port)
    device.loop_start()
    try:
        properties = Properties(PacketTypes.PUBLISH)
        properties.UserProperty = user
        device.publish(topic, payload, qos=1, properties=properties).wait_for_publish(10)
    finally:
        device.disconnect()
        device.loop_stop()


def _one_trace(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        s for s in spans.get_finished_spans() if s.context and f"{s.context.trace_id:032x}" == TRACE
    ]


@pytest.mark.rabbitmq
@pytest.mark.mosquitto
@pytest.mark.parametrize("edge", ["http", "mqtt"])
async def test_one_trace_from_the_edge_to_every_consumer(
    amqp_url: str, mqtt_url: str, tmp_path: Path, spans: InMemorySpanExporter, edge: str
) -> None:
    word = f"w{uuid.uuid4().hex[:10]}"
    name = f"t.traces.{word}"
    hook, listener = f"t-hook-{word}", f"t-listen-{word}"
    prefix = unique_prefix()
    seen = tmp_path / "traceparent"
    command = [
        sys.executable,
        "-c",
        f"import os; open({str(seen)!r}, 'w').write(os.environ.get('TRACEPARENT', '-'))",
    ]
    receiver = Receiver()
    async with serving(receiver), _tap(amqp_url, f"external.{name}") as tap:
        mqtt_options = {"prefix": prefix, "client_id": f"bridge-{prefix}", "session_expiry": 120}
        settings = make_settings(amqp_url, groups=RETRY, mqtt={"url": mqtt_url, **mqtt_options})
        hooks = load_settings(
            amqp={"url": amqp_url},
            groups=RETRY,
            triggers=[trigger(hook, name, receiver.url, mode="structured", kind="external")],
        )
        waiter = await asyncio.create_subprocess_exec(
            *customevent("wait", name, "--kind", "external", "--until", "60s", "--json"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(CUSTOMEVENT_AMQP__URL=amqp_url),
        )
        stop = asyncio.Event()
        try:
            async with Client(settings) as client, Triggers(hooks, client):
                async with client.subscribe(name, group=listener, kind="external"):
                    pass  # the group exists before the send; listen joins it below
                listening = asyncio.create_task(
                    listen(
                        client,
                        name,
                        group=listener,
                        kind="external",
                        command=command,
                        command_timeout=20,
                        show=lambda _: None,
                        stop=stop,
                    )
                )
                await _until_bound(amqp_url, name)
                if edge == "http":
                    async with asgi_client(client, settings) as http:
                        sent = await http.post(
                            f"/api/v1/events/{name}",
                            json={"properties": {"a": "1"}},
                            headers={**HEADERS, "traceparent": PARENT, "tracestate": STATE},
                        )
                        assert sent.status_code == 202, sent.text
                else:
                    async with MqttBridge(settings, client) as bridge:
                        await asyncio.wait_for(bridge.wait_connected(), 20)
                        user = [("traceparent", PARENT), ("tracestate", STATE)]
                        topic = f"{prefix}/external/{name.replace('.', '/')}"
                        await asyncio.to_thread(_publish_mqtt, mqtt_url, topic, b"a=1", user)
                        message = await _amqp_message(amqp_url, tap)
                await until(
                    lambda: seen.exists() and bool(receiver.received), "listen and the hook ran"
                )
                stop.set()
                await listening
            if edge == "http":
                message = await _amqp_message(amqp_url, tap)
            async with asyncio.timeout(30):
                out, err = (part.decode() for part in await waiter.communicate())
        finally:
            if waiter.returncode is None:
                waiter.kill()
            stop.set()
            from tests.support.webhooks import delete_group_queues

            delete_group_queues(hook)
            delete_group_queues(listener)
    headers = message.headers or {}
    assert _trace_id(str(headers["traceparent"])) == TRACE
    assert headers["tracestate"] == STATE
    assert waiter.returncode == 0, err
    assert _trace_id(json.loads(out)["traceparent"]) == TRACE
    assert _trace_id(seen.read_text()) == TRACE
    _, delivered, body = receiver.received[0]
    assert _trace_id(delivered["traceparent"]) == TRACE
    assert _trace_id(json.loads(body)["traceparent"]) == TRACE  # signed: in the body

    traced = _one_trace(spans)
    (producer,) = [s for s in traced if s.kind is SpanKind.PRODUCER]
    assert producer.name == "publish customevents"
    assert producer.parent is not None and f"{producer.parent.span_id:016x}" == PARENT.split("-")[2]
    assert dict(producer.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.destination.name": "customevents",
        "messaging.rabbitmq.destination.routing_key": f"external.{name}",
        "messaging.message.id": json.loads(out)["event_id"],
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
    }
    assert producer.context is not None
    assert str(headers["traceparent"]) == f"00-{TRACE}-{producer.context.span_id:016x}-01"
    consumers = {
        (s.attributes or {}).get("messaging.consumer.group.name"): s
        for s in traced
        if s.kind is SpanKind.CONSUMER
    }
    assert {hook, listener} <= set(consumers)
    for span in consumers.values():
        assert span.name == "process customevents"
        assert span.parent is not None and span.parent.span_id == producer.context.span_id
    (post,) = [s for s in traced if s.kind is SpanKind.CLIENT]
    assert post.parent is not None and post.context is not None
    assert post.parent.span_id == consumers[hook].context.span_id  # type: ignore[union-attr]
    assert delivered["traceparent"] == f"00-{TRACE}-{post.context.span_id:016x}-01"
    listened = consumers[listener].context
    assert listened is not None and seen.read_text() == f"00-{TRACE}-{listened.span_id:016x}-01"


async def _until_bound(amqp_url: str, name: str) -> None:
    """Until a wait queue of another process is bound to ``external.<name>``."""
    key = f"external.{name}"
    async with asyncio.timeout(30):
        while True:
            listing = await asyncio.to_thread(
                subprocess.run,
                ["rabbitmqctl", "-q", "list_bindings", "routing_key", "destination_name"],
                capture_output=True,
                text=True,
            )
            if any(
                line.split("\t")[0] == key and "wait" in line
                for line in listing.stdout.splitlines()
            ):
                return
            await asyncio.sleep(0.2)


# -- every HTTP edge, and the HTTP wait ---------------------------------------------------------

_SOAP = (
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:web="http://webservice.vso.dunes.ch"><soapenv:Body><web:sendCustomEvent>'
    "<web:eventName>{name}</web:eventName><web:serializedProperties>a=1"
    "</web:serializedProperties></web:sendCustomEvent></soapenv:Body></soapenv:Envelope>"
)


def _request(edge: str, name: str, trace: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of ``http.request`` that send ``name`` through ``edge``, with the
    trace context ``trace`` where that edge carries it."""
    if edge == "vro":
        return {
            "url": f"/vco/api/customevent/{name}",
            "params": {"properties": "a=1"},
            "headers": trace,
        }
    if edge == "json":
        return {
            "url": f"/api/v1/events/{name}",
            "json": {"properties": {"a": "1"}},
            "headers": trace,
        }
    if edge == "soap":
        return {
            "url": "/vmware-vmo-webcontrol/webservice",
            "content": _SOAP.format(name=name),
            "headers": {"content-type": "text/xml", **trace},
        }
    ce = {"ce-specversion": "1.0", "ce-id": uuid.uuid4().hex, "ce-source": "urn:x", "ce-type": name}
    if edge == "cloudevent-binary":  # the extension attribute as the binding's ce- header
        headers = {**ce, "content-type": "application/json"}
        headers.update({f"ce-{key}": value for key, value in trace.items()})
        return {"url": "/api/v1/cloudevents", "content": b'{"a":"1"}', "headers": headers}
    attributes = {key[3:]: value for key, value in ce.items()}
    return {
        "url": "/api/v1/cloudevents",
        "content": json.dumps({**attributes, **trace, "data": {"a": "1"}}),
        "headers": {"content-type": "application/cloudevents+json"},
    }


HTTP_EDGES = ["vro", "json", "soap", "cloudevent-binary", "cloudevent-structured"]


@pytest.mark.parametrize("edge", HTTP_EDGES)
async def test_every_http_edge_takes_the_trace_context_and_drops_a_forged_one(
    client: Client, unique_name: str, edge: str
) -> None:
    sent: list[Event | None] = []
    async with asgi_client(client, make_settings()) as http:
        http.headers.update(HEADERS)
        for trace in (
            {"traceparent": PARENT, "tracestate": STATE},
            {"traceparent": PARENT.replace("-01", "-0"), "tracestate": STATE},
            {"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"},
            {"traceparent": PARENT, "tracestate": "x" * 2000},
        ):
            async with client.expect("external", unique_name, until=timedelta(seconds=10)) as w:
                response = await http.request("POST", **_request(edge, unique_name, trace))
                assert response.status_code < 300, response.text
                sent.append(await w)
    assert all(event is not None for event in sent)
    traces = [(e.traceparent, e.tracestate) for e in sent if e is not None]
    assert traces == [(PARENT, STATE), (None, None), (None, None), (PARENT, None)]


@pytest.mark.parametrize("accept", ["application/json", "application/cloudevents+json"])
async def test_the_http_wait_answers_with_the_trace(
    client: Client, unique_name: str, accept: str
) -> None:
    async with asgi_client(client, make_settings()) as http:
        http.headers.update(HEADERS)
        waiting = asyncio.create_task(
            http.get(
                f"/api/v1/events/{unique_name}/wait",
                params={"timeout": "20s"},
                headers={"accept": accept},
            )
        )
        await until_waiting(client)
        token = otel_context.attach(remote_context(PARENT, STATE))
        try:
            await client.send_custom_event(unique_name, kind="external")
        finally:
            otel_context.detach(token)
        response = await waiting
    assert response.status_code == 200
    body = response.json()
    assert (body["traceparent"], body["tracestate"]) == (PARENT, STATE)
    if accept != "application/json":
        assert body["specversion"] == "1.0"  # the extension attribute of the CloudEvent


# -- tracing off: consumers continue the event's own trace ---------------------------------------


async def test_untraced_listen_gives_its_command_the_events_own_trace(
    tmp_path: Path, unique_name: str
) -> None:
    assert not enabled()
    seen = tmp_path / "env"
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ.get('TRACEPARENT', '-'))"
    stop = asyncio.Event()
    async with Client(load_settings(amqp={"url": None})) as client:
        async with client.subscribe(unique_name, group="g"):
            pass
        await client.send_event(
            Event(unique_name, "internal", {}, traceparent=PARENT, tracestate=STATE)
        )
        listening = asyncio.create_task(
            listen(
                client,
                unique_name,
                group="g",
                kind="internal",
                command=[sys.executable, "-c", script, str(seen)],
                command_timeout=20,
                show=lambda _: None,
                stop=stop,
            )
        )
        await until(seen.exists, "the command ran")
        stop.set()
        assert await listening == 1
    assert seen.read_text() == PARENT


def test_a_json_log_line_names_the_trace_it_is_written_in() -> None:
    import logging

    from adapter._http._logging import JsonFormatter

    record = logging.makeLogRecord({"msg": "hello", "levelname": "INFO"})
    assert "trace_id" not in json.loads(JsonFormatter().format(record))
    token = otel_context.attach(remote_context(PARENT, None))
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        otel_context.detach(token)
    assert line["trace_id"] == TRACE


@pytest.mark.rabbitmq
@pytest.mark.mosquitto
async def test_a_forged_trace_context_over_mqtt_is_dropped_and_the_event_published(
    amqp_url: str, mqtt_url: str
) -> None:
    word = f"w{uuid.uuid4().hex[:10]}"
    name = f"t.traces.{word}"
    prefix = unique_prefix()
    options = {"prefix": prefix, "client_id": f"bridge-{prefix}", "session_expiry": 120}
    settings = load_settings(amqp={"url": amqp_url}, mqtt={"url": mqtt_url, **options})
    topic = f"{prefix}/external/{name.replace('.', '/')}"
    forged = [
        [("traceparent", PARENT + "x" * 20000), ("tracestate", STATE)],
        [("traceparent", PARENT), ("traceparent", PARENT)],
        [("traceparent", PARENT.upper())],
        [("tracestate", STATE)],
    ]
    async with _tap(amqp_url, f"external.{name}") as tap:
        async with Client(settings) as client, MqttBridge(settings, client) as bridge:
            await asyncio.wait_for(bridge.wait_connected(), 20)
            for i, user in enumerate(forged):
                await asyncio.to_thread(_publish_mqtt, mqtt_url, topic, b"a=1", user)
                message = await _amqp_message(amqp_url, tap, keep=i < len(forged) - 1)
                headers = message.headers or {}
                assert message.body == b'{"a":"1"}'
                assert not {"traceparent", "tracestate", "ce-traceparent"} & set(headers)
