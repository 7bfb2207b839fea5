"""A bus message and an event, both ways: the one place that reads what arrives from RabbitMQ.
Imports no sibling.

Writing: the body is the properties as a JSON object; the headers are ours (``x-event-name``,
``x-event-kind``, ``x-event-source``, ``x-event-principal``) and the ``ce-*`` headers of the
CloudEvents RabbitMQ binding (binary mode), so that the message is also a CloudEvent. The link
(``_link.publish_raw``) makes it persistent, with the event id as ``message_id`` and the
bridge's own AMQP user as ``user_id``, which RabbitMQ checks against the connection.

Reading: everything that arrives is untrusted. Anyone allowed to publish to the exchange sets any
header and any body, so ``decode`` believes:

- the kind and name of the routing key the message arrived with, through the events exchange;
  only a copy that came through the default exchange to the queue it was meant for (a retry, a
  replay, the retained stream: paths that only the bridge's own accounts may publish to, see
  ``config/rabbitmq/definitions.json``) is read with the routing key it carries in
  ``x-original-routing-key``;
- a principal (``x-event-principal``, ``ce-principal``) only from a message whose ``user_id``,
  which RabbitMQ validates, is one of ``trusted_publishers``: the accounts of bridge daemons;
- an event id, a time, a source, attributes and properties only once they pass the same rules
  as at every edge (sizes, characters, ranges);
- a trace context (``traceparent``/``tracestate``, else ``ce-traceparent``/``ce-tracestate``)
  only when it passes the W3C rules (``adapter/_trace_context.py``); one that does not is
  dropped, and the message is read without it, never refused for it.

Anything else makes ``decode`` raise ``BadMessage`` with the reason; it never raises another
exception, whatever the message holds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from ..._cloudevents import (
    CE_PREFIX,
    SOURCE_PREFIX,
    SPECVERSION,
    check_cloudevent_attributes,
    cloudevent_attributes,
)
from ..._event import SOURCES, Event, check_event_id
from ..._exceptions import AdapterError
from ..._names import parse_routing_key
from ..._properties import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PROPERTIES,
    check_limits,
    loads_json_object,
    string_object,
)
from ..._times import parse_rfc3339
from ..._trace_context import TRACEPARENT, TRACESTATE, check_trace, trace_from_pairs

__all__ = [
    "H_ORIGINAL_ROUTING_KEY",
    "BadMessage",
    "Decoded",
    "Policy",
    "RabbitMQAttributes",
    "decode",
    "encode_body",
    "message_headers",
    "rabbitmq_headers",
    "read_rabbitmq_headers",
]

H_ORIGINAL_ROUTING_KEY = "x-original-routing-key"
_PRINCIPAL_MAX = 200


class BadMessage(AdapterError):
    """A message from the bus that is not an event the bridge may believe: ``reason`` says
    why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Policy:
    """What ``decode`` believes: the events exchange, the AMQP users whose principal claims are
    taken (``amqp.trusted_publishers``, with the bridge's own user), and the per-event limits."""

    exchange: str
    trusted_publishers: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES
    max_properties: int = DEFAULT_MAX_PROPERTIES


@dataclass(frozen=True, slots=True)
class Decoded:
    """An event read from a message; ``copy`` is True when it came as one of the bridge's own
    copies (a retry, a replay, the retained stream), whose other headers may then be read."""

    event: Event
    copy: bool = False


# -- writing -------------------------------------------------------------------------------------


def encode_body(properties: Mapping[str, str]) -> bytes:
    """The message body: the properties as a JSON object."""
    return json.dumps(properties, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _time_text(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def rabbitmq_headers(event: Event) -> dict[str, str]:
    """The ``ce-*`` headers of the event's message in binary mode of the RabbitMQ binding (its
    ``datacontenttype`` travels as the message's ``content_type``)."""
    headers: dict[str, str] = {}
    for name, value in cloudevent_attributes(event).items():
        if name != "datacontenttype":
            headers[CE_PREFIX + name] = _time_text(value) if name == "time" else value
    return headers


def message_headers(event: Event) -> dict[str, str]:
    """The AMQP headers of the event's message: ours, and the ``ce-*`` ones."""
    headers = {
        "x-event-name": event.name,
        "x-event-kind": event.kind,
        "x-event-source": event.source,
    }
    if event.principal is not None:
        headers["x-event-principal"] = event.principal
    if event.traceparent is not None:
        # As the W3C trace context over AMQP has it; the ce-* ones below carry it too.
        headers[TRACEPARENT] = event.traceparent
        if event.tracestate is not None:
            headers[TRACESTATE] = event.tracestate
    headers.update(rabbitmq_headers(event))
    return headers


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RabbitMQAttributes:
    """What the ``ce-*`` headers of a bus message say, read as text (None when absent)."""

    type: str | None = None
    id: str | None = None
    time: datetime | None = None
    source: str | None = None
    eventkind: str | None = None
    principal: str | None = None
    #: ``subject``, ``dataschema`` and extensions, with ``source`` when it is not ours.
    kept: Mapping[str, str] = field(default_factory=dict)
    #: ``ce-traceparent`` and ``ce-tracestate``, when valid (an invalid one is dropped).
    traceparent: str | None = None
    tracestate: str | None = None


def _text(value: object) -> str | None:
    """A header's value as text, or None for a value that is not text (a number, a table)."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("a header is not UTF-8 text") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) else None


def read_rabbitmq_headers(headers: Mapping[str, Any], source: str | None) -> RabbitMQAttributes:
    """The CloudEvent attributes in a bus message's ``ce-*`` headers; ``source`` is the edge
    the message names (``x-event-source``), if any: a ``ce-source`` other than
    ``urn:customevent:<source>`` is kept. ``BadMessage`` for a header that breaks a rule."""
    found: dict[str, str] = {}
    trace: list[tuple[str, object]] = []
    for key, value in headers.items():
        lowered = key.lower()
        if lowered in _CE_TRACE:
            # A hint, never a refusal: read apart, and dropped if it breaks a rule.
            trace.append((lowered[len(CE_PREFIX) :], _trace_text(value)))
            continue
        if lowered.startswith(CE_PREFIX) and value is not None:
            text = _text(value)
            if text is None:
                raise BadMessage(f"header {key!r} is not text")
            name = lowered[len(CE_PREFIX) :]
            if name in found:
                raise BadMessage(f"the ce-{name} header is given more than once")
            found[name] = text
    traceparent, tracestate = trace_from_pairs(trace) if trace else (None, None)
    if not found:
        return RabbitMQAttributes(traceparent=traceparent, tracestate=tracestate)
    specversion = found.pop("specversion", SPECVERSION)
    if specversion != SPECVERSION:
        raise BadMessage(f"ce-specversion {specversion[:20]!r}: only CloudEvents 1.0 is read")
    time_text = found.pop("time", None)
    moment = None
    if time_text is not None:
        try:
            moment = parse_rfc3339(time_text).astimezone(UTC)
        except (ValueError, OverflowError):
            raise BadMessage(f"ce-time {time_text[:40]!r} is not an RFC 3339 time") from None
    ce_source = found.pop("source", None)
    if ce_source is not None and source is None and ce_source.startswith(SOURCE_PREFIX):
        named = ce_source[len(SOURCE_PREFIX) :]
        source = named if named in SOURCES else None
    if ce_source is not None and ce_source != SOURCE_PREFIX + (source or "amqp"):
        found["source"] = ce_source
    found.pop("datacontenttype", None)  # the message's content_type says it
    attributes = RabbitMQAttributes(
        type=found.pop("type", None),
        id=found.pop("id", None),
        time=moment,
        source=source,
        eventkind=found.pop("eventkind", None),
        principal=found.pop("principal", None),
    )
    try:
        kept = check_cloudevent_attributes(found) if found else {}
    except AdapterError as exc:
        raise BadMessage(str(exc)) from None
    return RabbitMQAttributes(
        **{
            **_fields(attributes),
            "kept": kept,
            "traceparent": traceparent,
            "tracestate": tracestate,
        }
    )


_CE_TRACE = frozenset({CE_PREFIX + TRACEPARENT, CE_PREFIX + TRACESTATE})


def _trace_text(value: object) -> object:
    """A trace header's value as text where it is UTF-8 bytes; anything else as it is, for the
    check to drop."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value


def _trace(
    headers: Mapping[str, Any], cloudevent: RabbitMQAttributes
) -> tuple[str | None, str | None]:
    """The message's trace context: its ``traceparent`` header (and ``tracestate``), else its
    ``ce-traceparent``; whatever breaks the W3C rules is dropped."""
    traceparent, tracestate = check_trace(
        _trace_text(headers.get(TRACEPARENT)), _trace_text(headers.get(TRACESTATE))
    )
    if traceparent is None:
        return cloudevent.traceparent, cloudevent.tracestate
    return traceparent, tracestate


def _fields(attributes: RabbitMQAttributes) -> dict[str, Any]:
    return {name: getattr(attributes, name) for name in RabbitMQAttributes.__slots__}


def _routing_key(
    message: AbstractIncomingMessage, policy: Policy, copies_to: str | None, original: str | None
) -> tuple[str, bool]:
    """The routing key the event was sent with, and whether the message is a copy of ours."""
    exchange = message.exchange or ""
    key = message.routing_key or ""
    if exchange == policy.exchange:
        return key, False
    if exchange == "" and copies_to is not None and key == copies_to:
        if original is None:
            original = _text((message.headers or {}).get(H_ORIGINAL_ROUTING_KEY))
        if original is None:
            raise BadMessage(f"a copy in {copies_to!r} without {H_ORIGINAL_ROUTING_KEY}")
        return original, True
    raise BadMessage(
        f"arrived through exchange {exchange!r} with routing key {key[:80]!r}, which no path "
        f"of the bridge uses (events come through {policy.exchange!r})"
    )


def _principal(message: AbstractIncomingMessage, claim: str | None, policy: Policy) -> str | None:
    if claim is None:
        return None
    # RabbitMQ refuses a publish whose user_id is not the publishing connection's user.
    if message.user_id is None or message.user_id not in policy.trusted_publishers:
        return None
    if not 0 < len(claim) <= _PRINCIPAL_MAX or not claim.isprintable():
        raise BadMessage("the principal is not 1 to 200 printable characters")
    return claim


def _decode(
    message: AbstractIncomingMessage,
    policy: Policy,
    copies_to: str | None,
    original: str | None,
) -> Decoded:
    key, copy = _routing_key(message, policy, copies_to, original)
    try:
        kind, name = parse_routing_key(key)
    except AdapterError as exc:
        raise BadMessage(f"routing key {key[:80]!r}: {exc}") from None
    headers = message.headers or {}
    claimed_source = _text(headers.get("x-event-source"))
    source = claimed_source if claimed_source in SOURCES else None
    cloudevent = read_rabbitmq_headers(headers, source)
    if cloudevent.type is not None and cloudevent.type != name:
        raise BadMessage(f"ce-type {cloudevent.type[:80]!r} disagrees with the routing key")
    if cloudevent.eventkind is not None and cloudevent.eventkind != kind:
        raise BadMessage(
            f"ce-eventkind {cloudevent.eventkind[:20]!r} disagrees with the routing key's kind "
            f"{kind!r}"
        )
    body = message.body
    if len(body) > 6 * policy.max_bytes + 1024:  # JSON escapes take at most 6 bytes a byte
        raise BadMessage(f"a body of {len(body)} bytes, more than an event can take")
    try:
        properties = string_object(loads_json_object(body, "the body") if body else {}, "the body")
        check_limits(properties, max_bytes=policy.max_bytes, max_properties=policy.max_properties)
        event_id = check_event_id(cloudevent.id or message.message_id or str(uuid.uuid4()))
    except AdapterError as exc:
        raise BadMessage(str(exc)) from None
    # ce-time keeps the instant to the microsecond; the AMQP timestamp only to the second.
    sent_at = cloudevent.time or message.timestamp or datetime.now(UTC)
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    claim = _text(headers.get("x-event-principal"))
    traceparent, tracestate = _trace(headers, cloudevent)
    event = Event(
        name=name,
        kind=kind,
        properties=properties,
        event_id=event_id,
        sent_at=sent_at.astimezone(UTC),
        source=cloudevent.source or "amqp",
        principal=_principal(message, claim if claim is not None else cloudevent.principal, policy),
        cloudevent_attributes=dict(cloudevent.kept),
        traceparent=traceparent,
        tracestate=tracestate,
    )
    return Decoded(event, copy)


def decode(
    message: AbstractIncomingMessage,
    policy: Policy,
    *,
    copies_to: str | None = None,
    original_key: str | None = None,
) -> Decoded:
    """The event a message from the bus stands for, or ``BadMessage`` with the reason.

    ``copies_to``: the queue the bridge's own copies are published to, through the default
    exchange, for the consumer reading it (a group's queue, its dead letters, the retained
    stream); None where no copy is expected (wait queues). ``original_key``: the routing key of
    such a copy when the caller knows it better than ``x-original-routing-key`` does (a message
    RabbitMQ dead-lettered itself).
    """
    try:
        return _decode(message, policy, copies_to, original_key)
    except BadMessage:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, UnicodeError, LookupError) as exc:
        # Whatever else a hostile message makes the checks stumble on is a refusal, not a crash.
        raise BadMessage(f"not an event: {type(exc).__name__}: {str(exc)[:200]}") from None
