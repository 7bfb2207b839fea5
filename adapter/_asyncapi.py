"""The AsyncAPI 3.0 document of the bus contract, served at ``GET /asyncapi.json``.

Everything in it comes from the code that puts messages on the wire, so it cannot drift: the
routing key and topic formats from ``_names`` and ``_mqtt._mapping``, the header names from
what ``_bus.amqp._codec.message_headers`` writes for a sample event (and the MQTT dead letters'
and egress user properties likewise), the queue names from ``_bus.amqp._queues``, and the
exchange, prefix and limits from the settings. A header the code writes that this module cannot
describe makes ``asyncapi_document`` raise, and its test fail.

Server addresses are placeholders (``{host}``): the document is served without authentication,
and the names of the brokers behind the daemon are not a caller's business.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from ._bus.amqp._codec import H_ORIGINAL_ROUTING_KEY, message_headers
from ._bus.amqp._groups import (
    H_DEAD_ATTEMPTS,
    H_DEAD_REASON,
    H_FIRST_FAILURE,
    H_LAST_FAILURE,
    H_LAST_REASON,
    H_RETRIES,
)
from ._bus.amqp._queues import dead_queue, group_queue
from ._cloudevents import (
    DATA_CONTENT_TYPE,
    MAX_ATTRIBUTE_BYTES,
    SOURCE_PREFIX,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
)
from ._event import SOURCES, Event
from ._mqtt._mapping import (
    DEADLETTER_ROUTING_KEY,
    DEVICE_WORD,
    RETAIN_PROPERTY,
    dead_letter_headers,
    egress_message,
    egress_topic,
)
from ._names import KINDS, MAX_NAME_BYTES, routing_key, topic_for
from ._properties import _NAME_REFUSED, _VALUE_REFUSED
from ._settings import Settings
from ._version import __version__

__all__ = ["ASYNCAPI_VERSION", "DocumentError", "asyncapi_document"]

ASYNCAPI_VERSION: Final = "3.0.0"
_AMQP_BINDING: Final = "0.3.0"
_MQTT_BINDING: Final = "0.2.0"
_TEXT_ID: Final = {"type": "string", "minLength": 1, "maxLength": 200}
_NAME: Final = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES}


class DocumentError(RuntimeError):
    """The code writes something on the wire that the document cannot describe."""


def _headers_described() -> dict[str, dict[str, Any]]:
    """What each header name the bridge writes means, with its schema."""
    kinds = {"type": "string", "enum": list(KINDS)}
    return {
        "x-event-name": {**_NAME, "description": "the event name (also the routing key's tail)"},
        "x-event-kind": {**kinds, "description": "the event kind (also the routing key's head)"},
        "x-event-source": {
            "type": "string",
            "enum": list(SOURCES),
            "description": "the edge the event came in by",
        },
        "x-event-principal": {
            **_TEXT_ID,
            "description": "who sent it, when authenticated; believed only from a message whose "
            "AMQP user_id is a bridge daemon's account (amqp.trusted_publishers)",
        },
        "ce-specversion": {"type": "string", "const": SPECVERSION},
        "ce-id": {**_TEXT_ID, "description": "the event id, also the message_id"},
        "ce-type": {**_NAME, "description": "the event name"},
        "ce-source": {
            "type": "string",
            "description": f"{SOURCE_PREFIX}<source> (one of {', '.join(SOURCES)}), or the "
            "source of a CloudEvent that came in with one of its own",
        },
        "ce-time": {"type": "string", "format": "date-time", "description": "when it was sent"},
        "ce-eventkind": {**kinds, "description": "the CloudEvents extension for the kind"},
        "ce-principal": {**_TEXT_ID, "description": "the CloudEvents extension for the principal"},
    }


def _copy_headers() -> dict[str, dict[str, Any]]:
    """Headers of the bridge's own copies in a group's queues (retries, dead letters)."""
    return {
        H_ORIGINAL_ROUTING_KEY: {
            "type": "string",
            "description": "the routing key the event was sent with, on a copy the bridge "
            "published to a group's queue through the default exchange",
        },
        H_RETRIES: {"type": "integer", "description": "retries so far"},
        H_FIRST_FAILURE: {"type": "string", "description": "when the first attempt failed"},
        H_LAST_FAILURE: {"type": "string", "description": "when the last attempt failed"},
        H_LAST_REASON: {"type": "string", "description": "why the last attempt failed"},
        H_DEAD_REASON: {"type": "string", "description": "why it was dead-lettered"},
        H_DEAD_ATTEMPTS: {"type": "integer", "description": "attempts made before it was"},
    }


def _mqtt_dead_letter_described() -> dict[str, dict[str, Any]]:
    return {
        "x-mqtt-topic": {"type": "string", "description": "the topic it was published on"},
        "x-deadletter-reason": {
            "type": "string",
            "enum": ["topic", "oversize", "payload", "error"],
            "description": "why it was refused",
        },
        "x-deadletter-detail": {"type": "string", "maxLength": 1000},
        "x-event-source": {"type": "string", "const": "mqtt"},
        "x-mqtt-content-type": {"type": "string", "description": "its MQTT v5 content type"},
    }


def _egress_described() -> dict[str, dict[str, Any]]:
    return {
        "event_id": {**_TEXT_ID, "description": "the event id"},
        "source": {"type": "string", "enum": list(SOURCES)},
        "principal": {**_TEXT_ID, "description": "who sent it, when known"},
    }


def _header_schema(
    written: list[str], always: set[str], described: dict[str, dict[str, Any]], where: str
) -> dict[str, Any]:
    missing = [name for name in written if name not in described]
    if missing:
        raise DocumentError(f"{where}: the code writes {missing}, which the document lacks")
    return {
        "type": "object",
        "properties": {name: described[name] for name in written},
        "required": [name for name in written if name in always],
    }


def _sample(principal: str | None) -> Event:
    return Event(
        name="n",
        kind="internal",
        properties={},
        event_id="i",
        sent_at=datetime(2000, 1, 1, tzinfo=UTC),
        source="http",
        principal=principal,
    )


def _properties_schema(settings: Settings) -> dict[str, Any]:
    limits = settings.limits
    return {
        "type": "object",
        "description": "the event's properties: names non-empty, without '=', control "
        "characters or surrounding spaces; values without control characters but TAB (so every "
        "event stays representable as vRO's serializedProperties and no line can be forged); "
        f"at most {limits.max_bytes} bytes in all",
        "maxProperties": limits.max_properties,
        # The rules' own character classes (adapter/_properties.py), negated.
        "propertyNames": {"minLength": 1, "pattern": f"^[^={_NAME_REFUSED.pattern[1:-1]}]+$"},
        "additionalProperties": {
            "type": "string",
            "pattern": f"^[^{_VALUE_REFUSED.pattern[1:-1]}]*$",
        },
    }


def _amqp_message_headers() -> dict[str, Any]:
    with_principal = list(message_headers(_sample("ops")))
    always = set(message_headers(_sample(None)))
    schema = _header_schema(with_principal, always, _headers_described(), "message_headers")
    # Extension attributes an event kept from a CloudEvent travel as more ce-* headers.
    schema["patternProperties"] = {
        "^ce-[a-z0-9]{1,20}$": {"type": "string", "maxLength": MAX_ATTRIBUTE_BYTES}
    }
    return schema


def _messages(settings: Settings) -> dict[str, Any]:
    properties = {"$ref": "#/components/schemas/properties"}
    amqp_binding = {"bindingVersion": _AMQP_BINDING, "messageType": "customevent"}
    copy = _amqp_message_headers()
    copy["properties"] = {**copy["properties"], **_copy_headers()}
    egress = egress_message(settings.mqtt.prefix, _sample("ops"), v5=True)
    user = [key for key, _ in getattr(egress.properties, "UserProperty", [])]
    dead_written = list(dead_letter_headers("t", "r", "d", "c"))
    return {
        "event": {
            "name": "event",
            "title": "A custom event",
            "summary": "An event on the topic exchange, also a CloudEvent in binary mode of the "
            "CloudEvents RabbitMQ binding (ce-* headers).",
            "contentType": DATA_CONTENT_TYPE,
            "headers": _amqp_message_headers(),
            "payload": properties,
            "bindings": {"amqp": amqp_binding},
        },
        "groupEvent": {
            "name": "groupEvent",
            "title": "An event in a group's queue",
            "summary": "As sent, or a copy of the bridge's own (a retry, a replay, a dead "
            "letter) with the headers that say so.",
            "contentType": DATA_CONTENT_TYPE,
            "headers": copy,
            "payload": properties,
            "bindings": {"amqp": amqp_binding},
        },
        "deviceEvent": {
            "name": "deviceEvent",
            "title": "An event from a device",
            "summary": "A JSON object of strings (application/json), serializedProperties text "
            f"(text/plain), or one structured CloudEvent ({STRUCTURED_CONTENT_TYPE}) whose "
            "type is the topic's name; without a content type a payload starting with '{' is "
            "JSON.",
            "contentType": DATA_CONTENT_TYPE,
            "headers": {
                "type": "object",
                "description": "MQTT v5 user properties",
                "properties": {
                    RETAIN_PROPERTY: {
                        "type": "string",
                        "enum": ["true", "1"],
                        "description": "retain the event for its message expiry interval (at "
                        f"most amqp.max_retain, {settings.amqp.max_retain:g} s)",
                    }
                },
            },
            "payload": {"oneOf": [properties, {"type": "string"}]},
            "bindings": {"mqtt": {"bindingVersion": _MQTT_BINDING}},
        },
        "egressEvent": {
            "name": "egressEvent",
            "title": "An internal event republished to devices",
            "contentType": DATA_CONTENT_TYPE,
            "headers": _header_schema(user, {"event_id", "source"}, _egress_described(), "egress"),
            "payload": properties,
            "bindings": {"mqtt": {"bindingVersion": _MQTT_BINDING}},
        },
        "mqttDeadLetter": {
            "name": "mqttDeadLetter",
            "title": "An MQTT message the bridge refused",
            "summary": "The payload as it arrived, with why it was refused.",
            "contentType": "application/octet-stream",
            "headers": _header_schema(
                dead_written,
                {"x-mqtt-topic", "x-deadletter-reason", "x-event-source"},
                _mqtt_dead_letter_described(),
                "dead_letter_headers",
            ),
            "payload": {"type": "string"},
            "bindings": {"amqp": amqp_binding},
        },
    }


def _queue_channel(address: str, description: str, message: str) -> dict[str, Any]:
    return {
        "address": address,
        "description": description,
        "servers": [{"$ref": "#/servers/rabbitmq"}],
        "parameters": {"group": {"description": "the group's name"}},
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    "name": address,
                    "durable": True,
                    "exclusive": False,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": _AMQP_BINDING,
            }
        },
    }


def _channels(settings: Settings) -> dict[str, Any]:
    exchange = settings.amqp.exchange
    prefix = settings.mqtt.prefix
    on_exchange = {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange,
                "type": "topic",
                "durable": True,
                "autoDelete": False,
                "vhost": "/",
            },
            "bindingVersion": _AMQP_BINDING,
        }
    }
    name_in_topic = {
        "description": "the event name with each '.' written as '/' (a bijection: no '/' in a name)"
    }
    return {
        "events": {
            "address": routing_key("{kind}", "{name}"),  # type: ignore[arg-type]
            "title": "Events",
            "description": f"The durable topic exchange {exchange!r}: every event, routing key "
            "<kind>.<name>. Dots in a name separate words, so a waiter may bind a pattern "
            "(device.*.alarm). The kind is the routing key's, whatever a header says.",
            "servers": [{"$ref": "#/servers/rabbitmq"}],
            "parameters": {
                "kind": {
                    "enum": list(KINDS),
                    "description": "external: arrived at an edge (HTTP, SOAP, MQTT); internal: "
                    "published by a trusted backend",
                },
                "name": {"description": f"the event name, 1 to {MAX_NAME_BYTES} bytes of UTF-8"},
            },
            "messages": {"event": {"$ref": "#/components/messages/event"}},
            "bindings": on_exchange,
        },
        "group": _queue_channel(
            group_queue(exchange, "{group}"),
            "A group's quorum queue: each matching event goes to one of its consumers, at least "
            "once (what KEDA's rabbitmq trigger scales on).",
            "groupEvent",
        ),
        "groupDeadLetters": _queue_channel(
            dead_queue(exchange, "{group}"),
            "A group's dead letters: events that ran out of attempts or were refused.",
            "groupEvent",
        ),
        "deviceEvents": {
            "address": topic_for(prefix, "external", "{name}"),
            "title": "Events from devices",
            "description": "What devices publish: always external events. Under "
            f"{prefix}/external/{DEVICE_WORD}/<client id>/... the client id is the principal "
            "(the broker's ACL lets a device publish only under its own).",
            "servers": [{"$ref": "#/servers/mqtt"}],
            "parameters": {"name": name_in_topic},
            "messages": {"deviceEvent": {"$ref": "#/components/messages/deviceEvent"}},
        },
        "deviceEgress": {
            "address": egress_topic(prefix, "{name}"),
            "title": "Events to devices",
            "description": "Internal events whose names match mqtt.egress, republished for "
            "devices.",
            "servers": [{"$ref": "#/servers/mqtt"}],
            "parameters": {"name": name_in_topic},
            "messages": {"egressEvent": {"$ref": "#/components/messages/egressEvent"}},
        },
        "mqttDeadLetters": {
            "address": DEADLETTER_ROUTING_KEY,
            "title": "Refused MQTT messages",
            "description": f"Routing key {DEADLETTER_ROUTING_KEY!r} on the exchange.",
            "servers": [{"$ref": "#/servers/rabbitmq"}],
            "messages": {"mqttDeadLetter": {"$ref": "#/components/messages/mqttDeadLetter"}},
            "bindings": on_exchange,
        },
    }


def _operation(action: str, channel: str, message: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }


def _operations() -> dict[str, Any]:
    publish = _operation(
        "send",
        "events",
        "event",
        "Publish an event: persistent, mandatory (routed tells whether a queue was bound), "
        "answered only once RabbitMQ confirmed it.",
    )
    publish["bindings"] = {
        "amqp": {
            "deliveryMode": 2,
            "mandatory": True,
            "timestamp": True,
            "bindingVersion": _AMQP_BINDING,
        }
    }
    return {
        "sendEvent": publish,
        "waitForEvent": _operation(
            "receive",
            "events",
            "event",
            "Wait: a temporary queue bound to <kind>.<name> (or a pattern) until the deadline.",
        ),
        "consumeGroup": _operation(
            "receive", "group", "groupEvent", "Take a group's events (listen, triggers)."
        ),
        "receiveDeviceEvent": _operation(
            "receive",
            "deviceEvents",
            "deviceEvent",
            "Take a device's event (QoS 1 acknowledged only once RabbitMQ confirmed it).",
        ),
        "sendToDevices": _operation(
            "send", "deviceEgress", "egressEvent", "Republish internal events to devices."
        ),
        "deadLetterMqtt": _operation(
            "send", "mqttDeadLetters", "mqttDeadLetter", "Keep a refused MQTT message."
        ),
    }


def asyncapi_document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the bus contract under these settings (exchange, MQTT
    prefix, limits); ``DocumentError`` if the code writes something it cannot describe."""
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:customevent-bridge",
        "info": {
            "title": "customevent-bridge bus contract",
            "version": __version__,
            "description": "vRO-style custom events on a RabbitMQ topic exchange and MQTT: "
            "what goes on the wire, for any AMQP or MQTT client that sends or takes events.",
        },
        "defaultContentType": DATA_CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": "{host}",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ (amqp.url)",
                "variables": {"host": {"default": "localhost:5672"}},
            },
            "mqtt": {
                "host": "{host}",
                "protocol": "mqtt",
                "protocolVersion": "5" if settings.mqtt.protocol == "5" else "3.1.1",
                "description": "the MQTT broker (mqtt.url)",
                "variables": {"host": {"default": "localhost:1883"}},
            },
        },
        "channels": _channels(settings),
        "operations": _operations(),
        "components": {
            "schemas": {"properties": _properties_schema(settings)},
            "messages": _messages(settings),
        },
    }
