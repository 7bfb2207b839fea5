"""MQTT messages to events and back: pure functions, no I/O (docs/devices.md, "Topics",
"Payload")."""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .._client import Client
from .._cloudevents import STRUCTURED_CONTENT_TYPE, from_cloudevent, from_structured
from .._event import Event, encode_body
from .._exceptions import InvalidEventName, InvalidInput, InvalidProperties, PropertiesTooLarge
from .._names import is_noncharacter, name_from_topic
from .._properties import loads_json_object, string_object
from .._trace_context import TRACEPARENT, TRACESTATE, trace_from_pairs

__all__ = [
    "DEADLETTER_ROUTING_KEY",
    "DEADLETTER_SOURCE",
    "DEVICE_WORD",
    "MQTT_MAX_PACKET",
    "RETAIN_PROPERTY",
    "EgressMessage",
    "dead_letter_headers",
    "egress_message",
    "egress_problem",
    "egress_topic",
    "event_from_mqtt",
    "message_content_type",
    "message_topic",
    "mqtt_string_problem",
    "new_properties",
    "principal_from_name",
    "refusal_reason",
    "retain_from_mqtt",
    "with_mqtt_trace",
]

DEVICE_WORD = "device"
"""Topics ``<prefix>/external/device/<client id>/...`` carry their sender's identity (the broker's
ACL lets a device publish only under its own client id); see ``principal_from_name``."""

DEADLETTER_SOURCE = "mqtt"
"""The edge the bridge's dead letters come from, for ``Bus.keep_refused``."""

DEADLETTER_ROUTING_KEY = f"deadletter.{DEADLETTER_SOURCE}"
"""Where the bridge's dead letters go on RabbitMQ (the ``customevents`` exchange)."""

_DETAIL_LIMIT = 1000  # characters of an error kept in a dead letter's header


def principal_from_name(name: str) -> str | None:
    """The sending device of an event named ``device.<client id>...``, else None.

    MQTT does not tell a subscriber who published a message, so the identity travels in the topic;
    it is trustworthy only because the broker's ACL (``pattern write
    <prefix>/external/device/%c/#``, with client id = user name) refuses any other subtree.
    """
    words = name.split(".", 2)
    if len(words) >= 2 and words[0] == DEVICE_WORD:
        return words[1]
    return None


def egress_topic(prefix: str, name: str) -> str:
    """The topic an egress event goes out on: ``<prefix>/out/<name with '.' written as '/'>``."""
    return f"{prefix}/out/{name.replace('.', '/')}"


def _payload_properties(
    payload: bytes | bytearray, content_type: str | None, max_bytes: int
) -> dict[str, Any] | str:
    media = _media(content_type)
    if media not in ("", "application/json", "text/plain"):
        raise InvalidProperties(
            f"content type {content_type!r} is none of application/json, text/plain and "
            f"{STRUCTURED_CONTENT_TYPE}"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidProperties(f"payload is not UTF-8 (byte {exc.start})") from None
    if media == "application/json" or (not media and text.lstrip().startswith("{")):
        # JSON escapes take at most 6 bytes per byte of text: anything longer cannot fit the limit.
        if len(payload) > 6 * max_bytes + 1024:
            raise PropertiesTooLarge(
                f"{len(payload)} bytes of JSON, more than an event of {max_bytes} bytes can take",
                limit=max_bytes,
                size=len(payload),
            )
        return string_object(loads_json_object(text, "the payload"), "the JSON payload")
    return text


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def event_from_mqtt(
    client: Client,
    prefix: str,
    topic: str,
    payload: bytes | bytearray,
    content_type: str | None = None,
) -> Event:
    """The external event a device sent, or ``InvalidInput`` saying what is wrong with it.

    The payload is serializedProperties text or a JSON object of strings: the MQTT v5 content type
    (``text/plain`` or ``application/json``) decides when given, else a payload starting with
    ``{`` is JSON. With the content type ``application/cloudevents+json`` it is one structured
    CloudEvent, whose ``type`` must be the topic's name (the topic decides who may send it).
    """
    kind, name = name_from_topic(prefix, topic)
    if kind != "external":
        raise InvalidEventName(topic, "devices send external events only")
    limits = client.settings.limits
    principal = principal_from_name(name)
    if _media(content_type) == STRUCTURED_CONTENT_TYPE:
        if len(payload) > 6 * limits.max_bytes + 64 * 1024:  # as for JSON below, and attributes
            raise PropertiesTooLarge(
                f"{len(payload)} bytes of CloudEvent, more than an event can take",
                limit=limits.max_bytes,
                size=len(payload),
            )
        event = from_cloudevent(
            from_structured(bytes(payload)),
            kind=kind,
            source="mqtt",
            principal=principal,
            max_bytes=limits.max_bytes,
            max_properties=limits.max_properties,
        )
        if event.name != name:
            raise InvalidEventName(
                topic, f"the CloudEvent's type {event.name!r} is not the topic's name {name!r}"
            )
        return event
    properties = _payload_properties(payload, content_type, limits.max_bytes)
    return client.prepare_event(name, properties, kind=kind, source="mqtt", principal=principal)


RETAIN_PROPERTY = "customevent-retain"
"""The MQTT v5 user property that asks for a retained event: its value ``true`` (or ``1``), and
the message's expiry interval says for how long."""


def with_mqtt_trace(event: Event, message: mqtt.MQTTMessage) -> Event:
    """The event with the trace context of the message's MQTT v5 user properties
    (``traceparent``, ``tracestate``, as the W3C trace context over MQTT has it), unless the
    event came with its own (a structured CloudEvent's); one that breaks the W3C rules is
    dropped, never a reason to refuse the message."""
    if event.traceparent is not None:
        return event
    properties = message.properties
    user = getattr(properties, "UserProperty", None) if properties is not None else None
    if not user:
        return event
    traceparent, tracestate = trace_from_pairs(user)
    if traceparent is None:
        return event
    return dataclasses.replace(event, traceparent=traceparent, tracestate=tracestate)


def retain_from_mqtt(message: mqtt.MQTTMessage, max_retain: float) -> timedelta | None:
    """How long to retain a device's event: None unless the message has the user property
    ``customevent-retain: true``; then its MQTT v5 message expiry interval (what is left of it
    when it reaches the bridge), which it must have, at most ``amqp.max_retain``."""
    properties = message.properties
    user = getattr(properties, "UserProperty", None) if properties is not None else None
    values = [value for key, value in (user or []) if key == RETAIN_PROPERTY]
    if not values:
        return None
    if len(values) > 1 or values[0].lower() not in ("true", "1"):
        raise InvalidProperties(f"the user property {RETAIN_PROPERTY} must be given once, as true")
    expiry = getattr(properties, "MessageExpiryInterval", None)
    if not isinstance(expiry, int) or expiry <= 0:
        raise InvalidProperties(
            f"{RETAIN_PROPERTY} needs a message expiry interval: how long to retain the event"
        )
    if expiry > max_retain:
        raise InvalidProperties(
            f"a message expiry interval of {expiry}s is longer than amqp.max_retain "
            f"({max_retain:g}s)"
        )
    return timedelta(seconds=expiry)


def refusal_reason(exc: BaseException) -> str:
    """The ``reason`` label of a refused message (``customevent_mqtt_poison_total``)."""
    if isinstance(exc, InvalidEventName):
        return "topic"
    if isinstance(exc, PropertiesTooLarge):
        return "oversize"
    if isinstance(exc, InvalidInput):
        return "payload"
    return "error"


def message_content_type(message: mqtt.MQTTMessage) -> str | None:
    """The MQTT v5 content type of a message, if it has one."""
    properties = message.properties
    value = getattr(properties, "ContentType", None) if properties is not None else None
    return value if isinstance(value, str) else None


def message_topic(message: mqtt.MQTTMessage) -> str:
    """The topic as text; a topic that is not UTF-8 is shown as its bytes' repr."""
    try:
        return message.topic
    except UnicodeDecodeError:
        return repr(message._topic)


def dead_letter_headers(
    topic: str, reason: str, detail: str, content_type: str | None
) -> dict[str, str]:
    """The headers a refused message is dead-lettered with (docs/devices.md, "Refused messages")."""
    headers = {
        "x-mqtt-topic": topic,
        "x-deadletter-reason": reason,
        "x-deadletter-detail": detail[:_DETAIL_LIMIT],
        "x-event-source": DEADLETTER_SOURCE,
    }
    if content_type is not None:
        headers["x-mqtt-content-type"] = content_type
    return headers


def new_properties(packet_type: int) -> Properties:
    """Empty MQTT v5 properties for a packet type (paho's constructor is untyped)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]


MQTT_MAX_PACKET = 1 + 4 + 268_435_455
"""The largest MQTT packet: a fixed header byte, four bytes of length, and that length."""

_MQTT_MAX_STRING = 65_535  # bytes of UTF-8 in an MQTT string (its length is two bytes)


def mqtt_string_problem(text: str) -> str | None:
    """What stops ``text`` from being an MQTT UTF-8 string that any broker takes, or None.

    MQTT 5.0 (1.5.4; 3.1.1, 1.5.3, alike) forbids an unpaired surrogate and U+0000, and lets a
    receiver treat C0 and C1 control characters and noncharacters as a malformed packet: Mosquitto
    2.0 does, and drops the connection. A string holds at most 65,535 bytes.
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return f"an unpaired surrogate (U+{ord(text[exc.start]):04X} at {exc.start})"
    if size > _MQTT_MAX_STRING:
        return f"{size} bytes of UTF-8, more than the {_MQTT_MAX_STRING} of an MQTT string"
    if text.isprintable():  # no control character, no noncharacter (they are unassigned, Cn)
        return None
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            return f"a control character (U+{ord(char):04X} at {index})"
        if is_noncharacter(char):
            return f"a Unicode noncharacter (U+{ord(char):04X} at {index})"
    return None


@dataclass(frozen=True, slots=True)
class EgressMessage:
    """What an egress event becomes on MQTT: topic, JSON payload and (v5) properties."""

    topic: str
    payload: bytes
    properties: Properties | None


def _egress_body(properties: dict[str, str]) -> bytes:
    # Properties read from the bus were checked as text, but a bus (or a bug) could still hand
    # over one that is not UTF-8: escaped, it is still JSON, and never an exception here.
    try:
        return encode_body(properties)
    except UnicodeEncodeError:
        return json.dumps(properties, separators=(",", ":")).encode("ascii")


def egress_message(prefix: str, event: Event, *, v5: bool) -> EgressMessage:
    """An internal event as the message devices get on ``<prefix>/out/...``. Nothing here is
    checked: ``egress_problem`` says whether MQTT can carry it."""
    properties: Properties | None = None
    if v5:
        properties = new_properties(PacketTypes.PUBLISH)
        properties.ContentType = "application/json"
        user = [("event_id", event.event_id), ("source", event.source)]
        if event.principal is not None:
            user.append(("principal", event.principal))
        if event.traceparent is not None:
            user.append((TRACEPARENT, event.traceparent))
            if event.tracestate is not None:
                user.append((TRACESTATE, event.tracestate))
        properties.UserProperty = user
    return EgressMessage(
        egress_topic(prefix, event.name), _egress_body(event.properties), properties
    )


def _user_properties(message: EgressMessage) -> list[tuple[str, object]]:
    user = getattr(message.properties, "UserProperty", None) if message.properties else None
    return list(user or [])


def egress_problem(message: EgressMessage, *, max_packet: int) -> tuple[str, str] | None:
    """Why the broker could not take ``message`` (reason label, what is wrong), or None.

    An event read from the bus is untrusted: a third-party publisher sets its name (the routing
    key), its id (``ce-id``), source and principal. Whatever MQTT cannot carry would make the broker
    drop the bridge's connection, and paho would send the same message again on every reconnect,
    for ever; so it is never sent. ``max_packet`` is the broker's Maximum Packet Size (MQTT v5
    CONNACK), else ``MQTT_MAX_PACKET``.
    """
    problem = mqtt_string_problem(message.topic)
    if problem is None and not message.topic:
        problem = "it is empty"
    if problem is None and ("+" in message.topic or "#" in message.topic):
        problem = "it holds a wildcard ('+' or '#')"
    if problem is not None:
        return "topic", f"the topic {message.topic!r} cannot be sent over MQTT: {problem}"
    for key, value in _user_properties(message):
        if not isinstance(value, str):
            return "property", f"the user property {key!r} is not text"
        problem = mqtt_string_problem(value)
        if problem is not None:
            return "property", f"the user property {key!r} cannot be sent over MQTT: {problem}"
    size = _publish_packet_size(message)
    if size > max_packet:
        return "oversize", f"{size} bytes as an MQTT packet, more than the broker's {max_packet}"
    return None


def _publish_packet_size(message: EgressMessage) -> int:
    """The size of the QoS 1 PUBLISH packet of a message whose strings are all valid."""
    properties = b""
    if message.properties is not None:
        properties = bytes(message.properties.pack())  # type: ignore[no-untyped-call]
    remaining = 2 + len(message.topic.encode("utf-8")) + 2 + len(properties) + len(message.payload)
    length_bytes = next(n for n in (1, 2, 3, 4) if remaining < 128**n or n == 4)  # a varint
    return 1 + length_bytes + remaining
