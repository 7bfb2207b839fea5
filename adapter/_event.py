"""Events, send results, and the message format on the bus (docs/contract.md, "The message on
the bus")."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from ._cloudevents import check_cloudevent_attributes, rabbitmq_headers, read_rabbitmq_headers
from ._exceptions import InvalidInput
from ._names import Kind, parse_routing_key, validate_kind, validate_name
from ._properties import check_properties, loads_json_object, string_object

__all__ = ["APP_ID", "SOURCES", "Event", "SendResult", "Source", "decode_body", "encode_body"]

APP_ID = "customevent-bridge"
Source = Literal["http", "soap", "mqtt", "amqp", "cli"]
SOURCES: tuple[str, ...] = ("http", "soap", "mqtt", "amqp", "cli")


@dataclass(frozen=True, slots=True)
class Event:
    """A custom event as a waiter receives it."""

    name: str
    kind: Kind
    properties: dict[str, str]
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    sent_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    source: str = "amqp"
    principal: str | None = None
    #: The CloudEvent attributes it came with that the CloudEvents mapping does not give
    #: (``source``, ``subject``, ``dataschema``, extensions); empty unless sent as a CloudEvent.
    cloudevent_attributes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (the shape of ``customevent wait --json``)."""
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "properties": dict(self.properties),
            "event_id": self.event_id,
            "sent_at": self.sent_at.isoformat(),
            "source": self.source,
            "principal": self.principal,
        }
        if self.cloudevent_attributes:
            data["cloudevent_attributes"] = dict(self.cloudevent_attributes)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Event:
        """The inverse of ``to_json``; ``InvalidInput`` for data that is not such an event."""
        try:
            return cls(
                name=validate_name(data["name"]),
                kind=validate_kind(data["kind"]),
                properties=check_properties(data["properties"]),
                event_id=str(data["event_id"]),
                sent_at=datetime.fromisoformat(data["sent_at"]),
                source=str(data.get("source") or "http"),
                principal=data.get("principal"),
                cloudevent_attributes=check_cloudevent_attributes(
                    data.get("cloudevent_attributes") or {}
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"not an event: {type(exc).__name__}: {exc}") from None

    def headers(self) -> dict[str, str]:
        """The AMQP headers of the event's message: ours, and the ``ce-*`` headers that make it
        a CloudEvent in binary mode of the RabbitMQ binding."""
        headers = {
            "x-event-name": self.name,
            "x-event-kind": self.kind,
            "x-event-source": self.source,
        }
        if self.principal is not None:
            headers["x-event-principal"] = self.principal
        headers.update(rabbitmq_headers(self))
        return headers


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send achieved: the broker confirmed it; ``routed`` tells if any waiter was bound."""

    event_id: str
    routed: bool

    def to_json(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "routed": self.routed}


def encode_body(properties: Mapping[str, str]) -> bytes:
    """The message body: the properties as a JSON object."""
    return json.dumps(properties, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def decode_body(body: bytes) -> dict[str, str]:
    """Properties from a message body; raises ``InvalidProperties`` if it is not an object of
    strings."""
    value = loads_json_object(body, "the message body") if body else {}
    return string_object(value, "the message body")


def event_from_message(
    *,
    routing_key: str,
    body: bytes,
    headers: Mapping[str, Any] | None,
    message_id: str | None,
    timestamp: datetime | None,
) -> Event:
    """Rebuild an event from a bus message, trusting the routing key over the headers (a
    third-party publisher may leave headers out, or set only the ``ce-*`` ones of a CloudEvent:
    their ``ce-type`` and ``ce-eventkind`` must then agree with the routing key)."""
    kind, name = parse_routing_key(routing_key)
    headers = headers or {}
    source = _header_text(headers.get("x-event-source"))
    principal = _header_text(headers.get("x-event-principal"))
    cloudevent = read_rabbitmq_headers(headers, source)
    if cloudevent.type is not None and cloudevent.type != name:
        raise InvalidInput(f"ce-type {cloudevent.type!r} disagrees with the routing key {name!r}")
    if cloudevent.eventkind is not None and cloudevent.eventkind != kind:
        raise InvalidInput(
            f"ce-eventkind {cloudevent.eventkind!r} disagrees with the routing key's kind {kind!r}"
        )
    # ce-time keeps the instant to the microsecond; the AMQP timestamp only to the second.
    sent_at = cloudevent.time or timestamp or datetime.now(UTC)
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    return Event(
        name=validate_name(name),
        kind=validate_kind(kind),
        properties=decode_body(body),
        event_id=cloudevent.id or message_id or str(uuid.uuid4()),
        sent_at=sent_at.astimezone(UTC),
        source=cloudevent.source or "amqp",
        principal=principal if principal is not None else cloudevent.principal,
        cloudevent_attributes=dict(cloudevent.kept or {}),
    )


def _header_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def check_event_id(event_id: str | None) -> str:
    """The sender's event id (1 to 200 printable characters), or a new UUID.

    Printable (``str.isprintable``) leaves out every control character, surrogate and Unicode
    noncharacter (these are unassigned), so an id is always a string MQTT can carry: egress sends
    it as a user property, and a NUL or U+FFFF there made Mosquitto drop the bridge.
    """
    if event_id is None:
        return str(uuid.uuid4())
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 200 or not event_id.isprintable():
        raise InvalidInput("event_id must be 1 to 200 printable characters")
    return event_id
