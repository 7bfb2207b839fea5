"""The CloudEvents 1.0 mapping of an event, both ways, and its HTTP and RabbitMQ bindings.

An event is a CloudEvent: ``id`` is the event id, ``type`` the event name, ``source``
``urn:customevent:<source>``, ``time`` when it was sent, ``datacontenttype`` ``application/json``
and ``data`` the properties object; the extension attributes ``eventkind`` and ``principal`` say
its kind and, when known, who sent it. An event that came in as a CloudEvent keeps the attributes
this mapping does not give (its own ``source``, ``subject``, ``dataschema``, other extensions) in
``Event.cloudevent_attributes``, so that it goes out again as the same CloudEvent.

The SDK (``cloudevents.core``) builds, validates and encodes the CloudEvents. The one exception is
the bus: every published message carries the ``ce-*`` headers of the RabbitMQ binding, written
and read here directly (``rabbitmq_headers``, ``read_rabbitmq_headers``), so that the publish
path does not build an SDK object and encode the data a second time for each event; the tests
hold them equal to what the SDK writes and reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.exceptions import BaseCloudEventException, CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from ._exceptions import InvalidEventName, InvalidInput
from ._names import Kind, validate_kind, validate_name
from ._properties import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PROPERTIES,
    check_limits,
    check_properties,
    loads_json_object,
)

if TYPE_CHECKING:
    from ._event import Event

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
    "RabbitMQAttributes",
    "check_cloudevent_attributes",
    "cloudevent_attributes",
    "from_cloudevent",
    "from_http",
    "from_structured",
    "parse_time",
    "rabbitmq_headers",
    "read_rabbitmq_headers",
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
#: Bounds on what an event keeps of a CloudEvent beyond the mapping: each value goes into a
#: header of every message and every HTTP answer.
MAX_ATTRIBUTES: Final = 32
MAX_ATTRIBUTE_BYTES: Final = 1024

Mode = Literal["binary", "structured"]

_FORMAT = JSONFormat()
# Attributes the mapping writes from the event's own fields: an event cannot keep another value.
_MAPPED = frozenset(
    {"specversion", "id", "type", "time", "datacontenttype", "eventkind", "principal"}
)
# Names the format reserves: never attributes.
_RESERVED = frozenset({"data", "data_base64"})
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}")
_JSON_MEDIA = re.compile(r"^(application|text)/([a-z0-9\-.]+\+)?json\s*(;.*)?$", re.IGNORECASE)


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


def _time_text(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (a CloudEvent's ``time``) as an aware datetime; ``ValueError`` if not,
    or if UTC cannot hold it."""
    moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone offset")
    _in_utc(moment)
    return moment


def _in_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; ``ValueError`` when its offset takes it past the year 9999 or before
    the year 1 (``9999-12-31T23:59:59-14:00``), which ``astimezone`` reports as an overflow."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"time {moment.isoformat()} is outside the years 1 to 9999 once in UTC"
        ) from None


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


def rabbitmq_headers(event: Event) -> dict[str, str]:
    """The ``ce-*`` headers of the event's message in binary mode of the RabbitMQ binding (its
    ``datacontenttype`` travels as the message's ``content_type``)."""
    headers: dict[str, str] = {}
    for name, value in cloudevent_attributes(event).items():
        if name != "datacontenttype":
            headers[CE_PREFIX + name] = _time_text(value) if name == "time" else value
    return headers


@dataclass(frozen=True, slots=True)
class RabbitMQAttributes:
    """What the ``ce-*`` headers of a bus message say, read as text (empty when absent)."""

    type: str | None = None
    id: str | None = None
    time: datetime | None = None
    source: str | None = None
    eventkind: str | None = None
    principal: str | None = None
    #: ``subject``, ``dataschema`` and extensions, with ``source`` when it is not ours.
    kept: Mapping[str, str] | None = None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def read_rabbitmq_headers(headers: Mapping[str, Any], source: str | None) -> RabbitMQAttributes:
    """The CloudEvent attributes in a bus message's ``ce-*`` headers; ``source`` is the edge
    the message names (``x-event-source``), if any: a ``ce-source`` other than
    ``urn:customevent:<source>`` is kept. ``InvalidInput`` for a header that breaks a rule."""
    found: dict[str, str] = {}
    for key, value in headers.items():
        lowered = key.lower()
        if lowered.startswith(CE_PREFIX) and value is not None:
            found[lowered[len(CE_PREFIX) :]] = _text(value)
    if not found:
        return RabbitMQAttributes()
    specversion = found.pop("specversion", SPECVERSION)
    if specversion != SPECVERSION:
        raise InvalidInput(f"ce-specversion {specversion!r}: only CloudEvents 1.0 is read")
    time_text = found.pop("time", None)
    try:
        moment = parse_time(time_text) if time_text is not None else None
    except ValueError:
        raise InvalidInput(f"ce-time {time_text!r} is not an RFC 3339 time") from None
    ce_source = found.pop("source", None)
    if ce_source is not None and source is None and ce_source.startswith(SOURCE_PREFIX):
        source = ce_source[len(SOURCE_PREFIX) :]
    if ce_source is not None and ce_source != SOURCE_PREFIX + (source or "amqp"):
        found["source"] = ce_source
    found.pop("datacontenttype", None)  # the message's content_type says it
    return RabbitMQAttributes(
        type=found.pop("type", None),
        id=found.pop("id", None),
        time=moment,
        source=source,
        eventkind=found.pop("eventkind", None),
        principal=found.pop("principal", None),
        kept=check_cloudevent_attributes(found) if found else None,
    )


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
    from ._event import Event, check_event_id

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
        moment = _in_utc(moment)
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
        return [_structured(item, f"CloudEvent {i} of the batch") for i, item in enumerate(batch)]
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
