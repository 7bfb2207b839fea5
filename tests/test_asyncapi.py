"""The AsyncAPI 3.0 document of the bus contract: valid against the AsyncAPI 3.0.0 JSON Schema
(vendored in tests/fixtures/asyncapi/, see its README), served by the daemon without
credentials, following the settings, and true of what the bridge really puts on RabbitMQ."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aio_pika
import jsonschema
import pytest

from adapter import Client, load_settings
from adapter._asyncapi import ASYNCAPI_VERSION, asyncapi_document
from adapter._bus.amqp._codec import encode_body, message_headers
from adapter._mqtt._mapping import dead_letter_headers
from adapter._settings import Settings
from tests.support.http import asgi_client, make_settings

SCHEMA = Path(__file__).parent / "fixtures" / "asyncapi" / "asyncapi-3.0.0.json"


def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _problems(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in _validator().iter_errors(document)
    ]


def _schema_at(document: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def _resolved(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema of the document with its local ``$ref`` resolved, for jsonschema."""
    return {**schema, "components": document["components"]}


def test_the_document_is_valid_asyncapi_3() -> None:
    document = asyncapi_document(load_settings(amqp={"url": None}))
    assert document["asyncapi"] == ASYNCAPI_VERSION == "3.0.0"
    assert _problems(document) == []


def test_the_validator_catches_a_broken_document() -> None:
    # The vendored schema is not a stand-in that accepts anything.
    document = asyncapi_document(load_settings(amqp={"url": None}))
    document["channels"]["events"]["address"] = 42
    del document["info"]["version"]
    document["operations"]["sendEvent"]["action"] = "publish"  # AsyncAPI 2's word
    problems = "\n".join(_problems(document))
    assert "channels/events" in problems
    assert "info" in problems
    assert "operations/sendEvent" in problems


def test_the_document_follows_the_settings() -> None:
    settings = Settings.model_validate(
        {
            "amqp": {"exchange": "plant-events"},
            "mqtt": {"prefix": "plant", "protocol": "3.1.1"},
            "limits": {"max_properties": 12},
        }
    )
    document = asyncapi_document(settings)
    channels = document["channels"]
    assert channels["events"]["address"] == "{kind}.{name}"
    assert channels["events"]["bindings"]["amqp"]["exchange"]["name"] == "plant-events"
    assert channels["group"]["address"] == "customevent/plant-events/group/{group}"
    assert channels["groupDeadLetters"]["address"] == "customevent/plant-events/group/{group}/dead"
    assert channels["deviceEvents"]["address"] == "plant/external/{name}"
    assert channels["deviceEgress"]["address"] == "plant/out/{name}"
    assert document["servers"]["mqtt"]["protocolVersion"] == "3.1.1"
    assert document["components"]["schemas"]["properties"]["maxProperties"] == 12
    assert _problems(document) == []


def test_the_headers_are_those_the_codec_writes() -> None:
    document = asyncapi_document(load_settings(amqp={"url": None}))
    headers = document["components"]["messages"]["event"]["headers"]
    client = Client(load_settings(amqp={"url": None}))
    event = client.prepare_event("vm.web-01.ready", {"ip": "10.0.0.1"}, principal="ops")
    written = message_headers(event)
    assert set(written) == set(headers["properties"])
    assert {"ce-specversion", "ce-id", "ce-type", "ce-source", "ce-time", "ce-eventkind"} <= set(
        headers["required"]
    )
    assert "x-event-principal" not in headers["required"]  # only when known
    jsonschema.validate(written, headers, format_checker=jsonschema.FormatChecker())
    forged = {**written, "x-event-kind": "root", "ce-specversion": "0.3"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(forged, headers)
    dead = document["components"]["messages"]["mqttDeadLetter"]["headers"]
    assert set(dead["properties"]) == set(dead_letter_headers("t", "r", "d", "text/plain"))


def test_the_payload_schema_holds_the_properties_rules() -> None:
    document = asyncapi_document(load_settings(amqp={"url": None}))
    payload = _resolved(document, {"$ref": "#/components/schemas/properties"})
    jsonschema.validate(json.loads(encode_body({"ip": "10.0.0.1", "note": "a=b"})), payload)
    jsonschema.validate({"tabbed": "a\tb"}, payload)
    bad_ones = [{"a=b": "x"}, {"": "x"}, {"line": "one\ntwo"}, {"n": 1}, {"esc": "\x1b[31m"}]
    bad_ones += [{"sep": "a\u2028b"}, {"c\x85": "x"}]
    for bad in bad_ones:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, payload)


async def test_the_daemon_serves_it_without_credentials() -> None:
    settings = make_settings(amqp={"url": None, "exchange": "served-events"})
    async with Client(settings) as client, asgi_client(client, settings) as http:
        answer = await http.get("/asyncapi.json")
        unauthenticated = await http.post("/api/v1/events/t.x", json={})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert unauthenticated.status_code == 401  # the rest of the API still asks
    assert answer.json() == json.loads(json.dumps(asyncapi_document(settings)))
    assert answer.json()["channels"]["events"]["bindings"]["amqp"]["exchange"]["name"] == (
        "served-events"
    )
    assert _problems(answer.json()) == []


def test_no_broker_address_or_secret_is_served() -> None:
    url = "amqps://bridge:s3cret@rabbit.internal.example:5671/"
    document = json.dumps(asyncapi_document(load_settings(amqp={"url": url})))
    assert "s3cret" not in document and "rabbit.internal" not in document


@pytest.mark.rabbitmq
async def test_a_message_on_rabbitmq_matches_the_document(amqp_url: str, unique_name: str) -> None:
    settings = load_settings(amqp={"url": amqp_url})
    document = asyncapi_document(settings)
    message_doc = document["components"]["messages"]["event"]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            document["channels"]["events"]["bindings"]["amqp"]["exchange"]["name"],
            "topic",
            durable=True,
        )
        queue = await channel.declare_queue(exclusive=True)
        address = document["channels"]["events"]["address"]
        await queue.bind(exchange, address.format(kind="internal", name=unique_name))
        async with Client(settings) as client:
            await client.send_custom_event(unique_name, {"vm": "web-01"})
        message = await queue.get(timeout=5)
        await message.ack()
    assert message.routing_key == f"internal.{unique_name}"
    assert message.content_type == message_doc["contentType"]
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    headers = {
        key: value.decode() if isinstance(value, bytes) else value
        for key, value in (message.headers or {}).items()
    }
    jsonschema.validate(headers, message_doc["headers"], format_checker=jsonschema.FormatChecker())
    assert headers["x-event-name"] == headers["ce-type"] == unique_name
    payload = _resolved(document, message_doc["payload"])
    jsonschema.validate(json.loads(message.body), payload)


async def test_odd_requests_get_the_same_document_or_a_clear_refusal() -> None:
    settings = make_settings(amqp={"url": None})
    expected = json.loads(json.dumps(asyncapi_document(settings)))
    async with Client(settings) as client, asgi_client(client, settings) as http:
        junk = await http.get(
            "/asyncapi.json",
            params={"channels": "x" * 4000, "$ref": "#/servers"},
            headers={
                "Accept": "application/xml",
                "Host": "evil.example",
                "X-Forwarded-Host": "evil.example",
            },
        )
        posted = await http.post("/asyncapi.json", content=b"{" * 100_000)
    assert junk.status_code == 200 and junk.json() == expected
    assert "evil.example" not in junk.text  # nothing of the request is echoed
    assert posted.status_code == 405
