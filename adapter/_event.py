"""The value types: an event and a send's result, and the rules for an event id. How an event
travels on RabbitMQ is the codec's (``adapter/_bus/amqp/_codec.py``)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from ._exceptions import InvalidInput
from ._names import Kind, validate_kind, validate_name
from ._properties import check_properties
from ._times import parse_rfc3339
from ._trace_context import check_trace

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_BYTES",
    "SOURCES",
    "Event",
    "Outcome",
    "SendResult",
    "Source",
    "check_cloudevent_attributes",
    "check_event_id",
    "encode_body",
]

Source = Literal["http", "soap", "mqtt", "amqp", "cli"]
SOURCES: tuple[str, ...] = ("http", "soap", "mqtt", "amqp", "cli")


#: Bounds on what an event keeps of a CloudEvent beyond the mapping: each value goes into a
#: header of every message and every HTTP answer.
MAX_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_BYTES: Final = 1024


# Attributes the mapping writes from the event's own fields: an event cannot keep another value.
_MAPPED = frozenset(
    {
        "specversion",
        "id",
        "type",
        "time",
        "datacontenttype",
        "eventkind",
        "principal",
        "traceparent",
        "tracestate",
    }
)
# Names the format reserves: never attributes.
_RESERVED = frozenset({"data", "data_base64"})
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _attribute_value(name: str, value: object) -> str:
    """A kept attribute's value as text (the form every binary binding carries it in)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | str):
        text = str(value)
    else:
        raise InvalidInput(
            f"CloudEvent attribute {name!r} must be a string, an integer or a boolean, "
            f"not {type(value).__name__}"
        )
    if not text:
        raise InvalidInput(f"CloudEvent attribute {name!r} is empty")
    if not text.isprintable():
        raise InvalidInput(f"CloudEvent attribute {name!r} has a control character")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ATTRIBUTE_BYTES:
        raise InvalidInput(
            f"CloudEvent attribute {name!r} is {size} bytes, more than {MAX_ATTRIBUTE_BYTES}"
        )
    return text


def check_cloudevent_attributes(attributes: Mapping[str, object]) -> dict[str, str]:
    """The CloudEvent attributes an event may keep beyond its mapping (``source``, ``subject``,
    ``dataschema``, extensions), as text; ``InvalidInput`` naming the first one that breaks a
    rule: a name of 1 to 20 lowercase letters and digits that the mapping does not write itself,
    a printable value of at most ``MAX_ATTRIBUTE_BYTES``, at most ``MAX_ATTRIBUTES`` of them."""
    if not isinstance(attributes, Mapping):
        raise InvalidInput("cloudevent_attributes must be an object of strings")
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidInput(
            f"{len(attributes)} CloudEvent attributes to keep, more than {MAX_ATTRIBUTES}"
        )
    kept: dict[str, str] = {}
    for name, value in attributes.items():
        if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
            raise InvalidInput(
                f"CloudEvent attribute name {_shown(str(name))} is not 1 to 20 lowercase "
                "letters and digits"
            )
        if name in _MAPPED or name in _RESERVED:
            raise InvalidInput(f"CloudEvent attribute {name!r} is not one an event keeps")
        kept[name] = _attribute_value(name, value)
    return kept


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
    #: The W3C trace context the event was sent in (``adapter/_trace_context.py`` checked it),
    #: or None: the trace its waiters, group consumers and webhooks continue.
    traceparent: str | None = None
    tracestate: str | None = None

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
        if self.traceparent is not None:
            data["traceparent"] = self.traceparent
            if self.tracestate is not None:
                data["tracestate"] = self.tracestate
        return data

    @classmethod
    def from_json(cls, data: Any) -> Event:
        """The inverse of ``to_json``; ``InvalidInput`` for data that is not such an event."""
        try:
            traceparent, tracestate = check_trace(data.get("traceparent"), data.get("tracestate"))
            return cls(
                name=validate_name(data["name"]),
                kind=validate_kind(data["kind"]),
                properties=check_properties(data["properties"]),
                event_id=str(data["event_id"]),
                sent_at=parse_rfc3339(data["sent_at"]),
                source=str(data.get("source") or "http"),
                principal=data.get("principal"),
                cloudevent_attributes=check_cloudevent_attributes(
                    data.get("cloudevent_attributes") or {}
                ),
                traceparent=traceparent,
                tracestate=tracestate,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"not an event: {type(exc).__name__}: {exc}") from None


Outcome = Literal["routed", "retained", "unrouted"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send achieved, as far as the bus can know: the broker confirmed it; ``routed``
    tells if any wait or group was bound to its name (a wait whose ``match`` it does not carry
    counts: the bus routes by name, the wait matches after), ``retained`` if it was kept for
    waits that start later. ``outcome`` says it in one word: ``routed``, else ``retained``, else
    ``unrouted`` (nobody bound: nobody received it)."""

    event_id: str
    routed: bool
    retained: bool = False

    @property
    def outcome(self) -> Outcome:
        if self.routed:
            return "routed"
        return "retained" if self.retained else "unrouted"

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "routed": self.routed,
            "retained": self.retained,
            "outcome": self.outcome,
        }


def encode_body(properties: Mapping[str, str]) -> bytes:
    """The properties as a JSON object (the body of an event on the bus, or to a device)."""
    return json.dumps(properties, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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
