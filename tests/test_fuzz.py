"""Fuzzing the edges: SOAP envelopes at the daemon, MQTT topics and payloads at the bridge.

The result must always be the same: no crash, no 5xx but a SOAP fault or 503, and the next good
request still served. (The codec and names have their own property tests; schemathesis covers
the OpenAPI document.) ``HYPOTHESIS_PROFILE=long`` runs longer campaigns.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from adapter import Client, Settings
from tests.support.http import HEADERS, asgi_client, make_settings
from tests.support.mqtt import (
    Collector,
    Device,
    bridge_settings,
    private_exchange,
    running_bridge,
    unique_prefix,
)
from tests.support.reliability import record

GOOD = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:vco="http://webservice.vso.dunes.ch"><soapenv:Body><vco:sendCustomEvent>'
    "<vco:eventName>t.fuzz.ok</vco:eventName>"
    "<vco:serializedProperties>a=1</vco:serializedProperties>"
    "</vco:sendCustomEvent></soapenv:Body></soapenv:Envelope>"
)
# Examples per run of the slower edge fuzzers, by hypothesis profile (tests/conftest.py).
EDGE_EXAMPLES = {"default": 200, "ci": 1000, "long": 50_000}.get(
    os.environ.get("HYPOTHESIS_PROFILE", "default"), 200
)
SOAP_PATH = "/vco/vmware-vmo-webcontrol/webservice"
FAULTCODE = re.compile(rb"<faultcode>(?:[\w.-]+:)?(\w+)</faultcode>")


def _envelope(prefix: str, declaration: bool, name: str, props: str | None, extra: str) -> str:
    props_element = (
        f"<vco:serializedProperties>{escape(props)}</vco:serializedProperties>"
        if props is not None
        else '<vco:serializedProperties xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:nil="true"/>'
    )
    body = (
        f'<{prefix}:Envelope xmlns:{prefix}="http://schemas.xmlsoap.org/soap/envelope/" '
        f'xmlns:vco="http://webservice.vso.dunes.ch"><{prefix}:Body><vco:sendCustomEvent>'
        f"<vco:eventName>{escape(name)}</vco:eventName>{props_element}{extra}"
        f"</vco:sendCustomEvent></{prefix}:Body></{prefix}:Envelope>"
    )
    return ('<?xml version="1.0"?>' if declaration else "") + body


structured = st.builds(
    _envelope,
    prefix=st.sampled_from(["soapenv", "SOAP-ENV", "s", "x1"]),
    declaration=st.booleans(),
    name=st.one_of(st.text(max_size=40), st.text(max_size=20).map(lambda t: "t.fuzz." + t)),
    props=st.none() | st.text(max_size=80),
    extra=st.sampled_from(["", "<vco:other>1</vco:other>", "<!-- c -->", "<vco:eventName>b"]),
).map(lambda text: text.encode("utf-8", "surrogatepass"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(GOOD.encode())
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=12))
        elif position < len(data):
            del data[position : position + draw(st.integers(1, 20))]
    return bytes(data)


hostile = st.sampled_from(
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        + GOOD[GOOD.index("<soapenv:Envelope") :].replace("t.fuzz.ok", "&b;").encode(),
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + GOOD[GOOD.index("<soapenv:Envelope") :].replace("a=1", "&e;").encode(),
        b"",
        b"\xff\xfe<\x00",
        b"<a>" * 5000,
    ]
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # One daemon app for every example: what one case does must not break the next.
    # No rate limit: the fuzzer sends far faster than a client may.
    settings_ = make_settings(http={"rate_limit": 0})
    async with Client("memory://") as client, asgi_client(client, settings_) as opened:
        yield opened


SOAP_COUNTS: dict[str, int] = {}


@settings(
    max_examples=EDGE_EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
)
@given(body=st.one_of(structured, mutated(), hostile), action=st.sampled_from(["", '""', None]))
async def test_soap_envelope_fuzz(http: httpx.AsyncClient, body: bytes, action: str | None) -> None:
    headers = {**HEADERS, "content-type": "text/xml; charset=utf-8"}
    if action is not None:
        headers["SOAPAction"] = action
    response = await http.post(SOAP_PATH, content=body, headers=headers)
    outcome = response.status_code
    if outcome in (403, 500):
        code = FAULTCODE.search(response.content)
        # The bus is up: a 500 is only ever a SOAP Client fault about the input.
        assert code is not None and code.group(1) == b"Client", response.text
    else:
        assert outcome in (200, 400, 413), (outcome, response.text)
    SOAP_COUNTS[str(outcome)] = SOAP_COUNTS.get(str(outcome), 0) + 1
    healthy = await http.post(SOAP_PATH, content=GOOD.encode(), headers=headers)
    assert healthy.status_code == 200, healthy.text


def test_soap_fuzz_figures() -> None:
    """Records what the fuzzer above did (it runs first, in file order)."""
    assert sum(SOAP_COUNTS.values()) > 0
    record(
        "test_soap_envelope_fuzz",
        load="hypothesis: structured, mutated and hostile SOAP 1.1 envelopes, in-process bus",
        fault="malformed XML, DTDs and entities, odd prefixes, nil and missing properties",
        outcome="no 5xx but SOAP Client faults; a good envelope served after every case",
        sent=sum(SOAP_COUNTS.values()),
        accepted=SOAP_COUNTS.get("200", 0),
        refused=sum(v for k, v in SOAP_COUNTS.items() if k != "200"),
        lost=0,
    )


# Mosquitto disconnects a client for a topic with control characters or non-characters (the MQTT
# spec allows it to), so those are not something a device can send; everything else is.
level = st.text(
    alphabet=st.characters(blacklist_characters="/+#", blacklist_categories=("Cs", "Cc", "Cn")),
    max_size=6,
)
payloads = st.one_of(
    st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=60),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(), max_size=3).map(
        lambda d: __import__("json").dumps(d).encode()
    ),
    st.just(b"x" * 70_000),
)


@pytest.mark.rabbitmq
@pytest.mark.mosquitto
@settings(
    max_examples=5,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
    # Each example drives real brokers for seconds: report a failure as found, unshrunk.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    messages=st.lists(
        st.tuples(st.lists(level, min_size=0, max_size=4), payloads), min_size=20, max_size=60
    )
)
async def test_mqtt_topic_and_payload_fuzz(
    amqp_url: str, mqtt_url: str, messages: list[tuple[list[str], bytes]]
) -> None:
    prefix = unique_prefix()
    settings_ = bridge_settings(amqp_url, mqtt_url, prefix, session_expiry=5)
    async with private_exchange(amqp_url, prefix) as exchange:
        await _fuzz_through(amqp_url, mqtt_url, settings_, prefix, exchange, messages)


async def _fuzz_through(
    amqp_url: str,
    mqtt_url: str,
    settings_: Settings,
    prefix: str,
    exchange: str,
    messages: list[tuple[list[str], bytes]],
) -> None:
    settings_ = settings_.model_copy(
        update={"amqp": settings_.amqp.model_copy(update={"exchange": exchange})}
    )
    collector = Collector(amqp_url, exchange, ["#"])
    await collector.declare()
    port = int(mqtt_url.rsplit(":", 1)[1])
    async with running_bridge(settings_) as (client, _bridge):
        device = Device(port, client_id=f"fuzz-{uuid.uuid4().hex[:6]}")
        try:
            for levels, payload in messages:
                device.publish("/".join([prefix, "external", *levels]), payload)
            async with client.expect("external", "fuzz.sentinel", until=timedelta(30)) as w:
                device.publish(f"{prefix}/external/fuzz/sentinel", b"still=alive")
                await device.wait_acked(len(messages) + 1)
                sentinel = await w
        finally:
            device.close()
    assert sentinel is not None and sentinel.properties == {"still": "alive"}
    received = await collector.drain(len(messages) + 1, idle=2.0)
    # Each message became an event or a dead letter (at least once), and none was left behind.
    assert len(received) >= len(messages) + 1
    keys = [m.routing_key or "" for m in received]
    assert all(k.startswith(("external.", "deadletter.")) for k in keys), keys
    MQTT_COUNTS["sent"] += len(messages) + 1
    MQTT_COUNTS["events"] += sum(k.startswith("external.") for k in keys)
    MQTT_COUNTS["dead"] += sum(k.startswith("deadletter.") for k in keys)
    await asyncio.sleep(0)


MQTT_COUNTS = {"sent": 0, "events": 0, "dead": 0}


@pytest.mark.rabbitmq
@pytest.mark.mosquitto
def test_mqtt_fuzz_figures() -> None:
    assert MQTT_COUNTS["sent"] > 0
    record(
        "test_mqtt_topic_and_payload_fuzz",
        load="hypothesis: lists of QoS 1 messages with odd topics and payloads, real Mosquitto"
        " and RabbitMQ",
        fault="unmappable topics, binary, bad JSON, non-string values, 70 kB payloads",
        outcome="every message became an event or a dead letter; a sentinel after each list",
        sent=MQTT_COUNTS["sent"],
        accepted=MQTT_COUNTS["events"],
        refused=MQTT_COUNTS["dead"],
        lost=0,
    )
