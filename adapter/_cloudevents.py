"""The CloudEvents 1.0 mapping of an event, both ways, and its HTTP and RabbitMQ bindings.

An event is a CloudEvent: ``id`` is the event id, ``type`` the event name, ``source``
``urn:customevent:<source>``, ``time`` when it was sent, ``datacontenttype`` ``application/json``
and ``data`` the properties object; the extension attributes ``eventkind`` and ``principal`` say
its kind and, when known, who sent it, and ``traceparent``/``tracestate`` (the Distributed
Tracing extension) the trace it was sent in. An event that came in as a CloudEvent keeps the
attributes this mapping does not give (its own ``source``, ``subject``, ``dataschema``, other
extensions) in ``Event.cloudevent_attributes``, so that it goes out again as the same CloudEvent.

The SDK (``cloudevents.core``) builds, validates and encodes the CloudEvents. The one exception is
the bus: every published message carries the ``ce-*`` headers of the RabbitMQ binding, written
and read by the codec (``adapter/_bus/amqp/_codec.py``) directly, so that the publish path does
not build an SDK object and encode the data a second time for each event; the tests hold them
equal to what the SDK writes and reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException, CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from ._event import (
    MAX_ATTRIBUTE_BYTES,
    MAX_ATTRIBUTES,
    Event,
    check_cloudevent_attributes,
    check_event_id,
)
from ._exceptions import InvalidEventName, InvalidInput
from ._names import Kind, validate_kind, validate_name
from ._properties import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PROPERTIES,
    check_limits,
    check_properties,
    loads_json_object,
)
from ._times import in_utc
from ._trace_context import TRACEPARENT, TRACESTATE, check_trace

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CE_PREFIX",
    "DATA_CONTENT_TYPE",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_BYTES",
    "SOURCE_PREFIX",
    "SPECVERSION",
    "STRUCTURED_CONTENT_TYPE",
    "CloudEvent",
    "Mode",
    "batch_item",
    "check_cloudevent_attributes",
    "cloudevent_attributes",
    "from_cloudevent",
    "from_http",
    "from_structured",
    "to_cloudevent",
    "to_http",
    "to_structured_json",
]

SPECVERSION: Final = "1.0"
SOURCE_PREFIX: Final = "urn:customevent:"
DATA_CONTENT_TYPE: Final = "application/json"
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
CE_PREFIX: Final = "ce-"

Mode = Literal["binary", "structured"]

_FORMAT = JSONFormat()
_JSON_MEDIA = re.compile(r"^(application|text)/([a-z0-9\-.]+\+)?json\s*(;.*)?$", re.IGNORECASE)


# -- event -> CloudEvent ------------------------------------------------------------------------


def cloudevent_attributes(event: Event) -> dict[str, Any]:
    """The event's CloudEvent attributes (``time`` as an aware datetime), data aside."""
    attributes: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.event_id,
        "source": SOURCE_PREFIX + event.source,
        "type": event.name,
        "time": event.sent_at,
        "datacontenttype": DATA_CONTENT_TYPE,
        "eventkind": event.kind,
    }
    if event.principal is not None:
        attributes["principal"] = event.principal
    attributes.update(event.cloudevent_attributes)
    # The Distributed Tracing extension: a receiver (Knative, Argo Events) joins the trace.
    if event.traceparent is not None:
        attributes[TRACEPARENT] = event.traceparent
        if event.tracestate is not None:
            attributes[TRACESTATE] = event.tracestate
    return attributes


def to_cloudevent(event: Event) -> CloudEvent:
    """The event as an SDK ``CloudEvent`` (``data``: the properties object)."""
    return CloudEvent(cloudevent_attributes(event), dict(event.properties))


def to_http(event: Event, mode: Mode = "binary") -> tuple[dict[str, str], bytes]:
    """The headers and body of an HTTP message carrying the event as a CloudEvent: binary mode
    (``ce-*`` headers, the properties object as the body) or structured mode
    (``application/cloudevents+json``)."""
    cloudevent = to_cloudevent(event)
    if mode == "binary":
        message = ce_http.to_binary(cloudevent, _FORMAT)
    elif mode == "structured":
        message = ce_http.to_structured(cloudevent, _FORMAT)
    else:
        raise InvalidInput(f"CloudEvents mode {mode!r}: must be 'binary' or 'structured'")
    return dict(message.headers), message.body


def to_structured_json(event: Event) -> bytes:
    """The event as one structured-mode CloudEvent (``application/cloudevents+json``)."""
    return _FORMAT.write(to_cloudevent(event))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- CloudEvent -> event ------------------------------------------------------------------------


def _is_json_media(content_type: str | None) -> bool:
    return content_type is None or bool(_JSON_MEDIA.match(content_type))


def from_cloudevent(
    cloudevent: BaseCloudEvent,
    *,
    kind: str = "external",
    source: str = "http",
    principal: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
) -> Event:
    """The event a CloudEvent stands for, sent by ``principal`` over ``source`` as ``kind``.

    Its ``type`` must be a valid event name, its ``id`` a valid event id, its data a JSON object
    of strings within the limits (the properties; none when absent). ``eventkind`` and
    ``principal``, if it carries them, must agree with ``kind`` and ``principal``: they are
    never taken from the sender. ``InvalidInput`` names the attribute that breaks a rule.
    """
    checked_kind: Kind = validate_kind(kind)
    attributes = dict(cloudevent.get_attributes())
    specversion = attributes.pop("specversion", None)
    if specversion != SPECVERSION:
        raise InvalidInput(f"CloudEvent specversion {specversion!r}: only 1.0 is accepted")
    name = attributes.pop("type", None)
    try:
        validate_name(name)
    except InvalidEventName as exc:
        rule = f"{exc.rule} (a CloudEvent's type is the event name)"
        raise InvalidEventName(exc.name, rule) from None
    try:
        event_id = check_event_id(attributes.pop("id", None))
    except InvalidInput as exc:
        raise InvalidInput(f"CloudEvent id: {exc}") from None
    moment = attributes.pop("time", None)
    if moment is None:
        moment = datetime.now(UTC)
    elif not isinstance(moment, datetime) or moment.tzinfo is None:
        raise InvalidInput("CloudEvent time must be an RFC 3339 time with a zone offset")
    try:
        moment = in_utc(moment)
    except ValueError as exc:
        raise InvalidInput(f"CloudEvent {exc}") from None
    content_type = attributes.pop("datacontenttype", None)
    if not _is_json_media(content_type):
        raise InvalidInput(
            f"CloudEvent datacontenttype {content_type!r}: the data must be a JSON object "
            "(application/json)"
        )
    for claim, value in (("eventkind", checked_kind), ("principal", principal)):
        given = attributes.pop(claim, None)
        if given is not None and given != value:
            raise InvalidInput(
                f"CloudEvent {claim} {_text(given)!r} does not match the sender's "
                f"({value!r}): the bridge sets it"
            )
    if attributes.get("source") == SOURCE_PREFIX + source:
        del attributes["source"]
    # A trace context that breaks the W3C rules is dropped, never a reason to refuse the event.
    traceparent, tracestate = check_trace(
        attributes.pop(TRACEPARENT, None), attributes.pop(TRACESTATE, None)
    )
    data = cloudevent.get_data()
    if data is None:
        properties: dict[str, str] = {}
    elif isinstance(data, dict):
        properties = check_properties(data)
        check_limits(properties, max_bytes=max_bytes, max_properties=max_properties)
    else:
        raise InvalidInput(
            "CloudEvent data must be a JSON object of strings (the properties), "
            f"not {type(data).__name__}"
        )
    return Event(
        name=name,
        kind=checked_kind,
        properties=properties,
        event_id=event_id,
        sent_at=moment,
        source=source,
        principal=principal,
        cloudevent_attributes=check_cloudevent_attributes(attributes),
        traceparent=traceparent,
        tracestate=tracestate,
    )


def _sdk(build: Any, *args: Any) -> CloudEvent:
    """Run an SDK decoder, its refusals as ``InvalidInput``; only CloudEvents 1.0 come out."""
    try:
        cloudevent = build(*args)
    except CloudEventValidationError as exc:
        problems = "; ".join(
            f"{name}: {', '.join(str(error) for error in errors)}"
            for name, errors in exc.errors.items()
        )
        raise InvalidInput(f"not a valid CloudEvent: {problems}") from None
    except BaseCloudEventException as exc:
        raise InvalidInput(f"not a valid CloudEvent: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise InvalidInput(f"not a valid CloudEvent: {type(exc).__name__}: {exc}") from None
    if not isinstance(cloudevent, CloudEvent):
        raise InvalidInput(
            f"CloudEvent specversion {cloudevent.get_specversion()!r}: only 1.0 is accepted"
        )
    return cloudevent


def _structured(value: object, where: str) -> CloudEvent:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} is not a JSON object")
    if "specversion" not in value:
        # The SDK would assume 1.0; the format requires the attribute.
        raise InvalidInput(f"{where} has no specversion")
    if value["specversion"] != SPECVERSION:
        raise InvalidInput(f"{where}: specversion {value['specversion']!r}: only 1.0 is accepted")
    if "data_base64" in value:
        raise InvalidInput(f"{where}: data_base64 cannot carry properties; send a JSON object")
    return _sdk(_FORMAT.read, CloudEvent, json.dumps(value))


def from_structured(body: bytes | str) -> CloudEvent:
    """One CloudEvent in the structured JSON format (``application/cloudevents+json``), as an
    HTTP body or an MQTT v5 payload carries it; ``InvalidInput`` naming what breaks a rule (a
    key given twice included). ``from_cloudevent`` then makes it an event."""
    return _structured(loads_json_object(body, "the CloudEvent"), "the CloudEvent")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def batch_item(index: int, total: int) -> str:
    """How a message names the CloudEvent at ``index`` (0-based) of a batch: counted from 1,
    as a person counts (``CloudEvent 2 of 3 in the batch``)."""
    return f"CloudEvent {index + 1} of {total} in the batch"


def from_http(
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    admit: Callable[[int], None] | None = None,
) -> list[CloudEvent]:
    """The CloudEvents of an HTTP request: binary mode (``ce-*`` headers), structured mode
    (``application/cloudevents+json``) or a batch (``application/cloudevents-batch+json``).
    Each header may be given once; JSON with a key given twice is refused. ``InvalidInput``
    names what breaks a rule (for a batch, the position of the CloudEvent).

    ``admit``, when given, is called with the number of CloudEvents once they are counted and
    before any is decoded, so that it can refuse them (a bound on a batch, a rate) for the cost
    of one JSON decoding: the SDK costs far more per CloudEvent."""
    seen: dict[str, str] = {}
    for key, value in headers:
        lowered = key.lower()
        if lowered.startswith(CE_PREFIX) or lowered == "content-type":
            if lowered in seen:
                raise InvalidInput(f"the {lowered} header is given more than once")
            seen[lowered] = value
    content_type = seen.get("content-type")
    media = _media_type(content_type)
    binary = any(key.startswith(CE_PREFIX) for key in seen)
    if media == BATCH_CONTENT_TYPE:
        batch = loads_json_object(body, "the CloudEvents batch")
        if not isinstance(batch, list):
            raise InvalidInput("a CloudEvents batch is a JSON array of CloudEvents")
        if admit is not None:
            admit(len(batch))
        total = len(batch)
        return [_structured(item, batch_item(i, total)) for i, item in enumerate(batch)]
    if admit is not None and (media == STRUCTURED_CONTENT_TYPE or binary):
        admit(1)
    if media == STRUCTURED_CONTENT_TYPE:
        return [from_structured(body)]
    if not binary:
        raise InvalidInput(
            "not a CloudEvent: give ce-* headers (binary mode), or Content-Type "
            f"{STRUCTURED_CONTENT_TYPE} or {BATCH_CONTENT_TYPE}"
        )
    if "ce-specversion" not in seen:
        raise InvalidInput("binary-mode CloudEvent without a ce-specversion header")
    if body and _is_json_media(content_type):
        loads_json_object(body, "the CloudEvent data")  # refuses a key given twice
    message = ce_http.HTTPMessage(headers=seen, body=body)
    return [_sdk(ce_http.from_binary, message, _FORMAT, CloudEvent)]
