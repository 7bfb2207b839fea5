"""The CloudEvents mapping (adapter/_cloudevents.py), checked against the CloudEvents SDK: what we
write, the SDK reads as the same CloudEvent, and what the SDK writes, we read."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.bindings import rabbitmq as sdk_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given
from hypothesis import strategies as st

from adapter import Event, InvalidEventName, InvalidInput, InvalidProperties
from adapter._bus.amqp._codec import BadMessage, rabbitmq_headers, read_rabbitmq_headers
from adapter._cloudevents import (
    MAX_ATTRIBUTE_BYTES,
    MAX_ATTRIBUTES,
    check_cloudevent_attributes,
    from_cloudevent,
    from_http,
    from_structured,
    to_cloudevent,
    to_http,
    to_structured_json,
)
from adapter._names import is_noncharacter

SENT = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def _event(**changes: object) -> Event:
    fields: dict[str, object] = {
        "name": "vm.created",
        "kind": "external",
        "properties": {"vm": "web-01", "size": "a=b"},
        "event_id": "id-1",
        "sent_at": SENT,
        "source": "http",
        "principal": "ops",
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


def _sdk_event(**attributes: object) -> CloudEvent:
    base: dict[str, object] = {
        "type": "job.done",
        "source": "https://ci.example.com/pipelines/7",
        "id": "build-42",
        "time": SENT,
        "datacontenttype": "application/json",
    }
    base.update(attributes)
    return CloudEvent(base, {"ok": "1"})


def test_an_event_maps_to_the_contracts_attributes() -> None:
    cloudevent = to_cloudevent(_event())
    assert cloudevent.get_attributes() == {
        "specversion": "1.0",
        "id": "id-1",
        "source": "urn:customevent:http",
        "type": "vm.created",
        "time": SENT,
        "datacontenttype": "application/json",
        "eventkind": "external",
        "principal": "ops",
    }
    assert cloudevent.get_data() == {"vm": "web-01", "size": "a=b"}
    no_principal = to_cloudevent(_event(principal=None, kind="internal", source="amqp"))
    assert "principal" not in no_principal.get_attributes()
    assert no_principal.get_extension("eventkind") == "internal"
    assert no_principal.get_source() == "urn:customevent:amqp"


def test_no_properties_are_an_empty_data_object() -> None:
    assert to_cloudevent(_event(properties={})).get_data() == {}


@pytest.mark.parametrize("principal", [None, "ops"])
def test_an_event_comes_back_from_its_cloudevent(principal: str | None) -> None:
    event = _event(principal=principal, cloudevent_attributes={"subject": "vm/web-01"})
    again = from_cloudevent(to_cloudevent(event), source="http", principal=principal)
    assert again == event


def test_a_foreign_cloudevent_goes_out_again_exactly() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    original = _sdk_event(subject="pipeline/7", traceparent=traceparent, dataschema="urn:x")
    event = from_cloudevent(original, source="http", principal="ci")
    assert event.name == "job.done"
    assert event.event_id == "build-42"
    assert event.sent_at == SENT
    assert event.kind == "external"
    assert event.source == "http"
    assert event.principal == "ci"
    assert event.properties == {"ok": "1"}
    assert event.traceparent == traceparent  # the Distributed Tracing extension: the trace
    assert event.cloudevent_attributes == {
        "source": "https://ci.example.com/pipelines/7",
        "subject": "pipeline/7",
        "dataschema": "urn:x",
    }
    back = to_cloudevent(event)
    # Ours added: the kind and who sent it. Everything the sender gave is as it gave it.
    expected = dict(original.get_attributes(), eventkind="external", principal="ci")
    assert back.get_attributes() == expected
    assert back.get_data() == original.get_data()


def test_our_own_source_is_not_kept_twice() -> None:
    event = from_cloudevent(_sdk_event(source="urn:customevent:http"), source="http")
    assert "source" not in event.cloudevent_attributes
    assert to_cloudevent(event).get_source() == "urn:customevent:http"


def test_a_cloudevent_without_data_or_time_or_content_type() -> None:
    cloudevent = CloudEvent({"type": "job.done", "source": "/x", "id": "1"})
    before = datetime.now(UTC)
    event = from_cloudevent(cloudevent)
    assert event.properties == {}
    # The SDK stamps a time on every CloudEvent it builds; it is the event's.
    assert event.sent_at == cloudevent.get_time()
    assert event.sent_at >= before - timedelta(seconds=1)


def test_the_time_keeps_its_instant_in_any_zone() -> None:
    zoned = SENT.astimezone(timezone(timedelta(hours=2)))
    event = from_cloudevent(_sdk_event(time=zoned))
    assert event.sent_at == SENT
    assert event.sent_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("changes", "data", "words"),
    [
        ({"type": "vm/created"}, {"ok": "1"}, "a CloudEvent's type is the event name"),
        ({"type": "a..b"}, {"ok": "1"}, "empty word"),
        ({"id": "x" * 201}, {"ok": "1"}, "CloudEvent id: event_id must be 1 to 200"),
        ({}, {"ok": 1}, "must be strings"),
        ({}, {"a\nb": "1"}, "control character"),
        ({}, {"a": "1\r\n"}, "line break"),
        ({}, "ok=1", "data must be a JSON object of strings"),
        ({}, b"\x00", "data must be a JSON object of strings"),
        ({"datacontenttype": "text/plain"}, {"ok": "1"}, "datacontenttype 'text/plain'"),
        ({"eventkind": "internal"}, {"ok": "1"}, "eventkind 'internal' does not match"),
        ({"principal": "admin"}, {"ok": "1"}, "principal 'admin' does not match"),
        ({"big": "x" * (MAX_ATTRIBUTE_BYTES + 1)}, {"ok": "1"}, "more than 1024"),
        ({"weird": 1.5}, {"ok": "1"}, "string, an integer or a boolean"),
    ],
)
def test_bad_cloudevents_are_refused_naming_the_rule(
    changes: dict[str, object], data: object, words: str
) -> None:
    attributes: dict[str, object] = {"type": "job.done", "source": "/x", "id": "1"}
    attributes.update(changes)
    cloudevent = CloudEvent(attributes, data)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput) as caught:
        from_cloudevent(cloudevent, principal="ops")
    assert words in str(caught.value)


def test_the_properties_limits_apply() -> None:
    cloudevent = CloudEvent({"type": "a", "source": "/x"}, {"k": "x" * 100})
    with pytest.raises(InvalidProperties, match="more than the limit of 50 bytes"):
        from_cloudevent(cloudevent, max_bytes=50)
    many = CloudEvent({"type": "a", "source": "/x"}, {str(i): "" for i in range(4)})
    with pytest.raises(InvalidProperties, match="4 properties"):
        from_cloudevent(many, max_properties=3)


def test_a_bad_type_is_an_invalid_event_name() -> None:
    with pytest.raises(InvalidEventName):
        from_cloudevent(CloudEvent({"type": "#", "source": "/x"}))


def test_kept_attributes_are_bounded_and_checked() -> None:
    assert check_cloudevent_attributes({"n": 3, "flag": True}) == {"n": "3", "flag": "true"}
    too_many = {f"x{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}
    with pytest.raises(InvalidInput, match="more than 32"):
        check_cloudevent_attributes(too_many)
    for name in ("Upper", "with-dash", "x" * 21, ""):
        with pytest.raises(InvalidInput, match="lowercase letters and digits"):
            check_cloudevent_attributes({name: "v"})
    for name in ("id", "type", "time", "eventkind", "principal", "data"):
        with pytest.raises(InvalidInput, match="not one an event keeps"):
            check_cloudevent_attributes({name: "v"})
    with pytest.raises(InvalidInput, match="control character"):
        check_cloudevent_attributes({"subject": "a\tb"})
    with pytest.raises(InvalidInput, match="empty"):
        check_cloudevent_attributes({"subject": ""})


def test_the_json_shape_carries_kept_attributes_only_when_there_are_some() -> None:
    plain = _event()
    assert "cloudevent_attributes" not in plain.to_json()
    kept = _event(cloudevent_attributes={"source": "/device/7", "subject": "s"})
    data = kept.to_json()
    assert data["cloudevent_attributes"] == {"source": "/device/7", "subject": "s"}
    assert Event.from_json(json.loads(json.dumps(data))) == kept
    data["cloudevent_attributes"] = {"id": "forged"}
    with pytest.raises(InvalidInput, match="not one an event keeps"):
        Event.from_json(data)


# -- HTTP binding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_the_sdk_reads_what_we_write_over_http(mode: str) -> None:
    event = _event(name="vm.créé", cloudevent_attributes={"subject": "é ü"})
    headers, body = to_http(event, mode)  # type: ignore[arg-type]
    read = sdk_http.from_http(sdk_http.HTTPMessage(headers, body), JSONFormat(), CloudEvent)
    assert read.get_attributes() == to_cloudevent(event).get_attributes()
    assert read.get_data() == event.properties
    if mode == "binary":
        assert headers["content-type"] == "application/json"
        assert headers["ce-id"] == "id-1"
        assert headers["ce-time"] == "2026-03-04T05:06:07.891011Z"
        assert json.loads(body) == event.properties
    else:
        assert headers == {"content-type": "application/cloudevents+json"}
        assert json.loads(body)["data"] == event.properties
    assert (
        to_structured_json(event) == sdk_http.to_structured(to_cloudevent(event), JSONFormat()).body
    )


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(InvalidInput, match="'binary' or 'structured'"):
        to_http(_event(), "batch")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_we_read_what_the_sdk_writes_over_http(mode: str) -> None:
    original = _sdk_event(subject="ü/ä", traceparent="00-1-2-01")
    write = sdk_http.to_binary if mode == "binary" else sdk_http.to_structured
    message = write(original, JSONFormat())
    (read,) = from_http(message.headers.items(), message.body)
    assert read.get_attributes() == original.get_attributes()
    assert read.get_data() == original.get_data()


def test_a_structured_payload_alone_is_read_as_mqtt_would_hand_it() -> None:
    original = _sdk_event(subject="s")
    read = from_structured(JSONFormat().write(original))
    assert read.get_attributes() == original.get_attributes()
    with pytest.raises(InvalidInput, match="given twice"):
        from_structured(b'{"specversion": "1.0", "id": "1", "id": "2"}')


def test_a_batch_is_read_in_order() -> None:
    events = [_sdk_event(id=f"b-{i}") for i in range(3)]
    body = json.dumps([json.loads(JSONFormat().write(e)) for e in events]).encode()
    read = from_http([("Content-Type", "application/cloudevents-batch+json")], body)
    assert [e.get_id() for e in read] == ["b-0", "b-1", "b-2"]
    assert read[1].get_data() == {"ok": "1"}


@pytest.mark.parametrize(
    ("headers", "body", "words"),
    [
        ([("content-type", "application/json")], b"{}", "not a CloudEvent: give ce-* headers"),
        (
            [("ce-type", "a"), ("ce-source", "/x"), ("ce-id", "1")],
            b"",
            "without a ce-specversion",
        ),
        (
            [("ce-specversion", "1.0"), ("ce-type", "a"), ("ce-type", "b")],
            b"",
            "ce-type header is given more than once",
        ),
        (
            [("ce-specversion", "1.0"), ("ce-type", "a"), ("ce-source", "/x"), ("ce-id", "1")],
            b'{"k": "1", "k": "2"}',
            "given twice",
        ),
        (
            [("ce-specversion", "1.0"), ("ce-type", "a"), ("ce-id", "1")],
            b"",
            "source",
        ),
        (
            [("ce-specversion", "1.0"), ("ce-type", "a"), ("ce-source", "/x"), ("ce-time", "x")],
            b"",
            "not a valid CloudEvent",
        ),
        (
            [("content-type", "application/cloudevents+json")],
            b'{"type": "a", "source": "/x", "id": "1"}',
            "has no specversion",
        ),
        (
            [("content-type", "application/cloudevents+json")],
            b'{"specversion": "0.3", "type": "a", "source": "/x", "id": "1"}',
            "only 1.0",
        ),
        (
            [("content-type", "application/cloudevents+json")],
            b'{"specversion": "1.0", "type": "a", "source": "/x", "id": "1", "type": "b"}',
            "given twice",
        ),
        (
            [("content-type", "application/cloudevents+json")],
            b'{"specversion": "1.0", "type": "a", "source": "/x", "id": "1", '
            b'"data_base64": "AA=="}',
            "data_base64",
        ),
        ([("content-type", "application/cloudevents+json")], b"[1]", "is not a JSON object"),
        ([("content-type", "application/cloudevents+json")], b"{", "is not JSON"),
        ([("content-type", "application/cloudevents-batch+json")], b"{}", "a JSON array"),
        (
            [("content-type", "application/cloudevents-batch+json")],
            b'[{"specversion": "1.0", "type": "a", "source": "/x", "id": "1"}, 7]',
            "CloudEvent 2 of 2 in the batch is not a JSON object",
        ),
    ],
)
def test_bad_http_cloudevents_are_refused_naming_the_problem(
    headers: list[tuple[str, str]], body: bytes, words: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        from_http(headers, body)
    assert words in str(caught.value)


# -- RabbitMQ binding -----------------------------------------------------------------------------


@pytest.mark.parametrize("principal", [None, "ops"])
def test_our_rabbitmq_headers_are_the_sdks(principal: str | None) -> None:
    event = _event(principal=principal, cloudevent_attributes={"subject": "ü", "source": "/d/7"})
    sdk = sdk_rabbitmq.to_binary(to_cloudevent(event), JSONFormat())
    assert rabbitmq_headers(event) == sdk.headers
    assert sdk.content_type == "application/json"


def test_the_sdk_reads_our_headers_as_the_events_cloudevent() -> None:
    event = _event()
    message = sdk_rabbitmq.RabbitMQMessage(
        headers=rabbitmq_headers(event), content_type="application/json", body=b'{"vm":"web-01"}'
    )
    read = sdk_rabbitmq.from_binary_event(message)
    assert read.get_attributes() == to_cloudevent(event).get_attributes()


def test_we_read_rabbitmq_headers_the_sdk_writes() -> None:
    original = _sdk_event(subject="pipeline/7", eventkind="internal")
    headers = sdk_rabbitmq.to_binary(original, JSONFormat()).headers
    read = read_rabbitmq_headers(headers, None)
    assert (read.type, read.id, read.time, read.eventkind) == (
        "job.done",
        "build-42",
        SENT,
        "internal",
    )
    assert read.source is None
    assert read.kept == {"source": "https://ci.example.com/pipelines/7", "subject": "pipeline/7"}


def test_our_own_source_header_names_the_edge() -> None:
    read = read_rabbitmq_headers(rabbitmq_headers(_event(source="mqtt")), None)
    assert read.source == "mqtt"
    assert read.kept == {}
    assert read.principal == "ops"
    # Byte values (as some AMQP clients deliver them) read the same.
    raw = {k: v.encode() for k, v in rabbitmq_headers(_event()).items()}
    assert read_rabbitmq_headers(raw, "http").id == "id-1"


def test_no_ce_headers_read_as_nothing() -> None:
    assert read_rabbitmq_headers({"x-event-name": "a"}, "http").type is None


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"ce-specversion": "0.3"}, "only CloudEvents 1.0"),
        ({"ce-time": "yesterday"}, "ce-time 'yesterday'"),
        ({"ce-time": "2026-01-01T00:00:00"}, "ce-time"),
        ({"ce-Bad_Name": "x"}, "lowercase letters and digits"),
    ],
)
def test_bad_rabbitmq_headers_are_refused(headers: dict[str, str], words: str) -> None:
    with pytest.raises(BadMessage) as caught:
        read_rabbitmq_headers(headers, None)
    assert words in str(caught.value)


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="*#+/.").filter(
        lambda char: not is_noncharacter(char)
    ),
    min_size=1,
    max_size=30,
)
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\u2028\u2029")
    | st.just("\t"),
    max_size=30,
)
keys = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs", "Zs"), blacklist_characters="=\u2028\u2029"
    ),
    min_size=1,
    max_size=20,
)


@given(name=names, properties=st.dictionaries(keys, values, max_size=5))
def test_any_event_survives_both_bindings(name: str, properties: dict[str, str]) -> None:
    event = _event(name=name, properties=properties)
    for mode in ("binary", "structured"):
        headers, body = to_http(event, mode)  # type: ignore[arg-type]
        (cloudevent,) = from_http(headers.items(), body)
        assert from_cloudevent(cloudevent, principal="ops") == event
    read = read_rabbitmq_headers(rabbitmq_headers(event), None)
    assert (read.type, read.id, read.time) == (name, event.event_id, event.sent_at)
